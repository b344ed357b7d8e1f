"""Every SMTP reply the gateway sends, as named values (RFC 5321, RFC 3463, RFC 2034).

A reply is (code, enhanced status, text). The enhanced status always has the
class of the basic code. Replies written by aiosmtpd itself are rewritten by
`rewrite` on their way out, so that they too carry an enhanced status code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if str(self.code)[0] != self.status[0]:
            raise ValueError(f"{self.code} with {self.status}: classes differ")

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    def format(self, **values: object) -> Reply:
        return Reply(self.code, self.status, self.text.format(**values))

    @property
    def permanent(self) -> bool:
        return self.code >= 500


# Success.
SENDER_OK = Reply(250, "2.1.0", "Sender accepted")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient accepted")
QUEUED = Reply(250, "2.0.0", "Accepted, queued as {queue_id}")
AUTH_OK = Reply(235, "2.7.0", "Authentication succeeded")

# The client must change something first.
TLS_FIRST = Reply(530, "5.7.0", "Start TLS first (STARTTLS), then authenticate")
AUTH_FIRST = Reply(530, "5.7.0", "Authentication required: sign in to send mail")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Authentication is only allowed after STARTTLS")
AUTH_FAILED = Reply(535, "5.7.8", "Wrong user name or password")
AUTH_THROTTLED = Reply(
    454, "4.7.0", "Too many failed sign-ins; wait a few minutes and try again"
)
AUTH_MALFORMED = Reply(501, "5.5.2", "Authentication data could not be decoded")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication cancelled")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already signed in")

# Senders.
BAD_SENDER = Reply(553, "5.1.7", "The sender address is not valid: {reason}")
NOT_YOUR_ADDRESS = Reply(
    550, "5.7.1", "You may only send as {allowed}, not as {address}"
)
NULL_SENDER_REFUSED = Reply(550, "5.7.1", "An empty sender address is not accepted here")
SENDER_DOMAIN_NOT_APPROVED = Reply(
    550, "5.7.1", "Mail from {domain} is not accepted: it is not an approved "
    "correspondent domain"
)
TLS_REQUIRED_INBOUND = Reply(530, "5.7.0", "This gateway accepts mail only over TLS")

# Recipients.
BAD_RECIPIENT = Reply(553, "5.1.3", "The recipient address is not valid: {reason}")
UNKNOWN_USER = Reply(550, "5.1.1", "There is no mailbox {address} on this gateway")
DOMAIN_NOT_APPROVED = Reply(
    550, "5.7.1", "{domain} is not an approved correspondent domain; mail to "
    "{address} cannot be sent from this gateway"
)
RELAY_DENIED = Reply(
    550, "5.7.1", "This gateway does not relay: {domain} is not served here"
)
TOO_MANY_RECIPIENTS = Reply(
    452, "4.5.3", "Too many recipients; send the rest in another message"
)
NEED_RECIPIENT = Reply(503, "5.5.1", "Give at least one recipient (RCPT TO) first")

# OpenPGP policy.
NO_KEY = Reply(
    550, "5.7.1", "No encryption key is known for {address}, so the message cannot be "
    "sent securely; ask your administrator to import that ministry's key"
)
MIXED_PLAIN = Reply(
    452, "4.5.3", "{address} receives mail unencrypted; send it a separate message"
)
MUST_ENCRYPT = Reply(
    550, "5.7.1", "Mail from {domain} must be encrypted and signed with OpenPGP"
)
BAD_SIGNATURE = Reply(
    550, "5.7.7", "The OpenPGP signature could not be verified ({state})"
)
SIGNER_MISMATCH = Reply(
    550, "5.7.1", "The message is signed, but not by {domain}, whose mail it claims to be"
)
CANNOT_PROTECT = Reply(554, "5.6.0", "The message cannot be encrypted: {reason}")
UNDECRYPTABLE = Reply(554, "5.7.5", "The encrypted message could not be opened: {reason}")

# The message.
TOO_BIG = Reply(552, "5.3.4", "The message is larger than the limit of {limit} bytes")
LINE_TOO_LONG = Reply(
    500, "5.5.6", "A line is longer than {line_limit} characters; the message is refused"
)
BAD_LINE_ENDINGS = Reply(554, "5.6.0", "The message is malformed: {reason}")
BAD_CONTENT = Reply(554, "5.6.0", "The message is malformed: {reason}")

# The gateway.
STORE_BUSY = Reply(451, "4.3.0", "Temporary problem storing the message; try again later")
STORE_FULL = Reply(452, "4.3.1", "The gateway is out of storage; try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local problem; try again later")
TOO_MANY_CONNECTIONS = Reply(
    421, "4.7.0", "Too many connections; try again later"
)
TOO_MANY_FROM_YOU = Reply(
    421, "4.7.0", "Too many connections from your address; try again later"
)
SHUTTING_DOWN = Reply(421, "4.3.2", "The gateway is shutting down; try again later")
TIMEOUT = Reply(421, "4.4.2", "Idle for too long; closing the connection")

_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

# What aiosmtpd writes by itself, and what we send instead.
_REWRITES: tuple[tuple[re.Pattern[str], Reply], ...] = (
    (re.compile(r"^552 Error: Too much mail data"), TOO_BIG),
    (re.compile(r"^552 Error: message size exceeds"), TOO_BIG),
    (re.compile(r"^500 Line too long"), LINE_TOO_LONG),
    (re.compile(r"^500 Error: line too long"), LINE_TOO_LONG),
    (re.compile(r"^530 Must issue a STARTTLS command first"), TLS_FIRST),
    (re.compile(r"^503 Error: need RCPT command"), NEED_RECIPIENT),
    (re.compile(r"^503 Already authenticated"), ALREADY_AUTHENTICATED),
)

_DEFAULT_STATUS = {2: "2.0.0", 3: "", 4: "4.0.0", 5: "5.0.0"}
_BY_CODE = {500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
            555: "5.5.4", 421: "4.4.2", 554: "5.0.0", 221: "2.0.0"}


def rewrite(line: str, **values: object) -> str:
    """Give a reply line from aiosmtpd an enhanced status code, or a better text."""
    if len(line) < 4 or not line[:3].isdigit() or _ENHANCED.match(line):
        return line
    for pattern, reply in _REWRITES:
        if pattern.match(line):
            return str(reply.format(**values))
    code = int(line[:3])
    status = _BY_CODE.get(code) or _DEFAULT_STATUS.get(code // 100, "")
    if not status or code in (220, 334, 354):
        return line
    text = line[4:]
    text = text.removeprefix("Error: ")
    return f"{line[:3]}{line[3]}{status} {text}"

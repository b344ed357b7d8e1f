"""Delivery status notifications (bounces) for local senders.

When the gateway gives up on a recipient, the sender gets a report built here:
a multipart/report (RFC 6522, which replaced RFC 3462) whose three parts are a
notice in plain English for the officer, the machine-readable
message/delivery-status of RFC 3464, and the header of the undelivered message
as text/rfc822-headers. The report is marked Auto-Submitted: auto-replied
(RFC 3834) so that well-behaved responders do not answer it; the caller sends
it with an empty envelope sender (RFC 5321, section 4.5.5) for the same reason.

Status codes are the enhanced codes of RFC 3463. A recipient whose action is
"failed" with a 4.x.x status expired: the gateway kept retrying until the
message's time in the queue ran out.

Deviations, on purpose:

- The body of the undelivered message is never returned, only its header: the
  body may be confidential, and a report is one more copy of it.
- The report's Subject never repeats the original subject, which may itself be
  sensitive; the notice names the original Message-ID instead.
- Everything is US-ASCII. Internationalized addresses (RFC 6531/6533) show a
  "?" for each non-ASCII character, in the notice and in the machine-readable
  part; the envelope the caller uses to send the report is not affected.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

ACTIONS = ("failed", "delayed")
"""RFC 3464 actions this module reports; success reports are not built here."""

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_SPACES = re.compile(r" {2,}")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*;")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEADER_8BIT = re.compile(rb"[\x80-\xff]")

_MAX_ADDRESS = 256  # RFC 5321 section 4.5.3.1.3: the longest path
_MAX_HOST = 255
_MAX_TEXT = 500  # a diagnostic longer than this helps nobody in a notice
_MAX_LINE = 998  # RFC 5322 section 2.1.1, without the CRLF
_WIDTH = 76


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the report is about, as the delivery attempts left it."""

    address: str  # the envelope recipient
    status: str  # enhanced status code (RFC 3463), e.g. "5.1.1" or "4.4.7"
    diagnostic: str  # the next hop's reply, e.g. "smtp; 550 5.1.1 No such user"
    remote_mta: str | None  # the next hop's host name, if one answered
    action: str = "failed"  # RFC 3464 action: "failed" or "delayed"


@dataclass(frozen=True)
class _Advice:
    """What went wrong in plain words, and what the officer can do about it."""

    reason: str
    todo: str


_CHECK_ADDRESS = (
    "Check the address for typing mistakes, or ask the recipient for the "
    "correct address, then send the message again."
)
_OTHER_WAY = (
    "Reach the recipient another way and let them know; they may need to make "
    "room in their mailbox or have it reactivated."
)
_SMALLER = (
    "Send a smaller message, for example without large attachments, or share "
    "the files another way."
)
_LATER = (
    "Send the message again later. If this keeps happening, ask your "
    "administrator for help."
)
_ADMIN = "Ask your administrator for help, and quote the queue id below."
_WAIT = "Nothing for now: you will get another notice if the gateway gives up."

# Keyed by the subject and detail of an RFC 3463 code: "1.1" stands for X.1.1.
_ADVICE_BY_DETAIL = {
    "1.1": _Advice(
        "the address does not exist at the receiving organisation", _CHECK_ADDRESS
    ),
    "1.2": _Advice(
        "the recipient's domain does not exist or does not receive mail", _CHECK_ADDRESS
    ),
    "1.3": _Advice("the address is not written correctly", _CHECK_ADDRESS),
    "1.10": _Advice("the recipient's domain does not receive mail", _CHECK_ADDRESS),
    "2.1": _Advice("the recipient's mailbox is disabled", _OTHER_WAY),
    "2.2": _Advice("the recipient's mailbox is full", _OTHER_WAY),
    "2.3": _Advice(
        "the message is larger than the recipient's mailbox accepts", _SMALLER
    ),
    "3.4": _Advice("the message is larger than the receiving server accepts", _SMALLER),
    "4.7": _Advice("the message could not be delivered in the time allowed", _LATER),
    "7.1": _Advice(
        "the receiving organisation does not accept this message from us", _ADMIN
    ),
}

# Keyed by the subject alone, for the details the table above does not name.
_ADVICE_BY_SUBJECT = {
    "1": _Advice("there is a problem with the recipient's address", _CHECK_ADDRESS),
    "2": _Advice("there is a problem with the recipient's mailbox", _OTHER_WAY),
    "3": _Advice("the receiving mail system has a problem", _ADMIN),
    "4": _Advice("the receiving server could not be reached", _LATER),
    "5": _Advice("the two mail servers could not understand each other", _ADMIN),
    "6": _Advice("the receiving server refused the content of the message", _ADMIN),
    "7": _Advice("a security or policy check refused the message", _ADMIN),
}

_REFUSED = _Advice("the receiving server refused the message", _ADMIN)

_SUMMARIES = {
    "permanent": "delivery failed permanently",
    "expired": "delivery time expired",
    "delayed": "delivery delayed, still trying",
}


def build_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    original_sender: str,
    original_message_id: str | None,
    queue_id: str,
    arrival_date: datetime,
    recipients: Sequence[FailedRecipient],
    original_headers: bytes,
    now: datetime | None = None,
) -> bytes:
    """Return the report as a complete message, every line ending in CRLF.

    Raises ValueError for a request that would produce a wrong report: no
    recipients, a null sender (a report about a report could loop between two
    gateways), a malformed status, an action that does not match its status,
    or a date without a time zone.
    """
    _check_request(original_sender, arrival_date, recipients, now)
    now = now or datetime.now(UTC)
    host = _clean(reporting_mta, _MAX_HOST)
    message_id = _message_id(original_message_id)

    notice = _notice(
        host, message_id, _clean(queue_id, _MAX_HOST), arrival_date, recipients
    )
    status = _delivery_status(host, arrival_date, recipients)
    headers = _header_copy(original_headers)
    parts = [notice, status, headers]

    boundary = _boundary(parts)
    outer = _outer_header(host, postmaster, original_sender, recipients, now, boundary)
    return _assemble(outer, parts, boundary)


def _check_request(
    sender: str,
    arrival_date: datetime,
    recipients: Sequence[FailedRecipient],
    now: datetime | None,
) -> None:
    """Refuse inputs the caller must never pass, before anything is built."""
    if not sender.strip("<> "):
        raise ValueError("no report is sent for a message with a null sender")
    if not recipients:
        raise ValueError("a report needs at least one recipient")
    for date in (arrival_date, now):
        if date is not None and date.utcoffset() is None:
            raise ValueError("dates in a report need a time zone")
    for recipient in recipients:
        _kind(recipient)


def _kind(recipient: FailedRecipient) -> str:
    """Classify a recipient as "permanent", "expired" or "delayed"."""
    if not _STATUS.fullmatch(recipient.status):
        raise ValueError(f"not an enhanced status code: {recipient.status!r}")
    if recipient.action not in ACTIONS:
        raise ValueError(f"unsupported DSN action: {recipient.action!r}")

    status_class = recipient.status[0]
    if recipient.action == "delayed" and status_class == "4":
        return "delayed"
    if recipient.action == "failed" and status_class == "5":
        return "permanent"
    if recipient.action == "failed" and status_class == "4":
        return "expired"
    raise ValueError(
        f"action {recipient.action!r} does not match status {recipient.status}"
    )


def _clean(value: str, limit: int) -> str:
    """Make a value safe to place on one line of the report.

    Control characters (CR and LF above all, which would let a hostile reply
    add header fields) become spaces; non-ASCII characters become "?", since
    the report is plain US-ASCII; a value too long is cut.
    """
    value = _CONTROL.sub(" ", value)
    value = _NON_ASCII.sub("?", value)
    value = _SPACES.sub(" ", value).strip()
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return value


def _message_id(value: str | None) -> str | None:
    """Return the original Message-ID in angle brackets, or None."""
    if value is None:
        return None
    bare = _clean(value, _MAX_TEXT).strip("<> ")
    return f"<{bare}>" if bare else None


def _advice(recipient: FailedRecipient) -> _Advice:
    """Find the plain-words explanation of a recipient's status."""
    _, subject, detail = recipient.status.split(".")
    found = _ADVICE_BY_DETAIL.get(f"{subject}.{detail}")
    return found or _ADVICE_BY_SUBJECT.get(subject, _REFUSED)


def _summary(recipients: Sequence[FailedRecipient]) -> str:
    """Say in a few words whether delivery failed, expired, or both."""
    kinds = {_kind(recipient) for recipient in recipients}
    return "; ".join(text for kind, text in _SUMMARIES.items() if kind in kinds)


def _server_reply(diagnostic: str) -> str:
    """Drop the RFC 3464 diagnostic type ("smtp;") for the human reader."""
    text = _clean(diagnostic, _MAX_TEXT)
    match = _DIAGNOSTIC_TYPE.match(text)
    return text[match.end() :].strip() if match else text


def _notice(
    host: str,
    message_id: str | None,
    queue_id: str,
    arrival_date: datetime,
    recipients: Sequence[FailedRecipient],
) -> str:
    """Write the first part: what happened, to whom, why, and what to do."""
    count = len(recipients)
    lines = [
        f"Your message could not be delivered to {count} recipient"
        f"{'' if count == 1 else 's'}.",
        "",
        f"  Message-ID:  {message_id or '(none)'}",
        f"  Received:    {format_datetime(arrival_date)}",
        f"  Queue ID:    {queue_id}",
        "",
    ]
    for recipient in recipients:
        lines += _notice_recipient(recipient)
    lines += _wrap(
        "If you need help, forward this notice to your administrator: the queue "
        f"id {queue_id} finds the message in the gateway's logs."
    )
    lines += [""]
    lines += _wrap(
        f"This notice was written automatically by the mail gateway {host}; "
        "replies to it are not read. A technical report for mail systems "
        "follows, with a copy of the header of your message. The text and "
        "attachments of your message are not included."
    )
    return "\r\n".join(lines) + "\r\n"


def _notice_recipient(recipient: FailedRecipient) -> list[str]:
    """Describe one recipient in a short block of indented lines."""
    advice = _advice(recipient)
    kind = _kind(recipient)
    if kind == "expired":
        happened = "The gateway kept trying, but gave up when the time allowed ran out."
        if not recipient.status.endswith(".4.7"):
            happened += f" The last problem was that {advice.reason}."
        todo = _LATER
    elif kind == "delayed":
        happened = (
            f"It has not been delivered yet, because {advice.reason}. "
            "The gateway keeps trying."
        )
        todo = _WAIT
    else:
        happened = f"It could not be delivered, because {advice.reason}."
        todo = advice.todo

    lines = [f"To: {_clean(recipient.address, _MAX_ADDRESS)}"]
    lines += _wrap(f"What happened: {happened}", indent="  ")
    if recipient.remote_mta:
        lines += _wrap(
            f"Receiving server: {_clean(recipient.remote_mta, _MAX_HOST)}", indent="  "
        )
    reply = _server_reply(recipient.diagnostic)
    if reply:
        lines += _wrap(f"It answered: {reply}", indent="  ")
    lines += _wrap(f"What to do: {todo}", indent="  ")
    return [*lines, ""]


def _wrap(text: str, indent: str = "") -> list[str]:
    """Fold a paragraph for reading; long words are broken, never overlong."""
    hanging = indent + "  " if indent else ""
    return textwrap.wrap(
        text,
        width=_WIDTH,
        initial_indent=indent,
        subsequent_indent=hanging,
        break_on_hyphens=False,  # an address cut at a hyphen reads as two
    )


def _delivery_status(
    host: str, arrival_date: datetime, recipients: Sequence[FailedRecipient]
) -> str:
    """Write the message/delivery-status part (RFC 3464, section 2)."""
    groups = [
        [
            f"Reporting-MTA: dns; {host}",
            f"Arrival-Date: {format_datetime(arrival_date)}",
        ]
    ]
    for recipient in recipients:
        groups.append(_recipient_fields(recipient))
    return "\r\n\r\n".join("\r\n".join(group) for group in groups) + "\r\n"


def _recipient_fields(recipient: FailedRecipient) -> list[str]:
    """Write the per-recipient fields of RFC 3464, section 2.3."""
    fields = [
        f"Final-Recipient: rfc822; {_clean(recipient.address, _MAX_ADDRESS)}",
        f"Action: {recipient.action}",
        f"Status: {recipient.status}",
    ]
    if recipient.remote_mta:
        fields.append(f"Remote-MTA: dns; {_clean(recipient.remote_mta, _MAX_HOST)}")

    diagnostic = _clean(recipient.diagnostic, _MAX_TEXT)
    if diagnostic and not _DIAGNOSTIC_TYPE.match(diagnostic):
        diagnostic = f"smtp; {diagnostic}"
    if diagnostic:
        fields.append(f"Diagnostic-Code: {diagnostic}")
    return fields


def _header_copy(original_headers: bytes) -> str:
    """Copy the original header for the third part, and nothing else.

    The copy stops at the first empty line, so even a caller that passes the
    whole message cannot leak its body. Line ends become CRLF, control
    characters other than tab and non-ASCII bytes become "?", and a line too
    long for SMTP is folded.
    """
    lines: list[str] = []
    for raw in _LINE_END.split(original_headers):
        if not raw.strip():
            break
        raw = _HEADER_CONTROL.sub(b"?", raw)
        raw = _HEADER_8BIT.sub(b"?", raw)
        lines += _fold(raw.decode("ascii"))
    return "".join(line + "\r\n" for line in lines)


def _fold(line: str) -> list[str]:
    """Split a line longer than RFC 5322 allows into continuation lines."""
    pieces = [line[:_MAX_LINE]]
    rest = line[_MAX_LINE:]
    while rest:
        pieces.append(" " + rest[: _MAX_LINE - 1])
        rest = rest[_MAX_LINE - 1 :]
    return pieces


def _boundary(parts: Sequence[str]) -> str:
    """Pick a MIME boundary that occurs in none of the parts (RFC 2046, 5.1.1)."""
    while True:
        boundary = f"=_report_{secrets.token_hex(16)}"
        if not any(boundary in part for part in parts):
            return boundary


def _outer_header(
    host: str,
    postmaster: str,
    sender: str,
    recipients: Sequence[FailedRecipient],
    now: datetime,
    boundary: str,
) -> list[str]:
    """Write the report's own header fields."""
    return [
        f'From: "Mail Delivery System" <{_clean(postmaster, _MAX_ADDRESS)}>',
        f"To: <{_clean(sender, _MAX_ADDRESS).strip('<>')}>",
        f"Subject: Undelivered mail: {_summary(recipients)}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(16)}@{host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]


def _assemble(outer: list[str], parts: Sequence[str], boundary: str) -> bytes:
    """Join the header and the three parts into the report's bytes."""
    notice, status, headers = parts
    text = "\r\n".join(outer) + "\r\n\r\n"
    text += "This is a delivery status notification in MIME format.\r\n\r\n"
    text += f"--{boundary}\r\n"
    text += "Content-Type: text/plain; charset=us-ascii\r\n"
    text += "Content-Description: Notification\r\n\r\n"
    text += notice
    text += f"\r\n--{boundary}\r\n"
    text += "Content-Type: message/delivery-status\r\n"
    text += "Content-Description: Delivery report\r\n\r\n"
    text += status
    text += f"\r\n--{boundary}\r\n"
    text += "Content-Type: text/rfc822-headers\r\n"
    text += "Content-Description: Header of the undelivered message\r\n\r\n"
    text += headers
    text += f"\r\n--{boundary}--\r\n"
    return text.encode("ascii")

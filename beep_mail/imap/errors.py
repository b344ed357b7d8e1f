"""Failures of IMAP commands, each knowing the response it becomes.

A handler raises; the connection loop writes `error.response(tag)`. The
condition (NO, BAD, BYE) and the response code of RFC 5530 belong to the
class, so one table (`CODES` below, and its test) says what every failure
looks like on the wire. The text is for people; internals never reach it.
"""

from __future__ import annotations


def _clean(text: str) -> bytes:
    # A response is one line: whatever a name or a reason holds, no CR or LF
    # may end it early and start a forged response.
    flat = " ".join(text.split())
    return flat.encode("utf-8", "replace") or b"failed"


class ImapError(Exception):
    """A command failed; `response(tag)` is what the client is told."""

    condition = b"NO"
    code: str | None = None

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code

    def response(self, tag: bytes | None) -> bytes:
        head = tag if tag is not None else b"*"
        code = b"[" + self.code.encode("ascii") + b"] " if self.code else b""
        return head + b" " + self.condition + b" " + code + _clean(self.text) + b"\r\n"


class No(ImapError):
    """The command was understood and refused (tagged NO)."""


class Bad(ImapError):
    """The command was not understood or not allowed now (tagged BAD)."""

    condition = b"BAD"


class ParseError(Bad):
    """The command line does not follow the grammar; the tag, when it was read."""

    def __init__(self, text: str, tag: bytes | None = None) -> None:
        super().__init__(text)
        self.tag = tag


class Bye(ImapError):
    """The server ends the connection after an untagged BYE."""

    condition = b"BYE"

    def response(self, tag: bytes | None) -> bytes:
        return super().response(None)


# -- refusals with a response code (RFC 5530, RFC 3501 7.1) ---------------------

class Cannot(No):
    code = "CANNOT"


class NonExistent(No):
    code = "NONEXISTENT"


class AlreadyExists(No):
    code = "ALREADYEXISTS"


class TryCreate(No):
    code = "TRYCREATE"


class PrivacyRequired(No):
    code = "PRIVACYREQUIRED"


class AuthenticationFailed(No):
    code = "AUTHENTICATIONFAILED"


class AuthorizationFailed(No):
    code = "AUTHORIZATIONFAILED"


class Unavailable(No):
    code = "UNAVAILABLE"


class Limit(No):
    code = "LIMIT"


class TooBig(No):
    code = "TOOBIG"


class ServerBug(No):
    code = "SERVERBUG"


class BadCharset(No):
    code = "BADCHARSET (UTF-8 US-ASCII)"


class ReadOnly(No):
    code = "READ-ONLY"


class NoPerm(No):
    code = "NOPERM"


class Overquota(No):
    code = "OVERQUOTA"


CODES: dict[type[ImapError], tuple[bytes, str | None]] = {
    cls: (cls.condition, cls.code)
    for cls in (No, Bad, ParseError, Bye, Cannot, NonExistent, AlreadyExists,
                TryCreate, PrivacyRequired, AuthenticationFailed,
                AuthorizationFailed, Unavailable, Limit, TooBig, ServerBug,
                BadCharset, ReadOnly, NoPerm, Overquota)
}

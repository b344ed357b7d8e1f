"""What FETCH and SEARCH most often ask of a message, kept beside it.

Clients list a mailbox by asking every message for its ENVELOPE, its
BODYSTRUCTURE or a few header fields, and search it by header fields. All of
that comes from the top-level header section and the MIME tree, so it is
rendered once, when a message is stored or first settled, and kept as a
summary sealed under the mailbox key like the message itself
(`mailbox_entries.summary`). Answering those items then opens a few hundred
bytes per message instead of the whole message.

A summary is binary, in this order: the version byte, a flags byte, the sent
day (the Date field's date in its own zone, as a proleptic ordinal, 0 when
the Date field is absent or unreadable), then ENVELOPE, BODYSTRUCTURE, BODY
and the header section, each as a 4-byte big-endian length and its bytes.
The header section is BODY[HEADER] as `render` gives it, kept up to
`MAX_HEADER` bytes; a longer one is left out (flag bit 0 clear), and items
that read it open the message instead.

`Summary` answers with the same methods, and so the same bytes, as
`render.Message`, for the items `covers` names; the values are rendered by
`render` in both cases, so the two can never disagree.
"""

from __future__ import annotations

import struct
from datetime import date

from beep_mail.imap import render
from beep_mail.imap.parser import BodySection, FetchItem

__all__ = ["MAX_HEADER", "Summary", "SummaryError", "build", "covers"]

VERSION = b"\x01"
MAX_HEADER = 64 * 1024
_HAS_HEADER = 0x01
_FIXED = struct.Struct(">cBI")  # version, flags, sent day
_LENGTH = struct.Struct(">I")

# FETCH attributes a summary answers; body sections are judged by `covers`.
_ITEMS = {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.HEADER",
          "UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"}


class SummaryError(Exception):
    """Stored summary bytes that do not parse: a fault, never a client's input."""


def build(raw: bytes) -> bytes:
    """The summary of a whole message."""
    message = render.Message(raw)
    sent = message.date()
    header = message.section("HEADER") or b""
    flags = 0
    if len(header) <= MAX_HEADER:
        flags |= _HAS_HEADER
    else:
        header = b""
    parts = (message.envelope(), message.bodystructure(extensible=True),
             message.bodystructure(extensible=False), header)
    out = [_FIXED.pack(VERSION, flags, sent.date().toordinal() if sent else 0)]
    for part in parts:
        out.append(_LENGTH.pack(len(part)))
        out.append(part)
    return b"".join(out)


def covers(items: tuple[FetchItem, ...], summary: Summary | None = None) -> bool:
    """Whether a summary answers all of these FETCH items."""
    for item in items:
        if isinstance(item, BodySection):
            spec = item.section.upper()
            if not (spec == "HEADER" or spec.startswith("HEADER.FIELDS")):
                return False
            if summary is not None and summary.header is None:
                return False
        elif item.name not in _ITEMS or (item.name == "RFC822.HEADER" and summary is not None
              and summary.header is None):
            return False
    return True


class Summary:
    """A parsed summary, answering like `render.Message` for what it keeps."""

    __slots__ = ("_body", "_envelope", "_head", "_structure", "header", "sent_day")

    def __init__(self, data: bytes) -> None:
        try:
            version, flags, day = _FIXED.unpack_from(data, 0)
            if version != VERSION:
                raise SummaryError(f"summary version {version!r} is unknown")
            fields: list[bytes] = []
            at = _FIXED.size
            for _ in range(4):
                (length,) = _LENGTH.unpack_from(data, at)
                at += _LENGTH.size
                if at + length > len(data):
                    raise SummaryError("summary is cut short")
                fields.append(data[at:at + length])
                at += length
        except struct.error:
            raise SummaryError("summary is cut short") from None
        self._envelope, self._structure, self._body, header = fields
        self.header: bytes | None = header if flags & _HAS_HEADER else None
        self.sent_day: date | None = date.fromordinal(day) if day else None
        self._head: render.Message | None = None

    def _header_message(self) -> render.Message:
        if self._head is None:
            if self.header is None:
                raise SummaryError("this summary keeps no header section")
            self._head = render.Message(self.header)
        return self._head

    def envelope(self) -> bytes:
        return self._envelope

    def bodystructure(self, extensible: bool = True) -> bytes:
        return self._structure if extensible else self._body

    def section(self, spec: str) -> bytes | None:
        """BODY[HEADER] and BODY[HEADER.FIELDS (...)] of the message."""
        return self._header_message().section(spec)

    def header_value(self, name: str) -> str | None:
        return self._header_message().header_value(name)

"""FETCH responses built from a message's stored facts and its parsed content.

Pure, so a batch of them can be built on a worker thread: the data items come
from `render.Message`, or from a message's `Summary` for the items it keeps;
this module only names them and frames them as RFC 3501, 7.4.2 says. Body
data always travels as a literal, whatever it holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from beep_mail.imap import render
from beep_mail.imap.parser import BodySection, FetchAtt, FetchItem
from beep_mail.imap.session import flag_list
from beep_mail.imap.summary import Summary
from beep_mail.store.mailstore import EntryMeta

# What answers a message's content items: the message, or its summary.
Readable = render.Message | Summary

_CONTENT = {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER",
            "RFC822.TEXT"}
# The items that set \Seen (RFC 3501, 6.4.5); RFC822.HEADER does not.
_SEEN = {"RFC822", "RFC822.TEXT"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def needs_message(items: tuple[FetchItem, ...]) -> bool:
    return any(isinstance(item, BodySection) or item.name in _CONTENT
               for item in items)


def marks_seen(items: tuple[FetchItem, ...]) -> bool:
    return any((isinstance(item, BodySection) and not item.peek)
               or (isinstance(item, FetchAtt) and item.name in _SEEN)
               for item in items)


def internal_date(timestamp: float) -> bytes:
    """The date-time of RFC 3501, 9, in UTC: "01-Feb-2024 13:45:00 +0000"."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return (f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} '
            f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000"').encode()


def _literal(data: bytes | None) -> bytes:
    if data is None:
        return b"NIL"
    return b"{%d}\r\n" % len(data) + data


def _section(message: Readable, spec: str) -> bytes | None:
    return message.section(spec)


def response(seq: int, meta: EntryMeta, message: Readable | None,
             items: tuple[FetchItem, ...], with_flags: bool = False,
             condstore: bool = False) -> bytes:
    """One `* n FETCH (...)` line, literals included.

    `with_flags`: the command set \\Seen, so FLAGS go along even if not asked
    for, and with CONDSTORE on, the new MODSEQ too (RFC 7162, 3.1.4).
    """
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, BodySection):
            assert message is not None
            data = _section(message, item.section)
            if data is not None and item.partial is not None:
                data = render.partial(data, item.partial[0], item.partial[1])
            parts.append(item.response_name() + b" " + _literal(data))
        else:
            parts.append(_attribute(item.name, meta, message))
    if with_flags:
        names = {item.name for item in items if isinstance(item, FetchAtt)}
        if "FLAGS" not in names:
            parts.append(b"FLAGS " + flag_list(meta.flags))
        if condstore and "MODSEQ" not in names:
            parts.append(b"MODSEQ (%d)" % meta.modseq)
    return b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"


def _attribute(name: str, meta: EntryMeta, message: Readable | None) -> bytes:
    label = name.encode("ascii")
    if name == "UID":
        return b"UID %d" % meta.uid
    if name == "FLAGS":
        return b"FLAGS " + flag_list(meta.flags)
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + internal_date(meta.internal_date)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % meta.size
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % meta.modseq
    assert message is not None
    if name == "ENVELOPE":
        return b"ENVELOPE " + message.envelope()
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + message.bodystructure(extensible=True)
    if name == "BODY":
        return b"BODY " + message.bodystructure(extensible=False)
    spec = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[name]
    return label + b" " + _literal(_section(message, spec))

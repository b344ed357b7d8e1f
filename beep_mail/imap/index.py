"""A mailbox's search index: the header fields SEARCH reads most, in few blobs.

Searching a mailbox by From, To, Cc, Bcc, Subject or Reply-To, or by the
date it was sent, would otherwise open one summary per message: ten thousand
decryptions for one search. The index keeps those fields, decoded (RFC 2047)
and case-folded as SEARCH compares them, for up to `CHUNK_UIDS` messages per
part, each part sealed under the mailbox key in one blob
(`search_chunks`). A search opens the parts and the summaries of only the
messages no part covers yet, then writes the parts it completed.

The index is a cache and never the truth. A UID names the same message for
as long as the mailbox's UIDVALIDITY stands, so a record is right for as long
as its message is there; the store deletes a part when any message it covers
leaves the mailbox (EXPUNGE, MOVE, deleting the mailbox or the user), and a
part that cannot be opened is rebuilt, never an error.

A part is UTF-8 text: the version, then one record per message, separated by
RS (U+001E); a record's units are separated by US (U+001F): the UID, the sent
day (a proleptic ordinal, empty when unknown), then one unit per name of
`FIELDS`, empty when the message has no such field and "=" and the folded
value when it has. A message whose values hold either separator is left out:
its summary answers for it.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol

from beep_mail.store.mailstore import CHUNK_UIDS

__all__ = ["CHUNK_UIDS", "FIELDS", "Indexed", "chunk_of", "parse", "record", "write"]

FIELDS = ("from", "to", "cc", "bcc", "subject", "reply-to")
_POSITION = {name: at for at, name in enumerate(FIELDS)}
VERSION = "beep-mail search index 1"
_RS = "\x1e"
_US = "\x1f"


class Source(Protocol):
    """What a record is made from: a summary, or the message itself."""

    def header_value(self, name: str) -> str | None: ...


class Indexed:
    """One message's record, answering SEARCH like a summary for `FIELDS`.

    Values come case-folded: `folded` tells the searcher not to fold again.
    """

    __slots__ = ("_units", "line", "sent_day")
    folded = True

    def __init__(self, line: str) -> None:
        self.line = line  # the record as stored, for writing its part again
        units = line.split(_US)
        if len(units) != len(FIELDS) + 2:
            raise ValueError("a search index record is malformed")
        self._units = units[2:]  # one per name of FIELDS, "=" before a value
        self.sent_day = date.fromordinal(int(units[1])) if units[1] else None

    def header_value(self, name: str) -> str | None:
        unit = self._units[_POSITION[name]]
        return unit[1:] if unit else None


def covers(name: str) -> bool:
    """Whether SEARCH on this header field (lower case) can read the index."""
    return name in _POSITION


def chunk_of(uid: int) -> int:
    return uid // CHUNK_UIDS


def record(uid: int, source: Source, sent_day: date | None) -> str | None:
    """The record of one message; None when it cannot be kept (see above)."""
    units = [str(uid), str(sent_day.toordinal()) if sent_day else ""]
    for name in FIELDS:
        value = source.header_value(name)
        units.append("" if value is None else "=" + value.casefold())
    text = _US.join(units)
    if text.count(_US) != len(units) - 1 or _RS in text:
        return None
    return text


def write(records: list[str]) -> bytes:
    """One part's plaintext."""
    return _RS.join([VERSION, *records]).encode("utf-8", "surrogatepass")


def parse(data: bytes) -> dict[int, str]:
    """The records of one part, by UID, as lines for `Indexed`.

    ValueError when it is not a part; a record is checked when it is read.
    """
    text = data.decode("utf-8", "surrogatepass")
    version, _, rest = text.partition(_RS)
    if version != VERSION:
        raise ValueError("not a search index part of a known version")
    found: dict[int, str] = {}
    separators = len(FIELDS) + 1
    for line in rest.split(_RS) if rest else ():
        if line.count(_US) != separators:
            raise ValueError("a search index record is malformed")
        found[int(line[:line.find(_US)])] = line
    return found

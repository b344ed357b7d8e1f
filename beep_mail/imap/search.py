"""SEARCH keys judged against one message at a time (RFC 3501, 6.4.4).

Pure: the caller gathers what a message offers (`Facts`) and opens its
content only when `needs` says a key reads it. Strings match as
case-insensitive substrings of the decoded text (RFC 2047 encoded words,
transfer encodings and charsets decoded by `render`). Dates compare by day,
without time or zone: the internal date in UTC, the Date field in its own
zone. RECENT and NEW never match, since this server gives no message the
\\Recent flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum

from beep_mail.imap import index, render
from beep_mail.imap.index import Indexed
from beep_mail.imap.parser import (
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchNothing,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchText,
    in_ranges,
)
from beep_mail.imap.summary import Summary

# Header fields whose decoded values TEXT also searches.
_TEXT_FIELDS = ("subject", "from", "to", "cc", "bcc", "reply-to")


@dataclass
class Facts:
    seq: int
    uid: int
    flags: set[str]
    internal_date: float
    size: int
    message: render.Message | Summary | Indexed | None = None
    modseq: int = 1


class Need(Enum):
    """What of a message a search reads, least first."""

    NOTHING = 0  # flags, sizes, dates, numbers: the entry's columns
    INDEX = 1  # the header fields of `index.FIELDS` and the sent date
    SUMMARY = 2  # other header fields: the summary
    MESSAGE = 3  # TEXT and BODY: the whole message


def leaves(key: SearchKey) -> Iterator[SearchKey]:
    """The keys under NOT, OR and the implied AND, each once."""
    if isinstance(key, SearchNot):
        yield from leaves(key.key)
    elif isinstance(key, SearchOr):
        yield from leaves(key.left)
        yield from leaves(key.right)
    elif isinstance(key, SearchAnd):
        for item in key.keys:
            yield from leaves(item)
    else:
        yield key


def needs(key: SearchKey) -> Need:
    return max((_need(leaf) for leaf in leaves(key)), key=lambda need: need.value,
               default=Need.NOTHING)


def _need(leaf: SearchKey) -> Need:
    if isinstance(leaf, SearchText):
        return Need.MESSAGE
    if isinstance(leaf, SearchHeader):
        return Need.INDEX if index.covers(leaf.field) else Need.SUMMARY
    if isinstance(leaf, SearchDate):
        return Need.INDEX if leaf.sent else Need.NOTHING
    return Need.NOTHING


def uses_modseq(key: SearchKey) -> bool:
    """Whether the search has a MODSEQ key, so its answer tells the highest one."""
    return any(isinstance(leaf, SearchModseq) for leaf in leaves(key))


def reads_columns(key: SearchKey) -> bool:
    """Whether the search reads flags, sizes, internal dates or mod-sequences."""
    return any(isinstance(leaf, SearchFlag | SearchSize | SearchModseq)
               or (isinstance(leaf, SearchDate) and not leaf.sent)
               for leaf in leaves(key))


def required_words(key: SearchKey) -> list[str]:
    """Folded strings that a message's index record holds if the key matches.

    A record that lacks one of them does not match, and is not judged
    further: the header keys a search must satisfy, each one of `FIELDS`
    whose value is found in that field's unit of the record.
    """
    if isinstance(key, SearchHeader) and index.covers(key.field) and key.value:
        return [_fold(key.value)]
    if isinstance(key, SearchAnd):
        return [word for item in key.keys for word in required_words(item)]
    return []


def _fold(text: str) -> str:
    return text.casefold()


def _compare(day: date | None, relation: str, wanted: date) -> bool:
    if day is None:
        return False
    if relation == "before":
        return day < wanted
    if relation == "on":
        return day == wanted
    return day >= wanted


class Searcher:
    """One SEARCH: sets resolved once, then `matches` per message."""

    def __init__(self, key: SearchKey, count: int, highest_uid: int) -> None:
        self.key = key
        self.count = count
        self.highest_uid = highest_uid
        self._ranges: dict[int, list[tuple[int, int]]] = {}

    def matches(self, facts: Facts) -> bool:
        return self._match(self.key, facts)

    def _match(self, key: SearchKey, facts: Facts) -> bool:
        if isinstance(key, SearchAnd):
            return all(self._match(item, facts) for item in key.keys)
        if isinstance(key, SearchOr):
            return self._match(key.left, facts) or self._match(key.right, facts)
        if isinstance(key, SearchNot):
            return not self._match(key.key, facts)
        if isinstance(key, SearchAll):
            return True
        if isinstance(key, SearchNothing):
            return False
        if isinstance(key, SearchFlag):
            return (key.flag in facts.flags) == key.present
        if isinstance(key, SearchSize):
            return facts.size > key.octets if key.larger else facts.size < key.octets
        if isinstance(key, SearchSet):
            return self._in_set(key, facts)
        if isinstance(key, SearchDate):
            return self._date(key, facts)
        if isinstance(key, SearchModseq):
            return facts.modseq >= key.modseq
        return self._text(key, facts)

    def _in_set(self, key: SearchSet, facts: Facts) -> bool:
        ranges = self._ranges.get(id(key))
        if ranges is None:
            ranges = key.numbers.resolve(self.highest_uid if key.uid else self.count)
            self._ranges[id(key)] = ranges
        return in_ranges(ranges, facts.uid if key.uid else facts.seq)

    def _date(self, key: SearchDate, facts: Facts) -> bool:
        if not key.sent:
            day = datetime.fromtimestamp(facts.internal_date, UTC).date()
            return _compare(day, key.relation, key.day)
        message = facts.message
        if isinstance(message, Summary | Indexed):
            return _compare(message.sent_day, key.relation, key.day)
        sent = message.date() if message is not None else None
        return _compare(sent.date() if sent else None, key.relation, key.day)

    def _text(self, key: SearchHeader | SearchText, facts: Facts) -> bool:
        message = facts.message
        if message is None:
            return False
        if isinstance(key, SearchHeader):
            value = message.header_value(key.field)
            if value is None:
                return False
            return _fold(key.value) in (value if isinstance(message, Indexed)
                                        else _fold(value))
        assert isinstance(message, render.Message)  # `needs` asked for the message
        wanted = _fold(key.value)
        if wanted in _fold(message.text_for_search()):
            return True
        if key.body_only:
            return False
        header = (message.section("HEADER") or b"").decode("utf-8", "replace")
        if wanted in _fold(header):
            return True
        return any(wanted in _fold(message.header_value(name) or "")
                   for name in _TEXT_FIELDS)

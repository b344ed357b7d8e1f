"""IMAP commands from bytes: the grammar of RFC 3501, section 9, and its extensions.

Pure: no I/O. The connection loop gathers one command, its lines and the
literals between them exactly as they arrived (`{n}` or `{n+}`, CRLF, n
octets), and `parse_command` turns that into one of the dataclasses below.
Anything that does not follow the grammar raises ParseError, which the loop
answers with a tagged BAD (untagged when not even the tag could be read).

Extensions read here: LITERAL+ (RFC 7888), UIDPLUS's UID EXPUNGE (RFC 4315),
MOVE (RFC 6851), IDLE (RFC 2177), NAMESPACE (RFC 2342), ID (RFC 2971), ENABLE
(RFC 5161), UNSELECT (RFC 3691), SASL-IR (RFC 4959), and the selection and
return options of LIST-EXTENDED (RFC 5258) that SPECIAL-USE (RFC 6154) and
CHILDREN (RFC 3348) clients send, although LIST-EXTENDED is not announced.

Bounds, so that no command costs more than its size: parentheses and SEARCH
keys nest at most MAX_DEPTH levels; a sequence set is kept as ranges, never
expanded (`1:4294967295` is one pair of numbers); numbers are 32 bits.
Deviations, for clients that do it: 8-bit octets are accepted in quoted
strings (SEARCH with CHARSET UTF-8), and command names and keywords in any case.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from beep_mail.imap.errors import ParseError

MAX_DEPTH = 16
MAX_NUMBER = 2**32 - 1
MAX_MODSEQ = 2**63 - 1  # RFC 7162: mod-sequences are 63-bit

# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ATOM = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
_ASTRING = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f-\xff]+')  # ] allowed
_LIST_CHARS = re.compile(rb'[^(){ "\\\x00-\x1f\x7f-\xff]+')  # % * ] allowed
_TAG = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+')
_NUMBER = re.compile(rb"[0-9]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+=*|=")
_SEQ = re.compile(rb"[0-9*:,]+")
_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,20})(\+?)\}\Z")

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN",
          "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

SYSTEM_FLAGS = {f.upper(): f for f in
                ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
RECENT = "\\Recent"


# -- what the connection loop needs before a command is whole -------------------

def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """(octets, non-synchronizing) when a line (without CRLF) ends in a literal."""
    found = _LITERAL_AT_END.search(line)
    if found is None:
        return None
    return int(found.group(1)), found.group(2) == b"+"


def command_head(line: bytes) -> tuple[bytes | None, str]:
    """The tag and the upper-case command name (with UID's second word), if readable."""
    parts = line.split(b" ", 3)
    tag = parts[0] if parts and _TAG.fullmatch(parts[0]) else None
    name = parts[1].upper().decode("ascii", "replace") if len(parts) > 1 else ""
    if name == "UID" and len(parts) > 2:
        name += " " + parts[2].upper().decode("ascii", "replace")
    return tag, name


# -- sequence sets ------------------------------------------------------------------

STAR = 0  # stands for "*" in a SequenceSet's ranges


@dataclass(frozen=True)
class SequenceSet:
    """A sequence set as written: ranges of numbers, STAR for "*"."""

    ranges: tuple[tuple[int, int], ...]

    def resolve(self, star: int) -> list[tuple[int, int]]:
        """Sorted, merged (low, high) ranges with "*" standing for `star`."""
        pairs = sorted((min(a, b), max(a, b)) for a, b in
                       ((star if lo == STAR else lo, star if hi == STAR else hi)
                        for lo, hi in self.ranges))
        merged: list[tuple[int, int]] = []
        for low, high in pairs:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        return merged

    def has_star(self) -> bool:
        return any(STAR in pair for pair in self.ranges)


def in_ranges(ranges: list[tuple[int, int]], number: int) -> bool:
    """Membership in resolved ranges, by bisection."""
    index = bisect_right(ranges, (number, MAX_NUMBER + 1)) - 1
    return index >= 0 and ranges[index][0] <= number <= ranges[index][1]


def format_set(numbers: list[int]) -> bytes:
    """Numbers (in the order given) as a compact set: 1:3,7 (for COPYUID)."""
    parts: list[bytes] = []
    index = 0
    while index < len(numbers):
        start = index
        while index + 1 < len(numbers) and numbers[index + 1] == numbers[index] + 1:
            index += 1
        if index > start:
            parts.append(b"%d:%d" % (numbers[start], numbers[index]))
        else:
            parts.append(b"%d" % numbers[start])
        index += 1
    return b",".join(parts)


# -- FETCH items ----------------------------------------------------------------------

@dataclass(frozen=True)
class FetchAtt:
    """A FETCH item without a section: FLAGS, UID, ENVELOPE, RFC822.TEXT, ..."""

    name: str


@dataclass(frozen=True)
class BodySection:
    """BODY[section]<partial> or BODY.PEEK[...]."""

    peek: bool
    section: str  # canonical text inside the brackets, as echoed back
    partial: tuple[int, int] | None = None

    def response_name(self) -> bytes:
        start = b"<%d>" % self.partial[0] if self.partial else b""
        return b"BODY[" + self.section.encode("ascii") + b"]" + start


FetchItem = FetchAtt | BodySection

_SIMPLE_ATTS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
                "MODSEQ"}
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


# -- SEARCH keys ----------------------------------------------------------------------

@dataclass(frozen=True)
class SearchAll:
    pass


@dataclass(frozen=True)
class SearchNothing:
    """RECENT and NEW: this server gives no message the \\Recent flag."""


@dataclass(frozen=True)
class SearchFlag:
    flag: str
    present: bool


@dataclass(frozen=True)
class SearchDate:
    sent: bool  # the Date field (SENT*), else the internal date
    relation: str  # "before", "on", "since"
    day: date


@dataclass(frozen=True)
class SearchSize:
    larger: bool
    octets: int


@dataclass(frozen=True)
class SearchHeader:
    field: str  # lower case
    value: str


@dataclass(frozen=True)
class SearchText:
    value: str
    body_only: bool  # BODY, else TEXT (header and body)


@dataclass(frozen=True)
class SearchSet:
    numbers: SequenceSet
    uid: bool


@dataclass(frozen=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchModseq:
    """MODSEQ (RFC 7162, 3.1.5): changed at or after this mod-sequence.

    The optional entry name and type are read and not used: this server
    keeps one mod-sequence per message, not one per flag.
    """

    modseq: int


SearchKey = (SearchAll | SearchNothing | SearchFlag | SearchDate | SearchSize
             | SearchHeader | SearchText | SearchSet | SearchNot | SearchOr | SearchAnd
             | SearchModseq)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_DATE_KEYS = {
    "BEFORE": (False, "before"), "ON": (False, "on"), "SINCE": (False, "since"),
    "SENTBEFORE": (True, "before"), "SENTON": (True, "on"),
    "SENTSINCE": (True, "since"),
}


# -- commands -------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    tag: bytes
    name: str


@dataclass(frozen=True)
class Login(Command):
    user: bytes
    password: bytes


@dataclass(frozen=True)
class Authenticate(Command):
    mechanism: str
    initial: bytes | None  # SASL-IR; b"=" for an empty one


@dataclass(frozen=True)
class MailboxCommand(Command):
    """SELECT, EXAMINE, CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    mailbox: bytes
    condstore: bool = False  # SELECT or EXAMINE with the CONDSTORE parameter


@dataclass(frozen=True)
class Rename(Command):
    old: bytes
    new: bytes


@dataclass(frozen=True)
class List(Command):
    reference: bytes
    patterns: tuple[bytes, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    extended: bool = False


@dataclass(frozen=True)
class Status(Command):
    mailbox: bytes
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append(Command):
    mailbox: bytes
    flags: tuple[str, ...]
    date: datetime | None
    message: bytes


@dataclass(frozen=True)
class Search(Command):
    uid: bool
    charset: str | None
    key: SearchKey


@dataclass(frozen=True)
class Fetch(Command):
    uid: bool
    numbers: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None  # the CHANGEDSINCE modifier (CONDSTORE)


@dataclass(frozen=True)
class Store(Command):
    uid: bool
    numbers: SequenceSet
    mode: str  # "", "+" or "-"
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None  # the UNCHANGEDSINCE modifier (CONDSTORE)


@dataclass(frozen=True)
class Copy(Command):
    """COPY and MOVE, with or without UID."""

    uid: bool
    numbers: SequenceSet
    mailbox: bytes


@dataclass(frozen=True)
class UidExpunge(Command):
    numbers: SequenceSet


@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id(Command):
    parameters: tuple[tuple[str, str | None], ...] | None = field(default=None)


# Commands of extensions this server does not offer (docs/limitations.md):
# recognised, so that they are refused with NO [CANNOT] rather than BAD.
NOT_OFFERED = {"SORT", "THREAD", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "GETACL",
               "SETACL", "DELETEACL", "LISTRIGHTS", "MYRIGHTS", "GETMETADATA",
               "SETMETADATA", "COMPRESS", "NOTIFY", "XLIST", "ESEARCH", "CONVERSIONS",
               "URLFETCH", "GENURLAUTH", "RESETKEY", "REPLACE"}

SIMPLE = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
          "UNSELECT", "EXPUNGE", "IDLE", "NAMESPACE"}


# -- the reader -----------------------------------------------------------------------

class _Reader:
    """A cursor over one command's bytes, literals included."""

    def __init__(self, data: bytes, tag: bytes | None = None) -> None:
        self.data = data
        self.pos = 0
        self.tag = tag

    def fail(self, text: str) -> ParseError:
        return ParseError(text, self.tag)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("Unexpected text at the end of the command")

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.fail("Expected a space")
        self.pos += 1

    def maybe_space(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def char(self, wanted: bytes) -> None:
        if self.data[self.pos : self.pos + 1] != wanted:
            raise self.fail(f"Expected {wanted.decode()!r}")
        self.pos += 1

    def take(self, wanted: bytes) -> bool:
        if self.data.startswith(wanted, self.pos):
            self.pos += len(wanted)
            return True
        return False

    def _match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        found = pattern.match(self.data, self.pos)
        if found is None:
            raise self.fail(f"Expected {what}")
        self.pos = found.end()
        return found.group()

    def atom(self) -> bytes:
        return self._match(_ATOM, "an atom")

    def keyword(self) -> str:
        return self.atom().upper().decode("ascii")

    def number(self, nonzero: bool = False) -> int:
        value = int(self._match(_NUMBER, "a number"))
        if value > MAX_NUMBER or (nonzero and value == 0):
            raise self.fail("Number out of range")
        return value

    def modseq(self) -> int:
        """A mod-sequence value; 0 is allowed where RFC 7162 allows it too."""
        value = int(self._match(_NUMBER, "a mod-sequence"))
        if value > MAX_MODSEQ:
            raise self.fail("Mod-sequence out of range")
        return value

    def modifier(self, name: str) -> int | None:
        """` (NAME n)` after a sequence set or item list, if there is one."""
        if self.data[self.pos : self.pos + 2] != b" (":
            return None
        self.pos += 2
        if self.keyword() != name:
            raise self.fail(f"The only modifier here is {name}")
        self.space()
        value = self.modseq()
        self.char(b")")
        return value

    def quoted(self) -> bytes:
        self.char(b'"')
        out = bytearray()
        while True:
            byte = self.peek()
            if byte is None or byte in (0x0D, 0x0A, 0x00):
                raise self.fail("Unterminated quoted string")
            self.pos += 1
            if byte == 0x22:
                return bytes(out)
            if byte == 0x5C:
                escaped = self.peek()
                if escaped not in (0x22, 0x5C):
                    raise self.fail("Only \\\\ and \\\" may be escaped in a "
                                    "quoted string")
                self.pos += 1
                out.append(escaped)
            else:
                out.append(byte)

    def literal(self) -> bytes:
        self.char(b"{")
        size = int(self._match(_NUMBER, "a literal's size"))
        self.take(b"+")
        self.char(b"}")
        if not self.take(b"\r\n"):
            raise self.fail("A literal's size must end its line")
        if self.pos + size > len(self.data):
            raise self.fail("Literal shorter than announced")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> bytes:
        byte = self.peek()
        if byte == 0x22:
            return self.quoted()
        if byte == 0x7B:
            return self.literal()
        raise self.fail("Expected a string")

    def astring(self) -> bytes:
        byte = self.peek()
        if byte in (0x22, 0x7B):
            return self.string()
        return self._match(_ASTRING, "a string or atom")

    def nstring(self) -> bytes | None:
        if self.data[self.pos : self.pos + 3].upper() == b"NIL":
            after = self.data[self.pos + 3 : self.pos + 4]
            if not after or after[0] in _ATOM_SPECIALS:
                self.pos += 3
                return None
        return self.string()

    def list_mailbox(self) -> bytes:
        byte = self.peek()
        if byte in (0x22, 0x7B):
            return self.string()
        return self._match(_LIST_CHARS, "a mailbox pattern")

    def sequence_set(self) -> SequenceSet:
        text = self._match(_SEQ, "a sequence set")
        ranges: list[tuple[int, int]] = []
        for item in text.split(b","):
            ends = item.split(b":")
            if len(ends) > 2 or not all(ends):
                raise self.fail("Invalid sequence set")
            numbers = [self._seq_number(end) for end in ends]
            ranges.append((numbers[0], numbers[-1]))
        return SequenceSet(tuple(ranges))

    def _seq_number(self, text: bytes) -> int:
        if text == b"*":
            return STAR
        if not text.isdigit() or len(text) > 10:
            raise self.fail("Invalid sequence set")
        value = int(text)
        if value == 0 or value > MAX_NUMBER:
            raise self.fail("Invalid sequence set: numbers run from 1 to 4294967295")
        return value

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                raise self.fail("\\* is not a flag")
            name = "\\" + self.atom().decode("ascii")
            canonical = SYSTEM_FLAGS.get(name.upper())
            if canonical is None:
                if name.upper() == RECENT.upper():
                    return RECENT
                raise self.fail(f"Unknown system flag {name}")
            return canonical
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        self.char(b"(")
        flags: list[str] = []
        while not self.take(b")"):
            if flags:
                self.space()
            flags.append(self.flag())
        return tuple(flags)

    def day(self) -> date:
        quoted = self.take(b'"')
        found = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})").match(
            self.data, self.pos)
        if found is None:
            raise self.fail("Expected a date like 1-Feb-2024")
        self.pos = found.end()
        if quoted:
            self.char(b'"')
        return self._make_date(found.group(1), found.group(2), found.group(3))

    def _make_date(self, day: bytes, month: bytes, year: bytes) -> date:
        name = month.decode("ascii").upper()
        if name not in MONTHS:
            raise self.fail("Unknown month in a date")
        try:
            return date(int(year), MONTHS.index(name) + 1, int(day))
        except ValueError:
            raise self.fail("No such date") from None

    def date_time(self) -> datetime:
        found = re.compile(
            rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2})'
            rb' ([+-])([0-9]{2})([0-9]{2})"').match(self.data, self.pos)
        if found is None:
            raise self.fail('Expected a date-time like "01-Feb-2024 13:45:00 +0100"')
        self.pos = found.end()
        day = self._make_date(found.group(1).strip(), found.group(2), found.group(3))
        hour, minute, second = (int(found.group(n)) for n in (4, 5, 6))
        offset = timedelta(hours=int(found.group(8)), minutes=int(found.group(9)))
        latest = timedelta(hours=23, minutes=59)
        if hour > 23 or minute > 59 or second > 60 or offset > latest:
            raise self.fail("No such time")
        zone = timezone(-offset if found.group(7) == b"-" else offset)
        return datetime(day.year, day.month, day.day, hour, minute, min(second, 59),
                        tzinfo=zone)


# -- commands, one function each ---------------------------------------------------

def parse_command(data: bytes) -> Command:
    """One command: its lines without the final CRLF, literals inline."""
    token = data.split(b" ", 1)[0]
    if not _TAG.fullmatch(token):
        raise ParseError("Expected a tag, then a command")
    reader = _Reader(data, token)
    reader.pos = len(token)
    tag = token
    reader.space()
    name = reader.keyword()
    if name == "UID":
        reader.space()
        return _uid_command(reader, tag, reader.keyword())
    parse = _PARSERS.get(name)
    if parse is None:
        if name in NOT_OFFERED:
            return Command(tag, name)  # its arguments do not matter
        if name in SIMPLE:
            reader.end()
            return Command(tag, name)
        raise reader.fail(f"Unknown command {name[:30]}")
    command = parse(reader, tag, name)
    reader.end()
    return command


def _uid_command(reader: _Reader, tag: bytes, name: str) -> Command:
    command: Command
    parse = _UID_PARSERS.get(name)
    if name in NOT_OFFERED:
        return Command(tag, f"UID {name}")
    if parse is not None:
        command = parse(reader, tag, name, True)
    elif name == "EXPUNGE":
        reader.space()
        command = UidExpunge(tag, "UID EXPUNGE", reader.sequence_set())
    else:
        raise reader.fail(f"Unknown UID command {name[:30]}")
    reader.end()
    return command


def _login(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    user = reader.astring()
    reader.space()
    return Login(tag, name, user, reader.astring())


def _authenticate(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    mechanism = reader.keyword()
    initial = None
    if reader.maybe_space():
        initial = reader._match(_BASE64, "an initial response")
    return Authenticate(tag, name, mechanism, initial)


def _mailbox(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    mailbox = reader.astring()
    condstore = False
    if name in ("SELECT", "EXAMINE") and reader.maybe_space():
        # RFC 4466 select parameters: CONDSTORE is the one this server knows.
        if _options(reader) != {"CONDSTORE"}:
            raise reader.fail(f"{name} takes no parameter but CONDSTORE here")
        condstore = True
    return MailboxCommand(tag, name, mailbox, condstore)


def _rename(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    old = reader.astring()
    reader.space()
    return Rename(tag, name, old, reader.astring())


def _options(reader: _Reader) -> frozenset[str]:
    reader.char(b"(")
    options: set[str] = set()
    while not reader.take(b")"):
        if options:
            reader.space()
        options.add(reader.keyword())
    return frozenset(options)


def _list(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    selection: frozenset[str] = frozenset()
    extended = False
    if name == "LIST" and reader.peek() == 0x28:
        selection, extended = _options(reader), True
        reader.space()
    reference = reader.list_mailbox()
    reader.space()
    if name == "LIST" and reader.peek() == 0x28:
        reader.char(b"(")
        patterns: list[bytes] = []
        while not reader.take(b")"):
            if patterns:
                reader.space()
            patterns.append(reader.list_mailbox())
        extended = True
    else:
        patterns = [reader.list_mailbox()]
    returns: frozenset[str] = frozenset()
    if name == "LIST" and reader.maybe_space():
        if reader.keyword() != "RETURN":
            raise reader.fail("Expected RETURN")
        reader.space()
        returns, extended = _options(reader), True
    known_selection = {"SUBSCRIBED", "SPECIAL-USE", "RECURSIVEMATCH", "REMOTE"}
    known_returns = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"}
    if not selection <= known_selection or not returns <= known_returns:
        raise reader.fail("Unsupported LIST option")
    if "RECURSIVEMATCH" in selection and len(selection) == 1:
        raise reader.fail("RECURSIVEMATCH needs another selection option")
    return List(tag, name, reference, tuple(patterns), selection, returns, extended)


_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                 "HIGHESTMODSEQ")


def _status(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    mailbox = reader.astring()
    reader.space()
    items = _options(reader)
    if not items or not items <= set(_STATUS_ITEMS):
        raise reader.fail("STATUS items are " + " ".join(_STATUS_ITEMS))
    order = tuple(item for item in _STATUS_ITEMS if item in items)
    return Status(tag, name, mailbox, order)


def _append(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    mailbox = reader.astring()
    reader.space()
    flags: tuple[str, ...] = ()
    when: datetime | None = None
    if reader.peek() == 0x28:
        flags = reader.flag_list()
        reader.space()
    if reader.peek() == 0x22:
        when = reader.date_time()
        reader.space()
    if reader.peek() != 0x7B:
        raise reader.fail("APPEND needs the message as a literal")
    if RECENT in flags:
        raise reader.fail("\\Recent cannot be set")
    return Append(tag, name, mailbox, flags, when, reader.literal())


def _fetch(reader: _Reader, tag: bytes, name: str, uid: bool = False) -> Command:
    reader.space()
    numbers = reader.sequence_set()
    reader.space()
    items: list[FetchItem] = []
    if reader.peek() == 0x28:
        reader.char(b"(")
        while not reader.take(b")"):
            if items:
                reader.space()
            items.append(_fetch_att(reader))
        if not items:
            raise reader.fail("Empty FETCH item list")
    else:
        found = _ATOM.match(reader.data, reader.pos)
        macro = _MACROS.get(found.group().upper().decode("ascii")) if found else None
        if found is not None and macro is not None:
            reader.pos = found.end()
            items = [FetchAtt(item) for item in macro]
        else:
            items.append(_fetch_att(reader))
    changed_since = reader.modifier("CHANGEDSINCE")
    return Fetch(tag, "UID FETCH" if uid else name, uid, numbers, tuple(items),
                 changed_since)


_SECTION_WORD = re.compile(rb"[A-Za-z.]+")


def _fetch_att(reader: _Reader) -> FetchItem:
    found = re.compile(rb"[A-Za-z0-9.]+").match(reader.data, reader.pos)
    if found is None:
        raise reader.fail("Expected a FETCH item")
    reader.pos = found.end()
    word = found.group().upper().decode("ascii")
    if word in ("BODY", "BODY.PEEK") and reader.peek() == 0x5B:
        reader.char(b"[")
        section = _section(reader)
        reader.char(b"]")
        partial = None
        if reader.take(b"<"):
            start = reader.number()
            reader.char(b".")
            count = reader.number(nonzero=True)
            reader.char(b">")
            partial = (start, count)
        return BodySection(word == "BODY.PEEK", section, partial)
    if word not in _SIMPLE_ATTS:
        raise reader.fail(f"Unknown FETCH item {word[:30]}")
    return FetchAtt(word)


def _section(reader: _Reader) -> str:
    """The text inside BODY[...], checked and put in canonical form."""
    parts: list[str] = []
    while _NUMBER.match(reader.data, reader.pos):
        parts.append(str(reader.number(nonzero=True)))
        if not reader.take(b"."):
            return ".".join(parts)
        if len(parts) > MAX_DEPTH * 4:
            raise reader.fail("Section nested too deep")
    if reader.peek() == 0x5D:
        if parts:
            raise reader.fail("A section cannot end with a dot")
        return ""
    text = reader._match(_SECTION_WORD, "a section").upper().decode("ascii")
    allowed = {"HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"}
    if parts:
        allowed.add("MIME")
    if text not in allowed:
        raise reader.fail(f"Unknown section {text[:30]}")
    if text.startswith("HEADER.FIELDS"):
        reader.space()
        reader.char(b"(")
        names: list[str] = []
        while not reader.take(b")"):
            if names:
                reader.space()
            field_name = reader.astring()
            if not field_name or not re.fullmatch(rb"[!-9;-~]+", field_name):
                raise reader.fail("Invalid header field name")
            names.append(_section_atom(field_name.upper().decode("ascii")))
        if not names:
            raise reader.fail("Empty header field list")
        text = f"{text} ({' '.join(names)})"
    return ".".join([*parts, text])


def _section_atom(name: str) -> str:
    if _ATOM.fullmatch(name.encode("ascii")):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _store(reader: _Reader, tag: bytes, name: str, uid: bool = False) -> Command:
    reader.space()
    numbers = reader.sequence_set()
    unchanged_since = reader.modifier("UNCHANGEDSINCE")
    reader.space()
    found = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE).match(
        reader.data, reader.pos)
    if found is None:
        raise reader.fail("Expected FLAGS, +FLAGS or -FLAGS")
    reader.pos = found.end()
    reader.space()
    if reader.peek() == 0x28:
        flags = reader.flag_list()
    else:
        items = [reader.flag()]
        while reader.maybe_space():
            items.append(reader.flag())
        flags = tuple(items)
    if RECENT in flags:
        raise reader.fail("\\Recent cannot be stored")
    return Store(tag, "UID STORE" if uid else name, uid, numbers,
                 found.group(1).decode("ascii"), bool(found.group(2)), flags,
                 unchanged_since)


def _copy(reader: _Reader, tag: bytes, name: str, uid: bool = False) -> Command:
    reader.space()
    numbers = reader.sequence_set()
    reader.space()
    return Copy(tag, f"UID {name}" if uid else name, uid, numbers, reader.astring())


def _search(reader: _Reader, tag: bytes, name: str, uid: bool = False) -> Command:
    reader.space()
    charset = None
    if reader.data[reader.pos : reader.pos + 8].upper() == b"CHARSET ":
        reader.pos += 8
        charset = reader.astring().decode("ascii", "replace").upper()
        reader.space()
    keys = [_search_key(reader, 0)]
    while reader.maybe_space():
        keys.append(_search_key(reader, 0))
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(tag, "UID SEARCH" if uid else name, uid, charset, key)


def _search_key(reader: _Reader, depth: int) -> SearchKey:
    if depth > MAX_DEPTH:
        raise reader.fail("Search keys nested too deep")
    byte = reader.peek()
    if byte == 0x28:
        reader.char(b"(")
        keys = [_search_key(reader, depth + 1)]
        while not reader.take(b")"):
            reader.space()
            keys.append(_search_key(reader, depth + 1))
        return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    if byte is not None and (0x30 <= byte <= 0x39 or byte == 0x2A):
        return SearchSet(reader.sequence_set(), uid=False)
    word = reader.keyword()
    return _keyword_search(reader, word, depth)


def _text(reader: _Reader) -> str:
    return reader.astring().decode("utf-8", "replace")


def _keyword_search(reader: _Reader, word: str, depth: int) -> SearchKey:
    if word == "ALL" or word == "OLD":
        return SearchAll()
    if word in ("NEW", "RECENT"):
        return SearchNothing()
    if word in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[word]
        return SearchFlag(flag, present)
    reader.space()
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchFlag(reader.atom().decode("ascii"), word == "KEYWORD")
    if word in _HEADER_KEYS:
        return SearchHeader(word.lower(), _text(reader))
    if word == "HEADER":
        field_name = reader.astring().decode("ascii", "replace").lower()
        reader.space()
        return SearchHeader(field_name, _text(reader))
    if word in ("BODY", "TEXT"):
        return SearchText(_text(reader), body_only=word == "BODY")
    if word in _DATE_KEYS:
        sent, relation = _DATE_KEYS[word]
        return SearchDate(sent, relation, reader.day())
    if word in ("LARGER", "SMALLER"):
        return SearchSize(word == "LARGER", reader.number())
    if word == "UID":
        return SearchSet(reader.sequence_set(), uid=True)
    if word == "MODSEQ":
        if reader.peek() == 0x22:  # an entry name and its type: read, not used
            reader.quoted()
            reader.space()
            if reader.keyword() not in ("PRIV", "SHARED", "ALL"):
                raise reader.fail("The entry type is priv, shared or all")
            reader.space()
        return SearchModseq(reader.modseq())
    if word == "NOT":
        return SearchNot(_search_key(reader, depth + 1))
    if word == "OR":
        left = _search_key(reader, depth + 1)
        reader.space()
        return SearchOr(left, _search_key(reader, depth + 1))
    raise reader.fail(f"Unknown search key {word[:30]}")


def _enable(reader: _Reader, tag: bytes, name: str) -> Command:
    capabilities = []
    while reader.maybe_space():
        capabilities.append(reader.keyword())
    if not capabilities:
        raise reader.fail("ENABLE needs at least one capability")
    return Enable(tag, name, tuple(capabilities))


def _id(reader: _Reader, tag: bytes, name: str) -> Command:
    reader.space()
    if reader.take(b"NIL") or reader.take(b"nil"):
        return Id(tag, name, None)
    reader.char(b"(")
    pairs: list[tuple[str, str | None]] = []
    while not reader.take(b")"):
        if pairs:
            reader.space()
        key = reader.string().decode("utf-8", "replace")
        reader.space()
        value = reader.nstring()
        pairs.append((key[:30], None if value is None
                      else value.decode("utf-8", "replace")[:1024]))
        if len(pairs) > 30:
            raise reader.fail("ID takes at most 30 pairs")
    return Id(tag, name, tuple(pairs))


_PARSERS: dict[str, Callable[[_Reader, bytes, str], Command]] = {
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "SELECT": _mailbox,
    "EXAMINE": _mailbox,
    "CREATE": _mailbox,
    "DELETE": _mailbox,
    "SUBSCRIBE": _mailbox,
    "UNSUBSCRIBE": _mailbox,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
    "ENABLE": _enable,
    "ID": _id,
}

_UID_PARSERS: dict[str, Callable[[_Reader, bytes, str, bool], Command]] = {
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
}

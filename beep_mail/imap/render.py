"""Message data for FETCH and SEARCH, rendered from a message's bytes.

Pure functions and one class, `Message`, over a message as it is stored (RFC 5322
with MIME, RFC 2045 and RFC 2046); nothing here does I/O. What they produce is IMAP
wire syntax (RFC 3501, section 7.4.2):

- `Message.envelope` gives ENVELOPE from the top-level header section alone, so a
  `FETCH 1:* ENVELOPE` over a large mailbox never walks a MIME tree.
- `Message.bodystructure` gives BODYSTRUCTURE, or BODY without extension data,
  and `Message.section` the contents of BODY[section] (section 6.4.5). Both read
  one tree of byte offsets, built on first use by our own splitter: a section is
  a slice of the stored bytes, exactly as sent, which a parser that re-serialises
  (the stdlib's email package) cannot promise.
- `Message.header_value`, `Message.text_for_search` and `Message.date` decode what
  SEARCH compares: RFC 2047 encoded words, transfer encodings and charsets.
- `quote` writes an nstring; `partial` cuts a `<start.count>` substring.

Decisions where the RFCs leave room, or where we deviate:

- Encoded words (RFC 2047) and RFC 2231 parameters are passed through as sent:
  `filename*=utf-8''...` is the parameter `FILENAME*`, and decoding is the
  client's work, as RFC 3501 expects of ENVELOPE and BODYSTRUCTURE.
- Media types, subtypes, transfer encodings, disposition types and parameter
  names are sent upper-case, as in RFC 3501's examples; values as in the message.
- A string holding CR, LF, a double quote, a backslash or an 8-bit byte is sent as
  a literal rather than an escaped quoted string; a NUL, which no IMAP string may
  carry, is dropped.
- Malformed MIME never raises. A Content-Type that does not parse, or a multipart
  without a boundary or without a single delimiter line, is read as text/plain in
  US-ASCII, the default of RFC 2045, section 5.2. A part with no Content-Type is
  text/plain, or message/rfc822 inside multipart/digest (RFC 2046, 5.1.5).
- Nesting is bounded: a multipart or message/rfc822 more than `MAX_DEPTH` levels
  down is an opaque application/octet-stream leaf, and so is a multipart whose
  parts would take the message past `MAX_PARTS`. SMTP already refuses more than
  50 levels and 1,000 parts, but APPEND stores whatever a client sends. For the
  same reason the fields of a header section are read from its first MiB (HEADER
  still returns all of it), and an address list that needs the full RFC 5322
  parser from its first 64 KiB, cut after an address.
- HEADER, HEADER.FIELDS and MIME end with the empty line that ends the header
  section, unless the message has none (RFC 3501, 6.4.5); HEADER.FIELDS keeps
  the fields' lines as sent, folding included, in the message's order.
- A message/rfc822 part in base64 or quoted-printable, which RFC 2046 forbids, is
  an opaque application/octet-stream leaf too: its envelope cannot be read.
- An address without a domain gets the host `.MISSING-HOST-NAME.`, the value
  clients know from older servers: a NIL host would announce a group.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple

__all__ = ["MAX_DEPTH", "MAX_PARTS", "Message", "partial", "quote"]

MAX_DEPTH = 100  # multipart and message/rfc822 levels read; deeper ones are opaque
MAX_PARTS = 10_000  # entities read in one message; a multipart past it is opaque
# Bounds on the work one field can cost, whatever APPEND stored: the fields of a
# header section are read from its first MiB (HEADER still returns all of it),
# and an address list that needs the full parser from its first 64 KiB.
_MAX_FIELD_BYTES = 1 << 20
_MAX_PARSED_ADDRESSES = 64 << 10

_MISSING_HOST = b".MISSING-HOST-NAME."
_NIL = b"NIL"

# A quoted string may carry none of these (RFC 3501, section 9: QUOTED-CHAR).
_NEEDS_LITERAL = re.compile(rb'[\r\n"\\\x80-\xff]')
# A field is its first line and every line after it that begins with white space;
# its name is printable US-ASCII but the colon (RFC 5322, 2.2 and 3.6.8).
# Group 1 is the name when the line starts a field.
_FIELD = re.compile(rb"(?:([\x21-\x39\x3b-\x7e]+)[ \t]*:)?[^\n]*(?:\n[ \t][^\n]*)*\n?")
_BLANK_AFTER_LINE = re.compile(rb"\n(\r?\n)")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_DELIMITER_TAIL = re.compile(rb"[ \t]*\r?(?:\n|\Z)")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.0-9A-Za-z^_`{|}~]+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_SEMICOLON_PIECES = re.compile(r'"(?:[^"\\]|\\.)*"?|[^";]+|;', re.DOTALL)
_COMMENT_PIECES = re.compile(r'"(?:[^"\\]|\\.)*"?|[^"(]+|\(', re.DOTALL)
# RFC 5322 lexical tokens; "(" opens a comment, read apart as comments nest.
_WORDS = re.compile(
    r"(?P<space>[ \t\r\n]+)"
    r'|(?P<quoted>"(?:[^"\\]|\\.)*"?)'
    r"|(?P<literal>\[(?:[^\]\\]|\\.)*\]?)"
    r'|(?P<atom>[^ \t\r\n()<>\[\]:;@\\,."]+)'
    r"|(?P<special>.)",
    re.DOTALL,
)
# Address lists _simple_addresses reads: no quotes, comments, groups, routes or
# domain literals, and no white space that bytes.split knows but RFC 5322 does not.
_SIMPLE_LIST = re.compile(rb'[^"()\[\]\\:;\x0b\x0c]*')
# No two neighbouring repeats here can take the same byte, so a failed match
# costs one pass over the item, never a pass per starting point.
_SIMPLE_ADDRESS = re.compile(
    rb"([^<>@]*)<([^<>@ \t\r\n]+)@([^<>@ \t\r\n]+)>[ \t\r\n]*"
    rb"|[ \t\r\n]*([^<>@ \t\r\n]+)@([^<>@ \t\r\n]+)[ \t\r\n]*"
)
_SECTION_PATH = re.compile(r"([1-9][0-9]{0,8})(\.|$)")
_FIELD_LIST = re.compile(r"HEADER\.FIELDS(\.NOT)?\s*\((.*)\)", re.DOTALL)
_FIELD_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)', re.DOTALL)


# --- wire strings ----------------------------------------------------------------


def quote(value: bytes | str | None) -> bytes:
    """Write `value` as an nstring: NIL, a quoted string or a literal."""
    if value is None:
        return _NIL
    data = value.encode() if isinstance(value, str) else value
    if b"\0" in data:
        data = data.replace(b"\0", b"")
    if _NEEDS_LITERAL.search(data):
        return b"{%d}\r\n%s" % (len(data), data)
    return b'"' + data + b'"'


def partial(data: bytes, start: int, count: int | None) -> bytes:
    """Cut the substring a `<start.count>` fetch asks for (RFC 3501, 6.4.5).

    A start beyond the end gives an empty string, and a count reaching past the
    end is truncated; a count of None means to the end.
    """
    start = max(start, 0)
    if count is None:
        return data[start:]
    return data[start : start + max(count, 0)]


# --- header sections -------------------------------------------------------------


class _Field(NamedTuple):
    """One header field as sent: its lines, folding included."""

    name: bytes  # lower-case; empty for a line that is not a field
    raw: bytes


class _Header:
    """A header section: where it lies, its fields, and where the body starts.

    Fields are found as they are asked for: `first` and `lines_of` search the
    section for the names they want, and only `fields` splits all of it. A
    section starts at the start of the message or just after a line end, so
    `^` in the patterns below finds exactly the lines that start a field.
    """

    __slots__ = ("_fields", "_firsts", "blank", "body", "raw", "start", "stop")

    def __init__(self, raw: bytes, start: int, stop: int, body: int, blank: bool) -> None:
        self.raw = raw
        self.start = start
        self.stop = stop  # where its fields end: the empty line, or a bound
        self.body = body  # first byte after the empty line, or the end when there is none
        self.blank = blank  # whether an empty line ends the section
        self._fields: tuple[_Field, ...] | None = None
        self._firsts: dict[bytes, bytes | None] = {}

    @property
    def fields(self) -> tuple[_Field, ...]:
        """Every line of the section, as fields (see `_split_fields`)."""
        if self._fields is None:
            self._fields = _split_fields(self.raw, self.start, self.stop)
        return self._fields

    def first(self, name: bytes) -> bytes | None:
        """The unfolded value of the first field called `name` (lower-case)."""
        if name in self._firsts:
            return self._firsts[name]
        value = None
        if _NAME_ONLY.fullmatch(name):
            found = _first_pattern(name).search(self.raw, self.start, self.stop)
            if found is not None:
                value = _FOLD.sub(b"", found.group(1)).strip(b" \t\r\n")
        self._firsts[name] = value
        return value

    def lines_of(self, names: frozenset[bytes]) -> list[bytes]:
        """The fields called one of `names`, as sent, in the message's order."""
        pattern = _fields_pattern(names)
        if pattern is None:
            return []
        return pattern.findall(self.raw, self.start, self.stop)


_NAME_ONLY = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


@lru_cache(maxsize=256)
def _first_pattern(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"^" + re.escape(name) + rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
                      re.MULTILINE | re.IGNORECASE)


@lru_cache(maxsize=256)
def _fields_pattern(names: frozenset[bytes]) -> re.Pattern[bytes] | None:
    """None when no name could be a field's: such names match nothing."""
    valid = sorted(name for name in names if _NAME_ONLY.fullmatch(name))
    if not valid:
        return None
    alternatives = b"|".join(re.escape(name) for name in valid)
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?",
                      re.MULTILINE | re.IGNORECASE)


def _read_header(raw: bytes, start: int, end: int) -> _Header:
    """Read the header section that begins at `start`, within `end`."""
    if raw.startswith(b"\r\n", start, end) or raw.startswith(b"\n", start, end):
        stop, body, blank = start, start + (2 if raw[start] == 0x0D else 1), True
    elif match := _BLANK_AFTER_LINE.search(raw, start, end):
        stop, body, blank = match.start() + 1, match.end(), True
    else:
        stop, body, blank = end, end, False
    return _Header(raw, start, min(stop, start + _MAX_FIELD_BYTES), body, blank)


def _split_fields(raw: bytes, start: int, stop: int) -> tuple[_Field, ...]:
    """Split a header section into fields, each with its folded lines.

    A line that is not a field (no name, or a name with a space in it) is kept
    with an empty name: HEADER returns it, HEADER.FIELDS never does.
    """
    fields = []
    for match in _FIELD.finditer(raw, start, stop):
        begin, end = match.span()
        if end == begin:
            continue
        name = match.group(1)
        if name is None:
            fields.append(_Field(b"", raw[begin:end]))
        else:
            fields.append(_Field(name.lower(), raw[begin:end]))
    return tuple(fields)


# --- RFC 5322 addresses ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Word:
    """A lexical token of a structured field, quoting removed."""

    kind: str  # atom, quoted, literal, comment or special
    text: str
    spaced: bool  # white space or a comment came before it


_Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
_GROUP_END: _Address = (None, None, None, None)


def _words(text: str) -> list[_Word]:
    """Tokenise a structured field value; comments nest, so they are read apart."""
    words: list[_Word] = []
    position, spaced = 0, False
    while position < len(text):
        if text[position] == "(":
            comment, position = _comment(text, position)
            words.append(_Word("comment", comment, spaced))
            spaced = True
            continue
        match = _WORDS.match(text, position)
        assert match is not None  # the last alternative matches any character
        position = match.end()
        kind = match.lastgroup or "special"
        if kind == "space":
            spaced = True
            continue
        value = match.group()
        if kind == "quoted":
            value = _unquote(value)
        words.append(_Word(kind, value, spaced))
        spaced = False
    return words


def _comment(text: str, position: int) -> tuple[str, int]:
    """Read the comment opening at `position`; return its text and where it ends."""
    depth, index = 0, position
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return _QUOTED_PAIR.sub(r"\1", text[position + 1 : index]), index + 1
        index += 1
    return _QUOTED_PAIR.sub(r"\1", text[position + 1 :]), len(text)


def _unquote(quoted: str) -> str:
    """Remove the quotes and quoted pairs of a quoted string (maybe unterminated)."""
    inner = quoted[1:-1] if len(quoted) > 1 and quoted.endswith('"') else quoted[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


def _addresses(value: bytes | None) -> list[_Address]:
    """Read an address list into RFC 3501 address structures, groups included."""
    if value is None:
        return []
    simple = _simple_addresses(value)
    return simple if simple is not None else _parsed_addresses(value)


def _simple_addresses(value: bytes) -> list[_Address] | None:
    """Read the common list of `a@b` and `Name <a@b>` with two regexes.

    Tokenising costs most of an ENVELOPE, and most lists need none of it: no
    quotes, comments, groups or routes. None sends the list to the full parser,
    which gives the same result for every list read here.
    """
    if not _SIMPLE_LIST.fullmatch(value):
        return None
    found: list[_Address] = []
    for item in value.split(b","):
        match = _SIMPLE_ADDRESS.fullmatch(item)
        if match is None:
            if item.strip(b" \t\r\n"):
                return None
            continue
        phrase, local, domain, bare_local, bare_domain = match.groups()
        if local is None:
            found.append((None, None, bare_local, bare_domain))
        else:
            found.append((b" ".join(phrase.split()) or None, None, local, domain))
    return found


def _parsed_addresses(value: bytes) -> list[_Address]:
    """Parse an address list token by token (RFC 5322, 3.4, obsolete forms too).

    Bytes are read as Latin-1 and written back the same way, so 8-bit bytes
    travel through unchanged and end up in literals.
    """
    if len(value) > _MAX_PARSED_ADDRESSES:
        cut = value.rfind(b",", 0, _MAX_PARSED_ADDRESSES)
        value = value[: max(cut, 0)]
    found: list[_Address] = []
    pending: list[_Word] = []
    in_group = after_angle = False
    words = _words(value.decode("latin-1"))
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        special = word.text if word.kind == "special" else ""
        if special == "<":
            close = _find_special(words, ">", index)
            found.extend(_angle_address(pending, words[index:close]))
            pending, after_angle, index = [], True, close + 1
        elif special == ":" and not in_group and not after_angle:
            found.append((None, None, _join_phrase(pending).encode("latin-1"), None))
            pending, in_group = [], True
        elif special in (",", ";"):
            if not after_angle:
                found.extend(_bare_address(pending))
            pending, after_angle = [], False
            if special == ";" and in_group:
                found.append(_GROUP_END)
                in_group = False
        elif not after_angle:
            pending.append(word)
    if not after_angle:
        found.extend(_bare_address(pending))
    if in_group:
        found.append(_GROUP_END)
    return found


def _find_special(words: list[_Word], special: str, start: int) -> int:
    """Index of the next `special` from `start`, or the end of `words`."""
    for index in range(start, len(words)):
        if words[index].kind == "special" and words[index].text == special:
            return index
    return len(words)


def _angle_address(phrase: list[_Word], inside: list[_Word]) -> list[_Address]:
    """A name-addr: a display name, then an address in angle brackets."""
    inside = [word for word in inside if word.kind != "comment"]
    route: bytes | None = None
    if inside and inside[0].kind == "special" and inside[0].text == "@":
        colon = _find_special(inside, ":", 0)
        route = "".join(word.text for word in inside[:colon]).encode("latin-1")
        inside = inside[colon + 1 :]
    name = _join_phrase(phrase).encode("latin-1") or None
    mailbox, host = _addr_spec(inside)
    if not mailbox and host == _MISSING_HOST and name is None:
        return []  # "<>" says nothing about anyone
    return [(name, route, mailbox, host)]


def _bare_address(words: list[_Word]) -> list[_Address]:
    """An addr-spec alone; a comment beside it names the person, as it once did."""
    comments = [word.text for word in words if word.kind == "comment"]
    mailbox, host = _addr_spec([word for word in words if word.kind != "comment"])
    if not mailbox and host == _MISSING_HOST:
        return []
    name = comments[-1].strip().encode("latin-1") if comments else None
    return [(name or None, None, mailbox, host)]


def _addr_spec(words: list[_Word]) -> tuple[bytes, bytes]:
    """Split local-part@domain, quoting removed; no @ gives the missing host."""
    at = max(
        (
            i
            for i, word in enumerate(words)
            if word.kind == "special" and word.text == "@"
        ),
        default=-1,
    )
    if at < 0:
        return _join_phrase(words).encode("latin-1"), _MISSING_HOST
    local = "".join(word.text for word in words[:at])
    domain = "".join(word.text for word in words[at + 1 :])
    return local.encode("latin-1"), (domain.encode("latin-1") or _MISSING_HOST)


def _join_phrase(words: list[_Word]) -> str:
    """Join the words of a phrase with one space where the message had space."""
    pieces: list[str] = []
    for word in words:
        if word.kind == "comment":
            continue
        if word.spaced and pieces:
            pieces.append(" ")
        pieces.append(word.text)
    return "".join(pieces)


# --- MIME fields -------------------------------------------------------------------


_Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Media:
    """A Content-Type: lower-case type and subtype, parameters as sent."""

    type: str
    subtype: str
    params: _Params


_DEFAULT_TEXT = _Media("text", "plain", (("charset", "us-ascii"),))
_DEFAULT_DIGEST = _Media("message", "rfc822", ())
_OPAQUE = _Media("application", "octet-stream", ())


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _media(header: _Header, digest: bool) -> _Media:
    """The part's media type, or the RFC 2045 and RFC 2046 default."""
    value = _latin1(header.first(b"content-type"))
    if value is None:
        return _DEFAULT_DIGEST if digest else _DEFAULT_TEXT
    head, params = _head_and_params(value)
    kind, slash, subtype = head.partition("/")
    kind, subtype = kind.strip(), subtype.strip()
    if not (slash and _TOKEN_CHARS.fullmatch(kind) and _TOKEN_CHARS.fullmatch(subtype)):
        return _DEFAULT_TEXT
    return _Media(kind.lower(), subtype.lower(), params)


def _head_and_params(value: str) -> tuple[str, _Params]:
    """Split `type/subtype; a=b` or `attachment; a=b` into the head and parameters.

    Lenient on purpose: a parameter without "=" is skipped, an unquoted value may
    hold any character but ";", and an unterminated quoted string ends the field.
    """
    pieces = _split_semicolons(_uncomment(value))
    params: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        attribute, equals, raw_value = piece.partition("=")
        attribute, raw_value = attribute.strip(), raw_value.strip()
        if not equals or not attribute:
            continue
        if raw_value.startswith('"'):
            raw_value = _unquote(raw_value)
        params.append((attribute, raw_value))
    return pieces[0].strip(), tuple(params)


def _split_semicolons(text: str) -> list[str]:
    """Split at the semicolons that are outside quoted strings."""
    pieces, current = [], ""
    for match in _SEMICOLON_PIECES.finditer(text):
        if match.group() == ";":
            pieces.append(current)
            current = ""
        else:
            current += match.group()
    pieces.append(current)
    return pieces


def _uncomment(text: str) -> str:
    """Replace the comments outside quoted strings with a space."""
    out, position = [], 0
    while position < len(text):
        if text[position] == "(":
            _, position = _comment(text, position)
            out.append(" ")
            continue
        match = _COMMENT_PIECES.match(text, position)
        assert match is not None  # "(" is handled above, and the rest always matches
        out.append(match.group())
        position = match.end()
    return "".join(out)


def _encoding(header: _Header) -> str:
    """The Content-Transfer-Encoding, lower-case; 7bit when absent (RFC 2045, 6.1)."""
    value = _latin1(header.first(b"content-transfer-encoding"))
    value = _uncomment(value).strip().lower() if value is not None else ""
    return value or "7bit"


# --- the MIME tree -----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Part:
    """A MIME entity as byte offsets: its header, its body, what it contains."""

    header: _Header
    end: int
    media: _Media
    encoding: str
    children: list[_Part] = field(default_factory=list)  # of a multipart
    message: _Part | None = None  # the message a message/rfc822 part holds

    @property
    def start(self) -> int:
        return self.header.start

    @property
    def body(self) -> int:
        return self.header.body


class _Builder:
    """Builds the MIME tree of one message, within `MAX_DEPTH` and `MAX_PARTS`."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.parts_left = MAX_PARTS

    def build(
        self, start: int, end: int, depth: int, digest: bool, header: _Header | None
    ) -> _Part:
        """Read the entity at `start` and, within the bounds, what it contains."""
        header = header or _read_header(self.raw, start, end)
        media, encoding = _media(header, digest), _encoding(header)
        part = _Part(header, end, media, encoding)
        if media.type == "multipart":
            self.read_multipart(part, depth, media.subtype == "digest")
        elif (media.type, media.subtype) == ("message", "rfc822"):
            self.read_message(part, depth)
        return part

    def read_multipart(self, part: _Part, depth: int, digest: bool) -> None:
        if depth >= MAX_DEPTH:
            part.media = _OPAQUE
            return
        boundary = _param(part.media.params, "boundary")
        spans = _spans(self.raw, part.body, part.end, boundary, self.parts_left + 1)
        if spans is None:
            part.media = _DEFAULT_TEXT
        elif len(spans) > self.parts_left:
            part.media = _OPAQUE
        else:
            self.parts_left -= len(spans)
            part.children = [
                self.build(start, end, depth + 1, digest, None) for start, end in spans
            ]

    def read_message(self, part: _Part, depth: int) -> None:
        readable = part.encoding in ("7bit", "8bit", "binary")
        if depth >= MAX_DEPTH or not readable or self.parts_left < 1:
            part.media = _OPAQUE
            return
        self.parts_left -= 1
        part.message = self.build(part.body, part.end, depth + 1, False, None)


def _param(params: _Params, name: str) -> str | None:
    """The first parameter called `name`, case ignored."""
    for attribute, value in params:
        if attribute.lower() == name:
            return value
    return None


def _spans(
    raw: bytes, start: int, end: int, boundary: str | None, limit: int
) -> list[tuple[int, int]] | None:
    """Where each body part lies between the delimiter lines (RFC 2046, 5.1.1).

    The line end before a delimiter line belongs to the delimiter. A part that
    no close delimiter ends runs to the end; None means no part was found. The
    search stops once `limit` parts are found.
    """
    if not boundary:
        return None
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    for line, after, closing in _delimiter_lines(raw, start, end, boundary):
        if opened is not None:
            spans.append((opened, _before_line_end(raw, opened, line)))
        if closing or len(spans) >= limit:
            opened = None
            break
        opened = after
    if opened is not None:
        spans.append((opened, end))
    return spans or None


def _delimiter_lines(
    raw: bytes, start: int, end: int, boundary: str
) -> Iterator[tuple[int, int, bool]]:
    """Yield where each delimiter line starts, where the next line starts, and
    whether it closes the multipart.

    bytes.find, not a multi-line regex: it is some twenty times faster on a
    large attachment, and each nesting level searches its whole body again.
    """
    dashes = b"--" + boundary.encode("latin-1")
    line = start if raw.startswith(dashes, start, end) else -1
    while True:
        if line < 0:
            found = raw.find(b"\n" + dashes, start, end)
            if found < 0:
                return
            line = found + 1
        after = line + len(dashes)
        closing = raw.startswith(b"--", after, end)
        tail = _DELIMITER_TAIL.match(raw, after + 2 if closing else after, end)
        if tail is not None:
            yield line, tail.end(), closing
        start, line = after, -1


def _before_line_end(raw: bytes, start: int, line: int) -> int:
    """Step back over the CR LF (or LF) that ends the line before `line`."""
    end = line
    if end > start and raw[end - 1] == 0x0A:
        end -= 1
        if end > start and raw[end - 1] == 0x0D:
            end -= 1
    return end


# --- ENVELOPE and BODYSTRUCTURE ----------------------------------------------------


def _envelope(header: _Header) -> bytes:
    """ENVELOPE (RFC 3501, 7.4.2); Sender and Reply-To default to From."""
    sender_from = _addresses(header.first(b"from"))
    sender = _addresses(header.first(b"sender")) or sender_from
    reply_to = _addresses(header.first(b"reply-to")) or sender_from
    items = [
        quote(header.first(b"date")),
        quote(header.first(b"subject")),
        _address_list(sender_from),
        _address_list(sender),
        _address_list(reply_to),
        _address_list(_addresses(header.first(b"to"))),
        _address_list(_addresses(header.first(b"cc"))),
        _address_list(_addresses(header.first(b"bcc"))),
        quote(header.first(b"in-reply-to")),
        quote(header.first(b"message-id")),
    ]
    return b"(" + b" ".join(items) + b")"


def _address_list(addresses: list[_Address]) -> bytes:
    if not addresses:
        return _NIL
    rendered = (
        b"(" + b" ".join(quote(item) for item in one) + b")" for one in addresses
    )
    return b"(" + b"".join(rendered) + b")"


def _structure(raw: bytes, part: _Part, extensible: bool) -> bytes:
    """BODYSTRUCTURE of one part; `_Builder` bounded the depth of the recursion."""
    header, media = part.header, part.media
    if part.children:
        inner = b"".join(_structure(raw, child, extensible) for child in part.children)
        items = [inner + b" " + quote(media.subtype.upper())]
        if extensible:
            items.append(_params(media.params))
            items.extend(_tail(header))
        return b"(" + b" ".join(items) + b")"

    items = [
        quote(media.type.upper()),
        quote(media.subtype.upper()),
        _params(media.params),
        quote(header.first(b"content-id")),
        quote(header.first(b"content-description")),
        quote(part.encoding.upper()),
        b"%d" % (part.end - part.body),
    ]
    if part.message is not None:
        items.append(_envelope(part.message.header))
        items.append(_structure(raw, part.message, extensible))
        items.append(b"%d" % _count_lines(raw, part.body, part.end))
    elif media.type == "text":
        items.append(b"%d" % _count_lines(raw, part.body, part.end))
    if extensible:
        items.append(quote(header.first(b"content-md5")))
        items.extend(_tail(header))
    return b"(" + b" ".join(items) + b")"


def _tail(header: _Header) -> list[bytes]:
    """Extension data after MD5 or the parameters: disposition, language, location."""
    return [
        _disposition(header),
        _language(header),
        quote(header.first(b"content-location")),
    ]


def _params(params: _Params) -> bytes:
    if not params:
        return _NIL
    pairs = (
        quote(name.upper().encode("latin-1")) + b" " + quote(value.encode("latin-1"))
        for name, value in params
    )
    return b"(" + b" ".join(pairs) + b")"


def _disposition(header: _Header) -> bytes:
    value = _latin1(header.first(b"content-disposition"))
    if value is None:
        return _NIL
    kind, params = _head_and_params(value)
    if not _TOKEN_CHARS.fullmatch(kind):
        return _NIL
    return b"(" + quote(kind.upper()) + b" " + _params(params) + b")"


def _language(header: _Header) -> bytes:
    value = _latin1(header.first(b"content-language"))
    tags = [tag.strip() for tag in _uncomment(value or "").split(",") if tag.strip()]
    if not tags:
        return _NIL
    if len(tags) == 1:
        return quote(tags[0].encode("latin-1"))
    return b"(" + b" ".join(quote(tag.encode("latin-1")) for tag in tags) + b")"


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Lines of a body; a last line without its line end counts too."""
    lines = raw.count(b"\n", start, end)
    if end > start and raw[end - 1] != 0x0A:
        lines += 1
    return lines


# --- sections ----------------------------------------------------------------------


def _parse_section(spec: str) -> tuple[list[int], str] | None:
    """Split `1.2.HEADER` into the part path and the text after it."""
    path: list[int] = []
    spec = spec.strip()
    position = 0
    while match := _SECTION_PATH.match(spec, position):
        path.append(int(match.group(1)))
        position = match.end()
        if not match.group(2):
            return path, ""
    if path and position == len(spec):
        return None  # "1." names nothing
    return path, spec[position:]


def _subparts(part: _Part, *, as_message: bool) -> list[_Part]:
    """The parts numbered inside `part` (RFC 3501, 6.4.5).

    A message that is not multipart has one part, its own body; so does the
    message inside a message/rfc822 part.
    """
    if part.children:
        return part.children
    if as_message:
        return [part]
    if part.message is not None:
        return _subparts(part.message, as_message=True)
    return []


def _header_fields(header: _Header, names: frozenset[bytes], keep: bool) -> bytes:
    """HEADER.FIELDS (keep=True) or HEADER.FIELDS.NOT of one header section."""
    if keep:
        found = header.lines_of(names)
    else:
        found = [item.raw for item in header.fields if item.name and item.name not in names]
    lines = [line if line.endswith(b"\n") else line + b"\r\n" for line in found]
    return b"".join(lines) + (b"\r\n" if header.blank else b"")


@lru_cache(maxsize=64)
def _field_list(text: str) -> tuple[frozenset[bytes], bool] | None:
    """The names of HEADER.FIELDS (.NOT) and whether to keep them; None if not that."""
    match = _FIELD_LIST.fullmatch(text)
    if match is None:
        return None
    names = frozenset(
        (_QUOTED_PAIR.sub(r"\1", quoted) if quoted else atom).lower().encode()
        for quoted, atom in _FIELD_NAME.findall(match.group(2))
    )
    return names, match.group(1) is None


def _message_text(raw: bytes, header: _Header, end: int, text: str) -> bytes | None:
    """HEADER, TEXT or HEADER.FIELDS (.NOT) of the message whose header is given."""
    if text == "HEADER":
        return raw[header.start : header.body]
    if text == "TEXT":
        return raw[header.body : end]
    wanted = _field_list(text)
    if wanted is None:
        return None
    return _header_fields(header, *wanted)


# --- search ------------------------------------------------------------------------


def _text_of(data: bytes) -> str:
    """Bytes of unknown charset: UTF-8 when they are, Latin-1 otherwise."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass  # a charset Python does not know, or not a text encoding
    return _text_of(data)


def _decode_words(value: bytes) -> str:
    """Decode RFC 2047 encoded words; text between them is taken as it is."""
    text = value.decode("latin-1")
    if "=?" not in text:
        return _text_of(value)
    try:
        chunks = decode_header(text)
    except (HeaderParseError, ValueError):
        return _text_of(value)
    decoded = []
    for chunk, charset in chunks:
        data = chunk if isinstance(chunk, bytes) else chunk.encode("latin-1")
        decoded.append(_decode(data, charset) if charset else _text_of(data))
    return "".join(decoded)


def _transfer_decode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            return data
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


# --- the message ---------------------------------------------------------------------


class Message:
    """A parsed message, parsed once and reused for every FETCH item.

    Keep one per message while a command runs: the top-level header section is
    read on first use, the MIME tree only when BODYSTRUCTURE, a part or the text
    for SEARCH is asked for, and rendered values are kept.
    """

    __slots__ = ("_envelope", "_header", "_structures", "_tree", "raw", "size")

    raw: bytes
    size: int  # len(raw), for RFC822.SIZE

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)
        self._header: _Header | None = None
        self._tree: _Part | None = None
        self._envelope: bytes | None = None
        self._structures: dict[bool, bytes] = {}

    def _head(self) -> _Header:
        """The top-level header section, read on first use."""
        if self._header is None:
            self._header = _read_header(self.raw, 0, self.size)
        return self._header

    def _parts(self) -> _Part:
        """The MIME tree, built on first use."""
        if self._tree is None:
            builder = _Builder(self.raw)
            self._tree = builder.build(0, self.size, 0, False, self._head())
        return self._tree

    def envelope(self) -> bytes:
        """The ENVELOPE value, read from the top-level header section alone."""
        if self._envelope is None:
            self._envelope = _envelope(self._head())
        return self._envelope

    def bodystructure(self, extensible: bool = True) -> bytes:
        """BODYSTRUCTURE, or BODY (no extension data) when `extensible` is False."""
        rendered = self._structures.get(extensible)
        if rendered is None:
            rendered = _structure(self.raw, self._parts(), extensible)
            self._structures[extensible] = rendered
        return rendered

    def section(self, spec: str) -> bytes | None:
        """The contents of BODY[spec]; None when that part or text does not exist.

        `spec` is what the client sent inside the brackets: "", "HEADER", "TEXT",
        "HEADER.FIELDS (FROM SUBJECT)", "HEADER.FIELDS.NOT (...)", "1", "1.2",
        "2.MIME", "2.HEADER", "2.TEXT", "1.HEADER.FIELDS (...)". A spec that does
        not parse gives None too: the command parser answers BAD before this.
        """
        parsed = _parse_section(spec)
        if parsed is None:
            return None
        path, text = parsed
        text = text.upper()
        if not path:
            if text == "":
                return self.raw
            if text == "MIME":
                return None
            # No MIME tree for these: clients fetch header fields of every message.
            return _message_text(self.raw, self._head(), self.size, text)

        part = self._parts()
        for depth, number in enumerate(path):
            candidates = _subparts(part, as_message=depth == 0)
            if number > len(candidates):
                return None
            part = candidates[number - 1]

        if text == "":
            return self.raw[part.body : part.end]
        if text == "MIME":
            return self.raw[part.start : part.body]
        if part.message is None:
            return None  # HEADER and TEXT exist for message/rfc822 parts alone
        return _message_text(self.raw, part.message.header, part.message.end, text)

    def header_value(self, name: str) -> str | None:
        """The first field called `name`, its encoded words decoded (RFC 2047)."""
        value = self._head().first(name.lower().encode("latin-1", "replace"))
        return None if value is None else _decode_words(value)

    def text_for_search(self) -> str:
        """The text of the text/* parts, transfer- and charset-decoded, one per line.

        Other parts, and the header sections of attached messages, are not
        included. HTML is searched as it is, tags and all.
        """
        texts: list[str] = []
        stack = [self._parts()]
        while stack:
            part = stack.pop()
            if part.children:
                stack.extend(reversed(part.children))
            elif part.message is not None:
                stack.append(part.message)
            elif part.media.type == "text":
                data = _transfer_decode(self.raw[part.body : part.end], part.encoding)
                texts.append(_decode(data, _param(part.media.params, "charset")))
        return "\n".join(texts)

    def date(self) -> datetime | None:
        """The Date field, or None when absent or unreadable.

        Always aware: a date in "-0000" (zone unknown, RFC 5322, 3.3) is taken
        as UTC.
        """
        value = self._head().first(b"date")
        if value is None:
            return None
        try:
            parsed = parsedate_to_datetime(value.decode("latin-1"))
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

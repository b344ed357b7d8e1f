"""Checks of a received message before it is stored.

Two checks, both cheap enough for the hot path on a 25 MB message:

- `check_line_endings` enforces RFC 5321, section 2.3.8: every line ends with
  CR LF, and no bare CR, bare LF or NUL is allowed (section 4.1.1.4 also makes
  NUL unsafe). Servers that disagree on what ends a line can be made to see
  the end of DATA in different places, which lets an attacker smuggle a
  second, forged message through a relay (the "SMTP smuggling" attacks of
  2023). A message is refused rather than repaired, as the client can fix it.
- `check_structure` bounds the MIME tree of RFC 2045 and RFC 2046 (nesting
  depth, number of parts, size of each header section of RFC 5322) before
  anything parses it. The stdlib parser recurses once per nesting level, so a
  message nested a thousand deep would end in RecursionError; this module
  walks the tree with a loop and an explicit stack instead.

The walk reproduces the stdlib parser's reading (email.feedparser) rather
than the letter of the RFCs, because that parser is the one the limits
protect: a header section ends at the first line that is not a header field;
a line "--boundary" of any enclosing multipart also ends the parts inside it;
every message/* type but message/delivery-status holds a nested message.
Where the two could disagree, on a bare CR, which the stdlib parser takes for a
line end, `check_structure` refuses the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from functools import lru_cache

# Literal first, look behind after: the regex engine then skips ahead quickly.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")
# A line the stdlib parser does not take for a header field ends the section.
_NOT_A_FIELD = re.compile(rb"^(?!From |[\x21-\x39\x3b-\x7e]*:|[ \t])", re.MULTILINE)
_BLANK_LINE = re.compile(rb"\r?\n")
_MESSAGE_ID = re.compile(r"<([^<>]*)>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class ContentError(Exception):
    """A message is refused; `reason` is one sentence safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedInfo:
    """What the structure check learned about a message on the way."""

    message_id: str | None  # the Message-ID field without its angle brackets
    subject_present: bool
    header_bytes: int  # the top-level header section, without its empty line
    depth: int  # nested multipart and message/* levels; 0 for a single part
    parts: int  # MIME entities, the message itself included


def check_line_endings(data: bytes) -> None:
    """Refuse a NUL, a bare CR or a bare LF anywhere in `data`.

    Counting is done by bytes.count, in C, so a clean 25 MB message costs a few
    milliseconds; only a refused message pays for finding the line to name.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        raise ContentError(
            f"Line {_line_number(data, nul)} of the message contains a NUL "
            "character, which mail may not carry."
        )

    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        position = _first(_BARE_LF, data)
        raise ContentError(
            f"Line {_line_number(data, position)} of the message ends with a bare "
            "LF; every line must end with CR LF."
        )
    if data.count(b"\r") != crlf:
        position = _first(_BARE_CR, data)
        raise ContentError(
            f"Line {_line_number(data, position)} of the message contains a bare "
            "CR; a CR may only appear before LF at the end of a line."
        )


def _first(pattern: re.Pattern[bytes], data: bytes) -> int:
    """Return where `pattern` first matches; the caller knows that it does."""
    match = pattern.search(data)
    return match.start() if match else 0


def _line_number(data: bytes, position: int) -> int:
    """Number the line holding `position`, counting from 1 as editors do."""
    return data.count(b"\n", 0, position) + 1


@dataclass(frozen=True)
class _Header:
    """Where one header section lies, and where the body after it starts."""

    start: int
    end: int
    body: int


@dataclass(frozen=True)
class _Level:
    """An open multipart: its boundary and how deep it is nested."""

    boundary: bytes
    depth: int
    digest: bool  # in multipart/digest a part is message/rfc822 by default


class _Walk:
    """The state of one structure check: an explicit stack, never recursion."""

    def __init__(
        self, data: bytes, max_depth: int, max_parts: int, max_header: int
    ) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.max_header = max_header
        self.stack: list[_Level] = []
        self.depth = 0
        self.parts = 0

    def run(self) -> ParsedInfo:
        """Walk the whole message and report what was found."""
        header, fields = self.enter(0, 0, digest=False)
        position = header.body
        while self.stack:
            match = self.delimiter(position, len(self.data))
            if match is None:
                break
            position = self.close_or_open(match)
        return _info(header, fields, self.depth, self.parts)

    def delimiter(self, line_start: int, end: int) -> re.Match[bytes] | None:
        """Find the next delimiter line of an open multipart, from a line start."""
        pattern = _delimiters(tuple(level.boundary for level in self.stack))
        # The pattern begins with the LF that ends the line before.
        return pattern.search(self.data, max(line_start - 1, 0), end)

    def delimiter_before(self, start: int, end: int) -> int:
        """Cut a header section short at a delimiter line, as the stdlib does.

        Only a boundary with a colon makes a delimiter line look like a header
        field, so this rarely cuts anything. Complete lines alone are searched:
        the start of a line cut off at `end` could look like a delimiter.
        """
        if not self.stack:
            return end
        complete = end if end == len(self.data) else self.data.rfind(b"\n", 0, end) + 1
        match = self.delimiter(start, max(complete, start))
        return match.start() + 1 if match else end

    def delimiter_at(self, line_start: int) -> re.Match[bytes] | None:
        """Match a delimiter line of an open multipart exactly at `line_start`."""
        if line_start == 0 or line_start >= len(self.data):
            return None
        pattern = _delimiters(tuple(level.boundary for level in self.stack))
        return pattern.match(self.data, line_start - 1)

    def close_or_open(self, match: re.Match[bytes]) -> int:
        """Act on a delimiter line; return where the walk goes on."""
        index, closing = self.owner(match)
        del self.stack[index + 1 :]  # an outer delimiter ends the inner parts
        if closing:
            self.stack.pop()
            return _next_line(self.data, match.end())

        # Like the stdlib parser, skip delimiter lines that follow this one at
        # once, close delimiters included: they open no part.
        position = _next_line(self.data, match.end())
        while (repeat := self.delimiter_at(position)) is not None:
            if self.owner(repeat)[0] != index:
                break
            position = _next_line(self.data, repeat.end())

        level = self.stack[-1]
        header, _ = self.enter(position, level.depth, digest=level.digest)
        return header.body

    def owner(self, match: re.Match[bytes]) -> tuple[int, bool]:
        """Find the innermost open multipart a delimiter line belongs to."""
        line = match.group(1).rstrip(b" \t\r")
        for index in range(len(self.stack) - 1, -1, -1):
            boundary = self.stack[index].boundary
            if line == b"--" + boundary:
                return index, False
            if line == b"--" + boundary + b"--":
                return index, True
        raise AssertionError("the delimiter pattern matched no open boundary")

    def enter(self, start: int, depth: int, *, digest: bool) -> tuple[_Header, Message]:
        """Read the entity at `start`, and any message/* nested right in it.

        Returns the outermost header read: for the top level, its fields are
        the ones the caller reports.
        """
        first: tuple[_Header, Message] | None = None
        while True:
            header = self.header_at(start)
            fields = _fields(self.data[header.start : header.end], digest)
            first = first or (header, fields)
            self.count_part()

            if fields.get_content_maintype() == "multipart":
                self.open_multipart(fields, depth)
                return first
            if not _holds_message(fields):
                return first
            depth = self.deeper(depth)
            start, digest = header.body, False

    def open_multipart(self, fields: Message, depth: int) -> None:
        """Push a multipart on the stack, unless the stdlib would see a leaf."""
        boundary = _boundary(fields)
        if boundary is None:
            return
        digest = fields.get_content_type() == "multipart/digest"
        self.stack.append(_Level(boundary, self.deeper(depth), digest))

    def count_part(self) -> None:
        """Count one more entity, within the limit."""
        self.parts += 1
        if self.parts > self.max_parts:
            raise ContentError(
                f"The message has more than {self.max_parts} MIME parts."
            )

    def deeper(self, depth: int) -> int:
        """Go one level deeper, within the limit."""
        depth += 1
        if depth > self.max_depth:
            raise ContentError(
                f"The message's MIME parts are nested more than {self.max_depth} "
                "levels deep."
            )
        self.depth = max(self.depth, depth)
        return depth

    def header_at(self, start: int) -> _Header:
        """Find the header section that starts at `start` and the body after it.

        Only a window slightly larger than the limit is searched, so a huge
        header costs no more than a legal one before it is refused.
        """
        window = min(len(self.data), start + self.max_header + 2)
        match = _NOT_A_FIELD.search(self.data, start, window)
        end = match.start() if match else window
        end = self.delimiter_before(start, end)

        if end - start > self.max_header:
            raise ContentError(
                f"A header section of the message is larger than {self.max_header} "
                "bytes."
            )
        blank = _BLANK_LINE.match(self.data, end)
        return _Header(start, end, blank.end() if blank else end)


@lru_cache(maxsize=256)
def _delimiters(boundaries: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """Compile a pattern for the delimiter lines of the open multiparts.

    It starts with a literal LF, which the regex engine finds quickly, and
    matches only lines that belong to a boundary, so a body full of lines
    starting with "--" costs no Python work.
    """
    alternatives = b"|".join(re.escape(boundary) for boundary in set(boundaries))
    return re.compile(
        rb"\n(--(?:" + alternatives + rb")(?:--)?[ \t]*\r?)$", re.MULTILINE
    )


def _next_line(data: bytes, position: int) -> int:
    """Return where the line after the one holding `position` starts."""
    end = data.find(b"\n", position)
    return len(data) if end < 0 else end + 1


def _fields(section: bytes, digest: bool) -> Message:
    """Parse one header section with the stdlib, which does not recurse here."""
    fields = BytesParser(policy=compat32).parsebytes(section, headersonly=True)
    if digest:
        fields.set_default_type("message/rfc822")
    return fields


def _boundary(fields: Message) -> bytes | None:
    """Return a multipart's boundary as the bytes its delimiter lines carry.

    A boundary the stdlib cannot match against any line (one with non-ASCII
    characters from RFC 2231 encoding, or one folded over two lines) leaves
    the part a leaf, as it does there.
    """
    boundary = fields.get_boundary()
    if boundary is None or "\r" in boundary or "\n" in boundary:
        return None  # a folded boundary cannot match a single line
    try:
        return boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None


def _holds_message(fields: Message) -> bool:
    """Tell whether the body is another message, as the stdlib reads it."""
    return (
        fields.get_content_maintype() == "message"
        and fields.get_content_type() != "message/delivery-status"
    )


def _info(header: _Header, fields: Message, depth: int, parts: int) -> ParsedInfo:
    """Collect the facts about the top-level header section."""
    return ParsedInfo(
        message_id=_message_id(_first_field(fields, "message-id")),
        subject_present="subject" in fields,
        header_bytes=header.end - header.start,
        depth=depth,
        parts=parts,
    )


def _first_field(fields: Message, name: str) -> str | None:
    """Return a field's value as read, before compat32 wraps non-ASCII in Header."""
    for key, value in fields.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _message_id(value: str | None) -> str | None:
    """Take the identifier out of a Message-ID field, or None if it is empty.

    Raw bytes that are not ASCII come back as the UTF-8 of RFC 6532; control
    characters and folding are removed, as the value ends up in logs.
    """
    if value is None:
        return None
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = _CONTROL.sub("", text).strip()
    match = _MESSAGE_ID.search(text)
    identifier = (match.group(1) if match else text).strip()
    return identifier or None


def check_structure(
    data: bytes,
    *,
    max_depth: int = 50,
    max_parts: int = 1000,
    max_header_bytes: int = 256 * 1024,
) -> ParsedInfo:
    """Check the MIME tree of `data` against the limits, without recursion.

    A message without a body (no empty line after the header) is accepted, as
    RFC 5322 allows. Raises ContentError for a bare CR, a nesting deeper than
    `max_depth`, more than `max_parts` entities, or a header section, at any
    level, larger than `max_header_bytes`.
    """
    if data.count(b"\r") != data.count(b"\r\n"):
        raise ContentError(
            "The message contains a bare CR; a CR may only appear before LF at "
            "the end of a line."
        )
    return _Walk(data, max_depth, max_parts, max_header_bytes).run()

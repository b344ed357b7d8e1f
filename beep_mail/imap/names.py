"""Mailbox names: modified UTF-7 on the wire, what a name may be, LIST patterns.

Names travel in modified UTF-7 (RFC 3501, 5.1.3) and are stored decoded. The
decoder is strict: a name has one spelling only, so printable ASCII hidden in
base64 (`&AC8-` for "/"), adjacent encoded runs, stray bits and lone
surrogates are refused rather than read as something else.

Every user's mailboxes form one personal namespace with "/" as the hierarchy
delimiter (RFC 2342: NAMESPACE (("" "/")) NIL NIL). The store keeps each
user's rows apart by user id; on top of that, a name with an empty, "." or
".." level, a control character, a wildcard, or a leading "#" or "~" (which
other servers use for other namespaces) is refused outright, so no name even
looks like a path to someone else's mail. INBOX is case-insensitive, also as
the first level of a longer name.

LIST patterns (RFC 3501, 6.3.8) are matched by a small automaton over the
pattern's positions, in time proportional to pattern times name: no regular
expression, so no pattern can make matching slow.
"""

from __future__ import annotations

import base64
import binascii

from beep_mail.imap.errors import Cannot

DELIMITER = "/"
INBOX = "INBOX"
MAX_NAME = 200  # characters, decoded
MAX_LEVELS = 16


class NameError_(Cannot):
    """A mailbox name that is not acceptable; the text says why."""


# -- modified UTF-7 -----------------------------------------------------------

def _printable(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def encode(name: str) -> bytes:
    """A mailbox name as it is sent: modified UTF-7."""
    out = bytearray()
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            text = base64.b64encode(data).rstrip(b"=").replace(b"/", b",")
            out.extend(b"&" + text + b"-")
            run.clear()

    for char in name:
        if _printable(char):
            flush()
            out.extend(b"&-" if char == "&" else char.encode("ascii"))
        else:
            run.append(char)
    flush()
    return bytes(out)


def decode(raw: bytes, *, strict: bool = True) -> str:
    """The name a client sent; NameError_ when it is not modified UTF-7.

    `strict` also refuses spellings that are not the one `encode` gives.
    """
    out: list[str] = []
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte >= 0x80:
            raise NameError_("Mailbox names are written in modified UTF-7 (RFC 3501)")
        if byte != 0x26:  # "&"
            out.append(chr(byte))
            index += 1
            continue
        end = raw.find(b"-", index + 1)
        if end < 0:
            raise NameError_("Unterminated modified UTF-7 in a mailbox name")
        out.append("&" if end == index + 1 else _decode_run(raw[index + 1 : end]))
        index = end + 1
    name = "".join(out)
    if strict and encode(name) != raw:
        raise NameError_("Mailbox name is not in canonical modified UTF-7")
    return name


def _decode_run(text: bytes) -> str:
    if len(text) % 4 == 1:
        raise NameError_("Malformed modified UTF-7 in a mailbox name")
    padded = text.replace(b",", b"/") + b"=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
        decoded = data.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NameError_("Malformed modified UTF-7 in a mailbox name") from None
    if len(data) % 2 or any(_printable(char) for char in decoded):
        raise NameError_("Malformed modified UTF-7 in a mailbox name")
    return decoded


# -- what a name may be ---------------------------------------------------------

def canonical(name: str) -> str:
    """INBOX in upper case, also as the first level of a longer name."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == INBOX:
        return INBOX + sep + rest
    return name


def check(name: str) -> str:
    """The canonical form of a name a user may have; NameError_ otherwise."""
    if not name:
        raise NameError_("A mailbox name cannot be empty")
    if len(name) > MAX_NAME:
        raise NameError_(f"A mailbox name can have at most {MAX_NAME} characters")
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029":
            raise NameError_("A mailbox name cannot contain control characters")
        if char in "*%":
            raise NameError_("A mailbox name cannot contain * or %")
    if name[0] in "#~":
        raise NameError_("Only personal mailboxes exist here; names cannot begin "
                         "with # or ~")
    levels = name.split(DELIMITER)
    if len(levels) > MAX_LEVELS:
        raise NameError_(f"Mailboxes nest at most {MAX_LEVELS} levels deep")
    for level in levels:
        if level in ("", ".", ".."):
            raise NameError_("A mailbox name cannot have an empty, \".\" or \"..\" "
                             "level, or begin or end with /")
        if level != level.strip():
            raise NameError_("A level of a mailbox name cannot begin or end with "
                             "a space")
    return canonical(name)


def from_wire(raw: bytes) -> str:
    """Decode and check a mailbox argument."""
    return check(decode(raw))


def parents(name: str) -> list[str]:
    """Every level above a name: "a/b/c" gives ["a", "a/b"]."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:depth]) for depth in range(1, len(levels))]


def is_inferior(name: str, of: str) -> bool:
    return name.startswith(of + DELIMITER)


# -- LIST patterns ----------------------------------------------------------------

class Pattern:
    """A LIST or LSUB pattern: "*" matches anything, "%" anything but "/"."""

    def __init__(self, reference: str, pattern: str) -> None:
        self.text = reference + pattern
        # INBOX is case-insensitive: "inbox/%" must find INBOX's children.
        head = self.text[:5]
        self.folded = (INBOX + self.text[5:]) if head.upper() == INBOX else None

    def matches(self, name: str) -> bool:
        if _glob(self.text, name):
            return True
        return (self.folded is not None and name.startswith(INBOX)
                and _glob(self.folded, name))


def _glob(pattern: str, name: str) -> bool:
    size = len(pattern)

    def closure(states: set[int]) -> set[int]:
        # A wildcard may match nothing: a state before one is also after it.
        todo = list(states)
        while todo:
            state = todo.pop()
            if state < size and pattern[state] in "*%" and state + 1 not in states:
                states.add(state + 1)
                todo.append(state + 1)
        return states

    states = closure({0})
    for char in name:
        following: set[int] = set()
        for state in states:
            if state >= size:
                continue
            wanted = pattern[state]
            if wanted == "*" or (wanted == "%" and char != DELIMITER):
                following.add(state)
            elif wanted == char:
                following.add(state + 1)
        if not following:
            return False
        states = closure(following)
    return size in states

"""Checks of received messages: line endings, MIME limits, what is reported."""

from __future__ import annotations

import email
import random
import sys
from email.message import Message
from email.policy import compat32

import pytest

from beep_mail.smtp.content import (
    ContentError,
    ParsedInfo,
    check_line_endings,
    check_structure,
)

CLEAN = (
    b"From: alice@gw.gov.example\r\n"
    b"To: bob@peer.gov.example\r\n"
    b"Subject: Budget\r\n"
    b"Message-ID: <20241203.1@gw.gov.example>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"..with a dot-stuffed line\r\n"
    b"Regards\r\n"
)


def nested(depth: int) -> bytes:
    """A message whose multiparts nest `depth` levels deep."""
    opening = [
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(depth)
    ]
    closing = [b"\r\n--b%d--\r\n" % n for n in reversed(range(depth))]
    leaf = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    return b"Subject: deep\r\n" + b"".join(opening) + leaf + b"".join(closing)


def wrapped(depth: int) -> bytes:
    """A message forwarded as message/rfc822 inside itself, `depth` times."""
    return b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: x\r\n\r\nhi\r\n"


# --- line endings ------------------------------------------------------------


def test_clean_message_passes() -> None:
    check_line_endings(CLEAN)
    check_line_endings(b"")
    check_line_endings(b"no line end at all")


@pytest.mark.parametrize(
    "inside",
    [
        b"\n",
        b"\r",
        b"\0",
        b"\n.\n",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\r\n",
    ],
)
def test_smuggling_and_stray_bytes_are_refused(inside: bytes) -> None:
    data = CLEAN + b"before" + inside + b"after\r\n" + CLEAN
    with pytest.raises(ContentError):
        check_line_endings(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"a\r\nb\nc\r\n", "Line 2 of the message ends with a bare LF"),
        (b"a\r\nb\r\nc\rd\r\n", "Line 3 of the message contains a bare CR"),
        (b"a\r\n\0\r\n", "Line 2 of the message contains a NUL"),
        (b"\n", "Line 1 of the message ends with a bare LF"),
    ],
)
def test_refusal_names_the_line(data: bytes, words: str) -> None:
    with pytest.raises(ContentError) as caught:
        check_line_endings(data)
    assert caught.value.reason.startswith(words)
    assert str(caught.value) == caught.value.reason


def test_large_clean_message_is_checked() -> None:
    data = CLEAN + (b"x" * 76 + b"\r\n") * (25 * 1024 * 1024 // 78)
    check_line_endings(data)
    with pytest.raises(ContentError):
        check_line_endings(data + b"\n")


# --- structure ---------------------------------------------------------------


def test_clean_message_is_described() -> None:
    info = check_structure(CLEAN)
    assert info == ParsedInfo(
        message_id="20241203.1@gw.gov.example",
        subject_present=True,
        header_bytes=CLEAN.index(b"\r\n\r\n") + 2,
        depth=0,
        parts=1,
    )


def test_ten_levels_pass() -> None:
    info = check_structure(nested(10))
    assert (info.depth, info.parts) == (10, 11)


@pytest.mark.parametrize("depth", [51, 1000, 100_000])
def test_deep_multipart_is_refused_without_recursion(depth: int) -> None:
    limit = sys.getrecursionlimit()
    with pytest.raises(ContentError, match="nested more than 50 levels"):
        check_structure(nested(depth))
    assert sys.getrecursionlimit() == limit


def test_the_stdlib_parser_would_have_recursed() -> None:
    # Why the walk exists: this is what the limit protects the parser from.
    with pytest.raises(RecursionError):
        email.message_from_bytes(nested(1000))


@pytest.mark.parametrize("depth", [51, 1000])
def test_deep_message_rfc822_is_refused(depth: int) -> None:
    with pytest.raises(ContentError, match="nested"):
        check_structure(wrapped(depth))


def test_deep_digest_is_refused() -> None:
    # In a multipart/digest a part without Content-Type holds a message.
    level = b'Content-Type: multipart/digest; boundary="d"\r\n\r\n--d\r\n\r\n'
    with pytest.raises(ContentError, match="nested"):
        check_structure(level * 1000)


def test_depth_limit_is_a_setting() -> None:
    assert check_structure(nested(3), max_depth=3).depth == 3
    with pytest.raises(ContentError):
        check_structure(nested(4), max_depth=3)


def test_too_many_parts() -> None:
    parts = b"".join(b"--p\r\n\r\npart %d\r\n" % n for n in range(20))
    data = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + b"--p--\r\n"
    assert check_structure(data).parts == 21
    with pytest.raises(ContentError, match="more than 20 MIME parts"):
        check_structure(data, max_parts=20)


def test_repeated_delimiters_open_one_part() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=p\r\n\r\n"
        b"--p\r\n--p\r\n--p\r\n\r\nonly part\r\n--p--\r\n"
    )
    assert check_structure(data).parts == 2
    assert len(list(email.message_from_bytes(data).walk())) == 2


def test_large_header_is_refused() -> None:
    field = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    data = b"Subject: big\r\n" + field * 300 + b"\r\nbody\r\n"
    with pytest.raises(ContentError, match="header section"):
        check_structure(data)
    assert check_structure(data, max_header_bytes=len(data)).header_bytes > 300_000


def test_large_header_in_a_part_is_refused() -> None:
    part = b"X-Filler: " + b"f" * 300_000 + b"\r\n\r\nbody\r\n"
    data = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n--p\r\n" + part
    with pytest.raises(ContentError, match="header section"):
        check_structure(data + b"--p--\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: no body\r\nMessage-ID: <a@b>\r\n",
        b"Subject: no body, no line end",
        b"",
        b"\r\nbody without header\r\n",
    ],
)
def test_messages_without_body_or_header_pass(data: bytes) -> None:
    info = check_structure(data)
    assert (info.depth, info.parts) == (0, 1)


def test_bare_cr_is_refused_by_the_structure_check() -> None:
    # The stdlib parser ends a line at a bare CR, the walk would not.
    data = b"Content-Type: multipart/mixed; boundary=p\r\n\r\nx\r--p\r\n\r\n--p--\r\n"
    with pytest.raises(ContentError, match="bare CR"):
        check_structure(data)


def test_large_single_part_message() -> None:
    data = CLEAN + (b"x" * 76 + b"\r\n") * (25 * 1024 * 1024 // 78)
    assert check_structure(data).parts == 1


def test_large_attachment_full_of_dashes() -> None:
    lines = (b"--" + b"x" * 74 + b"\r\n") * (25 * 1024 * 1024 // 78)
    data = (
        b"Content-Type: multipart/mixed; boundary=p\r\n\r\n--p\r\n\r\n"
        + lines
        + b"--p--\r\n"
    )
    assert check_structure(data).parts == 2


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (b"Message-ID: <abc@gw.gov.example>\r\n", "abc@gw.gov.example"),
        (b"message-id:   <abc@x> (comment)\r\n", "abc@x"),
        (b"Message-ID:\r\n <folded@x>\r\n", "folded@x"),
        (b"Message-ID: bare@x\r\n", "bare@x"),
        (b"Message-ID: <>\r\n", None),
        (b"Message-ID:\r\n", None),
        (b"X-Other: <abc@x>\r\n", None),
        (b"Message-ID: <caf\xc3\xa9@x>\r\n", "caf\u00e9@x"),
    ],
)
def test_message_id(field: bytes, expected: str | None) -> None:
    info = check_structure(field + b"\r\nbody\r\n")
    assert info.message_id == expected
    assert not info.subject_present


def test_outer_delimiter_ends_inner_parts() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
        b"--outer\r\n"
        b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
        b"--inner\r\n\r\nfirst\r\n"
        b"--outer\r\n\r\nsecond\r\n"
        b"--outer--\r\n"
    )
    assert _stdlib_shape(data) == (2, 4)
    info = check_structure(data)
    assert (info.depth, info.parts) == (2, 4)


def test_header_ends_at_first_line_that_is_not_a_field() -> None:
    # The stdlib reads the Content-Type below as body text, and so must we.
    data = (
        b"Content-Type: multipart/mixed; boundary=p\r\n\r\n--p\r\n"
        b"not a header line\r\n"
        b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n'
        b"--q\r\n\r\nx\r\n--q--\r\n--p--\r\n"
    )
    assert _stdlib_shape(data) == (1, 2)
    info = check_structure(data)
    assert (info.depth, info.parts) == (1, 2)


def test_boundary_with_colon_ends_a_header() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="a:b"\r\n\r\n'
        b"--a:b\r\nX-Part: 1\r\n--a:b\r\n"
        b'Content-Type: multipart/mixed; boundary="c"\r\n\r\n'
        b"--c\r\n\r\nx\r\n--c--\r\n--a:b--\r\n"
    )
    assert _stdlib_shape(data) == check_shape(data)


# --- the walk agrees with the stdlib parser on ordinary trees ------------------


def _stdlib_shape(data: bytes) -> tuple[int, int]:
    """Depth and number of entities as the stdlib parser sees them."""
    root = email.message_from_bytes(data, policy=compat32)
    deepest = 0
    parts = 0
    pending: list[tuple[Message, int]] = [(root, 0)]
    while pending:
        message, depth = pending.pop()
        parts += 1
        deepest = max(deepest, depth)
        if message.is_multipart():
            children = message.get_payload()
            assert isinstance(children, list)
            pending += [
                (child, depth + 1) for child in children if isinstance(child, Message)
            ]
    return deepest, parts


def check_shape(data: bytes) -> tuple[int, int]:
    info = check_structure(data)
    return info.depth, info.parts


def _random_entity(rng: random.Random, depth: int, counter: list[int]) -> bytes:
    """Build a random well-formed MIME entity, in the ways real mail nests."""
    choice = rng.random() if depth < 6 else 1.0
    if choice < 0.4:
        counter[0] += 1
        boundary = b"=_b%d" % counter[0]
        children = [
            _random_entity(rng, depth + 1, counter) for _ in range(rng.randint(1, 4))
        ]
        body = b"preamble\r\n" if rng.random() < 0.5 else b""
        for child in children:
            body += b"--" + boundary + b"\r\n" + child + b"\r\n"
        body += b"--" + boundary + b"--\r\n"
        header = b'Content-Type: multipart/mixed; boundary="%s"\r\n' % boundary
        return header + b"\r\n" + body
    if choice < 0.55:
        inner = _random_entity(rng, depth + 1, counter)
        return b"Content-Type: message/rfc822\r\n\r\n" + inner
    text = b"-- \r\nsignature\r\n" if rng.random() < 0.3 else b"text\r\n"
    return b"Content-Type: text/plain\r\n\r\n" + text


@pytest.mark.parametrize("seed", range(200))
def test_walk_agrees_with_stdlib(seed: int) -> None:
    rng = random.Random(seed)
    data = b"Subject: random\r\n" + _random_entity(rng, 0, [0])
    assert check_shape(data) == _stdlib_shape(data)

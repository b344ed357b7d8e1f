"""Summaries answer FETCH and SEARCH exactly as the whole message does."""

from __future__ import annotations

from datetime import date

import pytest

from beep_mail.imap import render, summary
from beep_mail.imap.parser import Fetch, parse_command
from beep_mail.imap.summary import Summary, SummaryError
from tests.test_imap_render import ALTERNATIVE, FORWARD, MIXED, PLAIN, nested

FOLDED = (
    b"Received: from a.example by b.example;\r\n"
    b"\tMon, 1 Jun 2026 10:00:00 +0000\r\n"
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@peer.gov.example>\r\n"
    b"Subject: a subject\r\n  folded over two lines\r\n"
    b"not a field line\r\n"
    b"To : spaced@ministry.gov.example\r\n"
    b"X-Empty:\r\n"
    b"subject: a second subject\r\n"
    b"Date: Tue, 2 Jun 2026 23:30:00 -0500\r\n"
    b"\r\n"
    b"body\r\n"
)
NO_BODY = b"From: a@b.example\r\nSubject: only a header"
BARE_LF = b"From: a@b.example\nSubject: lf\n\nbody\n"
EMPTY_HEADER = b"\r\nbody only\r\n"

MESSAGES = [PLAIN, ALTERNATIVE, MIXED, FORWARD, nested(5), FOLDED, NO_BODY, BARE_LF,
            EMPTY_HEADER]
SPECS = ["HEADER", "HEADER.FIELDS (FROM SUBJECT)", "HEADER.FIELDS (subject to x-empty)",
         'HEADER.FIELDS ("From" DATE)', "HEADER.FIELDS.NOT (RECEIVED SUBJECT)",
         "HEADER.FIELDS (NOSUCH)", "HEADER.FIELDS (not)", 'HEADER.FIELDS ("a b")']
NAMES = ["from", "subject", "to", "x-empty", "date", "received", "nosuch", "not", "a b",
         "content-type"]


@pytest.mark.parametrize("raw", MESSAGES)
def test_summary_answers_as_the_message(raw: bytes) -> None:
    message = render.Message(raw)
    kept = Summary(summary.build(raw))
    assert kept.envelope() == message.envelope()
    assert kept.bodystructure() == message.bodystructure()
    assert kept.bodystructure(extensible=False) == message.bodystructure(extensible=False)
    for spec in SPECS:
        assert kept.section(spec) == message.section(spec), spec
    for name in NAMES:
        assert kept.header_value(name) == message.header_value(name), name
    sent = message.date()
    assert kept.sent_day == (sent.date() if sent else None)


def test_header_values_are_unfolded_and_decoded_first_field_first() -> None:
    kept = Summary(summary.build(FOLDED))
    assert kept.header_value("subject") == "a subject  folded over two lines"
    assert kept.header_value("FROM") == "Jürgen <j@peer.gov.example>"
    assert kept.header_value("to") == "spaced@ministry.gov.example"
    assert kept.header_value("x-empty") == ""
    assert kept.header_value("not a field line") is None
    assert kept.sent_day == date(2026, 6, 2)  # the day in its own zone


def test_a_huge_header_section_is_not_kept() -> None:
    raw = b"X-Pad: " + b"x" * summary.MAX_HEADER + b"\r\nSubject: big\r\n\r\nbody\r\n"
    kept = Summary(summary.build(raw))
    assert kept.header is None
    assert kept.envelope() == render.Message(raw).envelope()
    with pytest.raises(SummaryError):
        kept.header_value("subject")


def _items(text: bytes) -> Fetch:
    command = parse_command(b"a FETCH 1 " + text)
    assert isinstance(command, Fetch)
    return command


@pytest.mark.parametrize(("items", "covered"), [
    (b"(UID FLAGS RFC822.SIZE ENVELOPE)", True),
    (b"(BODYSTRUCTURE INTERNALDATE)", True),
    (b"BODY", True),
    (b"(BODY.PEEK[HEADER.FIELDS (FROM TO)] UID)", True),
    (b"RFC822.HEADER", True),
    (b"BODY.PEEK[HEADER]<0.100>", True),
    (b"(ENVELOPE BODY.PEEK[])", False),
    (b"BODY[TEXT]", False),
    (b"BODY[1.HEADER]", False),
    (b"BODY[1]", False),
    (b"RFC822", False),
    (b"RFC822.TEXT", False),
])
def test_what_a_summary_covers(items: bytes, covered: bool) -> None:
    assert summary.covers(_items(items).items) is covered


def test_a_summary_without_its_header_covers_no_header_item() -> None:
    raw = b"X-Pad: " + b"x" * summary.MAX_HEADER + b"\r\n\r\nbody\r\n"
    kept = Summary(summary.build(raw))
    assert summary.covers(_items(b"ENVELOPE").items, kept)
    assert not summary.covers(_items(b"BODY.PEEK[HEADER]").items, kept)
    assert not summary.covers(_items(b"RFC822.HEADER").items, kept)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x02\x01\x00\x00\x00\x00",
                                  summary.build(PLAIN)[:-3]])
def test_damaged_summaries_raise_summary_error(data: bytes) -> None:
    with pytest.raises(SummaryError):
        Summary(data)

"""ENVELOPE, BODYSTRUCTURE and BODY[section] rendered from a message's bytes.

The expected values were written by hand against RFC 3501's grammar (section 9)
and its rules for sections (6.4.5) and structures (7.4.2); the sizes are counted
in the comments beside them. IMAPClient's response parser then reads what we
render, as a client would.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from imapclient.response_parser import parse_fetch_response
from imapclient.response_types import Address

from beep_mail.imap import render
from beep_mail.imap.render import MAX_DEPTH, Message, partial, quote

# RFC 3501's own example message (section 7.4.2 renders its ENVELOPE and BODY).
PLAIN = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Terry,\r\n"
    b"the minutes follow.\r\n"
)

ALTERNATIVE = (
    b"From: Alice <alice@gw.gov.example>\r\n"
    b"To: bob@peer.gov.example\r\n"
    b"Subject: Agenda\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 at ten.\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Caf&eacute; at ten.</p>\r\n"
    b"--alt--\r\n"
)

MIXED_HEADER = (
    b"From: Alice <alice@gw.gov.example>\r\n"
    b"To: bob@peer.gov.example\r\n"
    b"Subject: Report\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="mix"\r\n'
    b"\r\n"
)
ATTACHMENT_MIME = (
    b"Content-Type: application/pdf; name*=utf-8''Bericht%20%C3%BCber.pdf\r\n"
    b"Content-Disposition: attachment;\r\n"
    b" filename*=utf-8''Bericht%20%C3%BCber.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
)
MIXED_BODY = (
    b"This is a preamble.\r\n"
    b"--mix\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"See the report.\r\n"
    b"--mix\r\n" + ATTACHMENT_MIME + b"JVBERi0xLjQK\r\n"
    b"--mix--\r\n"
    b"epilogue\r\n"
)
MIXED = MIXED_HEADER + MIXED_BODY

# 214 octets in 13 lines, the last without its line end: the CR LF after it
# belongs to the delimiter line of the enclosing multipart.
INNER = (
    b"From: Bob <bob@peer.gov.example>\r\n"
    b"Subject: Report\r\n"
    b"Content-Type: multipart/mixed; boundary=deep\r\n"
    b"\r\n"
    b"--deep\r\n"
    b"\r\n"
    b"Inner text.\r\n"
    b"--deep\r\n"
    b"Content-Type: image/png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--deep--"
)
ALTERNATIVE_PART = (
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Forwarded.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Forwarded.</p>\r\n"
    b"--inner--"
)
BINARY_MIME = (
    b"Content-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="data.bin"\r\n'
    b"\r\n"
)
FORWARD = (
    b"From: Carol <carol@gw.gov.example>\r\n"
    b"To: Alice <alice@gw.gov.example>\r\n"
    b"Subject: Fwd: Report\r\n"
    b"Content-Type: multipart/mixed; boundary=outer\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n" + ALTERNATIVE_PART + b"\r\n"
    b"--outer\r\n" + BINARY_MIME + b"0123456789\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: inline\r\n"
    b"\r\n" + INNER + b"\r\n"
    b"--outer--\r\n"
)


def nested(depth: int) -> bytes:
    """A message whose multiparts nest `depth` levels deep."""
    opening = [
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(depth)
    ]
    closing = [b"\r\n--b%d--" % n for n in reversed(range(depth))]
    leaf = b"Content-Type: text/plain\r\n\r\nleaf"
    return b"Subject: deep\r\n" + b"".join(opening) + leaf + b"".join(closing)


def wrapped(depth: int) -> bytes:
    """A message forwarded as message/rfc822 inside itself, `depth` times."""
    return b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: x\r\n\r\nhi\r\n"


def client_parse(item: bytes, value: bytes) -> Any:
    """Let IMAPClient read `* 1 FETCH (item value)` as imaplib hands it over.

    imaplib splits a response at each literal into (text ending in {n}, literal).
    """
    records: list[Any] = []
    rest = b"1 (" + item + b" " + value + b")"
    while match := re.search(rb"\{(\d+)\}\r\n", rest):
        size = int(match.group(1))
        records.append(
            (rest[: match.end() - 2], rest[match.end() : match.end() + size])
        )
        rest = rest[match.end() + size :]
    records.append(rest)
    return parse_fetch_response(records)[1][item]


# --- wire strings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (None, b"NIL"),
        (b"", b'""'),
        ("plain text", b'"plain text"'),
        (b"tab\there", b'"tab\there"'),
        (b'say "hi"', b'{8}\r\nsay "hi"'),
        (b"back\\slash", b"{10}\r\nback\\slash"),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("Café", b"{5}\r\nCaf\xc3\xa9"),
        (b"nul\0dropped", b'"nuldropped"'),
    ],
)
def test_quote(value: bytes | str | None, wire: bytes) -> None:
    assert quote(value) == wire


@pytest.mark.parametrize(
    ("start", "count", "expected"),
    [
        (0, None, b"0123456789"),
        (0, 4, b"0123"),
        (3, 4, b"3456"),
        (8, 100, b"89"),  # a count past the end is truncated
        (10, 5, b""),  # a start at or past the end gives an empty string
        (42, None, b""),
        (2, 0, b""),
    ],
)
def test_partial(start: int, count: int | None, expected: bytes) -> None:
    assert partial(b"0123456789", start, count) == expected


# --- ENVELOPE ----------------------------------------------------------------------


def test_envelope_of_rfc3501_example() -> None:
    # RFC 3501, 7.4.2, gives this ENVELOPE for this header section.
    assert Message(PLAIN).envelope() == (
        b'("Mon, 7 Feb 1994 21:52:25 -0800" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")'
        b'("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        b'"<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_groups() -> None:
    message = Message(
        b"From: alice@gw.gov.example\r\n"
        b"To: Audit team: carol@gw.gov.example, Dan <dan@gw.gov.example>;,\r\n"
        b" erin@peer.gov.example\r\n"
        b"Bcc: undisclosed-recipients:;\r\n"
        b"\r\n"
    )
    assert message.envelope() == (
        b"(NIL NIL "
        b'((NIL NIL "alice" "gw.gov.example")) '
        b'((NIL NIL "alice" "gw.gov.example")) '
        b'((NIL NIL "alice" "gw.gov.example")) '
        b'((NIL NIL "Audit team" NIL)'
        b'(NIL NIL "carol" "gw.gov.example")'
        b'("Dan" NIL "dan" "gw.gov.example")'
        b"(NIL NIL NIL NIL)"
        b'(NIL NIL "erin" "peer.gov.example")) '
        b"NIL "
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b"NIL NIL)"
    )


def test_envelope_missing_fields_are_nil() -> None:
    assert Message(b"Subject: alone\r\n\r\nbody\r\n").envelope() == (
        b'(NIL "alone" NIL NIL NIL NIL NIL NIL NIL NIL)'
    )
    assert Message(b"").envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_empty_sender_and_reply_to_take_from() -> None:
    message = Message(b"From: A <a@x.example>\r\nSender:\r\nReply-To: \r\nTo: \r\n\r\n")
    a = b'(("A" NIL "a" "x.example"))'
    assert (
        message.envelope()
        == b"(NIL NIL " + b" ".join([a, a, a]) + b" NIL NIL NIL NIL NIL)"
    )


def test_envelope_sender_and_reply_to_kept_when_present() -> None:
    message = Message(
        b"From: a@x.example\r\nSender: s@x.example\r\nReply-To: r@x.example\r\n\r\n"
    )
    assert message.envelope() == (
        b'(NIL NIL ((NIL NIL "a" "x.example")) ((NIL NIL "s" "x.example")) '
        b'((NIL NIL "r" "x.example")) NIL NIL NIL NIL NIL)'
    )


@pytest.mark.parametrize(
    ("subject", "wire"),
    [
        # Quotes and backslashes go in a literal, never in an escaped string.
        (b'He said "no" \\o/', b'{16}\r\nHe said "no" \\o/'),
        # 8-bit bytes (raw UTF-8, RFC 6532) go in a literal too.
        (b"Caf\xc3\xa9 at ten", b"{12}\r\nCaf\xc3\xa9 at ten"),
        # Encoded words are the client's to decode (RFC 3501, 7.4.2).
        (b"=?utf-8?q?Caf=C3=A9?= at ten", b'"=?utf-8?q?Caf=C3=A9?= at ten"'),
        # Folding is undone; the white space after the line end stays.
        (b"long\r\n subject", b'"long subject"'),
    ],
)
def test_envelope_subject(subject: bytes, wire: bytes) -> None:
    envelope = Message(b"Subject: " + subject + b"\r\n\r\n").envelope()
    assert envelope == b"(NIL " + wire + b" NIL NIL NIL NIL NIL NIL NIL NIL)"


@pytest.mark.parametrize(
    ("field", "address"),
    [
        (b"alice@gw.gov.example", b'(NIL NIL "alice" "gw.gov.example")'),
        (
            b"alice@gw.gov.example (Alice A.)",
            b'("Alice A." NIL "alice" "gw.gov.example")',
        ),
        (b'"Smith, J." <j@x.example>', b'("Smith, J." NIL "j" "x.example")'),
        (
            b"John Q. Public <jqp@x.example>",
            b'("John Q. Public" NIL "jqp" "x.example")',
        ),
        (b'"john doe"@x.example', b'(NIL NIL "john doe" "x.example")'),
        (
            b"<@r1.example,@r2.example:u@x.example>",
            b'(NIL "@r1.example,@r2.example" "u" "x.example")',
        ),
        (
            b"=?utf-8?q?J=C3=B6rg?= <j@x.example>",
            b'("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.example")',
        ),
        (b"J\xc3\xb6rg <j@x.example>", b'({5}\r\nJ\xc3\xb6rg NIL "j" "x.example")'),
        (b'"A \\"B\\"" <ab@x.example>', b'({5}\r\nA "B" NIL "ab" "x.example")'),
        (b"postmaster", b'(NIL NIL "postmaster" ".MISSING-HOST-NAME.")'),
        (b"user@[192.0.2.1]", b'(NIL NIL "user" "[192.0.2.1]")'),
    ],
)
def test_envelope_from_address(field: bytes, address: bytes) -> None:
    envelope = Message(b"From: " + field + b"\r\n\r\n").envelope()
    assert envelope.startswith(b"(NIL NIL (" + address + b") ")


@pytest.mark.parametrize("field", [b"", b" ", b"<>", b",,", b"(just a comment)"])
def test_envelope_address_list_with_nobody_is_nil(field: bytes) -> None:
    envelope = Message(b"To:" + field + b"\r\n\r\n").envelope()
    assert envelope == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


@pytest.mark.parametrize(
    "field",
    [
        b"a@b.example",
        b"Alice <alice@x.example>",
        b"<alice@x.example>",
        b"  Alice   Q.  Smith  <a.s@x.example> , bob@y.example,,",
        b"a@x.example\t,\r\n b@x.example",
        b"J\xc3\xb6rg <j@x.example>",
        b"=?utf-8?q?J=C3=B6rg?= <j@x.example>, =?utf-8?q?A?= =?utf-8?q?B?= <b@x>",
        b"first.last+tag@sub.x.example",
        b"",
    ],
)
def test_simple_address_lists_read_as_the_full_parser_reads_them(field: bytes) -> None:
    assert render._simple_addresses(field) == render._parsed_addresses(field)


@pytest.mark.parametrize(
    "field",
    [
        b'"Smith, J." <j@x.example>',
        b"a@x.example (Alice)",
        b"Team: a@x.example;",
        b"<@r.example:a@x.example>",
        b"postmaster",
        b"a@b <c@x.example>",
        b"<@x.example>",
        b"user@[192.0.2.1]",
    ],
)
def test_other_address_lists_go_to_the_full_parser(field: bytes) -> None:
    assert render._simple_addresses(field) is None


def test_long_address_list_is_read_in_bounded_time() -> None:
    field = b'"Q" <q@x.example>, ' * 100_000  # 2 MB that the full parser must read
    envelope = Message(b"To: " + field + b"\r\n\r\n").envelope()
    kept = envelope.count(b'("Q" NIL "q" "x.example")')
    assert 0 < kept < 100_000  # the first 64 KiB, cut at a comma
    assert b"(NIL NIL" not in envelope.split(b"((", 1)[1]  # no address cut in two


def test_envelope_reads_only_the_header_section() -> None:
    message = Message(FORWARD)
    message.envelope()
    message.section("HEADER.FIELDS (FROM SUBJECT)")
    assert message._tree is None  # no MIME walk for what FETCH 1:* asks of all


def test_envelope_parsed_by_imapclient() -> None:
    message = Message(
        b"Date: Tue, 03 Dec 2024 10:00:00 +0100\r\n"
        b'From: "Smith \\"JJ\\" John" <j@x.example>\r\n'
        b"To: Team: a@x.example, B <b@y.example>;\r\n"
        b'Subject: Caf\xc3\xa9 "special" \\ day\r\n'
        b"In-Reply-To: <1@x.example>\r\n"
        b"Message-ID: <2@x.example>\r\n"
        b"\r\n"
    )
    envelope = client_parse(b"ENVELOPE", message.envelope())
    # IMAPClient gives the local time without a zone; bring it back to UTC.
    assert envelope.date.astimezone(UTC) == datetime(2024, 12, 3, 9, 0, tzinfo=UTC)
    assert envelope.subject == b'Caf\xc3\xa9 "special" \\ day'
    assert envelope.from_ == (Address(b'Smith "JJ" John', None, b"j", b"x.example"),)
    assert envelope.sender == envelope.from_ == envelope.reply_to
    assert envelope.to == (
        Address(None, None, b"Team", None),
        Address(None, None, b"a", b"x.example"),
        Address(b"B", None, b"b", b"y.example"),
        Address(None, None, None, None),
    )
    assert envelope.cc is None and envelope.bcc is None
    assert envelope.in_reply_to == b"<1@x.example>"
    assert envelope.message_id == b"<2@x.example>"


# --- BODYSTRUCTURE -----------------------------------------------------------------


def test_bodystructure_of_text_plain_counts_lines() -> None:
    # "Hello Terry,\r\n" is 14 octets, "the minutes follow.\r\n" 21: 35 in 2 lines.
    message = Message(PLAIN)
    assert message.bodystructure() == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 35 2 NIL NIL NIL NIL)'
    )
    assert message.bodystructure(extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 35 2)'
    )


def test_bodystructure_defaults_without_content_type() -> None:
    # RFC 2045, 5.2: text/plain in US-ASCII. "one\r\ntwo" is 8 octets in 2 lines.
    assert Message(b"Subject: x\r\n\r\none\r\ntwo").bodystructure() == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 8 2 NIL NIL NIL NIL)'
    )
    assert Message(b"").bodystructure(extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0)'
    )


def test_bodystructure_of_multipart_alternative() -> None:
    # "Caf=C3=A9 at ten." is 17 octets, "<p>Caf&eacute; at ten.</p>" 26; the CR LF
    # before each delimiter line belongs to the delimiter (RFC 2046, 5.1.1).
    message = Message(ALTERNATIVE)
    assert message.bodystructure() == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 17 1'
        b" NIL NIL NIL NIL)"
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 26 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "alt") NIL NIL NIL)'
    )
    assert message.bodystructure(extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 17 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 26 1) "ALTERNATIVE")'
    )


def test_bodystructure_passes_rfc2231_parameters_through() -> None:
    # "See the report." is 15 octets; "JVBERi0xLjQK" 12.
    assert Message(MIXED).bodystructure() == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME*" "utf-8\'\'Bericht%20%C3%BCber.pdf") NIL NIL'
        b' "BASE64" 12 NIL'
        b' ("ATTACHMENT" ("FILENAME*" "utf-8\'\'Bericht%20%C3%BCber.pdf")) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "mix") NIL NIL NIL)'
    )


def test_bodystructure_rfc2231_continuations_and_extension_fields() -> None:
    message = Message(
        b"Content-Type: text/plain; charset*=utf-8'de'utf-8;\r\n"
        b"  format=flowed (a comment)\r\n"
        b"Content-Disposition: attachment; filename*0*=utf-8''Ber%C3%BCcht;\r\n"
        b' filename*1="-2024.txt"; size=4\r\n'
        b"Content-ID: <t1@gw.gov.example>\r\n"
        b"Content-Description: =?utf-8?q?J=C3=A4hrlich?=\r\n"
        b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
        b"Content-Language: de (German), en\r\n"
        b"Content-Location: http://gw.gov.example/r.txt\r\n"
        b"\r\n"
        b"text"
    )
    assert message.bodystructure() == (
        b'("TEXT" "PLAIN" ("CHARSET*" "utf-8\'de\'utf-8" "FORMAT" "flowed")'
        b' "<t1@gw.gov.example>" "=?utf-8?q?J=C3=A4hrlich?=" "7BIT" 4 1'
        b' "Q2hlY2sgSW50ZWdyaXR5IQ=="'
        b' ("ATTACHMENT" ("FILENAME*0*" "utf-8\'\'Ber%C3%BCcht"'
        b' "FILENAME*1" "-2024.txt" "SIZE" "4"))'
        b' ("de" "en") "http://gw.gov.example/r.txt")'
    )


FORWARD_INNER_ENVELOPE = (
    b'(NIL "Report" (("Bob" NIL "bob" "peer.gov.example"))'
    b' (("Bob" NIL "bob" "peer.gov.example")) (("Bob" NIL "bob" "peer.gov.example"))'
    b" NIL NIL NIL NIL NIL)"
)


def test_bodystructure_of_nested_multiparts_and_attached_message() -> None:
    # "Forwarded." is 10 octets, "<p>Forwarded.</p>" 17, "0123456789" 10; the
    # attached message is INNER, 214 octets in 13 lines; in it, "Inner text."
    # is 11 and "iVBORw0KGgo=" 12, and a part without a header is text/plain.
    assert Message(FORWARD).bodystructure() == (
        b"("
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 17 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 10 NIL'
        b' ("ATTACHMENT" ("FILENAME" "data.bin")) NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 214 '
        + FORWARD_INNER_ENVELOPE
        + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 11 1'
        b" NIL NIL NIL NIL)"
        b'("IMAGE" "PNG" NIL NIL NIL "BASE64" 12 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "deep") NIL NIL NIL)'
        b' 13 NIL ("INLINE" NIL) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
    )
    assert Message(FORWARD).bodystructure(extensible=False) == (
        b"("
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 17 1) "ALTERNATIVE")'
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 10)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 214 '
        + FORWARD_INNER_ENVELOPE
        + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 11 1)'
        b'("IMAGE" "PNG" NIL NIL NIL "BASE64" 12) "MIXED") 13)'
        b' "MIXED")'
    )


def test_bodystructure_of_a_lone_attached_message() -> None:
    # "Subject: x\r\n\r\nhi\r\n" is 18 octets in 3 lines; "hi\r\n" 4 in 1.
    message = Message(b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nhi\r\n")
    assert message.bodystructure(extensible=False) == (
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 18'
        b' (NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 1) 3)'
    )


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/mixed",  # no boundary
        b"multipart/mixed; boundary=missing",  # no delimiter line in the body
        b"text",  # no subtype
        b"text/pl ain",  # not a token
        b"/plain",
        b";;;",
    ],
)
def test_bodystructure_of_malformed_types_is_text_plain(content_type: bytes) -> None:
    message = Message(b"Content-Type: " + content_type + b"\r\n\r\nbody")
    assert message.bodystructure(extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 1)'
    )
    assert message.section("1") == b"body"


def test_bodystructure_of_encoded_message_part_is_opaque() -> None:
    # RFC 2046 allows message/rfc822 in 7bit, 8bit or binary alone.
    message = Message(
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"U3ViamVjdDogeA0KDQpoaQ0K"
    )
    assert message.bodystructure(extensible=False) == (
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 24)'
    )


def test_bodystructure_of_unterminated_multipart() -> None:
    message = Message(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\n\r\none\r\n"
        b"--b\r\n\r\ntwo"
    )
    assert message.bodystructure(extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1)'
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1) "MIXED")'
    )


def test_bodystructure_of_digest_defaults_to_messages() -> None:
    # The part has no header: "Subject: one\r\n\r\n1" is 17 octets in 3 lines.
    message = Message(
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n\r\nSubject: one\r\n\r\n1\r\n"
        b"--d--\r\n"
    )
    assert message.bodystructure(extensible=False) == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 17'
        b' (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 1 1) 3) "DIGEST")'
    )


@pytest.mark.parametrize(
    ("build", "kind", "path", "opaque"),
    [
        # Part 1 is the multipart one level down, and so on.
        (nested, b'"MIXED"', MAX_DEPTH, b"--b100\r\n"),
        # Part 1 is the message/rfc822 body itself, 1.1 the message in it.
        (wrapped, b'"MESSAGE" "RFC822"', MAX_DEPTH + 1, b"Content-Type: message/"),
    ],
)
def test_deep_nesting_is_bounded(
    build: Any, kind: bytes, path: int, opaque: bytes
) -> None:
    message = Message(build(1000))
    structure = message.bodystructure()  # no RecursionError
    assert structure.count(kind) == MAX_DEPTH
    assert structure.count(b'"APPLICATION" "OCTET-STREAM"') == 1
    assert client_parse(b"BODYSTRUCTURE", structure)  # a client can read it too

    # The part at the bound is one opaque leaf, with nothing inside.
    deepest = message.section(".".join(["1"] * path))
    assert deepest is not None and deepest.startswith(opaque)
    assert message.section(".".join(["1"] * (path + 1))) is None


def test_nesting_at_the_bound_is_read_in_full() -> None:
    structure = Message(nested(MAX_DEPTH)).bodystructure(extensible=False)
    assert structure.count(b'"MIXED"') == MAX_DEPTH
    assert b"OCTET-STREAM" not in structure
    assert Message(nested(MAX_DEPTH)).section(".".join(["1"] * MAX_DEPTH)) == b"leaf"


def test_parts_past_the_bound_make_their_multipart_opaque(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render, "MAX_PARTS", 4)

    def multipart(count: int) -> bytes:
        parts = b"".join(b"--b\r\n\r\n%d\r\n" % n for n in range(count))
        return b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--"

    assert Message(multipart(4)).bodystructure(extensible=False).count(b'"TEXT"') == 4
    # Five parts of 10 octets each, and the close delimiter: 55.
    assert Message(multipart(5)).bodystructure(extensible=False) == (
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 55)'
    )


def test_bodystructure_parsed_by_imapclient() -> None:
    body = client_parse(b"BODYSTRUCTURE", Message(FORWARD).bodystructure())
    assert body.is_multipart
    parts, subtype = body[0], body[1]
    assert subtype == b"MIXED"
    alternative, binary, attached = parts
    assert alternative.is_multipart and alternative[1] == b"ALTERNATIVE"
    assert [part[:2] for part in alternative[0]] == [
        (b"TEXT", b"PLAIN"),
        (b"TEXT", b"HTML"),
    ]
    assert binary[:7] == (
        b"APPLICATION",
        b"OCTET-STREAM",
        None,
        None,
        None,
        b"7BIT",
        10,
    )
    assert binary[8] == (b"ATTACHMENT", (b"FILENAME", b"data.bin"))
    assert attached[:7] == (b"MESSAGE", b"RFC822", None, None, None, b"7BIT", 214)
    assert attached[7][1] == b"Report"  # the attached message's envelope
    assert attached[8][1][:2] == (b"IMAGE", b"PNG")  # not made BodyData inside
    assert attached[9] == 13

    mixed = client_parse(b"BODY", Message(MIXED).bodystructure(extensible=False))
    assert mixed[0][1][2] == (b"NAME*", b"utf-8''Bericht%20%C3%BCber.pdf")


# --- BODY[section] -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", MIXED),
        ("HEADER", MIXED_HEADER),
        ("TEXT", MIXED_BODY),
        ("1", b"See the report."),
        ("2", b"JVBERi0xLjQK"),
        ("2.MIME", ATTACHMENT_MIME),
        ("1.MIME", b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"),
        ("3", None),
        ("2.1", None),  # an attachment has no parts
        ("2.HEADER", None),  # HEADER and TEXT belong to message/rfc822 parts
        ("2.TEXT", None),
        ("MIME", None),  # MIME needs a part
        ("0", None),
        ("1.", None),
        ("HEADER.FIELDS", None),  # no list
        ("SOMETHING", None),
    ],
)
def test_section_of_multipart_mixed(spec: str, expected: bytes | None) -> None:
    assert Message(MIXED).section(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", ALTERNATIVE_PART),
        ("1.1", b"Forwarded."),
        ("1.2", b"<p>Forwarded.</p>"),
        ("1.2.MIME", b"Content-Type: text/html; charset=utf-8\r\n\r\n"),
        ("2", b"0123456789"),
        ("2.MIME", BINARY_MIME),
        ("3", INNER),
        ("3.HEADER", INNER[: INNER.index(b"\r\n\r\n") + 4]),
        ("3.TEXT", INNER[INNER.index(b"\r\n\r\n") + 4 :]),
        ("3.HEADER.FIELDS (SUBJECT)", b"Subject: Report\r\n\r\n"),
        ("3.HEADER.FIELDS.NOT (SUBJECT CONTENT-TYPE)", INNER[:34] + b"\r\n"),
        ("3.1", b"Inner text."),
        ("3.1.MIME", b"\r\n"),  # a part without a header has the empty line alone
        ("3.2", b"iVBORw0KGgo="),
        (
            "3.2.MIME",
            b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        ),
        ("3.3", None),
        ("4", None),
        ("1.3", None),
    ],
)
def test_section_of_nested_parts(spec: str, expected: bytes | None) -> None:
    assert Message(FORWARD).section(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", b"Hello Terry,\r\nthe minutes follow.\r\n"),  # a single part is part 1
        ("TEXT", b"Hello Terry,\r\nthe minutes follow.\r\n"),
        ("1.MIME", PLAIN[: PLAIN.index(b"\r\n\r\n") + 4]),
        ("2", None),
        ("1.1", None),
        (
            "HEADER.FIELDS (FROM SUBJECT)",
            (
                b"From: Terry Gray <gray@cac.washington.edu>\r\n"
                b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n\r\n"
            ),
        ),
        # Matching ignores case, keeps the message's order, and quoted names work.
        (
            'HEADER.FIELDS (subject "CC" x-absent)',
            (
                b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
                b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
                b"\r\n"
            ),
        ),
        ("HEADER.FIELDS (X-ABSENT)", b"\r\n"),
        (
            "HEADER.FIELDS.NOT (DATE FROM SUBJECT TO CC MESSAGE-ID)",
            b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n",
        ),
    ],
)
def test_section_of_single_part(spec: str, expected: bytes | None) -> None:
    assert Message(PLAIN).section(spec) == expected


def test_header_fields_keep_folding() -> None:
    message = Message(
        b"Received: from a\r\n by b; Tue, 3 Dec 2024\r\n"
        b"To: x@y.example,\r\n\tz@y.example\r\n"
        b"Subject: s\r\n"
        b"\r\nbody"
    )
    assert message.section("HEADER.FIELDS (TO RECEIVED)") == (
        b"Received: from a\r\n by b; Tue, 3 Dec 2024\r\n"
        b"To: x@y.example,\r\n\tz@y.example\r\n\r\n"
    )
    assert message.section("HEADER.FIELDS.NOT (TO RECEIVED)") == b"Subject: s\r\n\r\n"


def test_header_only_message_has_no_empty_line() -> None:
    # RFC 3501, 6.4.5: the blank line is left out only when the message has none.
    message = Message(b"Subject: s\r\nTo: t@x.example\r\n")
    assert message.section("HEADER") == b"Subject: s\r\nTo: t@x.example\r\n"
    assert message.section("HEADER.FIELDS (TO)") == b"To: t@x.example\r\n"
    assert message.section("TEXT") == b""


def test_partial_of_a_section() -> None:
    message = Message(FORWARD)
    section = message.section("3.1")
    assert section is not None
    assert partial(section, 6, 4) == b"text"
    assert partial(message.section("") or b"", 0, 6) == b"From: "


def test_malformed_messages_never_raise() -> None:
    # Every prefix of a nested message, and every byte dropped in turn: all
    # render, and a client reads what was rendered.
    variants = [FORWARD[:cut] for cut in range(len(FORWARD) + 1)]
    variants += [
        FORWARD[:cut] + FORWARD[cut + 1 :] for cut in range(0, len(FORWARD), 7)
    ]
    for raw in variants:
        message = Message(raw)
        client_parse(b"BODYSTRUCTURE", message.bodystructure())
        client_parse(b"ENVELOPE", message.envelope())
        for spec in ("", "HEADER", "TEXT", "1", "3.1", "3.TEXT", "2.MIME"):
            message.section(spec)
        message.text_for_search()


# --- what SEARCH reads ---------------------------------------------------------------


def test_header_value_decodes_encoded_words() -> None:
    message = Message(
        b"Subject: Re: =?utf-8?q?Caf=C3=A9?=\r\n =?iso-8859-1?q?_M=FCnchen?= ok\r\n"
        b"X-Unknown-Charset: =?x-nowhere?q?abc?=\r\n"
        b"X-Raw: J\xc3\xb6rg\r\n"
        b"\r\n"
    )
    assert message.header_value("subject") == "Re: Café München ok"
    assert message.header_value("X-UNKNOWN-CHARSET") == "abc"
    assert message.header_value("x-raw") == "Jörg"
    assert message.header_value("cc") is None


def test_text_for_search_decodes_parts() -> None:
    assert Message(ALTERNATIVE).text_for_search() == (
        "Café at ten.\n<p>Caf&eacute; at ten.</p>"
    )
    base64 = Message(
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        b"TfxuY2hlbg==\r\n"
    )
    assert base64.text_for_search() == "München"
    # Attachments that are not text, and the parts of attached messages.
    assert Message(FORWARD).text_for_search() == (
        "Forwarded.\n<p>Forwarded.</p>\nInner text."
    )


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (
            b"Date: Tue, 03 Dec 2024 10:00:00 +0100\r\n",
            datetime(2024, 12, 3, 10, 0, tzinfo=timezone(timedelta(hours=1))),
        ),
        (
            b"Date: Tue, 03 Dec 2024 10:00:00 -0000\r\n",
            datetime(2024, 12, 3, 10, 0, tzinfo=UTC),
        ),
        (b"Date: yesterday\r\n", None),
        (b"", None),
    ],
)
def test_date(field: bytes, expected: datetime | None) -> None:
    assert Message(field + b"\r\n").date() == expected

"""Policy at the door, proven through real sockets.

Every refusal of the submission and inbound roles, with its exact reply code and
enhanced status code (RFC 3463), against a whole gateway running in a thread.
Policy decisions read as tables of (what the client sends, what the gateway must
answer); the raw client below sends bytes exactly as written, because smtplib
would repair or refuse much of what an attacker sends (bare LF, NUL, non-ASCII).

Most tests run on SQLite only; the core decisions run on both stores.
"""

from __future__ import annotations

import base64
import inspect
import re
import smtplib
import socket
import sqlite3
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Self

import idna
import pytest

from beep_mail.smtp import replies
from beep_mail.smtp.replies import Reply
from beep_mail.store import accounts
from beep_mail.store import queue as queue_store
from tests.support import LOCAL, PASSWORD, PEER, GatewayThread, Site, message, wait_for

# Delivery is switched off: what the door let in stays in the queue, as "queued".
HOP = "localhost:9"
EVIL = "evil.test"
NUL = "\0"


# -- a raw SMTP client ---------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One reply as read from the wire: its code, enhanced code, text and lines."""

    code: int
    status: str
    text: str
    lines: tuple[str, ...]

    @property
    def pair(self) -> tuple[int, str]:
        return self.code, self.status


_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def _answer(lines: list[str]) -> Answer:
    last = lines[-1]
    rest = last[4:]
    status, _, text = rest.partition(" ")
    if not _STATUS.match(status):
        status, text = "", rest
    return Answer(int(last[:3]), status, text, tuple(lines))


class Wire:
    """A raw SMTP client: bytes leave exactly as written, every reply is kept."""

    def __init__(self, port: int, source: str = "127.0.0.1",
                 timeout: float = 10) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.buffer = b""
        self.transcript: list[tuple[str, Answer]] = []
        try:
            self.greeting = self._read("(greeting)")
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _read(self, verb: str) -> Answer:
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"connection closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8"))
            if line[3:4] != b"-":
                answer = _answer(lines)
                self.transcript.append((verb, answer))
                return answer

    def command(self, line: str | bytes) -> Answer:
        raw = line.encode("ascii") if isinstance(line, str) else line
        verb = re.split(rb"[ :]", raw, maxsplit=1)[0].upper().decode("ascii", "replace")
        self.sock.sendall(raw + b"\r\n")
        return self._read(verb)

    def ehlo(self) -> Answer:
        return self.command("EHLO client.test")

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command("STARTTLS").code == 220
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def auth(self, user: str, password: str = PASSWORD) -> Answer:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        return self.command(f"AUTH PLAIN {blob}")

    def data(self, content: bytes) -> Answer:
        """Send DATA, then `content` as it is (it must end with CRLF), then the dot.

        The content is not dot-stuffed: a test that wants a stuffed line writes it.
        """
        go_ahead = self.command("DATA")
        if go_ahead.code != 354:
            return go_ahead
        self.sock.sendall(content + b".\r\n")
        return self._read("(end of data)")

    def rcpt_alone(self, sender: str, rcpt: str | bytes) -> tuple[int, str]:
        """The reply to one RCPT TO argument, in a transaction of its own."""
        assert self.command(f"MAIL FROM:<{sender}>").code == 250
        raw = rcpt.encode() if isinstance(rcpt, str) else rcpt
        pair = self.command(b"RCPT TO:" + raw).pair
        self.command("RSET")
        return pair

    def send_mail(self, sender: str, rcpt: str, content: bytes) -> Answer:
        """A whole transaction; the first reply that is not a success ends it."""
        for line in (f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>"):
            answer = self.command(line)
            if answer.code != 250:
                return answer
        return self.data(content)


_ENHANCED = re.compile(r"^([245])\d\d[ -]([245])\.\d{1,3}\.\d{1,3}( |$)")
# Replies RFC 2034 leaves without an enhanced code: greeting, challenges, go-ahead.
_EXEMPT = (220, 334, 354)


def assert_enhanced(*wires: Wire) -> None:
    """Every reply line carries an enhanced code of its own class (EHLO excepted)."""
    for wire in wires:
        for verb, answer in wire.transcript:
            if verb == "EHLO" or answer.code in _EXEMPT:
                continue
            for line in answer.lines:
                found = _ENHANCED.match(line)
                assert found, f"{verb}: no enhanced status code in {line!r}"
                assert found.group(1) == found.group(2), f"{verb}: {line!r}"


# -- sites and gateways --------------------------------------------------------


def gateway(site: Site, **overrides: str) -> GatewayThread:
    return GatewayThread(site.settings(BEEPMAIL_DELIVERY__ENABLED="false", **overrides))


def officers(site: Site) -> tuple[str, str]:
    """alice and carol, local users; the peer domain approved.

    The peer takes plain mail, so that no OpenPGP key decides a test about the
    door's domain rules.
    """
    alice, carol = site.add_user("alice"), site.add_user("carol")
    site.allow(PEER, next_hop=HOP, encryption="none")
    return alice, carol


def queued(site: Site) -> list[queue_store.QueueRow]:
    db = site.db()
    try:
        return queue_store.list_rows(db.engine, include_final=True)
    finally:
        db.close()


def disable(site: Site, address: str) -> None:
    db = site.db()
    try:
        with db.engine.begin() as connection:
            accounts.set_user_disabled(connection, address, True)
    finally:
        db.close()


@contextmanager
def signed_in(site: Site, port: int, user: str,
              source: str = "127.0.0.1") -> Iterator[Wire]:
    """A submission session after EHLO, STARTTLS, EHLO and a good AUTH."""
    with Wire(port, source) as wire:
        wire.ehlo()
        wire.starttls(site.ssl_context())
        wire.ehlo()
        assert wire.auth(user).pair == (235, "2.7.0")
        yield wire


@contextmanager
def inbound(port: int) -> Iterator[Wire]:
    with Wire(port) as wire:
        wire.ehlo()
        yield wire


def simple(sender: str, rcpt: str, subject: str = "Hello") -> bytes:
    return message(sender, rcpt, subject=subject)


def sqlite_path(site: Site) -> Path:
    url = site.settings().database_url
    assert url.startswith("sqlite:///")
    return Path(url[len("sqlite:///") :])


# -- the reply table, without a network ----------------------------------------


REPLY_CONSTANTS = sorted(
    (name, value) for name, value in vars(replies).items() if isinstance(value, Reply)
)


@pytest.mark.parametrize(("name", "reply"), REPLY_CONSTANTS)
def test_every_reply_constant_has_matching_classes(name: str, reply: Reply) -> None:
    assert str(reply.code)[0] == reply.status[0], name
    assert _ENHANCED.match(str(reply)), name


def test_a_reply_with_mismatched_classes_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        Reply(250, "5.0.0", "contradiction")


TOO_BIG = str(replies.TOO_BIG.format(limit=200000))
LINE_TOO_LONG = str(replies.LINE_TOO_LONG.format(line_limit=998))

# (line aiosmtpd writes, line the client must see)
REWRITES = [
    ('500 Error: command "FOO" not recognized',
     '500 5.5.2 command "FOO" not recognized'),
    ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
    ("503 Error: need RCPT command", str(replies.NEED_RECIPIENT)),
    ("552 Error: Too much mail data", TOO_BIG),
    ("552 Error: message size exceeds fixed maximum message size", TOO_BIG),
    ("530 Must issue a STARTTLS command first", str(replies.TLS_FIRST)),
    ("500 Line too long (see RFC5321 4.5.3.1.6)", LINE_TOO_LONG),
    ("503 Already authenticated", str(replies.ALREADY_AUTHENTICATED)),
    ("250 OK", "250 2.0.0 OK"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("500 Error: strict ASCII mode", "500 5.5.2 strict ASCII mode"),
    # Already enhanced, or exempt by RFC 2034: left as they are.
    ("530 5.7.0 Authentication required", "530 5.7.0 Authentication required"),
    ("220 localhost beep-mail", "220 localhost beep-mail"),
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 ", "334 "),
]


@pytest.mark.parametrize(("line", "expected"), REWRITES)
def test_rewrite_gives_aiosmtpd_lines_an_enhanced_code(
    line: str, expected: str
) -> None:
    assert replies.rewrite(line, limit=200000, line_limit=998) == expected


# Every other line aiosmtpd 1.4 can write by itself: whatever the text, the client
# gets an enhanced code of the right class.
AIOSMTPD_LINES = [
    "500 Error: bad syntax", "500 Command line too long",
    "501 Syntax: EHLO hostname", "501 Syntax: RCPT TO: <address>",
    "501 Not enough value", "501 Too many values", "501 Error: SMTPUTF8 disabled",
    "502 EXPN not implemented", "502 Could not VRFY x",
    "503 Error: need MAIL command", "503 Error: nested MAIL command",
    "503 Error: send HELO first", "454 TLS not available",
    "554 Command refused due to lack of security",
    "555 MAIL FROM parameters not recognized or not implemented",
]


@pytest.mark.parametrize("line", AIOSMTPD_LINES)
def test_rewrite_covers_every_aiosmtpd_line(line: str) -> None:
    rewritten = replies.rewrite(line, limit=200000, line_limit=998)
    found = _ENHANCED.match(rewritten)
    assert found and found.group(1) == found.group(2) == line[0], rewritten
    assert rewritten[:3] == line[:3]


# -- the core decisions, on both stores ----------------------------------------


def test_submission_core(site: Site) -> None:
    alice, carol = officers(site)
    with (
        gateway(site) as gw,
        smtplib.SMTP("127.0.0.1", gw.submission, timeout=10) as client,
    ):
        client.starttls(context=site.ssl_context())
        client.ehlo()
        code, text = client.mail(alice)
        assert (code, text.split()[0]) == (530, b"5.7.0")

        assert client.login(alice, PASSWORD)[0] == 235
        assert client.mail(alice)[0] == 250
        code, text = client.rcpt(f"nobody@{LOCAL}")
        assert (code, text.split()[0]) == (550, b"5.1.1")
        code, text = client.rcpt(f"bob@{EVIL}")
        assert (code, text.split()[0]) == (550, b"5.7.1")
        assert b"is not an approved correspondent domain" in text
        assert client.rcpt(carol)[0] == 250
        code, text = client.data(simple(alice, carol))
        assert (code, text.split()[0]) == (250, b"2.0.0")
        local_id = text.decode().rsplit(" ", 1)[1]

        assert client.mail(alice)[0] == 250
        assert client.rcpt(f"bob@{PEER}")[:1] == (250,)
        code, text = client.data(simple(alice, f"bob@{PEER}"))
        assert (code, text.split()[0]) == (250, b"2.0.0")
        peer_id = text.decode().rsplit(" ", 1)[1]

    rows = queued(site)
    assert {(row.message_id, row.recipient, row.state) for row in rows} == {
        (local_id, carol, "queued"), (peer_id, f"bob@{PEER}", "queued")}


def test_inbound_core(site: Site) -> None:
    alice, _ = officers(site)
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        refused = wire.send_mail(f"x@{EVIL}", alice, simple(f"x@{EVIL}", alice))
        unknown = wire.send_mail(f"x@{PEER}", f"nobody@{LOCAL}", b"")
        wire.command("RSET")
        accepted = wire.send_mail(f"x@{PEER}", alice, simple(f"x@{PEER}", alice))
    assert refused.pair == (550, "5.7.1")
    assert unknown.pair == (550, "5.1.1")
    assert accepted.pair == (250, "2.0.0")
    assert [(row.recipient, row.mail_from, row.state) for row in queued(site)] == [
        (alice, f"x@{PEER}", "queued")]
    assert_enhanced(wire)


# -- submission: TLS, AUTH and the sender --------------------------------------


# (command before STARTTLS, expected reply)
BEFORE_STARTTLS = [
    ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", (530, "5.7.0")),
    ("AUTH LOGIN", (530, "5.7.0")),
    (f"MAIL FROM:<alice@{LOCAL}>", (530, "5.7.0")),
    (f"RCPT TO:<carol@{LOCAL}>", (530, "5.7.0")),
    ("DATA", (530, "5.7.0")),
    ("HELO client.test", (530, "5.7.0")),
    ("RSET", (530, "5.7.0")),
    (f"VRFY alice@{LOCAL}", (530, "5.7.0")),
    ("EXPN staff", (530, "5.7.0")),
    ("HELP", (530, "5.7.0")),
    ("FOO", (530, "5.7.0")),
    ("NOOP", (250, "2.0.0")),
]


def test_submission_before_starttls(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    with gateway(site) as gw, Wire(gw.submission) as wire:
        offered = wire.ehlo().lines
        seen = [(line, wire.command(line).pair) for line, _ in BEFORE_STARTTLS]
        wire.starttls(site.ssl_context())
        offered_after = wire.ehlo().lines
        assert wire.auth(alice).pair == (235, "2.7.0")
        assert wire.command("QUIT").pair == (221, "2.0.0")

    assert "250-STARTTLS" in offered
    assert not any("AUTH" in line for line in offered)
    assert seen == BEFORE_STARTTLS
    assert "250-AUTH LOGIN PLAIN" in offered_after
    assert_enhanced(wire)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


# (what the client sends after STARTTLS, the reply) for alice, whose password is
# PASSWORD. 334 challenges carry no enhanced code (RFC 2034).
AUTH_TRANSCRIPT = [
    ("AUTH LOGIN", (334, "")),
    (_b64(f"alice@{LOCAL}"), (334, "")),
    (_b64("wrong"), (535, "5.7.8")),
    ("AUTH LOGIN", (334, "")),
    ("*", (501, "5.7.0")),
    ("AUTH PLAIN", (334, "")),
    ("*", (501, "5.7.0")),
    ("AUTH PLAIN !!!", (501, "5.5.2")),
    (f"AUTH PLAIN {_b64('only one part')}", (501, "5.5.2")),
    ("AUTH CRAM-MD5", (504, "5.5.4")),
    (f"AUTH PLAIN {_b64(f'{NUL}nobody@{LOCAL}{NUL}{PASSWORD}')}", (535, "5.7.8")),
    (f"AUTH PLAIN {_b64(f'{NUL}ALICE@{LOCAL}{NUL}{PASSWORD}')}", (235, "2.7.0")),
    (f"AUTH PLAIN {_b64(f'{NUL}alice@{LOCAL}{NUL}{PASSWORD}')}", (503, "5.5.1")),
]


def test_auth_transcript(sqlite_site: Site) -> None:
    site = sqlite_site
    officers(site)
    with gateway(site) as gw, Wire(gw.submission) as wire:
        wire.ehlo()
        wire.starttls(site.ssl_context())
        wire.ehlo()
        seen = [(line, wire.command(line).pair) for line, _ in AUTH_TRANSCRIPT]
    assert seen == AUTH_TRANSCRIPT
    assert_enhanced(wire)


def test_mail_before_auth_is_refused(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, carol = officers(site)
    with gateway(site) as gw, Wire(gw.submission) as wire:
        wire.ehlo()
        wire.starttls(site.ssl_context())
        wire.ehlo()
        seen = [wire.command(line).pair for line in (
            f"MAIL FROM:<{alice}>", f"RCPT TO:<{carol}>", "DATA")]
    assert seen == [(530, "5.7.0")] * 3
    assert queued(site) == []
    assert_enhanced(wire)


# (MAIL FROM argument, expected reply) for alice, signed in.
SENDERS = [
    (f"<alice@{LOCAL}>", (250, "2.1.0")),
    (f"<ALICE@{LOCAL.upper()}>", (250, "2.1.0")),
    ("<Alice@Ministry.Gov.Example>", (250, "2.1.0")),
    (f"<alice@{LOCAL}.>", (250, "2.1.0")),
    (f"<carol@{LOCAL}>", (550, "5.7.1")),
    (f"<alice@{PEER}>", (550, "5.7.1")),
    (f"<alice@{LOCAL}.{EVIL}>", (550, "5.7.1")),
    (f"<alice%{LOCAL}@{EVIL}>", (550, "5.7.1")),
    ("<>", (550, "5.7.1")),
    (f'<"alice"@{LOCAL}>', (250, "2.1.0")),
    (f"<@relay.test:alice@{LOCAL}>", (553, "5.1.7")),
    (f"<alice@{LOCAL}@{EVIL}>", (553, "5.1.7")),
    (f"<alice@{LOCAL}> SIZE=999999999", (552, "5.3.4")),
    (f"<alice@{LOCAL}> SIZE=199999", (250, "2.1.0")),
    (f"<alice@{LOCAL}> SMTPUTF8", (501, "5.5.4")),
]


def test_sender_must_be_the_signed_in_user(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        seen = []
        for sender, _ in SENDERS:
            answer = wire.command(f"MAIL FROM:{sender}")
            seen.append((sender, answer.pair))
            if answer.code == 250:
                wire.command("RSET")
    assert seen == SENDERS
    assert_enhanced(wire)


# -- submission: recipients ----------------------------------------------------

# The look-alike: a Cyrillic "е" (U+0435) in place of the Latin "e" of "peer".
LOOKALIKE = "p\u0435er.gov.example"
LOOKALIKE_A = idna.encode(LOOKALIKE).decode("ascii")

# (RCPT TO argument, expected reply), for alice, signed in; peer.gov.example approved.
RECIPIENTS = [
    (f"<carol@{LOCAL}>", (250, "2.1.5")),
    (f"<CAROL@{LOCAL.upper()}>", (250, "2.1.5")),
    (f"<nobody@{LOCAL}>", (550, "5.1.1")),
    (f"<dave@{LOCAL}>", (550, "5.1.1")),  # exists, but disabled
    (f"<bob@{PEER}>", (250, "2.1.5")),
    (f"<BOB@{PEER.upper()}>", (250, "2.1.5")),
    (f"<bob@{PEER}.>", (250, "2.1.5")),
    (f"<bob@{EVIL}>", (550, "5.7.1")),
    (f"<BOB@{EVIL.upper()}>", (550, "5.7.1")),
    ("<Bob@Evil.Test>", (550, "5.7.1")),
    (f"<bob@{EVIL}.>", (550, "5.7.1")),
    # Domain tricks: each names the approved domain somewhere it does not count.
    (f"<x@{PEER}.{EVIL}>", (550, "5.7.1")),
    (f"<x@sub.{PEER}>", (550, "5.7.1")),
    (f"<x@{PEER[1:]}>", (550, "5.7.1")),
    (f'<"bob@{PEER}"@{EVIL}>', (553, "5.1.3")),
    (f"<@relay.test:bob@{PEER}>", (553, "5.1.3")),
    (f"<@{PEER}:bob@{EVIL}>", (553, "5.1.3")),
    (f"<bob@{PEER}@{EVIL}>", (553, "5.1.3")),
    (f"<bob%{PEER}@{EVIL}>", (550, "5.7.1")),
    (f"<bob@{EVIL}(bob@{PEER})>", (553, "5.1.3")),
    (f"<bob@{EVIL},bob@{PEER}>", (553, "5.1.3")),
    ("<bob@[127.0.0.1]>", (553, "5.1.3")),
    (f"<bob@{LOOKALIKE_A}>", (550, "5.7.1")),
    ("<>", (553, "5.1.3")),
    (f"<bob@{PEER}> <bob@{EVIL}>", (501, "5.5.4")),
    # The look-alike as raw UTF-8: without SMTPUTF8 no byte above 127 is read.
    (f"<bob@{LOOKALIKE}>", (500, "5.5.2")),
    (f"<bob@{PEER}\u3002{EVIL}>", (500, "5.5.2")),
    ("<bob@\uff50eer.gov.example>", (500, "5.5.2")),  # fullwidth "p"
]


def test_recipient_policy(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    disable(site, site.add_user("dave"))
    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        seen = [(rcpt, wire.rcpt_alone(alice, rcpt)) for rcpt, _ in RECIPIENTS]
        assert wire.command(f"MAIL FROM:<{alice}>").code == 250
        refused = [wire.command(f"RCPT TO:{rcpt}") for rcpt in (
            f"<bob@{EVIL}>", f"<x@{PEER}.{EVIL}>")]
    assert seen == RECIPIENTS
    assert all("is not an approved correspondent domain" in answer.text
               for answer in refused)
    assert_enhanced(wire)


def test_refused_recipients_queue_nothing(sqlite_site: Site) -> None:
    """Only refused recipients: DATA has nobody to go to, and nothing is stored."""
    site = sqlite_site
    alice, _ = officers(site)
    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        assert wire.command(f"MAIL FROM:<{alice}>").code == 250
        for rcpt, expected in RECIPIENTS:
            if expected[0] != 250:
                assert wire.command(f"RCPT TO:{rcpt}".encode()).code >= 500
        answer = wire.data(simple(alice, f"bob@{LOOKALIKE_A}"))
    assert answer.pair == (503, "5.5.1")
    assert queued(site) == []
    assert_enhanced(wire)


# (RCPT TO address, expected reply): "*.gov.example" approved, "bad.gov.example" not.
WILDCARD = [
    ("a@sub.gov.example", (250, "2.1.5")),
    ("a@deep.sub.gov.example", (250, "2.1.5")),
    ("A@SUB.GOV.EXAMPLE", (250, "2.1.5")),
    (f"bob@{PEER}", (250, "2.1.5")),
    (f"BOB@{PEER.upper()}", (250, "2.1.5")),
    ("a@gov.example", (550, "5.7.1")),  # a wildcard covers sub-domains only
    ("a@gov.example.evil.test", (550, "5.7.1")),
    ("a@sub.gov.example.evil.test", (550, "5.7.1")),
    ("a@evilgov.example", (550, "5.7.1")),
    ("a@evil-gov.example", (550, "5.7.1")),
    ("a@bad.gov.example", (550, "5.7.1")),  # the explicit deny wins
    ("a@BAD.Gov.Example", (550, "5.7.1")),
    ("a@bad.gov.example.", (550, "5.7.1")),
    (f"nobody@{LOCAL}", (550, "5.1.1")),  # a local domain is never a wildcard's
    (f"carol@{LOCAL}", (250, "2.1.5")),
]


def test_wildcard_and_deny_rules(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = site.add_user("alice"), site.add_user("carol")
    site.allow("*.gov.example", next_hop=HOP, encryption="none")
    site.allow("bad.gov.example", allowed=False)
    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        seen = [(rcpt, wire.rcpt_alone(alice, f"<{rcpt}>")) for rcpt, _ in WILDCARD]
    assert seen == WILDCARD
    assert_enhanced(wire)


# Texts that email.utils.parseaddr reads as an address at the approved peer
# (CVE-2023-27043 and its relatives), though they route somewhere else; and the
# gateway's reply to each, written in angle brackets and bare.
CVE_2023_27043 = [
    (f"bob@{PEER})<mallory@{EVIL}>", f"bob@{PEER}", (501, "5.5.4"), (553, "5.1.3")),
    (f"<bob@{PEER}>@{EVIL}", f"bob@{PEER}", (501, "5.5.4"), (501, "5.5.4")),
    (f'bob@{PEER}"@{EVIL}', f"bob@{PEER}", (553, "5.1.3"), (553, "5.1.3")),
]


def _legacy_parseaddr(text: str) -> str:
    """What parseaddr reads; a patched Python needs strict=False to show it."""
    if "strict" in inspect.signature(parseaddr).parameters:
        return parseaddr(text, strict=False)[1]
    return parseaddr(text)[1]


def test_cve_2023_27043_inputs_are_refused_at_rcpt(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    assert [(text, _legacy_parseaddr(text)) for text, *_ in CVE_2023_27043] == [
        (text, reads) for text, reads, *_ in CVE_2023_27043]

    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        assert wire.command(f"MAIL FROM:<{alice}>").code == 250
        seen = [(text, reads, wire.command(f"RCPT TO:<{text}>").pair,
                 wire.command(f"RCPT TO:{text}").pair)
                for text, reads, *_ in CVE_2023_27043]
        nobody = wire.data(simple(alice, f"bob@{PEER}"))
    assert seen == CVE_2023_27043
    assert nobody.pair == (503, "5.5.1")
    assert queued(site) == []
    assert_enhanced(wire)


# -- the envelope decides ------------------------------------------------------


def test_the_envelope_decides_not_the_header(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, carol = officers(site)
    forged_from = message(f"ceo@{EVIL}", f"bob@{PEER}", subject="forged From")
    with gateway(site) as gw:
        with signed_in(site, gw.submission, alice) as wire:
            # A From: header of someone else does not make the sender someone else.
            accepted = wire.send_mail(alice, carol, forged_from)
            # Nor does a From: header of alice make carol's envelope hers.
            wrong_sender = wire.send_mail(carol, carol, simple(alice, carol))
            # And a To: header of a local user does not approve the envelope's.
            wrong_rcpt = wire.send_mail(alice, f"bob@{EVIL}", simple(alice, carol))
            wire.command("RSET")
        with inbound(gw.inbound) as peer:
            header_says_alice = peer.send_mail(
                f"x@{PEER}", alice, message(alice, alice, subject="header says alice"))
            evil_envelope = peer.send_mail(
                f"x@{EVIL}", alice, message(f"x@{PEER}", alice, subject="header ok"))

    assert accepted.pair == (250, "2.0.0")
    assert wrong_sender.pair == (550, "5.7.1")
    assert wrong_rcpt.pair == (550, "5.7.1")
    assert header_says_alice.pair == (250, "2.0.0")
    assert evil_envelope.pair == (550, "5.7.1")
    assert sorted((row.mail_from, row.recipient) for row in queued(site)) == [
        (alice, carol), (f"x@{PEER}", alice)]
    assert_enhanced(wire, peer)


# -- inbound: peers to our users, nothing else ---------------------------------


# (MAIL FROM, RCPT TO, reply to MAIL, reply to RCPT or None when MAIL is refused)
INBOUND = [
    (f"x@{PEER}", f"alice@{LOCAL}", (250, "2.1.0"), (250, "2.1.5")),
    (f"X@{PEER.upper()}", f"ALICE@{LOCAL.upper()}", (250, "2.1.0"), (250, "2.1.5")),
    ("", f"alice@{LOCAL}", (250, "2.1.0"), (250, "2.1.5")),  # a peer's bounce
    (f"x@{EVIL}", f"alice@{LOCAL}", (550, "5.7.1"), None),
    (f"x@{PEER}.{EVIL}", f"alice@{LOCAL}", (550, "5.7.1"), None),
    (f"x@{LOCAL}", f"alice@{LOCAL}", (550, "5.7.1"), None),  # our own: spoofing
    (f"alice@{LOCAL.upper()}", f"alice@{LOCAL}", (550, "5.7.1"), None),
    (f"x@{PEER}", f"bob@{PEER}", (250, "2.1.0"), (550, "5.7.1")),  # relay
    (f"x@{PEER}", f"bob@{EVIL}", (250, "2.1.0"), (550, "5.7.1")),
    (f"x@{PEER}", f"bob%{EVIL}@{LOCAL}", (250, "2.1.0"), (550, "5.1.1")),
    (f"x@{PEER}", f"nobody@{LOCAL}", (250, "2.1.0"), (550, "5.1.1")),
    (f"x@{PEER}", f"dave@{LOCAL}", (250, "2.1.0"), (550, "5.1.1")),  # disabled
    (f"x@{PEER}", f"@{PEER}:alice@{LOCAL}", (250, "2.1.0"), (553, "5.1.3")),
]


def test_inbound_policy(sqlite_site: Site) -> None:
    site = sqlite_site
    officers(site)
    disable(site, site.add_user("dave"))
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        seen = []
        for sender, rcpt, _, _ in INBOUND:
            mail = wire.command(f"MAIL FROM:<{sender}>").pair
            answer = wire.command(f"RCPT TO:<{rcpt}>").pair if mail[0] == 250 else None
            wire.command("RSET")
            seen.append((sender, rcpt, mail, answer))
    assert seen == INBOUND
    assert_enhanced(wire)


def test_inbound_accepts_a_peer_message_refuses_a_plain_bounce(sqlite_site: Site) -> None:
    """A null sender names no domain, so no policy can allow it in clear.

    beep-mail gateways never send bounces to outside addresses, so a plain
    bounce on the inbound port is not from a peer gateway.
    """
    site = sqlite_site
    alice, carol = officers(site)
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        answers = [wire.send_mail(f"x@{PEER}", alice, simple(f"x@{PEER}", alice)),
                   wire.send_mail("", carol, simple(f"mailer-daemon@{PEER}", carol))]
    assert [answer.pair for answer in answers] == [(250, "2.0.0"), (550, "5.7.1")]
    rows = queued(site)
    assert [(row.mail_from, row.recipient, row.state) for row in rows] == [
        (f"x@{PEER}", alice, "queued")]
    assert answers[0].text.rsplit(" ", 1)[1] == rows[0].message_id
    assert_enhanced(wire)


def test_inbound_never_offers_auth(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    with gateway(site) as gw, Wire(gw.inbound) as wire:
        before = wire.ehlo().lines
        refused_before = wire.auth(alice).pair
        wire.starttls(site.ssl_context())
        after = wire.ehlo().lines
        refused_after = [wire.auth(alice).pair, wire.command("AUTH LOGIN").pair]
        mail = wire.command(f"MAIL FROM:<{alice}>").pair
    assert not any("AUTH" in line for line in before + after)
    assert refused_before == (538, "5.7.11")
    assert refused_after == [(504, "5.5.4")] * 2
    assert mail == (550, "5.7.1")  # signing in is no way to send as a local user
    assert_enhanced(wire)


# -- limits --------------------------------------------------------------------


def test_size_limit_of_data(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    line = b"x" * 78 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (200_000 // len(line) + 10)
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        declared = wire.command(f"MAIL FROM:<x@{PEER}> SIZE=999999999").pair
        too_big = wire.send_mail(f"x@{PEER}", alice, big)
        after = wire.command("NOOP").pair
        lied = wire.command(f"MAIL FROM:<x@{PEER}> SIZE=1000").pair
        lied_data = [wire.command(f"RCPT TO:<{alice}>").pair, wire.data(big).pair]
    assert declared == (552, "5.3.4")
    assert too_big.pair == (552, "5.3.4")
    assert after == (250, "2.0.0")
    assert lied == (250, "2.1.0")
    assert lied_data == [(250, "2.1.5"), (552, "5.3.4")]
    assert queued(site) == []
    assert_enhanced(wire)


def test_recipient_limit(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    rcpts = [f"r{n}@{PEER}" for n in range(6)]
    with gateway(site) as gw, signed_in(site, gw.submission, alice) as wire:
        wire.command(f"MAIL FROM:<{alice}>")
        seen = [wire.command(f"RCPT TO:<{rcpt}>").pair for rcpt in rcpts]
        sent = wire.data(simple(alice, rcpts[0]))
    assert seen == [(250, "2.1.5")] * 5 + [(452, "4.5.3")]
    assert sent.pair == (250, "2.0.0")
    assert sorted(row.recipient for row in queued(site)) == sorted(rcpts[:5])
    assert_enhanced(wire)


def _body_with_line(line: bytes) -> bytes:
    return b"Subject: lines\r\n\r\nbefore\r\n" + line + b"\r\nafter\r\n"


# (a line of the message as sent on the wire, without CRLF; expected reply)
LINES = [
    (b"a" * 998, (250, "2.0.0")),  # 1000 octets with CRLF: the RFC 5321 limit
    # The dot added for transparency is not counted (RFC 5321 4.5.3.1.6).
    (b"." + b"." + b"a" * 997, (250, "2.0.0")),
    (b"a" * 1000, (500, "5.5.6")),
    (b"a" * 5000, (500, "5.5.6")),
    (b"a" * 70_000, (500, "5.5.6")),  # far past any read buffer
]


def test_line_length_limit(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        seen = []
        for line, _ in LINES:
            answer = wire.send_mail(f"x@{PEER}", alice, _body_with_line(line))
            seen.append((len(line), answer.pair))
        still_serving = wire.command("NOOP").pair
    assert seen == [(len(line), pair) for line, pair in LINES]
    assert still_serving == (250, "2.0.0")
    accepted = sum(1 for _, pair in LINES if pair[0] == 250)
    assert len(queued(site)) == accepted
    assert_enhanced(wire)


def _greeting(port: int, source: str = "127.0.0.1") -> Answer:
    with Wire(port, source) as wire:
        return wire.greeting


def test_sessions_per_client_address(sqlite_site: Site) -> None:
    site = sqlite_site
    officers(site)
    with gateway(site, BEEPMAIL_SMTP__MAX_SESSIONS_PER_CLIENT="2") as gw:
        port = gw.submission
        with Wire(port) as first, Wire(port) as second:
            third = _greeting(port)
            other_address = _greeting(port, "127.0.0.2")
            assert (first.greeting.code, second.greeting.code) == (220, 220)
        # Once those two have gone, the address is welcome again.
        again = wait_for(lambda: _greeting(port).code == 220, what="a free slot")
    assert third.pair == (421, "4.7.0")
    assert "from your address" in third.text
    assert other_address.code == 220
    assert again


def test_sessions_overall(sqlite_site: Site) -> None:
    site = sqlite_site
    officers(site)
    with (
        gateway(site, BEEPMAIL_SMTP__MAX_SESSIONS="2") as gw,
        Wire(gw.inbound, "127.0.0.1") as one,
        Wire(gw.inbound, "127.0.0.2") as two,
    ):
        third = _greeting(gw.inbound, "127.0.0.3")
        # Each listener counts its own sessions.
        submission = _greeting(gw.submission, "127.0.0.3")
    assert (one.greeting.code, two.greeting.code) == (220, 220)
    assert third.pair == (421, "4.7.0")
    assert third.text == replies.TOO_MANY_CONNECTIONS.text
    assert submission.code == 220


def test_auth_failures_are_throttled_per_account_and_address(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, carol = officers(site)
    other = "127.0.0.2"
    with gateway(site, BEEPMAIL_SMTP__AUTH_MAX_FAILURES="3") as gw:
        port = gw.submission
        with Wire(port) as wire:
            wire.ehlo()
            wire.starttls(site.ssl_context())
            wire.ehlo()
            wrong = [wire.auth(alice, "wrong").pair for _ in range(2)]
            wire.command("AUTH LOGIN")
            wire.command(_b64(alice))
            wrong.append(wire.command(_b64("wrong")).pair)
            # The right password no longer helps, for this account...
            right_after = wire.auth(alice).pair
            # ...nor for another account from this address.
            carol_here = wire.auth(carol).pair
        with Wire(port, other) as elsewhere:
            elsewhere.ehlo()
            elsewhere.starttls(site.ssl_context())
            elsewhere.ehlo()
            # alice's account is throttled from any address; carol's is not.
            alice_elsewhere = elsewhere.auth(alice).pair
            carol_elsewhere = elsewhere.auth(carol).pair

    assert wrong == [(535, "5.7.8")] * 3
    assert right_after == (454, "4.7.0")
    assert carol_here == (454, "4.7.0")
    assert alice_elsewhere == (454, "4.7.0")
    assert carol_elsewhere == (235, "2.7.0")
    assert_enhanced(wire, elsewhere)


# -- SMTP smuggling and malformed messages -------------------------------------


# (name, what ends the first message's body for a lenient server)
SMUGGLING = [
    ("LF.LF", b"\n.\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("bare LF line", b"\nnot the end\r\n"),
    ("bare CR", b"\rnot the end\r\n"),
    ("NUL", b"\x00\r\n"),
]


def _smuggler(sender: str, rcpt: str, end: bytes) -> bytes:
    """A message, a false end of data, then a forged second transaction."""
    first = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: first\r\n\r\nfirst body"
             .encode())
    second = (f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
              f"From: {sender}\r\nTo: {rcpt}\r\nSubject: smuggled\r\n\r\n"
              "smuggled body\r\n").encode()
    return first + end + second


@pytest.mark.parametrize("role", ["inbound", "submission"])
def test_smuggling_variants_are_refused(sqlite_site: Site, role: str) -> None:
    site = sqlite_site
    alice, carol = officers(site)
    sender = f"x@{PEER}" if role == "inbound" else alice
    with gateway(site) as gw:
        if role == "inbound":
            session = inbound(gw.inbound)
        else:
            session = signed_in(site, gw.submission, alice)
        with session as wire:
            seen = []
            for name, end in SMUGGLING:
                answer = wire.send_mail(sender, carol, _smuggler(sender, carol, end))
                # The reply to NOOP comes next: no reply to a smuggled command
                # was sent in between.
                seen.append((name, answer.pair, wire.command("NOOP").pair))
            nothing = queued(site)
            clean = wire.send_mail(sender, carol, simple(sender, carol, "clean"))
            wire.command("QUIT")
            assert wire.sock.recv(1024) == b""  # and nothing after the goodbye

    assert seen == [(name, (554, "5.6.0"), (250, "2.0.0")) for name, _ in SMUGGLING]
    assert nothing == []
    assert clean.pair == (250, "2.0.0")
    assert [row.message_id for row in queued(site)] == [clean.text.rsplit(" ", 1)[1]]
    assert_enhanced(wire)


def _nested(depth: int) -> bytes:
    """A message whose multiparts nest `depth` levels deep."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (n, n)
        for n in range(depth))
    closing = b"".join(b"\r\n--n%d--\r\n" % n for n in reversed(range(depth)))
    return (b"Subject: deep\r\nMIME-Version: 1.0\r\n" + opening
            + b"Content-Type: text/plain\r\n\r\nleaf\r\n" + closing)


def test_deep_mime_nesting_is_refused_and_the_gateway_keeps_serving(
    sqlite_site: Site,
) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    sender = f"x@{PEER}"
    with gateway(site) as gw:
        with inbound(gw.inbound) as wire:
            deep = wire.send_mail(sender, alice, _nested(1000))
            same_session = wire.send_mail(sender, alice, simple(sender, alice))
        with inbound(gw.inbound) as fresh:
            new_session = fresh.send_mail(sender, alice, simple(sender, alice))
    assert deep.pair == (554, "5.6.0")
    assert (same_session.pair, new_session.pair) == ((250, "2.0.0"), (250, "2.0.0"))
    assert len(queued(site)) == 2
    assert_enhanced(wire, fresh)


# -- the store -----------------------------------------------------------------


def test_locked_store_answers_451_and_a_retry_succeeds(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    content = simple(f"x@{PEER}", alice, "during the lock")
    with gateway(site) as gw, inbound(gw.inbound) as wire:
        wire.sock.settimeout(30)  # the gateway waits 5 s for the lock first
        assert wire.command(f"MAIL FROM:<x@{PEER}>").code == 250
        assert wire.command(f"RCPT TO:<{alice}>").code == 250
        with closing(sqlite3.connect(sqlite_path(site), timeout=10,
                                     isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            locked = wire.data(content)
            holder.execute("ROLLBACK")
        nothing = queued(site)
        retry = wire.send_mail(f"x@{PEER}", alice, content)
    assert locked.pair == (451, "4.3.0")
    assert nothing == []
    assert retry.pair == (250, "2.0.0")
    assert len(queued(site)) == 1
    assert_enhanced(wire)


def test_full_store_answers_452(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, _ = officers(site)
    line = b"y" * 78 + b"\r\n"
    big = b"Subject: filler\r\n\r\n" + line * 2400  # about 190 KB
    with (
        gateway(site, BEEPMAIL_DATABASE__MAX_SIZE_MB="1") as gw,
        inbound(gw.inbound) as wire,
    ):
        seen: list[tuple[int, str]] = []
        while len(seen) < 20 and (452, "4.3.1") not in seen:
            seen.append(wire.send_mail(f"x@{PEER}", alice, big).pair)
        # Once full, the next one is refused too: never a 250 after a failure.
        seen.append(wire.send_mail(f"x@{PEER}", alice, big).pair)
    accepted = seen.index((452, "4.3.1"))
    assert accepted >= 1
    assert seen == [(250, "2.0.0")] * accepted + [(452, "4.3.1")] * 2
    assert len(queued(site)) == accepted
    assert_enhanced(wire)


# -- stopping ------------------------------------------------------------------


def test_stop_with_a_client_that_quit_but_never_closed(sqlite_site: Site) -> None:
    """After QUIT over TLS the session waits for the client's TLS close; a stop
    must not try to write to that closing connection."""
    site = sqlite_site
    officers(site)
    with gateway(site) as gw, Wire(gw.submission) as wire:
        wire.ehlo()
        wire.starttls(site.ssl_context())
        assert wire.command("QUIT").pair == (221, "2.0.0")
        gw.call(gw.service.stop(grace=0.1))

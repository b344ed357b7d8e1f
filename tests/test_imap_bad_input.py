"""What a careless or hostile IMAP client gets: transcripts over raw sockets.

Malformed commands are answered BAD and the session goes on; literals, lines,
nesting and sequence sets are bounded; what is pipelined behind STARTTLS is
thrown away; no mailbox name leads to another user's mail; sessions are
capped per client address and per user; a client that never reads, or never
speaks, is disconnected; failed sign-ins are throttled.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from beep_mail import vault
from beep_mail.store import accounts
from tests.support import FAST_HASH, PASSWORD, GatewayThread, Site, message, wait_for
from tests.test_imap_clients import fill, gateway


class Wire:
    """A line-level IMAP client that sends exactly what it is told."""

    opened: ClassVar[list[Wire]] = []

    def __init__(self, port: int, context: ssl.SSLContext | None = None,
                 receive_buffer: int = 0) -> None:
        Wire.opened.append(self)
        raw = socket.socket()
        raw.settimeout(10)
        if receive_buffer:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        raw.connect(("127.0.0.1", port))
        self.sock: socket.socket = raw
        if context is not None:
            self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.tags = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline(1_000_000)
        if not line:
            raise EOFError("connection closed")
        return line.rstrip(b"\r\n")

    def until(self, tag: bytes) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = self.line()
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -1])
                line += b"\r\n" + self.file.read(size) + self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, text: bytes) -> list[bytes]:
        self.tags += 1
        tag = b"t%d" % self.tags
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def last(self, text: bytes) -> bytes:
        """The tagged response to a command, without its tag."""
        return self.command(text)[-1].split(b" ", 1)[1]

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.last(b"STARTTLS").startswith(b"OK")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def closed(self) -> bool:
        """True once the server has closed: reads the rest, then EOF."""
        try:
            while self.file.readline():
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(autouse=True)
def close_wires() -> Iterator[None]:
    """Sockets of a failed test are closed too, so no warning spills over."""
    yield
    while Wire.opened:
        Wire.opened.pop().close()


def signed_in(site: Site, gw: GatewayThread, address: str,
              password: str = PASSWORD) -> Wire:
    wire = Wire(gw.service.port("imaps"), site.ssl_context())
    assert wire.last(b'LOGIN "%s" "%s"' % (address.encode(), password.encode())
                     ).startswith(b"OK")
    return wire


def test_malformed_commands_are_answered_bad(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    fill(sqlite_site, alice, [message(alice, alice), message(alice, alice)])
    with gateway(sqlite_site) as gw:
        wire = Wire(gw.service.port("imap"))
        transcript = [
            (b"", b"* BAD"),
            (b"\xff\xfe garbage", b"* BAD"),
            (b"a1", b"a1 BAD"),
            (b"a2 FROB", b"a2 BAD Unknown command FROB"),
            (b"a3 SELECT INBOX",
             b"a3 BAD SELECT is not allowed when not authenticated"),
            (b'a4 LOGIN "unterminated', b"a4 BAD"),
            (b"a5 LOGIN a b c", b"a5 BAD"),
            (b"a6 NOOP", b"a6 OK"),
        ]
        for sent, expected in transcript:
            wire.send(sent + b"\r\n")
            assert wire.line().startswith(expected), sent
        wire.starttls(sqlite_site.ssl_context())
        assert wire.last(b'LOGIN "%s" "%s"' % (alice.encode(), PASSWORD.encode())
                         ).startswith(b"OK")
        assert wire.last(b"FETCH 1 FLAGS") == (
            b"BAD FETCH is not allowed when authenticated")
        assert wire.last(b"SELECT INBOX").startswith(b"OK [READ-WRITE]")
        for command, expected in [
            (b"FETCH 1:* (FLAGS", b"BAD"),
            (b"UID FETCH 1 (BODY[0])", b"BAD"),
            (b"FETCH 0 FLAGS", b"BAD"),
            (b"FETCH 3 FLAGS", b"BAD Message numbers go from 1 to 2"),
            (b"SEARCH", b"BAD"),
            (b"STORE 1 +FLAGS (\\Recent)", b"BAD"),
            (b"SEARCH CHARSET KOI8-R ALL", b"NO [BADCHARSET (UTF-8 US-ASCII)]"),
            (b"UID SORT (DATE) UTF-8 ALL", b"NO [CANNOT] UID SORT is not offered"),
            (b'GETQUOTAROOT "INBOX"', b"NO [CANNOT] GETQUOTAROOT is not offered"),
            (b"LOGIN again please", b"BAD LOGIN is not allowed when selected"),
        ]:
            assert wire.last(command).startswith(expected), command
        assert wire.last(b"NOOP") == b"OK NOOP completed"
        wire.close()


def test_a_billion_element_set_is_a_range(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    fill(sqlite_site, alice, [message(alice, alice), message(alice, alice)])
    with gateway(sqlite_site) as gw:
        wire = signed_in(sqlite_site, gw, alice)
        wire.command(b"SELECT INBOX")
        started = time.monotonic()
        # Message numbers above EXISTS are an error (RFC 3501, 9), answered
        # at once however far the range reaches; "*" names the last one.
        assert wire.last(b"FETCH 1:4294967295 (UID)").startswith(b"BAD")
        assert wire.command(b"FETCH 1:* (UID)")[:-1] == [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)"]
        assert wire.command(b"UID FETCH 1:4294967295,7:99999999 (UID)")[:2] == [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)"]
        assert wire.command(b"UID SEARCH UID 2:4294967295")[0] == b"* SEARCH 2"
        assert wire.last(b"UID STORE 1:4294967295 +FLAGS.SILENT (\\Seen)").startswith(
            b"OK")
        set_of_many = b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 12000, 3))
        assert wire.last(b"UID FETCH " + set_of_many + b" (FLAGS)").startswith(b"OK")
        assert time.monotonic() - started < 5
        wire.close()


def test_literals_lines_and_nesting_are_bounded(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site, BEEPMAIL_IMAP__MAX_LITERAL="10000") as gw:
        wire = signed_in(sqlite_site, gw, alice)
        # A synchronizing literal over the limit is refused before it is sent.
        wire.send(b"a1 APPEND INBOX {10001}\r\n")
        assert wire.line() == b"a1 NO [TOOBIG] Messages are limited to 10000 octets"
        # A non-synchronizing one is on its way: read past it, then refuse.
        wire.send(b"a2 APPEND INBOX {10010+}\r\n" + b"x" * 10010 + b"\r\n")
        assert wire.line().startswith(b"a2 NO [TOOBIG]")
        wire.send(b"a3 LOGIN {300000}\r\n")
        assert wire.line() == b"a3 BAD Literal too large for this command"
        wire.send(b"a4 NOOP " + b"x" * 70000 + b"\r\n")
        assert wire.line() == b"a4 BAD Line too long"
        assert wire.last(b"SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000).startswith(
            b"BAD")
        assert wire.last(b"FETCH 1 " + b"(" * 5000).startswith(b"BAD")
        assert wire.last(b"APPEND INBOX {5+}\r\nhello").startswith(b"OK [APPENDUID ")
        assert wire.last(b"NOOP") == b"OK NOOP completed"
        # A literal too large even to read past ends the session.
        wire.send(b"a5 APPEND INBOX {99999999999+}\r\n")
        assert wire.line().startswith(b"* BYE Literal too large")
        assert wire.closed()
        wire.close()


def test_unterminated_literal_and_silence_end_in_bye(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site, BEEPMAIL_IMAP__IDLE_TIMEOUT="0.5") as gw:
        wire = Wire(gw.service.port("imaps"), sqlite_site.ssl_context())
        wire.send(b"a1 LOGIN {10}\r\n")
        assert wire.line() == b"+ Ready for literal data"
        wire.send(b"abc")  # and nothing more
        assert wire.line() == b"* BYE Idle for too long; signing off"
        assert wire.closed()
        wire.close()

        wire = signed_in(sqlite_site, gw, alice)
        assert wire.line() == b"* BYE Idle for too long; signing off"
        wire.close()


def test_starttls_discards_what_was_pipelined(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site) as gw:
        wire = Wire(gw.service.port("imap"))
        assert b"LOGINDISABLED" in wire.greeting and b"AUTH=PLAIN" not in wire.greeting
        assert wire.last(b"AUTHENTICATE PLAIN").startswith(b"NO [PRIVACYREQUIRED]")
        # An attacker on the path appends a command to the client's STARTTLS.
        wire.send(b"a1 STARTTLS\r\nevil LOGIN %s wrong\r\nevil2 CAPABILITY\r\n"
                  % alice.encode())
        assert wire.line() == b"a1 OK Begin TLS negotiation now"
        wire.sock = sqlite_site.ssl_context().wrap_socket(wire.sock,
                                                          server_hostname="localhost")
        wire.file = wire.sock.makefile("rb")
        lines = wire.command(b"CAPABILITY")
        assert not any(line.startswith(b"evil") for line in lines)
        assert b"AUTH=PLAIN" in lines[0] and b"STARTTLS" not in lines[0]
        assert wire.last(b"STARTTLS") == b"BAD TLS is already on"
        assert wire.last(b'LOGIN "%s" "%s"' % (alice.encode(), PASSWORD.encode())
                         ).startswith(b"OK")
        wire.close()


def test_mailbox_names_never_reach_another_user(sqlite_site: Site) -> None:
    alice, bob = sqlite_site.add_user("alice"), sqlite_site.add_user("bob")
    fill(sqlite_site, bob, [message(alice, bob, subject="Bob's own")])
    with gateway(sqlite_site) as gw:
        wire = signed_in(sqlite_site, gw, alice)
        for command in [
            b'SELECT "../bob@ministry.gov.example/INBOX"',
            b'SELECT "bob@ministry.gov.example/INBOX"',
            b'SELECT "~bob/INBOX"',
            b'SELECT "#shared/bob"',
            b'SELECT "/INBOX"',
            b"SELECT &AC8-INBOX",
            b'CREATE "../escape"',
            b"CREATE {5}\r\na\x00b/c",
            b'CREATE "a\tb"',
            b'CREATE "Caf\xc3\xa9"',
            b'RENAME INBOX "../bob/INBOX"',
            b'APPEND "../bob/INBOX" {5+}\r\nhello',
            b'STATUS "bob@ministry.gov.example" (MESSAGES)',
            b'DELETE "../bob@ministry.gov.example"',
        ]:
            assert wire.last(command).startswith(b"NO"), command
        listed = wire.command(b'LIST "" "*"')
        assert len(listed) == 7 and not any(b"bob" in line for line in listed)
        assert wire.last(b"SELECT INBOX") == b"OK [READ-WRITE] SELECT completed"
        assert wire.command(b"SEARCH ALL")[0] == b"* SEARCH"
        wire.close()
        bobs = signed_in(sqlite_site, gw, bob)
        bobs.command(b"SELECT INBOX")
        assert bobs.command(b"SEARCH SUBJECT own")[0] == b"* SEARCH 1"
        bobs.close()


def test_sessions_are_capped_per_client_and_per_user(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site, BEEPMAIL_IMAP__MAX_SESSIONS_PER_CLIENT="3",
                 BEEPMAIL_IMAP__MAX_SESSIONS_PER_USER="2") as gw:
        first = signed_in(sqlite_site, gw, alice)
        first.send(b"i1 IDLE\r\n")
        assert first.line() == b"+ idling"
        second = signed_in(sqlite_site, gw, alice)
        third = Wire(gw.service.port("imaps"), sqlite_site.ssl_context())
        assert third.last(b'LOGIN "%s" "%s"' % (alice.encode(), PASSWORD.encode())
                          ).startswith(b"NO [LIMIT]")
        fourth = Wire(gw.service.port("imap"))
        assert fourth.greeting.startswith(b"* BYE Too many connections from your")
        second.command(b"LOGOUT")
        second.close()
        assert third.last(b'LOGIN "%s" "%s"' % (alice.encode(), PASSWORD.encode())
                          ).startswith(b"OK")
        first.send(b"DONE\r\n")
        assert first.line() == b"i1 OK IDLE terminated"
        for wire in (first, third, fourth):
            wire.close()


def test_a_client_that_never_reads_is_dropped(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    fill(sqlite_site, alice, [message(alice, alice, body="x" * 150_000)])
    with gateway(sqlite_site, BEEPMAIL_IMAP__IDLE_TIMEOUT="1") as gw:
        wire = Wire(gw.service.port("imaps"), sqlite_site.ssl_context(),
                    receive_buffer=4096)
        wire.command(b'LOGIN "%s" "%s"' % (alice.encode(), PASSWORD.encode()))
        wire.command(b"SELECT INBOX")
        limits = gw.service.listeners["imaps"].limits  # type: ignore[union-attr]
        assert sum(limits.open.values()) == 1
        # Ask for megabytes and read none of it.
        try:
            wire.send(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % n for n in range(200)))
        except (ConnectionError, ssl.SSLError):
            pass  # the server may give up while we are still sending
        wait_for(lambda: not limits.open, timeout=10, what="the server to drop us")
        assert wire.closed()
        wire.close()


def test_sign_in_failures_are_throttled(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site) as gw:
        wire = Wire(gw.service.port("imaps"), sqlite_site.ssl_context())
        assert b"AUTH=PLAIN" in wire.greeting
        plain = base64.b64encode(b"\0" + alice.encode() + b"\0" + PASSWORD.encode())
        wrong = base64.b64encode(b"\0" + alice.encode() + b"\0wrong password")
        other = base64.b64encode(b"bob@x\0%s\0%s" % (alice.encode(), PASSWORD.encode()))
        assert wire.last(b"AUTHENTICATE PLAIN " + other).startswith(
            b"NO [AUTHORIZATIONFAILED]")
        wire.send(b"c1 AUTHENTICATE PLAIN\r\n")
        assert wire.line() == b"+ "
        wire.send(b"*\r\n")
        assert wire.line() == b"c1 BAD AUTHENTICATE cancelled"
        assert wire.last(b"AUTHENTICATE PLAIN not-base64!").startswith(b"BAD")
        for _ in range(5):
            assert wire.last(b"AUTHENTICATE PLAIN " + wrong) == (
                b"NO [AUTHENTICATIONFAILED] Wrong user name or password")
        assert wire.last(b"AUTHENTICATE PLAIN " + plain).startswith(b"NO [UNAVAILABLE]")
        wire.close()

        fresh = Wire(gw.service.port("imaps"), sqlite_site.ssl_context())
        bob = sqlite_site.add_user("bob")
        # The address is throttled too, whatever account it tries next.
        assert fresh.last(b'LOGIN "%s" "%s"' % (bob.encode(), PASSWORD.encode())
                          ).startswith(b"NO [UNAVAILABLE]")
        fresh.close()


def test_mail_waiting_for_recovery_is_explained(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    new_password = "a brand new password"
    stored, lock = FAST_HASH.new(new_password)
    secret = vault.make_user_key(sqlite_site.settings(), alice, "Alice", lock)
    db = sqlite_site.db()
    with db.engine.begin() as connection:
        # An administrator's reset: a new key, the mailbox key not yet recovered.
        vault.replace_user_key(connection, alice, secret, lock.lock)
        accounts.set_password_hash(connection, alice, stored)
    db.close()
    with gateway(sqlite_site) as gw:
        wire = Wire(gw.service.port("imaps"), sqlite_site.ssl_context())
        assert wire.last(b'LOGIN "%s" "%s"' % (alice.encode(), new_password.encode())
                         ) == (b"NO [UNAVAILABLE] Your stored mail cannot be opened "
                               b"now; ask your administrator")
        # The refused session does not count against the user's sessions.
        assert not gw.service.listeners["imaps"].services.signed_in  # type: ignore[union-attr]


def test_shutdown_says_bye(sqlite_site: Site) -> None:
    alice = sqlite_site.add_user("alice")
    gw = gateway(sqlite_site).__enter__()
    try:
        wire = signed_in(sqlite_site, gw, alice)
        wire.command(b"SELECT INBOX")
        wire.send(b"i1 IDLE\r\n")
        assert wire.line() == b"+ idling"
    finally:
        gw.__exit__(None, None, None)
    assert wire.line().startswith(b"* BYE The gateway is shutting down")
    wire.close()


@pytest.mark.parametrize("spelling", [b"DONE", b"done"])
def test_idle_ends_with_done_only(sqlite_site: Site, spelling: bytes) -> None:
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site) as gw:
        wire = signed_in(sqlite_site, gw, alice)
        wire.send(b"i1 IDLE\r\n")
        assert wire.line() == b"+ idling"
        wire.send(spelling + b"\r\n")
        assert wire.line() == b"i1 OK IDLE terminated"
        wire.send(b"i2 IDLE\r\n")
        assert wire.line() == b"+ idling"
        wire.send(b"i3 NOOP\r\n")
        assert wire.line() == b"i2 BAD IDLE ends with DONE"
        wire.close()

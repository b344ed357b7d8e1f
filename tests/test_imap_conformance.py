"""The IMAP server against RFC 3501 and its extensions, line by line over a socket.

One gateway (SQLite) serves the whole module; each test signs in as a fresh
user, so no test sees another's mail. A test names the section it checks in
its docstring. Where the server departs from the RFC text, the test stays as
it is and is marked `xfail(strict=True)` with what the server does instead,
so that the mark has to go when the server is fixed.

Extensions covered: IDLE (RFC 2177), NAMESPACE (RFC 2342), CHILDREN (RFC
3348), UNSELECT (RFC 3691), UIDPLUS (RFC 4315), SASL-IR (RFC 4959), ENABLE
(RFC 5161), SPECIAL-USE (RFC 6154), MOVE (RFC 6851), LITERAL+ (RFC 7888),
ID (RFC 2971).
"""

from __future__ import annotations

import base64
import itertools
import re
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from beep_mail import vault
from beep_mail.store import mailstore
from tests.support import PASSWORD, GatewayThread, Site, make_site

ENV = {
    "BEEPMAIL_IMAP__LISTEN": "127.0.0.1:0",
    "BEEPMAIL_IMAP__LISTEN_TLS": "127.0.0.1:0",
    "BEEPMAIL_IMAP__AUTH_FAILURE_DELAY": "0",
    # Every test of the module connects from 127.0.0.1; a closed socket is
    # counted off a moment later, so leave room.
    "BEEPMAIL_IMAP__MAX_SESSIONS_PER_CLIENT": "200",
}

EXTENSIONS = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
              "UNSELECT", "UIDPLUS", "MOVE", "SPECIAL-USE", "CHILDREN")

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\Z")
_SYNC_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


# -- a client that sends exactly what it is told ------------------------------

class Imap:
    """One connection; response lines come back whole, literals inline."""

    opened: ClassVar[list[Imap]] = []

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        Imap.opened.append(self)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.tags = itertools.count(1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _raw_line(self) -> bytes:
        line = self.file.readline(1_000_000)
        if not line:
            raise EOFError("the server closed the connection")
        assert line.endswith(b"\r\n"), line
        return line[:-2]

    def line(self) -> bytes:
        """One response: its lines and the literals between them, CRLF kept inside."""
        line = self._raw_line()
        while (found := _LITERAL_AT_END.search(line)) is not None:
            literal = self.file.read(int(found.group(1)))
            line += b"\r\n" + literal + self._raw_line()
        return line

    def until(self, tag: bytes) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines

    def next_tag(self) -> bytes:
        return b"t%d" % next(self.tags)

    def command(self, text: bytes) -> list[bytes]:
        """Send a command, waiting for "+" at each synchronizing literal."""
        tag = self.next_tag()
        data = tag + b" " + text + b"\r\n"
        before: list[bytes] = []
        position = 0
        while (found := _SYNC_LITERAL.search(data, position)) is not None:
            self.send(data[position : found.end()])
            while not (reply := self.line()).startswith(b"+"):
                before.append(reply)
                assert not reply.startswith(tag), reply
            position = found.end() + int(found.group(1))
            self.send(data[found.end() : position])
        self.send(data[position:])
        return before + self.until(tag)

    def tagged(self, text: bytes) -> bytes:
        """The tagged response to a command, without its tag."""
        return self.command(text)[-1].split(b" ", 1)[1]

    def ok(self, text: bytes) -> list[bytes]:
        """The untagged responses to a command that must succeed."""
        lines = self.command(text)
        assert lines[-1].split(b" ", 2)[1] == b"OK", lines[-1]
        return lines[:-1]

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.tagged(b"STARTTLS").startswith(b"OK")
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(autouse=True)
def close_connections() -> Iterator[None]:
    yield
    while Imap.opened:
        Imap.opened.pop().close()


# -- one gateway for the module ---------------------------------------------------

@pytest.fixture(scope="module")
def gateway_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root: Path = tmp_path_factory.mktemp("conformance") / "site"
    return make_site(root, f"sqlite:///{root / 'var' / 'beepmail.db'}")


@pytest.fixture(scope="module")
def gateway(gateway_site: Site) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_site.settings(**ENV)) as running:
        yield running


_officers = itertools.count(1)


@pytest.fixture
def user(gateway_site: Site) -> str:
    """A fresh officer: the default mailboxes, all empty."""
    return gateway_site.add_user(f"officer{next(_officers)}")


def imaps(site: Site, gw: GatewayThread) -> Imap:
    return Imap(gw.service.port("imaps"), site.ssl_context())


def signed_in(site: Site, gw: GatewayThread, address: str) -> Imap:
    client = imaps(site, gw)
    assert client.tagged(b'LOGIN "%s" "%s"' % (address.encode(), PASSWORD.encode())
                         ).startswith(b"OK")
    return client


_keys: dict[str, vault.Keys] = {}


def fill(site: Site, address: str, messages: list[bytes], mailbox: str = "INBOX",
         flags: tuple[str, ...] = (), when: float | None = None) -> list[int]:
    """Put messages straight into a mailbox, sealed as a session seals them."""
    db = site.db()
    try:
        if address not in _keys:  # opening them costs a tenth of a second
            _keys[address] = vault.open_keys(db.engine, address, PASSWORD)
        keys = _keys[address]
        return [mailstore.append(db.engine, keys.user_id, mailbox,
                                 vault.seal_for_mailbox(keys, text), len(text), flags,
                                 time.time() if when is None else when)[1]
                for text in messages]
    finally:
        db.close()


def mail(subject: str, body: str = "Body text", *,
         date: str = "Thu, 01 Feb 2024 10:00:00 +0100", extra: str = "") -> bytes:
    ident = re.sub(r"[^A-Za-z0-9]", ".", subject)
    return (f"From: Peer <peer@peer.gov.example>\r\n"
            f"To: officer@ministry.gov.example\r\n"
            f"Subject: {subject}\r\nDate: {date}\r\nMessage-ID: <{ident}@test>\r\n"
            f"{extra}\r\n{body}\r\n").encode()


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


# -- reading responses ---------------------------------------------------------------

def codes(lines: list[bytes]) -> dict[bytes, bytes]:
    """Response codes of untagged OK lines: {b"UIDNEXT": b"4", ...}."""
    found: dict[bytes, bytes] = {}
    for line in lines:
        match = re.match(rb"\* OK \[([A-Z-]+)(?: ([^\]]*))?\]", line)
        if match:
            found[match.group(1)] = match.group(2) or b""
    return found


def flags_in(line: bytes) -> set[bytes]:
    match = re.search(rb"FLAGS \(([^)]*)\)", line)
    assert match is not None, line
    return set(match.group(1).split())


def searched(lines: list[bytes]) -> list[int]:
    found = [line for line in lines if line.startswith(b"* SEARCH")]
    assert len(found) == 1, lines
    return [int(word) for word in found[0].split()[2:]]


def listed(lines: list[bytes]) -> dict[str, set[str]]:
    """LIST or LSUB lines as {name: attributes}; every delimiter must be "/"."""
    found: dict[str, set[str]] = {}
    for line in lines:
        match = re.fullmatch(rb'\* (?:LIST|LSUB) \(([^)]*)\) "/" "((?:[^"\\]|\\.)*)"',
                             line)
        assert match is not None, line
        found[match.group(2).decode()] = set(match.group(1).decode().split())
    return found


def status(line: bytes) -> dict[str, int]:
    match = re.fullmatch(rb'\* STATUS (?:"(?:[^"\\]|\\.)*"|[^ "]+) \(([^)]*)\)', line)
    assert match is not None, line
    words = match.group(1).decode().split()
    return {words[n]: int(words[n + 1]) for n in range(0, len(words), 2)}


def expunged(lines: list[bytes]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.endswith(b" EXPUNGE")]


def b64_plain(address: str) -> bytes:
    return base64.b64encode(b"\0" + address.encode() + b"\0" + PASSWORD.encode())


# == RFC 3501 6.1, 6.2: capabilities and signing in ====================================

def test_greeting_before_tls_disables_login(gateway_site: Site,
                                            gateway: GatewayThread) -> None:
    """RFC 3501 6.2.1, 6.2.3, 7.1: in clear, STARTTLS and LOGINDISABLED are offered."""
    client = Imap(gateway.service.port("imap"))
    assert client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    words = client.greeting.split(b"]")[0].split()[3:]
    assert {w.decode() for w in words} >= {*EXTENSIONS, "STARTTLS", "LOGINDISABLED"}
    assert not any(w.startswith(b"AUTH=") for w in words)
    lines = client.ok(b"CAPABILITY")
    assert len(lines) == 1 and lines[0].startswith(b"* CAPABILITY IMAP4rev1 ")
    assert b"LOGINDISABLED" in lines[0].split() and b"AUTH=PLAIN" not in lines[0]
    # RFC 3501 11.2: no plaintext password is taken before TLS, however it comes.
    assert client.tagged(b'LOGIN "someone" "secret"').startswith(b"NO")
    plain = b"AUTHENTICATE PLAIN " + b64_plain("someone")
    assert client.tagged(plain).startswith(b"NO")


def test_capabilities_after_starttls(gateway_site: Site, gateway: GatewayThread,
                                     user: str) -> None:
    """RFC 3501 6.2.1: after STARTTLS, AUTH=PLAIN and no STARTTLS or LOGINDISABLED."""
    client = Imap(gateway.service.port("imap"))
    client.starttls(gateway_site.ssl_context())
    words = set(client.ok(b"CAPABILITY")[0].split()[2:])
    assert {w.decode() for w in words} >= {*EXTENSIONS, "AUTH=PLAIN"}
    assert not words & {b"STARTTLS", b"LOGINDISABLED"}
    assert client.tagged(b'LOGIN "%s" "%s"' % (user.encode(), PASSWORD.encode())
                         ).startswith(b"OK")


def test_capability_after_login(gateway_site: Site, gateway: GatewayThread,
                                user: str) -> None:
    """RFC 3501 7.1 (CAPABILITY code), 6.2.3: signed in, no AUTH= is offered."""
    client = imaps(gateway_site, gateway)
    assert b"AUTH=PLAIN" in client.greeting and b"STARTTLS" not in client.greeting
    reply = client.tagged(b'LOGIN "%s" "%s"' % (user.encode(), PASSWORD.encode()))
    assert reply.startswith(b"OK [CAPABILITY IMAP4rev1 ")
    listed_words = client.ok(b"CAPABILITY")[0].split()
    for words in (reply.split(b"]")[0].split()[2:], listed_words):
        assert {w.decode() for w in words} >= set(EXTENSIONS)
        assert not any(w.startswith(b"AUTH=") or w == b"LOGINDISABLED" for w in words)


def test_authenticate_plain_with_initial_response(gateway_site: Site,
                                                  gateway: GatewayThread,
                                                  user: str) -> None:
    """RFC 4959 3 (SASL-IR), RFC 4616: AUTHENTICATE PLAIN, the answer on its line."""
    client = imaps(gateway_site, gateway)
    assert b"SASL-IR" in client.greeting
    # The authorization identity may be given when it is the user's own.
    answer = base64.b64encode(b"%s\0%s\0%s" % (user.encode(), user.encode(),
                                                PASSWORD.encode()))
    lines = client.command(b"AUTHENTICATE PLAIN " + answer)
    assert len(lines) == 1 and lines[0].split(b" ", 1)[1].startswith(b"OK")
    assert client.tagged(b"SELECT INBOX").startswith(b"OK [READ-WRITE]")


def test_authenticate_plain_with_continuation(gateway_site: Site,
                                              gateway: GatewayThread,
                                              user: str) -> None:
    """RFC 3501 6.2.2, 7.5: an empty "+" challenge, then the answer on its own line."""
    client = imaps(gateway_site, gateway)
    client.send(b"a1 AUTHENTICATE PLAIN\r\n")
    challenge = client.line()
    assert challenge in (b"+", b"+ "), challenge
    client.send(b64_plain(user) + b"\r\n")
    assert client.line().startswith(b"a1 OK")


def test_login_with_synchronizing_literal(gateway_site: Site, gateway: GatewayThread,
                                          user: str) -> None:
    """RFC 3501 4.3, 7.5: each {n} literal is sent only after a "+" continuation."""
    client = imaps(gateway_site, gateway)
    client.send(b"a1 LOGIN {%d}\r\n" % len(user))
    assert client.line().startswith(b"+")
    client.send(user.encode() + b" {%d}\r\n" % len(PASSWORD))
    assert client.line().startswith(b"+")
    client.send(PASSWORD.encode() + b"\r\n")
    assert client.line().startswith(b"a1 OK")


def test_login_with_nonsynchronizing_literal(gateway_site: Site, gateway: GatewayThread,
                                             user: str) -> None:
    """RFC 7888 3, 4: {n+} literals go at once and get no "+" continuation."""
    client = imaps(gateway_site, gateway)
    password = PASSWORD.encode()
    client.send(b"a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"
                % (len(user), user.encode(), len(password), password))
    assert client.line().startswith(b"a1 OK")


def test_logout_says_bye_first(gateway_site: Site, gateway: GatewayThread,
                               user: str) -> None:
    """RFC 3501 6.1.3: LOGOUT gives an untagged BYE, then the tagged OK."""
    client = signed_in(gateway_site, gateway, user)
    lines = client.command(b"LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[1].startswith(b"t2 OK")


# == RFC 3501 6.3.1, 6.3.2: SELECT and EXAMINE =========================================

def test_select_responses(gateway_site: Site, gateway: GatewayThread,
                          user: str) -> None:
    """RFC 3501 6.3.1 (and erratum 3032): FLAGS, EXISTS, RECENT and the OK codes."""
    fill(gateway_site, user, [mail("One")], flags=("\\Seen",))
    fill(gateway_site, user, [mail("Two")])
    fill(gateway_site, user, [mail("Three")], flags=("$Important",))
    client = signed_in(gateway_site, gateway, user)
    lines = client.command(b"SELECT INBOX")
    assert lines[-1] == b"t2 OK [READ-WRITE] SELECT completed"
    untagged = lines[:-1]
    flag_lines = [line for line in untagged if line.startswith(b"* FLAGS ")]
    assert len(flag_lines) == 1
    system = {b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft"}
    assert flags_in(flag_lines[0]) >= system | {b"$Important"}
    assert b"* 3 EXISTS" in untagged and b"* 0 RECENT" in untagged
    found = codes(untagged)
    assert found[b"UNSEEN"] == b"2"  # the first unseen message's sequence number
    assert found[b"UIDNEXT"] == b"4" and int(found[b"UIDVALIDITY"]) > 0
    permanent = set(found[b"PERMANENTFLAGS"].strip(b"()").split())
    assert permanent >= system | {b"\\*"}


def test_select_without_unseen_messages(gateway_site: Site, gateway: GatewayThread,
                                        user: str) -> None:
    """RFC 3501 6.3.1 erratum 3032: no [UNSEEN] when every message is seen."""
    fill(gateway_site, user, [mail("Read")], flags=("\\Seen",))
    client = signed_in(gateway_site, gateway, user)
    found = codes(client.ok(b"SELECT inbox"))  # INBOX in any case (RFC 3501 5.1)
    assert b"UNSEEN" not in found and found[b"UIDNEXT"] == b"2"


def test_examine_is_read_only(gateway_site: Site, gateway: GatewayThread,
                              user: str) -> None:
    """RFC 3501 6.3.2, 6.4.5: EXAMINE is READ-ONLY and FETCH BODY[] sets no \\Seen."""
    message = mail("Look only")
    fill(gateway_site, user, [message])
    client = signed_in(gateway_site, gateway, user)
    lines = client.command(b"EXAMINE INBOX")
    assert lines[-1].startswith(b"t2 OK [READ-ONLY]")
    assert b"* 1 EXISTS" in lines
    assert client.ok(b"FETCH 1 BODY[]") == [
        b"* 1 FETCH (BODY[] {%d}\r\n%s)" % (len(message), message)]
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]
    assert client.tagged(b"STORE 1 +FLAGS (\\Seen)").startswith(b"NO")
    assert client.tagged(b"EXPUNGE").startswith(b"NO")
    assert client.tagged(b"UID EXPUNGE 1").startswith(b"NO")
    assert client.tagged(b"MOVE 1 Trash").startswith(b"NO")  # RFC 6851 3.3
    assert client.tagged(b"COPY 1 Archive").startswith(b"OK [COPYUID ")
    assert client.tagged(b"SELECT INBOX").startswith(b"OK [READ-WRITE]")
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]


def test_failed_select_leaves_nothing_selected(gateway_site: Site,
                                               gateway: GatewayThread,
                                               user: str) -> None:
    """RFC 3501 6.3.1: a failed SELECT returns to the authenticated state."""
    fill(gateway_site, user, [mail("Here")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.tagged(b"SELECT Nowhere").startswith(b"NO")
    assert client.tagged(b"FETCH 1 FLAGS").startswith(b"BAD")


# == RFC 3501 6.4.5, 6.4.8, 7.4.2: FETCH ===============================================

def test_fetch_body_sets_seen_and_tells_flags(gateway_site: Site,
                                              gateway: GatewayThread,
                                              user: str) -> None:
    """RFC 3501 6.4.5: BODY[] sets \\Seen; the changed FLAGS come with the FETCH."""
    message = mail("Read me")
    fill(gateway_site, user, [message])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"FETCH 1 BODY[]") == [
        b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen))" % (len(message), message)]
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Seen))"]
    assert status(client.ok(b"STATUS INBOX (UNSEEN)")[0]) == {"UNSEEN": 0}


def test_fetch_body_peek_keeps_unseen(gateway_site: Site, gateway: GatewayThread,
                                      user: str) -> None:
    """RFC 3501 6.4.5: BODY.PEEK[] answers as BODY[] and leaves \\Seen alone."""
    message = mail("Peek")
    fill(gateway_site, user, [message])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"FETCH 1 BODY.PEEK[]") == [
        b"* 1 FETCH (BODY[] {%d}\r\n%s)" % (len(message), message)]
    assert client.ok(b"FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())"]


def test_fetch_partial_is_labelled_with_its_origin(gateway_site: Site,
                                                   gateway: GatewayThread,
                                                   user: str) -> None:
    """RFC 3501 6.4.5, 7.4.2: <0.10> answers as BODY[]<0>; past the end, empty."""
    message = mail("Partial")
    fill(gateway_site, user, [message])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"FETCH 1 BODY.PEEK[]<0.10>") == [
        b"* 1 FETCH (BODY[]<0> {10}\r\nFrom: Peer)"]
    assert client.ok(b"FETCH 1 BODY.PEEK[]<6.4>") == [
        b"* 1 FETCH (BODY[]<6> {4}\r\nPeer)"]
    assert client.ok(b"FETCH 1 BODY.PEEK[]<100000.10>")[0] in (
        b'* 1 FETCH (BODY[]<100000> "")', b"* 1 FETCH (BODY[]<100000> {0}\r\n)")


def test_fetch_header_fields(gateway_site: Site, gateway: GatewayThread,
                             user: str) -> None:
    """RFC 3501 6.4.5, 7.4.2: HEADER.FIELDS labelled with its list; blank line kept."""
    fill(gateway_site, user, [mail("Fields")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    wanted = b"From: Peer <peer@peer.gov.example>\r\nSubject: Fields\r\n\r\n"
    assert client.ok(b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])") == [
        b"* 1 FETCH (BODY[HEADER.FIELDS (FROM SUBJECT)] {%d}\r\n%s)"
        % (len(wanted), wanted)]
    not_wanted = client.ok(b"FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (FROM SUBJECT)]")[0]
    assert not_wanted.startswith(b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (FROM SUBJECT)] {")
    assert b"Subject:" not in not_wanted and b"Message-ID: <Fields@test>" in not_wanted


def test_fetch_rfc822_items(gateway_site: Site, gateway: GatewayThread,
                            user: str) -> None:
    """RFC 3501 6.4.5: RFC822.HEADER peeks; RFC822.TEXT and RFC822 set \\Seen."""
    first, second = mail("First", "One"), mail("Second", "Two")
    fill(gateway_site, user, [first, second])
    header = first[: first.index(b"\r\n\r\n") + 4]
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"FETCH 1 RFC822.HEADER") == [
        b"* 1 FETCH (RFC822.HEADER {%d}\r\n%s)" % (len(header), header)]
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]
    assert client.ok(b"FETCH 1 RFC822.TEXT") == [
        b"* 1 FETCH (RFC822.TEXT {5}\r\nOne\r\n FLAGS (\\Seen))"]
    assert client.ok(b"FETCH 2 RFC822") == [
        b"* 2 FETCH (RFC822 {%d}\r\n%s FLAGS (\\Seen))" % (len(second), second)]


@pytest.mark.parametrize(("macro", "items"), [
    (b"FAST", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"]),
    (b"ALL", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"]),
    (b"FULL", [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"]),
])
def test_fetch_macros(gateway_site: Site, gateway: GatewayThread, user: str,
                      macro: bytes, items: list[bytes]) -> None:
    """RFC 3501 6.4.5: FAST, ALL and FULL are their items, and nothing more."""
    message = mail("Macro")
    fill(gateway_site, user, [message], when=stamp("2024-02-01 09:00"))
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    [line] = client.ok(b"FETCH 1 " + macro)
    assert b'INTERNALDATE "01-Feb-2024 09:00:00 +0000"' in line
    assert b"RFC822.SIZE %d" % len(message) in line
    names = re.findall(rb"[ (]((?:FLAGS|INTERNALDATE|RFC822\.SIZE|ENVELOPE|BODY"
                       rb"|BODYSTRUCTURE)) [(\"0-9]", line)
    assert sorted(names) == sorted(items), line
    assert b"\\Seen" not in line


def test_uid_fetch_always_tells_uid(gateway_site: Site, gateway: GatewayThread,
                                    user: str) -> None:
    """RFC 3501 6.4.8: UID FETCH responses include the UID even when not asked."""
    fill(gateway_site, user, [mail("A"), mail("B")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"UID FETCH 2 FLAGS") == [b"* 2 FETCH (UID 2 FLAGS ())"]
    [line] = client.ok(b"UID FETCH 1 (RFC822.SIZE)")
    assert line.startswith(b"* 1 FETCH (") and b"UID 1" in line


def test_fetch_star_ranges(gateway_site: Site, gateway: GatewayThread,
                           user: str) -> None:
    """RFC 3501 9 (seq-range): "*" is the last message and *:4 equals 4:*."""
    fill(gateway_site, user, [mail(f"N{n}") for n in range(5)])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"FETCH * (UID)") == [b"* 5 FETCH (UID 5)"]
    assert client.ok(b"FETCH *:4 (UID)") == [b"* 4 FETCH (UID 4)", b"* 5 FETCH (UID 5)"]
    assert client.ok(b"FETCH 2,4:* (UID)") == [
        b"* 2 FETCH (UID 2)", b"* 4 FETCH (UID 4)", b"* 5 FETCH (UID 5)"]


def test_fetch_beyond_exists_is_bad(gateway_site: Site, gateway: GatewayThread,
                                    user: str) -> None:
    """RFC 3501 9 (seq-number): a sequence number above EXISTS is answered BAD."""
    fill(gateway_site, user, [mail("Only")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.tagged(b"FETCH 2 (UID)").startswith(b"BAD")
    assert client.tagged(b"STORE 2 +FLAGS (\\Seen)").startswith(b"BAD")


def test_fetch_range_reaching_beyond_exists_is_bad(gateway_site: Site,
                                                   gateway: GatewayThread,
                                                   user: str) -> None:
    """RFC 3501 9 (seq-number): a set naming a number above EXISTS is answered BAD."""
    fill(gateway_site, user, [mail("Only")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.command(b"FETCH 1:3 (UID)")[-1].startswith(b"t3 BAD")


def test_star_in_empty_mailbox_names_nothing(gateway_site: Site, gateway: GatewayThread,
                                             user: str) -> None:
    """RFC 3501 9 would have "*" in an empty mailbox answered BAD; this server
    answers OK with nothing (docs/limitations.md); a number
    stays an error."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT Drafts")
    assert client.tagged(b"FETCH 1:* (FLAGS)").startswith(b"OK")
    assert client.tagged(b"FETCH * (FLAGS)").startswith(b"OK")
    assert client.tagged(b"FETCH 1 (FLAGS)").startswith(b"BAD")


def test_uid_fetch_of_missing_uids(gateway_site: Site, gateway: GatewayThread,
                                   user: str) -> None:
    """RFC 3501 6.4.8, 9: absent UIDs are ignored; n:* always names the last message."""
    fill(gateway_site, user, [mail("A"), mail("B")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"UID FETCH 99 (FLAGS)") == []
    assert client.ok(b"UID FETCH 99:* (FLAGS)") == [b"* 2 FETCH (UID 2 FLAGS ())"]
    assert client.ok(b"UID STORE 99 +FLAGS (\\Seen)") == []
    client.ok(b"SELECT Drafts")
    assert client.ok(b"UID FETCH 1:* (FLAGS)") == []


# == RFC 3501 6.4.6: STORE =============================================================

def test_store_silent_and_loud(gateway_site: Site, gateway: GatewayThread,
                               user: str) -> None:
    """RFC 3501 6.4.6: .SILENT gives no FETCH; without it, the new flags come back."""
    fill(gateway_site, user, [mail("Flag me")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"STORE 1 +FLAGS.SILENT (\\Flagged)") == []
    assert client.ok(b"NOOP") == []
    [line] = client.ok(b"STORE 1 +FLAGS (\\Seen)")
    assert line.startswith(b"* 1 FETCH (FLAGS (")
    assert flags_in(line) == {b"\\Flagged", b"\\Seen"}
    # Unchanged flags are told too: "as if a FETCH of those flags was done".
    [again] = client.ok(b"STORE 1 +FLAGS (\\Seen)")
    assert flags_in(again) == {b"\\Flagged", b"\\Seen"}
    assert client.ok(b"STORE 1 FLAGS.SILENT ()") == []
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]
    # store-att-flags: a list in parentheses, or flags separated by spaces.
    [line] = client.ok(b"STORE 1 FLAGS \\Draft \\Answered")
    assert flags_in(line) == {b"\\Draft", b"\\Answered"}


def test_recent_cannot_be_stored(gateway_site: Site, gateway: GatewayThread,
                                 user: str) -> None:
    """RFC 3501 2.3.2: \\Recent cannot be altered by the client."""
    fill(gateway_site, user, [mail("Recent")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.tagged(b"STORE 1 +FLAGS (\\Recent)").split()[0] in (b"NO", b"BAD")
    assert client.ok(b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]


def test_keywords_are_kept(gateway_site: Site, gateway: GatewayThread,
                           user: str) -> None:
    """RFC 3501 2.3.2, 6.4.6, 7.2.6: keywords are stored and shown in FLAGS."""
    fill(gateway_site, user, [mail("Words")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    [line] = client.ok(b"STORE 1 +FLAGS ($Important Project-X)")
    assert flags_in(line) == {b"$Important", b"Project-X"}
    [line] = client.ok(b"STORE 1 -FLAGS (Project-X)")
    assert flags_in(line) == {b"$Important"}
    lines = client.ok(b"SELECT INBOX")
    [defined] = [line for line in lines if line.startswith(b"* FLAGS ")]
    assert b"$Important" in flags_in(defined)
    assert client.ok(b"SEARCH KEYWORD $Important") == [b"* SEARCH 1"]
    assert client.ok(b"SEARCH UNKEYWORD $Important") == [b"* SEARCH"]


def test_uid_store_tells_uid(gateway_site: Site, gateway: GatewayThread,
                             user: str) -> None:
    """RFC 3501 6.4.8: the FETCH responses of UID STORE include the UID."""
    fill(gateway_site, user, [mail("A"), mail("B")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    [line] = client.ok(b"UID STORE 2 +FLAGS (\\Answered)")
    assert line.startswith(b"* 2 FETCH (") and b"UID 2" in line
    assert flags_in(line) == {b"\\Answered"}


# == RFC 3501 6.4.4: SEARCH ============================================================

def fill_for_search(site: Site, address: str) -> None:
    """Three messages: 1 seen and small, 2 large with X-Priority, 3 flagged."""
    fill(site, address, [mail("Budget", "Short")], flags=("\\Seen",),
         when=stamp("2024-02-01 12:00"))
    fill(site, address, [mail("=?utf-8?q?Entw=C3=BCrfe?=", "x" * 3000,
                              date="Fri, 15 Mar 2024 10:00:00 +0000",
                              extra="X-Priority: 1\r\n")],
         when=stamp("2024-03-15 12:00"))
    fill(site, address, [mail("Minutes", "Minutes of the meeting",
                              date="Wed, 10 Apr 2024 10:00:00 +0200")],
         flags=("\\Flagged",), when=stamp("2024-04-10 12:00"))


@pytest.fixture(scope="module")
def search_user(gateway_site: Site) -> str:
    """One officer for the SEARCH tests that only read (see `fill_for_search`)."""
    address = gateway_site.add_user("searcher")
    fill_for_search(gateway_site, address)
    return address


@pytest.fixture
def searching(gateway_site: Site, gateway: GatewayThread, search_user: str) -> Imap:
    client = signed_in(gateway_site, gateway, search_user)
    client.ok(b"EXAMINE INBOX")  # so that no test changes what the next one finds
    return client


@pytest.mark.parametrize(("criteria", "expected"), [
    (b"ALL", [1, 2, 3]),
    (b"SEEN", [1]),
    (b"UNSEEN", [2, 3]),
    (b"FLAGGED UNSEEN", [3]),
    (b"NOT SEEN", [2, 3]),
    (b"OR SEEN FLAGGED", [1, 3]),
    (b"OR (UNSEEN LARGER 1000) (OR SUBJECT budget SUBJECT nothing)", [1, 2]),
    (b"NOT OR SEEN FLAGGED", [2]),
    (b"LARGER 1000", [2]),
    (b"SMALLER 1000", [1, 3]),
    (b"SINCE 15-Mar-2024", [2, 3]),
    (b"BEFORE 15-Mar-2024", [1]),
    (b'ON "15-Mar-2024"', [2]),
    (b"SENTSINCE 1-Apr-2024", [3]),
    (b"SENTBEFORE 1-Feb-2024", []),
    (b"SENTON 1-Feb-2024", [1]),
    (b'HEADER X-Priority ""', [2]),
    (b'HEADER "X-Priority" "1"', [2]),
    (b'HEADER X-Missing ""', []),
    (b"SUBJECT entw", [2]),  # decoded from its encoded word, any case
    (b"TEXT meeting", [3]),
    (b"2:*", [2, 3]),
    (b"*", [3]),
    (b"1,3", [1, 3]),
    (b"NOT 2", [1, 3]),
    (b"UID 2", [2]),
    (b"UID 2:* SEEN", []),
])
def test_search_keys(searching: Imap, criteria: bytes, expected: list[int]) -> None:
    """RFC 3501 6.4.4: each search key, dates by day, strings by substring."""
    assert searched(searching.ok(b"SEARCH " + criteria)) == expected


def test_uid_search_answers_uids(gateway_site: Site, gateway: GatewayThread,
                                 user: str) -> None:
    """RFC 3501 6.4.8: UID SEARCH answers UIDs; UID n:* includes the last message."""
    fill_for_search(gateway_site, user)
    searching = signed_in(gateway_site, gateway, user)
    searching.ok(b"SELECT INBOX")
    searching.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    searching.ok(b"EXPUNGE")
    assert searched(searching.ok(b"SEARCH ALL")) == [1, 2]
    assert searched(searching.ok(b"UID SEARCH ALL")) == [2, 3]
    assert searched(searching.ok(b"UID SEARCH UID 99:*")) == [3]
    assert searched(searching.ok(b"UID SEARCH 1")) == [2]


def test_search_charset_utf8_literal(searching: Imap) -> None:
    """RFC 3501 6.4.4: CHARSET UTF-8 with the string in a synchronizing literal."""
    word = "Entwürfe".encode()
    lines = searching.ok(b"SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n%s" % (len(word), word))
    assert searched(lines) == [2]
    lines = searching.ok(b"UID SEARCH CHARSET utf-8 OR SUBJECT {%d+}\r\n%s SEEN"
                         % (len(word), word))
    assert searched(lines) == [1, 2]


def test_search_unknown_charset(searching: Imap) -> None:
    """RFC 3501 6.4.4, 7.1: an unknown charset is NO [BADCHARSET], never BAD."""
    assert searching.tagged(b"SEARCH CHARSET X-UNKNOWN-8 ALL").startswith(
        b"NO [BADCHARSET")


# == UIDPLUS (RFC 4315), MOVE (RFC 6851), EXPUNGE ======================================

def test_append_answers_appenduid(gateway_site: Site, gateway: GatewayThread,
                                  user: str) -> None:
    """RFC 4315 3: APPEND answers [APPENDUID uidvalidity uid]."""
    client = signed_in(gateway_site, gateway, user)
    before = status(client.ok(b"STATUS Drafts (UIDVALIDITY UIDNEXT)")[0])
    message = mail("Draft")
    reply = client.tagged(b"APPEND Drafts (\\Draft) {%d+}\r\n%s"
                          % (len(message), message))
    assert reply.startswith(b"OK [APPENDUID %d %d]"
                            % (before["UIDVALIDITY"], before["UIDNEXT"])), reply


def test_copy_answers_copyuid(gateway_site: Site, gateway: GatewayThread,
                              user: str) -> None:
    """RFC 4315 3: COPY answers [COPYUID uidvalidity source-uids target-uids]."""
    fill(gateway_site, user, [mail("A"), mail("B"), mail("C")])
    fill(gateway_site, user, [mail("Old")], mailbox="Archive")
    client = signed_in(gateway_site, gateway, user)
    target = status(client.ok(b"STATUS Archive (UIDVALIDITY UIDNEXT)")[0])
    client.ok(b"SELECT INBOX")
    reply = client.tagged(b"COPY 1,3 Archive")
    assert reply.startswith(b"OK [COPYUID %d 1,3 2:3]" % target["UIDVALIDITY"]), reply
    reply = client.tagged(b"UID COPY 2 Archive")
    assert reply.startswith(b"OK [COPYUID %d 2 4]" % target["UIDVALIDITY"]), reply
    assert client.tagged(b"COPY 1 Nowhere").startswith(b"NO [TRYCREATE]")
    assert client.tagged(b"UID COPY 99 Archive").startswith(b"OK")  # RFC 3501 6.4.8


def test_uid_expunge_removes_only_given_uids(gateway_site: Site,
                                             gateway: GatewayThread,
                                             user: str) -> None:
    """RFC 4315 2.1: UID EXPUNGE removes \\Deleted messages of the given UIDs only."""
    fill(gateway_site, user, [mail(f"N{n}") for n in range(4)], flags=("\\Deleted",))
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"UID EXPUNGE 2,4") == [b"* 2 EXPUNGE", b"* 3 EXPUNGE"]
    assert searched(client.ok(b"UID SEARCH ALL")) == [1, 3]
    assert client.ok(b"UID EXPUNGE 99") == []
    assert searched(client.ok(b"UID SEARCH DELETED")) == [1, 3]


def test_expunge_numbers_shift_as_messages_go(gateway_site: Site,
                                              gateway: GatewayThread,
                                              user: str) -> None:
    """RFC 3501 7.4.1: each EXPUNGE renumbers the messages after it at once."""
    fill(gateway_site, user, [mail(f"N{n}") for n in range(6)])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    client.ok(b"STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
    view = [1, 2, 3, 4, 5, 6]
    lines = client.ok(b"EXPUNGE")
    for number in expunged(lines):
        del view[number - 1]
    assert view == [1, 4, 6] and len(lines) == 3
    assert client.ok(b"FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 4)", b"* 3 FETCH (UID 6)"]


def test_move_sends_copyuid_then_expunges(gateway_site: Site, gateway: GatewayThread,
                                          user: str) -> None:
    """RFC 6851 3.3, 4.3: an untagged OK [COPYUID] comes before the EXPUNGEs."""
    fill(gateway_site, user, [mail(f"N{n}") for n in range(4)])
    client = signed_in(gateway_site, gateway, user)
    trash = status(client.ok(b"STATUS Trash (UIDVALIDITY UIDNEXT)")[0])
    client.ok(b"SELECT INBOX")
    lines = client.command(b"UID MOVE 2 Trash")
    assert lines[0].startswith(b"* OK [COPYUID %d 2 %d]"
                               % (trash["UIDVALIDITY"], trash["UIDNEXT"])), lines
    assert lines[1:-1] == [b"* 2 EXPUNGE"] and b" OK" in lines[-1]
    lines = client.command(b"MOVE 1:2 Trash")
    assert lines[0].startswith(b"* OK [COPYUID %d 1,3 %d:%d]"
                               % (trash["UIDVALIDITY"], trash["UIDNEXT"] + 1,
                                  trash["UIDNEXT"] + 2)), lines
    view = [1, 3, 4]
    for number in expunged(lines):
        del view[number - 1]
    assert view == [4] and len(lines) == 4
    assert client.ok(b"UID FETCH 1:* (UID)") == [b"* 1 FETCH (UID 4)"]
    assert client.tagged(b"MOVE 1 Nowhere").startswith(b"NO [TRYCREATE]")


# == RFC 3501 6.3: mailboxes ===========================================================

def test_list_empty_pattern_gives_the_delimiter(gateway_site: Site,
                                                gateway: GatewayThread,
                                                user: str) -> None:
    """RFC 3501 6.3.8: LIST "" "" answers the hierarchy delimiter and root."""
    client = signed_in(gateway_site, gateway, user)
    assert client.ok(b'LIST "" ""') == [b'* LIST (\\Noselect) "/" ""']


def test_list_children_and_special_use(gateway_site: Site, gateway: GatewayThread,
                                       user: str) -> None:
    """RFC 3348 3, RFC 6154 2, RFC 3501 6.3.8: "*" and "%" with their attributes."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Projects/Alpha")
    client.ok(b'CREATE "Projects/Beta"')
    everything = listed(client.ok(b'LIST "" "*"'))
    assert everything["INBOX"] == {"\\HasNoChildren"}
    assert everything["Projects"] == {"\\HasChildren"}
    assert everything["Projects/Alpha"] == {"\\HasNoChildren"}
    for name, use in [("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Junk", "\\Junk"),
                      ("Trash", "\\Trash"), ("Archive", "\\Archive")]:
        assert everything[name] == {"\\HasNoChildren", use}
    top = listed(client.ok(b'LIST "" %'))
    assert set(top) == set(everything) - {"Projects/Alpha", "Projects/Beta"}
    assert top["Projects"] == {"\\HasChildren"}
    assert listed(client.ok(b'LIST "" "inbox"')) == {"INBOX": {"\\HasNoChildren"}}


def test_list_with_a_reference(gateway_site: Site, gateway: GatewayThread,
                               user: str) -> None:
    """RFC 3501 6.3.8: the reference is put before the pattern."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Projects/Alpha/Deep")
    client.ok(b"CREATE Projects/Beta")
    assert set(listed(client.ok(b'LIST "Projects/" "%"'))) == {
        "Projects/Alpha", "Projects/Beta"}
    assert set(listed(client.ok(b'LIST "Projects/" "*"'))) == {
        "Projects/Alpha", "Projects/Alpha/Deep", "Projects/Beta"}
    assert set(listed(client.ok(b'LIST "" "Projects/%"'))) == {
        "Projects/Alpha", "Projects/Beta"}


def test_lsub_lists_subscribed_mailboxes(gateway_site: Site, gateway: GatewayThread,
                                         user: str) -> None:
    """RFC 3501 6.3.6, 6.3.7, 6.3.9: LSUB lists what is subscribed, nothing else."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"UNSUBSCRIBE Junk")
    names = set(listed(client.ok(b'LSUB "" "*"')))
    assert "INBOX" in names and "Sent" in names and "Junk" not in names
    client.ok(b"SUBSCRIBE Junk")
    assert "Junk" in listed(client.ok(b'LSUB "" "*"'))


def test_lsub_percent_shows_unsubscribed_parent_noselect(gateway_site: Site,
                                                         gateway: GatewayThread,
                                                         user: str) -> None:
    """RFC 3501 6.3.9: "%" must give foo, \\Noselect, for a subscribed foo/bar."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Lists/Child")
    client.ok(b"UNSUBSCRIBE Lists")
    top = listed(client.ok(b'LSUB "" "%"'))
    assert "Lists/Child" not in top
    assert "\\Noselect" in top["Lists"]


def test_status_of_selected_and_other_mailbox(gateway_site: Site,
                                              gateway: GatewayThread,
                                              user: str) -> None:
    """RFC 3501 6.3.10: STATUS items of the selected mailbox and of another."""
    fill(gateway_site, user, [mail("Seen")], flags=("\\Seen",))
    fill(gateway_site, user, [mail("New")])
    client = signed_in(gateway_site, gateway, user)
    found = codes(client.ok(b"SELECT INBOX"))
    items = b"(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)"
    [line] = client.ok(b"STATUS INBOX " + items)
    assert line.startswith((b'* STATUS "INBOX" (', b"* STATUS INBOX ("))
    assert status(line) == {"MESSAGES": 2, "RECENT": 0, "UIDNEXT": 3, "UNSEEN": 1,
                            "UIDVALIDITY": int(found[b"UIDVALIDITY"])}
    other = status(client.ok(b"STATUS Archive " + items)[0])
    assert other["MESSAGES"] == 0 and other["UNSEEN"] == 0 and other["UIDNEXT"] == 1
    assert other["UIDVALIDITY"] > 0
    assert client.tagged(b"STATUS Nowhere (MESSAGES)").startswith(b"NO")


def test_create_with_trailing_delimiter(gateway_site: Site, gateway: GatewayThread,
                                        user: str) -> None:
    """RFC 3501 6.3.3: "Name/" creates Name, meant to hold other mailboxes."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b'CREATE "Reports/"')
    assert listed(client.ok(b'LIST "" "Reports*"')) == {"Reports": {"\\HasNoChildren"}}
    assert client.tagged(b"SELECT Reports").startswith(b"OK")
    assert client.tagged(b"CREATE Reports").startswith(b"NO")
    assert client.tagged(b"CREATE INBOX").startswith(b"NO")


def test_delete_with_children_leaves_noselect(gateway_site: Site,
                                              gateway: GatewayThread,
                                              user: str) -> None:
    """RFC 3501 6.3.4: a deleted parent keeps its children and turns \\Noselect."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Old/Inner")
    fill(gateway_site, user, [mail("Kept below")], mailbox="Old/Inner")
    fill(gateway_site, user, [mail("Gone")], mailbox="Old")
    client.ok(b"DELETE Old")
    found = listed(client.ok(b'LIST "" "Old*"'))
    assert "\\Noselect" in found["Old"] and "Old/Inner" in found
    assert client.tagged(b"SELECT Old").startswith(b"NO")
    assert client.tagged(b"DELETE Old").startswith(b"NO")
    assert b"* 1 EXISTS" in client.ok(b"SELECT Old/Inner")
    assert client.tagged(b"DELETE INBOX").startswith(b"NO")


def test_rename_inbox_moves_its_messages(gateway_site: Site, gateway: GatewayThread,
                                         user: str) -> None:
    """RFC 3501 6.3.5: RENAME INBOX moves its messages and leaves INBOX empty."""
    fill(gateway_site, user, [mail("A"), mail("B")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b'RENAME INBOX "Before 2025"')
    assert status(client.ok(b"STATUS INBOX (MESSAGES)")[0]) == {"MESSAGES": 0}
    assert status(client.ok(b'STATUS "Before 2025" (MESSAGES)')[0]) == {"MESSAGES": 2}
    assert "INBOX" in listed(client.ok(b'LIST "" "*"'))
    assert b"* 0 EXISTS" in client.ok(b"SELECT INBOX")


def test_rename_takes_inferiors_along(gateway_site: Site, gateway: GatewayThread,
                                      user: str) -> None:
    """RFC 3501 6.3.5: inferior names are renamed too; an existing target is NO."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Work/Old/Older")
    client.ok(b"CREATE Workshop")
    fill(gateway_site, user, [mail("Filed")], mailbox="Work/Old")
    client.ok(b"RENAME Work Done/Work")
    names = set(listed(client.ok(b'LIST "" "*"')))
    assert {"Done", "Done/Work", "Done/Work/Old", "Done/Work/Old/Older",
            "Workshop"} <= names
    assert not names & {"Work", "Work/Old", "Work/Old/Older"}
    assert status(client.ok(b"STATUS Done/Work/Old (MESSAGES)")[0]) == {"MESSAGES": 1}
    assert client.tagged(b"RENAME Workshop Done").startswith(b"NO")
    assert client.tagged(b"RENAME Nowhere Somewhere").startswith(b"NO")
    assert client.tagged(b"RENAME Workshop INBOX").startswith(b"NO")  # RFC 3501 9


def test_delete_drops_the_subscription(gateway_site: Site, gateway: GatewayThread,
                                       user: str) -> None:
    """RFC 3501 6.3.6 keeps a deleted mailbox's name subscribed; this server drops
    it with the mailbox, so no client shows a folder that is gone
    (docs/limitations.md). A mailbox made again under that name is subscribed
    anew, as every new mailbox is."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Expiring")
    client.ok(b"SUBSCRIBE Expiring")
    client.ok(b"DELETE Expiring")
    assert "Expiring" not in listed(client.ok(b'LSUB "" "*"'))
    client.ok(b"CREATE Expiring")
    assert "Expiring" in listed(client.ok(b'LSUB "" "*"'))


def test_list_special_use_options(gateway_site: Site, gateway: GatewayThread,
                                  user: str) -> None:
    """RFC 6154 2, 5.1: the SPECIAL-USE selection and return options of LIST."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"CREATE Plain")
    special = listed(client.ok(b'LIST (SPECIAL-USE) "" "*"'))
    assert set(special) == {"Sent", "Drafts", "Junk", "Trash", "Archive"}
    assert special["Drafts"] >= {"\\Drafts"}
    returned = listed(client.ok(b'LIST "" "*" RETURN (SPECIAL-USE)'))
    assert returned["Sent"] >= {"\\Sent"} and "Plain" in returned
    assert not returned["Plain"] & {"\\Sent", "\\Drafts", "\\Junk", "\\Trash",
                                    "\\Archive", "\\All", "\\Flagged"}


def test_modified_utf7_names_round_trip(gateway_site: Site, gateway: GatewayThread,
                                        user: str) -> None:
    """RFC 3501 5.1.3: names travel in modified UTF-7 and come back as sent."""
    client = signed_in(gateway_site, gateway, user)
    client.ok(b'CREATE "Entw&APw-rfe"')
    client.ok(b'CREATE "R&-D"')
    client.ok(b'CREATE "Tax &- Customs/&ZeVnLIqe-"')
    names = set(listed(client.ok(b'LIST "" "*"')))
    assert {"Entw&APw-rfe", "R&-D", "Tax &- Customs/&ZeVnLIqe-"} <= names
    assert client.tagged(b'SELECT "Entw&APw-rfe"').startswith(b"OK")
    assert status(client.ok(b'STATUS "R&-D" (MESSAGES)')[0]) == {"MESSAGES": 0}


@pytest.mark.parametrize("name", [
    b'"Entw&APw"',  # never ends
    b'"&AGE-"',  # "a" hidden in base64
    b'"Entw&AP-"',  # half a character
    b'"Caf\xc3\xa9"',  # 8-bit, not modified UTF-7
    b'"&-&AOk-&AOk-"',  # two encoded runs side by side
])
def test_invalid_modified_utf7_is_refused(gateway_site: Site, gateway: GatewayThread,
                                          user: str, name: bytes) -> None:
    """RFC 3501 5.1.3: a name that is not valid modified UTF-7 is refused."""
    client = signed_in(gateway_site, gateway, user)
    assert client.tagged(b"CREATE " + name).split()[0] in (b"NO", b"BAD")


def test_append_to_missing_mailbox_asks_to_create(gateway_site: Site,
                                                  gateway: GatewayThread,
                                                  user: str) -> None:
    """RFC 3501 6.3.11: APPEND to a mailbox that does not exist is NO [TRYCREATE]."""
    client = signed_in(gateway_site, gateway, user)
    assert client.tagged(b"APPEND Nowhere {5+}\r\nhello").startswith(b"NO [TRYCREATE]")
    assert client.tagged(b"APPEND Nowhere {5}\r\nhello").startswith(b"NO [TRYCREATE]")


def test_append_keeps_flags_and_date(gateway_site: Site, gateway: GatewayThread,
                                     user: str) -> None:
    """RFC 3501 6.3.11: APPEND's flags and date-time become the message's."""
    client = signed_in(gateway_site, gateway, user)
    message = mail("Dated")
    for date in (b'"05-Mar-2024 09:30:00 +0100"', b'" 5-Mar-2024 09:30:00 +0100"'):
        reply = client.tagged(b"APPEND Drafts (\\Seen $Work) %s {%d}\r\n%s"
                              % (date, len(message), message))
        assert reply.startswith(b"OK"), reply
    client.ok(b"SELECT Drafts")
    lines = client.ok(b"FETCH 1:2 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert len(lines) == 2
    for line in lines:
        assert flags_in(line) == {b"\\Seen", b"$Work"}
        assert b"RFC822.SIZE %d" % len(message) in line
        found = re.search(rb'INTERNALDATE "([^"]+)"', line)
        assert found is not None
        when = datetime.strptime(found.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
        assert when == datetime(2024, 3, 5, 8, 30, tzinfo=UTC)


def test_append_to_selected_mailbox_tells_exists(gateway_site: Site,
                                                 gateway: GatewayThread,
                                                 user: str) -> None:
    """RFC 3501 6.3.11: APPEND to the selected mailbox is told with EXISTS."""
    fill(gateway_site, user, [mail("First")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    message = mail("Second")
    lines = client.command(b"APPEND INBOX {%d+}\r\n%s" % (len(message), message))
    assert lines[:-1] == [b"* 2 EXISTS"] and lines[-1].startswith(b"t3 OK [APPENDUID ")


# == NAMESPACE, ID, ENABLE, UNSELECT, CLOSE, CHECK, NOOP ===============================

def test_namespace(gateway_site: Site, gateway: GatewayThread, user: str) -> None:
    """RFC 2342 5: one personal namespace with "/", no other users', none shared."""
    client = signed_in(gateway_site, gateway, user)
    assert client.ok(b"NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL']


def test_id(gateway_site: Site, gateway: GatewayThread) -> None:
    """RFC 2971 3.1, 3.2: ID is answered with an ID response, before sign-in too."""
    client = Imap(gateway.service.port("imap"))
    [line] = client.ok(b'ID ("name" "conformance" "version" "1.0")')
    assert line == b"* ID NIL" or re.fullmatch(rb'\* ID \(("[^"]*" "[^"]*" ?)+\)', line)
    assert client.ok(b"ID NIL")[0].startswith(b"* ID ")


def test_enable_of_unknown_capability(gateway_site: Site, gateway: GatewayThread,
                                      user: str) -> None:
    """RFC 5161 3.1: an unknown capability is ignored; ENABLED lists none of it."""
    client = signed_in(gateway_site, gateway, user)
    lines = client.ok(b"ENABLE X-NOT-A-THING")
    assert lines in ([], [b"* ENABLED"]), lines


def test_unselect_does_not_expunge(gateway_site: Site, gateway: GatewayThread,
                                   user: str) -> None:
    """RFC 3691 2: UNSELECT leaves the mailbox without expunging anything."""
    fill(gateway_site, user, [mail("Keep")], flags=("\\Deleted",))
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    assert client.ok(b"UNSELECT") == []
    assert client.tagged(b"FETCH 1 FLAGS").startswith(b"BAD")
    assert client.tagged(b"UNSELECT").startswith(b"BAD")
    assert b"* 1 EXISTS" in client.ok(b"SELECT INBOX")


def test_close_expunges_silently(gateway_site: Site, gateway: GatewayThread,
                                 user: str) -> None:
    """RFC 3501 6.4.2: CLOSE expunges with no untagged EXPUNGE; after EXAMINE, none."""
    fill(gateway_site, user, [mail("Gone")], flags=("\\Deleted",))
    fill(gateway_site, user, [mail("Kept"), mail("Also gone")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    client.ok(b"STORE 3 +FLAGS.SILENT (\\Deleted)")
    client.ok(b"EXAMINE INBOX")
    assert client.ok(b"CLOSE") == []
    assert b"* 3 EXISTS" in client.ok(b"SELECT INBOX")
    assert client.ok(b"CLOSE") == []
    assert client.tagged(b"FETCH 1 FLAGS").startswith(b"BAD")
    assert b"* 1 EXISTS" in client.ok(b"SELECT INBOX")
    assert client.ok(b"UID FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)"]


def test_noop_and_check_report_new_mail(gateway_site: Site, gateway: GatewayThread,
                                        user: str) -> None:
    """RFC 3501 6.1.2, 6.4.1, 7.3.1: NOOP and CHECK tell what arrived meanwhile."""
    fill(gateway_site, user, [mail("First")])
    client = signed_in(gateway_site, gateway, user)
    client.ok(b"SELECT INBOX")
    fill(gateway_site, user, [mail("Second")])
    assert client.ok(b"NOOP") == [b"* 2 EXISTS"]
    assert client.ok(b"NOOP") == []
    fill(gateway_site, user, [mail("Third")])
    assert client.ok(b"CHECK") == [b"* 3 EXISTS"]
    assert client.ok(b"FETCH 3 (UID)") == [b"* 3 FETCH (UID 3)"]


# == IDLE (RFC 2177) and two sessions on one mailbox ===================================

def test_idle_reports_and_takes_a_pipelined_command(gateway_site: Site,
                                                    gateway: GatewayThread,
                                                    user: str) -> None:
    """RFC 2177 3: news arrives during IDLE; a command right behind DONE is run."""
    fill(gateway_site, user, [mail("First")])
    idler = signed_in(gateway_site, gateway, user)
    other = signed_in(gateway_site, gateway, user)
    idler.ok(b"SELECT INBOX")
    idler.send(b"i1 IDLE\r\n")
    assert idler.line().startswith(b"+")
    message = mail("Pushed")
    other.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(message), message))
    assert idler.line() == b"* 2 EXISTS"
    other.ok(b"SELECT INBOX")
    other.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"EXPUNGE")
    while (line := idler.line()) != b"* 1 EXPUNGE":
        assert re.fullmatch(rb"\* 1 FETCH \(.*\)", line), line  # \\Deleted, told
    idler.send(b"DONE\r\np1 UID FETCH 1:* (UID)\r\n")
    assert idler.line().startswith(b"i1 OK")
    assert idler.line() == b"* 1 FETCH (UID 2)"
    assert idler.line().startswith(b"p1 OK")


def test_expunge_elsewhere_waits_for_an_allowed_command(gateway_site: Site,
                                                        gateway: GatewayThread,
                                                        user: str) -> None:
    """RFC 3501 7.4.1: no EXPUNGE while FETCH, STORE or SEARCH is answered; at NOOP."""
    fill(gateway_site, user, [mail("A"), mail("B"), mail("C")])
    watcher = signed_in(gateway_site, gateway, user)
    remover = signed_in(gateway_site, gateway, user)
    for client in (watcher, remover):
        client.ok(b"SELECT INBOX")
    remover.ok(b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert remover.ok(b"EXPUNGE") == [b"* 2 EXPUNGE"]

    for command in (b"FETCH 1 (UID)", b"STORE 1 +FLAGS.SILENT (\\Flagged)",
                    b"SEARCH ALL"):
        lines = watcher.ok(command)
        assert not expunged(lines), (command, lines)
    # Its view is unchanged: message 3 is still number 3.
    assert searched(watcher.ok(b"SEARCH ALL")) == [1, 3]
    assert watcher.ok(b"FETCH 3 (UID)") == [b"* 3 FETCH (UID 3)"]
    lines = watcher.ok(b"NOOP")
    assert expunged(lines) == [2]
    assert searched(watcher.ok(b"SEARCH ALL")) == [1, 2]


def test_expunge_seen_elsewhere_is_told_with_own_expunge(gateway_site: Site,
                                                         gateway: GatewayThread,
                                                         user: str) -> None:
    """RFC 3501 5.2, 7.4.1: a removal held back during STORE is told at EXPUNGE."""
    fill(gateway_site, user, [mail("A"), mail("B"), mail("C")])
    watcher = signed_in(gateway_site, gateway, user)
    remover = signed_in(gateway_site, gateway, user)
    for client in (watcher, remover):
        client.ok(b"SELECT INBOX")
    remover.ok(b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    remover.ok(b"EXPUNGE")
    # Seen here, but not to be told while STORE is answered.
    assert not expunged(watcher.ok(b"STORE 3 +FLAGS.SILENT (\\Deleted)"))
    view = [1, 2, 3]
    for command in (b"EXPUNGE", b"UID FETCH 1:* (UID)"):
        lines = watcher.ok(command)
        for number in expunged(lines):
            del view[number - 1]
    assert view == [1]


def test_appends_elsewhere_are_told_with_exists(gateway_site: Site,
                                                gateway: GatewayThread,
                                                user: str) -> None:
    """RFC 3501 5.2, 7.3.1: another session's APPEND reaches this one as EXISTS."""
    fill(gateway_site, user, [mail("A")])
    watcher = signed_in(gateway_site, gateway, user)
    adder = signed_in(gateway_site, gateway, user)
    watcher.ok(b"SELECT INBOX")
    message = mail("Added")
    adder.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(message), message))
    assert b"* 2 EXISTS" in watcher.ok(b"NOOP")
    adder.ok(b"SELECT INBOX")
    adder.ok(b"STORE 1 +FLAGS.SILENT (\\Answered)")
    lines = watcher.ok(b"NOOP")
    assert len(lines) == 1 and lines[0].startswith(b"* 1 FETCH (")
    assert flags_in(lines[0]) == {b"\\Answered"}


# == Literals (RFC 3501 7.5, RFC 7888) =================================================

def test_append_with_synchronizing_literal_waits_for_continuation(
        gateway_site: Site, gateway: GatewayThread, user: str) -> None:
    """RFC 3501 7.5: the server asks for an APPEND's {n} literal with "+"."""
    client = signed_in(gateway_site, gateway, user)
    message = mail("Synchronized")
    client.send(b"a1 APPEND Drafts {%d}\r\n" % len(message))
    assert client.line().startswith(b"+ ")
    client.send(message + b"\r\n")
    assert client.line().startswith(b"a1 OK [APPENDUID ")


def test_nonsynchronizing_literals_take_no_continuation(gateway_site: Site,
                                                        gateway: GatewayThread,
                                                        user: str) -> None:
    """RFC 7888 4: {n+} anywhere a literal goes, with no "+" from the server."""
    client = signed_in(gateway_site, gateway, user)
    message = mail("Not synchronized")
    client.send(b"a1 APPEND {6+}\r\nDrafts () {%d+}\r\n%s\r\na2 STATUS {6+}\r\nDrafts "
                b"(MESSAGES)\r\n" % (len(message), message))
    assert client.line().startswith(b"a1 OK [APPENDUID ")
    assert status(client.line()) == {"MESSAGES": 1}
    assert client.line().startswith(b"a2 OK")

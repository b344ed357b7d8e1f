"""OpenPGP on every hop, end to end through real sockets.

What issue 3's "Done when" asks: the copy on the wire between two gateways is
PGP/MIME that GnuPG opens and verifies, and nothing of the message is readable
in it; the peer reads it with its subject, Urdu text and attachment intact and
one verification header of its own; a recipient without a key is refused at
RCPT, or held until a key comes; inbound mail that is not encrypted and signed
as the sender's domain requires is refused, quarantined, and audited. Also:
no subject, body, password or passphrase in any log line, and one large
message being encrypted does not keep another client waiting.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import smtplib
import threading
from collections.abc import Iterator
from email.message import Message
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from beep_mail import keyring
from beep_mail.crypto import openpgp, pgpmime
from beep_mail.store import audit
from beep_mail.store import keys as key_store
from beep_mail.store import queue as queue_store
from tests.gpg_support import GPG
from tests.support import (
    LOCAL,
    PASSWORD,
    PEER,
    RECOVERY_PASSPHRASE,
    GatewayThread,
    NextHop,
    Site,
    make_site,
    peer_secret,
    submit,
    wait_for,
)
from tests.test_at_rest import (
    ATTACHMENT,
    all_forms,
    check_letter,
    find_leaks,
    letter,
    parse,
)

VERIFICATION = re.compile(
    rb"^x-beepmail-verification[ \t]*:", re.IGNORECASE | re.MULTILINE
)
OPEN = "open.gov.example"  # a peer an administrator marked encryption = "none"
QUARANTINE = "hold.gov.example"  # a peer whose unverified mail is held


# -- helpers ---------------------------------------------------------------------------


def peer_site(site: Site, tmp_path: Path) -> Site:
    """The other ministry's gateway, on the same kind of store as `site`."""
    url = make_url(site.url)
    if url.get_backend_name() == "sqlite":
        return make_site(
            tmp_path / "peer", site.url.replace("beepmail.db", "peer.db"), domain=PEER
        )
    # conftest drops "<name>_peer" with the test's own database.
    name = f"{url.database}_peer"
    admin = create_engine(site.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_site(
        tmp_path / "peer",
        url.set(database=name).render_as_string(hide_password=False),
        domain=PEER,
    )


def queue_rows(site: Site, state: str | None = None) -> list[queue_store.QueueRow]:
    db = site.db()
    try:
        return queue_store.list_rows(db.engine, state=state, include_final=True)
    finally:
        db.close()


def delivered(site: Site) -> int:
    return len(queue_rows(site, "delivered"))


def audited(site: Site) -> list[audit.AuditRecord]:
    db = site.db()
    try:
        return audit.list_events(db.engine, limit=1000)
    finally:
        db.close()


def events_for(site: Site, actions: set[str]) -> list[audit.AuditRecord]:
    """The audit events of these actions, once there is one of each."""
    found = [event for event in audited(site) if event.action in actions]
    return found if {event.action for event in found} >= actions else []


def verifications(message: bytes) -> list[str]:
    """Every verification field of a message header, however it was spelled."""
    head = message.split(b"\r\n\r\n", 1)[0]
    assert len(VERIFICATION.findall(head)) == len(
        parse(message).get_all(pgpmime.VERIFICATION_HEADER) or []
    )
    return [
        str(value)
        for value in parse(message).get_all(pgpmime.VERIFICATION_HEADER) or []
    ]


def inbound(port: int, sender: str, rcpt: str, data: bytes) -> tuple[int, str]:
    """One transfer as a peer gateway makes it; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mx.peer.example")
        code, reply = client.mail(sender)
        assert code == 250, reply
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(data)
    return code, reply.decode()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def pgp_mime(armored: bytes, outer: bytes) -> bytes:
    """A multipart/encrypted message (RFC 3156) around an OpenPGP message, by hand."""
    return outer + crlf(
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\n'
        b' boundary="=_by_hand"\n\n'
        b"--=_by_hand\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n"
        b"--=_by_hand\nContent-Type: application/octet-stream\n\n"
        + armored
        + b"\n--=_by_hand--\n"
    )


@pytest.fixture(scope="module")
def stranger() -> openpgp.UnlockedKey:
    """A key that claims the peer's domain but was never pinned."""
    return openpgp.generate("Impostor", f"desk@{PEER}", passphrase="x").unlock("x")


@pytest.fixture(scope="module")
def peer_key() -> openpgp.UnlockedKey:
    return peer_secret().unlock("peer")


@pytest.fixture
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GPG]:
    home = GPG(tmp_path_factory.mktemp("gpg"))
    yield home
    home.close()


# -- 1. the wire copy ------------------------------------------------------------------


def test_wire_copy_is_encrypted_signed_and_opens_at_the_peer(
    site: Site, tmp_path: Path, gpg: GPG
) -> None:
    ours, theirs = site, peer_site(site, tmp_path)
    alice, bob = ours.add_user("alice"), theirs.add_user("bob")
    ours.trust(PEER, theirs.domain_key())
    theirs.trust(LOCAL, ours.domain_key())
    original = letter(alice, bob)

    # Gateway A delivers to a next hop that keeps what it was sent.
    with NextHop(["250 2.0.0 captured"]) as hop:
        ours.allow(PEER, next_hop=hop.address, tls="required")
        with GatewayThread(ours.settings()) as a:
            assert submit(ours, a.submission, alice, [bob], original) == {}
            assert hop.handler.event.wait(15)
    sender, rcpts, wire = hop.handler.received[0]
    assert (sender, rcpts) == (alice, [bob])

    # PGP/MIME with a placeholder subject, and nothing of the message in it.
    outer = parse(wire)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    assert outer.get_all("Subject") == [pgpmime.PROTECTED_SUBJECT]
    assert find_leaks(wire, all_forms()) == []
    assert wire.isascii()

    # GnuPG, holding B's domain key, opens it and names A's domain key as signer.
    passphrase = keyring.site_secret(theirs.settings())
    db = theirs.db()
    try:
        with db.engine.connect() as connection:
            record = key_store.active_key(connection, "domain", PEER)
    finally:
        db.close()
    assert record is not None and record.secret_key is not None
    openpgp.load_secret(record.secret_key).unlock(passphrase)
    gpg.import_key(record.secret_key, passphrase=passphrase)
    gpg.import_key(ours.domain_key().armored)
    data_part = outer.get_payload()[1]  # type: ignore[index]
    assert isinstance(data_part, Message)
    armored = data_part.get_payload(decode=True)
    assert isinstance(armored, bytes)
    result = gpg.run(
        f"--passphrase={passphrase}", "--decrypt", input=armored, check=False
    )
    assert result.has("DECRYPTION_OKAY") and result.has("GOODSIG"), result.stderr
    assert not result.has("BADSIG") and not result.has("DECRYPTION_FAILED")
    assert result.lines("VALIDSIG")[0].split()[-1] == ours.domain_key().fingerprint
    check_letter(result.stdout)
    assert parse(result.stdout).get_param("hp") == "cipher"

    # The same bytes, handed to B as A would: bob reads the original.
    theirs.allow(LOCAL, next_hop="localhost:1", tls="required")
    with GatewayThread(theirs.settings()) as b:
        code, reply = inbound(b.inbound, alice, bob, wire)
        assert code == 250, reply
        got = wait_for(lambda: theirs.inbox(bob), what="bob's copy")
    assert len(got) == 1
    check_letter(got[0])
    [stamp] = verifications(got[0])
    assert stamp.startswith("signature=valid;")
    assert f"signer={ours.domain_key().fingerprint}" in stamp


# -- 2. both ways through two gateways -------------------------------------------------


def test_two_gateways_exchange_protected_mail_both_ways(
    site: Site, tmp_path: Path
) -> None:
    ours, theirs = site, peer_site(site, tmp_path)
    alice, bob = ours.add_user("alice"), theirs.add_user("bob")
    ours.trust(PEER, theirs.domain_key())
    theirs.trust(LOCAL, ours.domain_key())
    there, back = ATTACHMENT[::-1], random.Random(9788).randbytes(5000)

    a_settings = ours.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(theirs.root / "var/tls/cert.pem")
    )
    b_settings = theirs.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(ours.root / "var/tls/cert.pem")
    )
    with GatewayThread(a_settings) as a, GatewayThread(b_settings) as b:
        ours.allow(PEER, next_hop=f"localhost:{b.inbound}", tls="required")
        theirs.allow(LOCAL, next_hop=f"localhost:{a.inbound}", tls="required")
        to_b = letter(alice, bob, attachment=there)
        to_a = letter(bob, alice, attachment=back)
        assert submit(ours, a.submission, alice, [bob], to_b) == {}
        assert submit(theirs, b.submission, bob, [alice], to_a) == {}
        at_b = wait_for(lambda: theirs.inbox(bob), what="A's message at B")
        at_a = wait_for(lambda: ours.inbox(alice), what="B's message at A")

    for got, attachment, signer in ((at_b, there, ours), (at_a, back, theirs)):
        assert len(got) == 1
        check_letter(got[0], attachment)
        [stamp] = verifications(got[0])
        assert stamp.startswith("signature=valid;")
        assert f"signer={signer.domain_key().fingerprint}" in stamp
        assert "sender=match" in stamp and "headers=protected" in stamp


# -- 3. no key: refused at RCPT --------------------------------------------------------


def test_recipient_without_key_is_refused_at_rcpt(site: Site) -> None:
    alice = site.add_user("alice")
    bob = f"bob@{PEER}"
    site.allow(PEER, next_hop="localhost:1", tls="required")  # encryption required
    with GatewayThread(site.settings()) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.submission, timeout=10) as client:
            client.starttls(context=site.ssl_context())
            client.login(alice, PASSWORD)
            client.mail(alice)
            code, reply = client.rcpt(bob)
        events = wait_for(
            lambda: [e for e in audited(site) if e.action == "smtp.no-key"],
            what="the refusal audited",
        )

    said = reply.decode()
    assert code == 550 and said.startswith("5.7.1 ")
    assert "No encryption key" in said and bob in said
    assert "administrator" in said  # what the officer can do about it
    assert [(e.actor, e.target) for e in events] == [(alice, bob)]
    assert queue_rows(site) == []


# -- 4. encryption = "hold": waits for a key -------------------------------------------


def test_held_until_the_key_is_pinned(
    site: Site, peer_key: openpgp.UnlockedKey
) -> None:
    alice = site.add_user("alice")
    bob = f"bob@{PEER}"
    with NextHop(["250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required", encryption="hold")
        with GatewayThread(site.settings()) as gateway:
            sent = letter(alice, bob)
            assert submit(site, gateway.submission, alice, [bob], sent) == {}
            held = wait_for(lambda: queue_rows(site, "held"), what="the held row")
            assert [(r.recipient, r.route, r.state) for r in held] == [
                (bob, "wait-key", "held")
            ]

            # The administrator imports and pins the key, then releases the row.
            site.trust(PEER, peer_secret().public)
            db = site.db()
            try:
                with db.engine.begin() as connection:
                    assert queue_store.release(connection, held[0].message_id) == 1
            finally:
                db.close()
            assert hop.handler.event.wait(15)
            wait_for(lambda: delivered(site) == 1, what="the released row delivered")

    assert hop.handler.attempts == 1
    _, _, wire = hop.handler.received[0]
    assert pgpmime.is_encrypted(wire) and find_leaks(wire, all_forms()) == []
    opened = pgpmime.unprotect(wire, [peer_key], [site.domain_key()])
    assert opened.signature == "valid"
    assert opened.signer == site.domain_key().fingerprint
    check_letter(opened.message)


# -- 5. inbound policy -----------------------------------------------------------------


def test_inbound_policy(
    sqlite_site: Site, peer_key: openpgp.UnlockedKey, stranger: openpgp.UnlockedKey
) -> None:
    site = sqlite_site
    carol = site.add_user("carol")
    desk = f"desk@{PEER}"
    site.allow(PEER, next_hop="localhost:1", tls="required")  # encryption required
    site.trust(PEER, peer_secret().public)
    ours = site.domain_key()
    plain = letter(desk, carol)
    outer = (
        f"From: {desk}\r\nTo: {carol}\r\nSubject: [...]\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n"
    ).encode()
    unsigned = pgp_mime(openpgp.encrypt(plain, [ours]), outer)
    cases = {
        "plain text": (plain, (550, "5.7.1"), "smtp.plaintext"),
        "encrypted, unsigned": (unsigned, (550, "5.7.7"), "smtp.signature-missing"),
        "signed by an unknown key": (
            pgpmime.protect(plain, [ours], stranger),
            (550, "5.7.7"),
            "smtp.signature-unknown-key",
        ),
        "encrypted to another key": (
            pgpmime.protect(plain, [stranger.public], peer_key),
            (554, "5.7.5"),
            "smtp.undecryptable",
        ),
        "signed by the pinned key": (
            pgpmime.protect(plain, [ours], peer_key),
            (250, "2.0.0"),
            None,
        ),
    }

    with GatewayThread(site.settings()) as gateway:
        replies = {
            name: inbound(gateway.inbound, desk, carol, data)
            for name, (data, _, _) in cases.items()
        }
        wanted = {action for _, _, action in cases.values() if action}
        events = wait_for(
            lambda: events_for(site, wanted), what="every refusal audited"
        )
        got = wait_for(lambda: site.inbox(carol), what="the verified message")

    assert {
        name: (code, reply.split(" ", 1)[0]) for name, (code, reply) in replies.items()
    } == {name: expected for name, (_, expected, _) in cases.items()}
    assert "must be encrypted and signed" in replies["plain text"][1]
    assert all(
        e.detail.get("sender") == desk and e.detail.get("role") == "inbound"
        for e in events
    )
    assert len(events) == len(wanted)
    # Only the one that was signed by the pinned key reached carol.
    assert len(got) == 1
    check_letter(got[0])
    [stamp] = verifications(got[0])
    assert stamp.startswith("signature=valid;")


FORGED = (
    b"X-Beepmail-Verification: signature=valid; signer=0123; encrypted=yes\r\n"
    b"x-beepmail-verification: signature=valid;\r\n encrypted=yes\r\n"
    b"X-BEEPMAIL-VERIFICATION : signature=valid\r\n"
)


def test_forged_verification_header_is_replaced(sqlite_site: Site) -> None:
    site = sqlite_site
    carol = site.add_user("carol")
    desk = f"desk@{OPEN}"
    site.allow(OPEN, next_hop="localhost:1", tls="required", encryption="none")
    forged_plain = FORGED + letter(desk, carol)
    # Encrypted but unsigned, forged outside and inside the encryption.
    forged_inner = pgp_mime(
        openpgp.encrypt(FORGED + letter(desk, carol), [site.domain_key()]),
        FORGED + f"From: {desk}\r\nTo: {carol}\r\n".encode(),
    )

    with GatewayThread(site.settings()) as gateway:
        for data in (forged_plain, forged_inner):
            code, reply = inbound(gateway.inbound, desk, carol, data)
            assert code == 250, reply
        got = wait_for(
            lambda: len(site.inbox(carol)) == 2 and site.inbox(carol),
            what="both messages",
        )

    stamps = [verifications(entry) for entry in got]
    assert [len(found) for found in stamps] == [1, 1]
    assert all(found[0].startswith("signature=missing;") for found in stamps)
    assert "encrypted=no" in stamps[0][0] and "encrypted=yes" in stamps[1][0]
    for entry in got:
        check_letter(entry)


def test_officer_cannot_forge_verification_for_a_colleague(sqlite_site: Site) -> None:
    """A local message claiming a peer's verified signature loses the claim."""
    site = sqlite_site
    alice, carol = site.add_user("alice"), site.add_user("carol")
    forged = FORGED + letter(alice, carol)
    with GatewayThread(site.settings()) as gateway:
        assert submit(site, gateway.submission, alice, [carol], forged) == {}
        got = wait_for(lambda: site.inbox(carol), what="the local message")
    assert verifications(got[0]) == []
    check_letter(got[0])


def test_unverified_mail_from_a_hold_domain_is_quarantined(
    sqlite_site: Site, stranger: openpgp.UnlockedKey
) -> None:
    site = sqlite_site
    carol = site.add_user("carol")
    desk = f"desk@{QUARANTINE}"
    site.allow(QUARANTINE, next_hop="localhost:1", tls="required", encryption="hold")
    unknown_signer = pgpmime.protect(letter(desk, carol), [site.domain_key()], stranger)
    with GatewayThread(site.settings()) as gateway:
        for data in (letter(desk, carol), unknown_signer):
            code, reply = inbound(gateway.inbound, desk, carol, data)
            assert code == 250, reply
        held = wait_for(
            lambda: len(queue_rows(site, "held")) == 2 and queue_rows(site, "held"),
            what="the quarantined rows",
        )

    assert [(r.recipient, r.route) for r in held] == [(carol, "local")] * 2
    assert site.raw_entries(carol) == []
    # Audited with the message it kept, as a refusal would be.
    events = [e for e in audited(site) if e.action == "smtp.quarantined"]
    assert [(e.target, e.detail["reason"], e.detail["queue_id"]) for e in events] == [
        (desk, "plaintext", held[0].message_id),
        (desk, "signature-unknown-key", held[1].message_id),
    ]


# -- 6. nothing secret in the logs -----------------------------------------------------


def test_no_content_or_secret_in_logs(
    sqlite_site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = sqlite_site, peer_site(sqlite_site, tmp_path)
    alice, bob = ours.add_user("alice"), theirs.add_user("bob")
    ours.trust(PEER, theirs.domain_key())
    theirs.trust(LOCAL, ours.domain_key())
    typed_as_login = "Tr0ub4dor&3-typed-in-the-wrong-field"
    caplog.set_level(logging.DEBUG, logger="beepmail")

    trace = {"BEEPMAIL_LOGGING__WIRE_TRACE": "true"}
    a_settings = ours.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(theirs.root / "var/tls/cert.pem"), **trace
    )
    b_settings = theirs.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(ours.root / "var/tls/cert.pem"), **trace
    )
    with GatewayThread(a_settings) as a, GatewayThread(b_settings) as b:
        ours.allow(PEER, next_hop=f"localhost:{b.inbound}", tls="required")
        theirs.allow(LOCAL, next_hop=f"localhost:{a.inbound}", tls="required")
        with smtplib.SMTP("127.0.0.1", a.submission, timeout=10) as client:
            client.starttls(context=ours.ssl_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(typed_as_login, PASSWORD)
        assert submit(ours, a.submission, alice, [bob], letter(alice, bob)) == {}
        wait_for(lambda: theirs.inbox(bob), what="the message at the peer")
        wait_for(lambda: delivered(ours) == 1, what="A's row settled")

    lines = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    events = {
        match.group(1)
        for line in lines
        for match in [re.search(r"event=([\w-]+)", line)]
        if match
    }
    # The run did log: at A and at B, the wire trace included.
    assert {"auth", "queued", "delivered", "reply", "refused"} <= events
    # The peer's test passphrase ("peer") is no secret of the gateway's.
    secrets = [
        PASSWORD,
        typed_as_login,
        RECOVERY_PASSPHRASE,
        keyring.site_secret(ours.settings()),
        keyring.site_secret(theirs.settings()),
    ]
    forms = all_forms()
    for line in lines:
        assert find_leaks(line.encode(), forms) == [], line
        assert [secret for secret in secrets if secret in line] == [], line


# -- 7. a large message does not stall the others --------------------------------------


def _big_letter(sender: str, rcpt: str, size: int) -> bytes:
    """About `size` bytes of message: a random attachment in base64 lines."""
    data = random.Random(7).randbytes(size * 3 // 4)
    lines = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: the large one\r\n"
        f"Message-ID: {make_msgid()}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + lines


def test_large_message_does_not_stall_other_clients(
    sqlite_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = sqlite_site
    alice, bob = site.add_user("alice"), f"bob@{PEER}"
    site.allow(PEER, next_hop="localhost:1", tls="required")
    site.trust(PEER, peer_secret().public)
    big = _big_letter(alice, bob, 20 * 1024 * 1024)
    assert not re.search(rb"(^|\r\n)\.", big)  # nothing to dot-stuff
    half = big.index(b"\r\n", len(big) // 2) + 2

    uploading, encrypting = threading.Event(), threading.Event()
    small_during_upload, small_during_encryption = threading.Event(), threading.Event()
    big_done = threading.Event()
    outcome: dict[str, Any] = {}

    # Hold the large message inside its encryption until a small one has gone
    # through: if encryption ran on the event loop, the small one could not.
    real_protect = pgpmime.protect

    def protect(message: bytes, *args: Any) -> bytes:
        if len(message) > 1024 * 1024:
            encrypting.set()
            small_during_encryption.wait(60)
        return real_protect(message, *args)

    monkeypatch.setattr(pgpmime, "protect", protect)

    def large_client(port: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.starttls(context=site.ssl_context())
                client.login(alice, PASSWORD)
                client.mail(alice)
                client.rcpt(bob)
                assert client.docmd("DATA")[0] == 354
                client.send(big[:half])
                uploading.set()
                small_during_upload.wait(60)
                client.send(big[half:] + b".\r\n")
                outcome["big"] = client.getreply()
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = error
        finally:
            big_done.set()

    settings = site.settings(
        BEEPMAIL_SMTP__MAX_MESSAGE_SIZE=str(40 * 1024 * 1024),
        BEEPMAIL_DELIVERY__ENABLED="false",
    )
    with GatewayThread(settings) as gateway:
        worker = threading.Thread(target=large_client, args=(gateway.submission,))
        worker.start()
        try:
            for started, finished in (
                (uploading, small_during_upload),
                (encrypting, small_during_encryption),
            ):
                assert started.wait(60) and not big_done.is_set(), outcome
                small = letter(alice, bob)
                assert submit(site, gateway.submission, alice, [bob], small) == {}
                assert not big_done.is_set()
                finished.set()
        finally:
            small_during_upload.set()
            small_during_encryption.set()
            worker.join(120)

    assert "error" not in outcome, outcome
    code, reply = outcome["big"]
    assert code == 250, reply
    assert len(queue_rows(site, "queued")) == 3

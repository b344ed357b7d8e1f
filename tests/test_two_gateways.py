"""Two gateways, two ministries: mail goes both ways over verified TLS, once."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from beep_mail.archive.verify import verify_archive
from beep_mail.store.tables import archive_entries
from tests.support import (
    LOCAL,
    PEER,
    GatewayThread,
    Site,
    make_site,
    message,
    submit,
    wait_for,
)


def _inbox(site: Site, address: str) -> list[bytes]:
    return site.inbox(address)


def test_two_gateways_exchange_mail(site: Site, tmp_path: Path) -> None:
    ours = site
    theirs = make_site(tmp_path / "peer", ours.url.replace("beepmail.db", "peer.db")
                       if ours.url.startswith("sqlite") else _second_pg(ours.url),
                       domain=PEER)
    alice = ours.add_user("alice")
    bob = theirs.add_user("bob")

    # Each trusts the other's certificate, as a pinned private PKI would.
    ours_settings = ours.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(theirs.root / "var/tls/cert.pem"))
    theirs_settings = theirs.settings(
        BEEPMAIL_DELIVERY__CA_FILE=str(ours.root / "var/tls/cert.pem"))
    # Key exchange between the ministries: each pins the other's domain key.
    ours.trust(PEER, theirs.domain_key())
    theirs.trust(LOCAL, ours.domain_key())
    with GatewayThread(ours_settings) as a, GatewayThread(theirs_settings) as b:
        ours.allow(PEER, next_hop=f"localhost:{b.inbound}", tls="required")
        theirs.allow(LOCAL, next_hop=f"localhost:{a.inbound}", tls="required")

        first = message(alice, bob, subject="Minutes", body="From A to B")
        submit(ours, a.submission, alice, [bob], first)
        got = wait_for(lambda: _inbox(theirs, bob), what="mail at the peer")
        submit(theirs, b.submission, bob, [alice],
               message(bob, alice, subject="Re: Minutes", body="From B to A"))
        back = wait_for(lambda: _inbox(ours, alice), what="reply at home")

    assert len(got) == 1 and b"From A to B" in got[0]
    assert len(back) == 1 and b"From B to A" in back[0]
    # The peer's trace shows it came in over TLS from our gateway, and the
    # gateway's verdict on the OpenPGP signature heads the message.
    assert b"with ESMTPS id" in got[0]
    assert got[0].startswith(b"X-Beepmail-Verification: signature=valid;")
    assert b"Subject: Minutes\r\n" in got[0] and b"Subject: [...]" not in got[0]
    # At rest nothing is readable without the owner's password.
    assert all(b"From A to B" not in raw for raw in theirs.raw_entries(bob))

    # The records: the message appears once in each gateway's archive, as
    # outbound at ours and inbound at theirs, and both archives verify.
    message_id = first.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
    assert _archived(ours, message_id) == [("outbound", alice, [bob])]
    assert _archived(theirs, message_id) == [("inbound", alice, [bob])]
    for site_ in (ours, theirs):
        db = site_.db()
        try:
            assert verify_archive(db.engine).ok
        finally:
            db.close()


def _archived(site: Site, message_id: str) -> list[tuple[str, str, list[str]]]:
    db = site.db()
    try:
        with db.engine.connect() as connection:
            rows = connection.execute(
                select(archive_entries.c.direction, archive_entries.c.mail_from,
                       archive_entries.c.recipients)
                .where(archive_entries.c.message_id_header == message_id)).all()
    finally:
        db.close()
    return [(row[0], row[1], json.loads(row[2])) for row in rows]


def _second_pg(url: str) -> str:
    """The peer's store: a schema of its own in a second fresh database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database + "_peer"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def test_repeated_transfer_is_stored_once(site: Site) -> None:
    """A peer that crashed after our 250 sends the same transfer again: one copy."""
    import smtplib

    carol = site.add_user("carol")
    # Plain text is allowed from this peer so that the test is about transfers.
    site.allow(PEER, next_hop="localhost:1", tls="required", encryption="none")
    body = message(f"bob@{PEER}", carol, body="sent twice")
    stamped = b"X-Beepmail-Transfer-Id: 0A1B2C3D4E5F@mx.peer.gov.example\r\n" + body
    with GatewayThread(site.settings()) as gateway:
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", gateway.inbound, timeout=10) as client:
                client.sendmail(f"bob@{PEER}", [carol], stamped)
        db = site.db()
        try:
            from beep_mail.store import queue as queue_store
            wait_for(lambda: queue_store.depth_by_state(db.engine)["delivered"] == 2,
                     what="both transfers settled")
        finally:
            db.close()
    assert len(_inbox(site, carol)) == 1

"""End to end through real sockets: submit, queue, deliver (locally and to a next hop)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiosmtplib
import pytest

from beep_mail.crypto import pgpmime
from beep_mail.store import queue as queue_store
from tests.support import (
    PASSWORD,
    PEER,
    GatewayThread,
    NextHop,
    SilentHop,
    Site,
    message,
    peer_secret,
    submit,
    wait_for,
)


def inbox(site: Site, address: str) -> list[bytes]:
    return site.inbox(address)


def states(site: Site) -> dict[str, int]:
    db = site.db()
    try:
        return queue_store.depth_by_state(db.engine)
    finally:
        db.close()


def test_local_delivery(site: Site) -> None:
    alice, carol = site.add_user("alice"), site.add_user("carol")
    with GatewayThread(site.settings()) as gateway:
        refused = submit(site, gateway.submission, alice, [carol],
                         message(alice, carol, body="local hello"))
        assert refused == {}
        got = wait_for(lambda: inbox(site, carol), what="local delivery")
    assert len(got) == 1 and b"local hello" in got[0]
    assert got[0].startswith(b"Received: by localhost with ESMTPSA id ")


def test_remote_delivery_with_verified_tls(site: Site) -> None:
    alice = site.add_user("alice")
    with NextHop(["250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"],
                   message(alice, f"bob@{PEER}", body="line one\r\n.leading dot"))
            assert hop.handler.event.wait(15)
            wait_for(lambda: states(site)["delivered"] == 1, what="delivered state")
    sender, rcpts, content = hop.handler.received[0]
    assert (sender, rcpts) == (alice, [f"bob@{PEER}"])
    assert b"\n" not in content.replace(b"\r\n", b"")
    assert b"X-Beepmail-Transfer-Id:" in content
    # On the wire: PGP/MIME, nothing readable; the peer opens it and sees our
    # domain's valid signature, the body byte for byte (dot-stuffing undone).
    assert b"multipart/encrypted" in content and b"leading dot" not in content
    opened = pgpmime.unprotect(content, [peer_secret().unlock("peer")],
                               [site.domain_key()])
    assert opened.signature == "valid"
    assert b"\r\n.leading dot\r\n" in opened.message


def test_aiosmtplib_client(site: Site) -> None:
    alice, carol = site.add_user("alice"), site.add_user("carol")
    with GatewayThread(site.settings()) as gateway:
        async def send() -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.submission,
                                     start_tls=True, tls_context=site.ssl_context())
            await client.connect()
            sock = client.get_transport_info("socket")
            await client.login(alice, PASSWORD)
            await client.sendmail(alice, [carol], message(alice, carol))
            await client.quit()
            # QUIT closes the TLS layer, which closes the socket only once the
            # gateway's close_notify is in: wait for it, or the loop ends
            # first and leaves the socket to the garbage collector.
            for _ in range(500):
                if sock.fileno() == -1:
                    break
                await asyncio.sleep(0.01)
            assert sock.fileno() == -1, "the gateway did not close the connection"
        asyncio.run(send())
        wait_for(lambda: inbox(site, carol), what="local delivery")


def test_temporary_then_success(site: Site) -> None:
    alice = site.add_user("alice")
    with NextHop(["451 4.3.0 try later", "250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"], message(alice, "b"))
            wait_for(lambda: states(site)["delivered"] == 1, what="delivered after retry")
    assert hop.handler.attempts == 2
    assert len(hop.handler.received) == 1


def test_permanent_failure_bounces_to_sender_inbox(site: Site) -> None:
    alice = site.add_user("alice")
    with NextHop(["550 5.1.1 no such user here"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"nobody@{PEER}"],
                   message(alice, "x", subject="Secret subject", body="Secret body"))
            got = wait_for(lambda: inbox(site, alice), what="DSN in sender INBOX")
    assert states(site)["failed"] == 1
    dsn = got[0]
    assert b"multipart/report" in dsn and b"report-type=delivery-status" in dsn
    assert b"nobody@peer.gov.example" in dsn and b"5.1.1" in dsn
    assert b"Secret body" not in dsn


def test_silent_next_hop_is_retried(site: Site) -> None:
    alice = site.add_user("alice")
    with SilentHop() as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"], message(alice, "b"))
            db = site.db()
            try:
                row = wait_for(lambda: [r for r in queue_store.list_rows(db.engine)
                                        if r.state == "deferred"], timeout=20,
                               what="deferred after timeout")[0]
            finally:
                db.close()
    assert row.last_status is not None and row.last_status.startswith("4.")
    assert row.attempts >= 1


def test_tls_required_refuses_untrusted_certificate(site: Site) -> None:
    alice = site.add_user("alice")
    with NextHop(["250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        settings = site.settings(BEEPMAIL_DELIVERY__CA_FILE=str(site.root / "var/tls/cert.pem"))
        with GatewayThread(settings) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"], message(alice, "b"))
            db = site.db()
            try:
                row = wait_for(lambda: [r for r in queue_store.list_rows(db.engine)
                                        if r.state == "deferred"], what="deferred")[0]
            finally:
                db.close()
    assert row.last_status == "4.7.5"
    assert hop.handler.received == []


def test_tls_required_refuses_plaintext_hop(site: Site) -> None:
    alice = site.add_user("alice")
    with NextHop(["250 2.0.0 ok"], tls=False) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"], message(alice, "b"))
            db = site.db()
            try:
                wait_for(lambda: [r for r in queue_store.list_rows(db.engine)
                                  if r.state == "deferred" and r.last_status == "4.7.5"],
                         what="deferred for missing STARTTLS")
            finally:
                db.close()
    assert hop.handler.received == []


@pytest.mark.parametrize("unused", [None])
def test_opportunistic_plaintext_hop_delivers(site: Site, unused: None) -> None:
    alice = site.add_user("alice")
    with NextHop(["250 2.0.0 ok"], tls=False) as hop:
        site.allow(PEER, next_hop=hop.address, tls="opportunistic")
        site.trust(PEER, peer_secret().public)
        with GatewayThread(site.settings()) as gateway:
            submit(site, gateway.submission, alice, [f"bob@{PEER}"], message(alice, "b"))
            assert hop.handler.event.wait(15)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_stock_client(sqlite_site: Site, mechanism: str) -> None:
    """swaks, as an administrator would try a new gateway: STARTTLS, AUTH, send."""
    import shutil
    import subprocess

    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (make system-deps installs it)")
    site = sqlite_site
    alice, carol = site.add_user("alice"), site.add_user("carol")
    with GatewayThread(site.settings()) as gateway:
        done = subprocess.run(
            [swaks, "--server", f"127.0.0.1:{gateway.submission}", "--tls",
             "--auth", mechanism, "--auth-user", alice, "--auth-password", PASSWORD,
             "--from", alice, "--to", carol, "--header", "Subject: from swaks"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stdout[-2000:]
        assert "250 2.0.0 Accepted, queued as" in done.stdout
        got = wait_for(lambda: inbox(site, carol), what="swaks message delivered")
    assert b"Subject: from swaks" in got[0]


def test_messages_over_the_accepting_budget_wait_and_all_arrive(site: Site) -> None:
    """Four clients send at once, each message larger than the whole budget of
    octets being accepted: each goes alone, none is refused or lost."""
    alice, carol = site.add_user("alice"), site.add_user("carol")
    settings = site.settings(BEEPMAIL_SMTP__ACCEPTING_BYTES="20000")
    assert settings.smtp.accepting_bytes == 20000
    line = "budget " * 10 + "\r\n"
    letters = [message(alice, carol, subject=f"large {n}", body=line * 600)
               for n in range(4)]
    assert all(len(letter) > 20000 for letter in letters)
    with GatewayThread(settings) as gateway:
        with ThreadPoolExecutor(4) as pool:
            refused = list(pool.map(
                lambda letter: submit(site, gateway.submission, alice, [carol], letter),
                letters))
        assert refused == [{}, {}, {}, {}]
        got = wait_for(lambda: len(inbox(site, carol)) == 4 and inbox(site, carol),
                       what="four local deliveries")
    assert sorted(m.count(b"budget") for m in got) == [6000] * 4

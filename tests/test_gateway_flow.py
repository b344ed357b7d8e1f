"""End to end through real sockets: submit, queue, deliver (locally and to a next hop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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


# -- sessions to a next hop, kept for the next message ----------------------------


def _deliver_in_turn(site: Site, gateway: GatewayThread, sender: str, count: int,
                     already: int = 0) -> None:
    """Submit `count` messages one after the other, each delivered before the next."""
    for n in range(already + 1, already + count + 1):
        submit(site, gateway.submission, sender, [f"bob@{PEER}"],
               message(sender, f"bob@{PEER}", body=f"message {n}"))
        wait_for(lambda n=n: states(site).get("delivered", 0) == n,
                 what=f"{n} delivered")


@contextmanager
def _hop_for(site: Site) -> Iterator[tuple[str, NextHop]]:
    """A sender, and a next hop that takes the peer domain's mail over verified TLS."""
    alice = site.add_user("alice")
    with NextHop(["250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        yield alice, hop


def test_a_session_to_the_next_hop_carries_the_next_messages(site: Site) -> None:
    with _hop_for(site) as (alice, hop):
        settings = site.settings(BEEPMAIL_DELIVERY__REUSE_IDLE_TIME="30")
        with GatewayThread(settings) as gateway:
            _deliver_in_turn(site, gateway, alice, 3)
            assert hop.connections == 1 and len(hop.open) == 1
        # Stopping the gateway closes the session that was waiting.
        wait_for(lambda: not hop.open, what="the waiting session closed at stop")
    assert [body.count(b"multipart/encrypted") for _, _, body in hop.handler.received] \
        == [1, 1, 1]


def test_a_session_is_closed_after_its_idle_time_or_its_limit(site: Site) -> None:
    settings = site.settings(BEEPMAIL_DELIVERY__REUSE_IDLE_TIME="0.3",
                             BEEPMAIL_DELIVERY__REUSE_LIMIT="2")
    with _hop_for(site) as (alice, hop), GatewayThread(settings) as gateway:
        _deliver_in_turn(site, gateway, alice, 1)
        wait_for(lambda: not hop.open, what="the idle session closed")
        assert hop.connections == 1
        # A new session, which carries two messages and no more.
        _deliver_in_turn(site, gateway, alice, 3, already=1)
        assert hop.connections == 3


def test_without_reuse_every_delivery_has_its_own_session(site: Site) -> None:
    settings = site.settings(BEEPMAIL_DELIVERY__REUSE_IDLE_TIME="0")
    with _hop_for(site) as (alice, hop), GatewayThread(settings) as gateway:
        _deliver_in_turn(site, gateway, alice, 2)
        wait_for(lambda: not hop.open, what="each session closed")
        assert hop.connections == 2


def test_a_session_the_next_hop_dropped_costs_a_reconnect_not_a_deferral(
    site: Site,
) -> None:
    settings = site.settings(BEEPMAIL_DELIVERY__REUSE_IDLE_TIME="30")
    with _hop_for(site) as (alice, hop), GatewayThread(settings) as gateway:
        _deliver_in_turn(site, gateway, alice, 1)
        hop.drop()
        wait_for(lambda: not hop.open, what="the next hop cut the session")
        _deliver_in_turn(site, gateway, alice, 1, already=1)
        assert hop.connections == 2
    # Each message went in its first attempt: none was deferred on the way.
    db = site.db()
    try:
        rows = queue_store.list_rows(db.engine, include_final=True)
    finally:
        db.close()
    assert [row.attempts for row in rows] == [1, 1]

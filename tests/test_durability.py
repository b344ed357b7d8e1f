"""Nothing is lost after 250: kill -9 at points past acceptance, restart, delivery.

These start `beepmail serve` as a child process and kill it with SIGKILL, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import smtplib
import threading

from sqlalchemy import func, select

from beep_mail.store import queue as queue_store
from beep_mail.store.tables import mailbox_entries
from tests.support import (
    PEER,
    GatewayProcess,
    NextHop,
    Site,
    message,
    peer_secret,
    submit,
    wait_for,
)


def _inbox_count(site: Site) -> int:
    db = site.db()
    try:
        with db.engine.connect() as connection:
            return int(connection.execute(select(func.count(mailbox_entries.c.id))).scalar()
                       or 0)
    finally:
        db.close()


def _depth(site: Site) -> dict[str, int]:
    db = site.db()
    try:
        return queue_store.depth_by_state(db.engine)
    finally:
        db.close()


def test_kill9_before_delivery_then_restart_delivers_once(site: Site) -> None:
    alice, carol = site.add_user("alice"), site.add_user("carol")
    gateway = GatewayProcess(site, BEEPMAIL_DELIVERY__ENABLED="false").start()
    try:
        for n in range(5):
            submit(site, gateway.ports["submission"], alice, [carol],
                   message(alice, carol, body=f"message {n}"))
        gateway.kill9()
    finally:
        gateway.close()
    assert _depth(site)["queued"] == 5
    assert _inbox_count(site) == 0

    gateway = GatewayProcess(site).start()
    try:
        wait_for(lambda: _depth(site)["delivered"] == 5, what="delivery after restart")
        assert _inbox_count(site) == 5
        bodies = site.inbox(carol)
        assert all(any(b"message %d" % n in body for body in bodies) for n in range(5))
        assert gateway.terminate() == 0
    finally:
        gateway.close()


def test_kill9_during_remote_delivery(site: Site) -> None:
    """Killed while the next hop holds the DATA reply: the lease returns the row."""
    alice = site.add_user("alice")
    with NextHop(["hang", "250 2.0.0 ok"]) as hop:
        site.allow(PEER, next_hop=hop.address, tls="required")
        site.trust(PEER, peer_secret().public)
        gateway = GatewayProcess(site, BEEPMAIL_DELIVERY__TIMEOUT="60").start()
        try:
            submit(site, gateway.ports["submission"], alice, [f"bob@{PEER}"],
                   message(alice, f"bob@{PEER}"))
            wait_for(lambda: hop.handler.attempts == 1, what="first attempt in DATA")
            gateway.kill9()
        finally:
            gateway.close()
        assert _depth(site)["queued"] == 1

        gateway = GatewayProcess(site).start()
        try:
            wait_for(lambda: _depth(site)["delivered"] == 1, what="redelivery")
        finally:
            gateway.close()
    assert len(hop.handler.received) == 1


def test_sigterm_lets_a_session_finish(sqlite_site: Site) -> None:
    site = sqlite_site
    alice, carol = site.add_user("alice"), site.add_user("carol")
    gateway = GatewayProcess(site).start()
    try:
        client = smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=10)
        client.starttls(context=site.ssl_context())
        client.login(alice, "correct horse battery")
        assert gateway.proc is not None
        stopper = threading.Thread(target=gateway.terminate)
        stopper.start()
        wait_for(lambda: "event=stopping" in gateway.logs(), what="SIGTERM handled")
        # The open session still completes its transaction.
        client.sendmail(alice, [carol], message(alice, carol))
        client.quit()
        stopper.join(20)
        assert gateway.proc.returncode == 0
        # And no new connection is accepted once it has stopped.
        try:
            smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=2).close()
            raise AssertionError("still accepting after SIGTERM")
        except (ConnectionRefusedError, smtplib.SMTPServerDisconnected):
            pass
    finally:
        gateway.close()
    assert _depth(site)["queued"] + _depth(site)["delivered"] == 1

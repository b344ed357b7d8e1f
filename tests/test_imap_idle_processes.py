"""IDLE across gateway processes on one PostgreSQL database (LISTEN/NOTIFY).

Two `beepmail serve` processes share one database, as two machines of a site
do. A client in IDLE on process A hears, within a second, of mail that
process B delivered and of flags that a session on B set; A's delivery is
off, so only B's notice can tell it. PostgreSQL only: a SQLite store has one
process, and these tests are skipped when BEEPMAIL_TEST_POSTGRES_URL is unset.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import psycopg
import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.imapclient import FLAGGED  # type: ignore[import-untyped]
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from beep_mail.store.notify import CHANNEL
from beep_mail.store.tables import mailbox_entries, users
from tests.support import LISTENING, PASSWORD, GatewayProcess, Site, message, submit
from tests.test_imap_clients import fill

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

WAKE_WITHIN = 1.0  # seconds, the promise
PAYLOAD = re.compile(r"[0-9a-f]{8}\.[0-9a-f]{32}")


# -- two processes on one database -------------------------------------------------

def _twin(site: Site, root: Path) -> Site:
    """The same site on a second machine: same configuration, secret and store."""
    shutil.copytree(site.root, root)
    return Site(root, site.domain, root / "conf" / "beepmail.toml", site.url,
                site.recovery, site.records, dict(site.environ))


@contextmanager
def _serving(site: Site, **env: str) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(site, **env)
    try:
        gateway.start()
        # start() stops reading at the SMTP listeners; the IMAP ones follow.
        assert gateway.proc is not None and gateway.proc.stdout is not None
        while len(gateway.ports) < 4:
            found = LISTENING.search(gateway.proc.stdout.readline())
            assert found, "gateway exited: " + gateway.logs()[-2000:]
            gateway.ports[found.group(1)] = int(found.group(3))
        yield gateway
    finally:
        if gateway.proc is not None and gateway.proc.poll() is None:
            try:
                gateway.terminate(15)
            except subprocess.TimeoutExpired:
                pass
        gateway.close()


def _imapclient(site: Site, gateway: GatewayProcess, address: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=gateway.ports["imaps"], ssl=True,
                        ssl_context=site.ssl_context(), timeout=10)
    client.login(address, PASSWORD)
    return client


def _idle_until(client: IMAPClient, wanted: Callable[[Any], bool],
                timeout: float = 5.0) -> tuple[list[Any], float]:
    """IDLE responses until one is wanted, and when (monotonic) it came."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while (left := deadline - time.monotonic()) > 0:
        responses = client.idle_check(timeout=left)
        arrived = time.monotonic()
        seen.extend(responses)
        if any(wanted(response) for response in responses):
            return seen, arrived
    raise AssertionError(f"nothing wanted in IDLE within {timeout} s: {seen}")


def _flags(response: Any) -> tuple[bytes, ...] | None:
    """The flags an untagged FETCH of message 1 tells, if it is one."""
    if response[:2] != (1, b"FETCH"):
        return None
    items = response[2]
    flags: tuple[bytes, ...] = items[items.index(b"FLAGS") + 1]
    return flags


# -- watching the database from the test -------------------------------------------

class EntryWatch:
    """Polls for a user's first mailbox entry, so that its commit can be dated.

    `committed_after` is when the last poll that did not see the entry began:
    the commit came later, so the time from it to the IDLE response is an
    upper bound of the time from the commit.
    """

    def __init__(self, url: str, address: str) -> None:
        self.engine = create_engine(url)
        self.address = address
        self.committed_after: float | None = None
        self.found = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.found.set()
        self.thread.join(10)
        self.engine.dispose()

    def _poll(self) -> None:
        query = (select(func.count()).select_from(mailbox_entries.join(
                     users, users.c.id == mailbox_entries.c.user_id))
                 .where(users.c.address == self.address))
        deadline = time.monotonic() + 15
        while not self.found.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            with self.engine.connect() as connection:
                if connection.execute(query).scalar_one():
                    self.found.set()
                    return
            self.committed_after = began
            time.sleep(0.01)


def _listener_pids(url: str) -> set[int]:
    """The backends of the gateways' change listeners on this database."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :name "
                "AND query = :listen"),
                {"name": make_url(url).database, "listen": f"LISTEN {CHANNEL}"},
            ).scalars())
    finally:
        engine.dispose()


def _terminate(url: str, pids: set[int]) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for pid in pids:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        engine.dispose()


def _wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


# -- the tests -----------------------------------------------------------------------

def test_idle_hears_mail_delivered_by_another_process(site: Site, tmp_path: Path) -> None:
    alice, bob = site.add_user("alice"), site.add_user("bob")
    other = _twin(site, tmp_path / "second")
    # What travels between the processes, as the database shows it to anyone
    # who listens: no address.
    dsn = make_url(site.url).set(drivername="postgresql").render_as_string(False)
    with (psycopg.connect(dsn, autocommit=True) as eavesdropper,
          _serving(site, BEEPMAIL_DELIVERY__ENABLED="false") as a,
          _serving(other) as b):
        eavesdropper.execute(f"LISTEN {CHANNEL}")
        client = _imapclient(site, a, alice)
        client.select_folder("INBOX")
        client.idle()
        with EntryWatch(site.url, alice) as watch:
            submit(other, b.ports["submission"], bob, [alice],
                   message(bob, alice, subject="Across"))
            responses, woke = _idle_until(client, lambda r: r == (1, b"EXISTS"))
            assert watch.found.wait(10), "B never delivered"
        client.idle_done()
        assert client.search(["SUBJECT", "Across"]) == [1], responses
        client.logout()
        notices = list(eavesdropper.notifies(timeout=0.5))

    assert watch.committed_after is not None
    waited = woke - watch.committed_after
    assert waited < WAKE_WITHIN, f"EXISTS came {waited:.2f} s after the commit"
    # B delivered it; A, whose delivery is off, only heard of it.
    assert "event=delivered" in other.root.joinpath("serve.log").read_text()
    assert "event=delivered" not in site.root.joinpath("serve.log").read_text()
    assert notices and all(PAYLOAD.fullmatch(n.payload) for n in notices), notices
    assert not any("alice" in n.payload for n in notices)


def test_idle_hears_flags_set_in_another_process(site: Site, tmp_path: Path) -> None:
    alice = site.add_user("alice")
    fill(site, alice, [message(f"bob@{site.domain}", alice, subject="Flag me")])
    other = _twin(site, tmp_path / "second")
    off = {"BEEPMAIL_DELIVERY__ENABLED": "false"}
    with _serving(site, **off) as a, _serving(other, **off) as b:
        watcher, writer = _imapclient(site, a, alice), _imapclient(other, b, alice)
        watcher.select_folder("INBOX")
        writer.select_folder("INBOX")
        watcher.idle()

        began = time.monotonic()
        writer.add_flags([1], [FLAGGED])
        _, woke = _idle_until(watcher, lambda r: _flags(r) == (FLAGGED,))
        assert woke - began < WAKE_WITHIN, f"FETCH came {woke - began:.2f} s later"

        # The listener's connection drops: it comes back, and hears again.
        before = _wait_for(lambda: _listener_pids(site.url), 5, "two listeners")
        _terminate(site.url, before)
        _wait_for(lambda: len(_listener_pids(site.url) - before) == 2, 10,
                  "the listeners back")
        began = time.monotonic()
        writer.remove_flags([1], [FLAGGED])
        _, woke = _idle_until(watcher, lambda r: _flags(r) == ())
        assert woke - began < WAKE_WITHIN, f"FETCH came {woke - began:.2f} s later"

        watcher.idle_done()
        for client in (watcher, writer):
            client.logout()
    assert "event=notices-lost" in site.root.joinpath("serve.log").read_text()
    assert "event=notices-restored" in site.root.joinpath("serve.log").read_text()

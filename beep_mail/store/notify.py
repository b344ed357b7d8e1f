"""Change notices between gateway processes that share one PostgreSQL database.

When a user's mail changes in one process (a local delivery, an APPEND, a
STORE, an EXPUNGE...), the others must wake their IDLE sessions of that user
without polling the database. PostgreSQL's LISTEN/NOTIFY carries this: every
process sends notices on the channel `beepmail_mail` and listens to it, on
two connections of its own (one listens, one sends) outside the engine's pool.

A notice says only "this user's mail changed", and does not say who: the
payload is `ORIGIN.DIGEST`, where ORIGIN is a random token of the sending
process (so that a process can skip its own notices) and DIGEST a keyed hash
(HMAC-SHA-256, 128 bits) of the lower-cased address, under a key derived from
the site secret. Payloads can show up in the server's logs and statistics;
without the site secret nobody can tell which address a digest stands for,
not even by trying likely ones. All processes of a site share the site
secret (they need it to unlock the domain keys), so their digests agree.

Notices are sent after the change committed, and are best-effort. The sender
keeps what it could not send and sends it once reconnected; what is still
waiting when the process stops is dropped. A listener whose connection
dropped reconnects with backoff and, having possibly missed notices
meanwhile, reports a gap: the hub then treats every user's mail as changed,
which costs each session one look at the database. News that never arrives
is seen at the client's next command, as before.

SQLite has no such channel and needs none: one process per SQLite store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from sqlalchemy import Engine

from beep_mail import logs

log = logging.getLogger("beepmail.store")

CHANNEL = "beepmail_mail"
RETRY_FIRST = 0.25  # seconds before the first reconnection
RETRY_MAX = 30.0
STOP_WAIT = 2.0  # seconds stop() gives the last notices to leave

_NOTIFY = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"

# A dead peer must not leave the listener waiting forever on a silent socket:
# TCP keepalives and a user timeout make the connection fail instead, and the
# listener reconnects. libpq ignores these on Unix-domain sockets.
_LINK_OPTIONS: dict[str, Any] = {
    "application_name": "beepmail notices",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60000,
}


def notice_key(site_secret: str) -> bytes:
    """The key of the digests in notices, derived from the site secret."""
    return hmac.new(site_secret.encode("utf-8"), b"beepmail change notices v1",
                    hashlib.sha256).digest()


class ChangeChannel:
    """Publishes this process's changes and hears the other processes' ones.

    `on_change(digest)` is called on the event loop for each notice of another
    process; `on_gap()` after a reconnection, when notices may have been lost.
    """

    def __init__(self, engine: Engine, key: bytes, *,
                 on_change: Callable[[str], None],
                 on_gap: Callable[[], None]) -> None:
        # The engine's own connection arguments, so that the channel reaches
        # the database exactly as the pool does.
        args, params = engine.dialect.create_connect_args(engine.url)
        params.pop("context", None)
        self._connect_args = (args, {**_LINK_OPTIONS, **params})
        self._key = key
        self._on_change = on_change
        self._on_gap = on_gap
        self.origin = secrets.token_hex(4)
        self._pending: set[str] = set()
        self._wanted = asyncio.Event()
        self._listening = asyncio.Event()
        self._listened = False  # once listening, a reconnection means a gap
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    def digest(self, address: str) -> str:
        mac = hmac.new(self._key, address.lower().encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:32]

    def publish(self, digest: str) -> None:
        """Send a notice soon; several for one user before it leaves make one."""
        self._pending.add(digest)
        self._wanted.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep("listen", self._listen)),
                       asyncio.create_task(self._keep("send", self._send))]

    async def ready(self, timeout: float) -> bool:
        """Whether the listener is in place within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._closing = True
        self._wanted.set()
        sender = self._tasks[1] if self._tasks else None
        if sender is not None:
            # The sender ends once the pending notices are out.
            await asyncio.wait([sender], timeout=STOP_WAIT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- the two connections ------------------------------------------------------------

    async def _keep(self, role: str,
                    body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]) -> None:
        """Run `body` on a connection of its own, reconnecting when it drops."""
        loop = asyncio.get_running_loop()
        delay, failed = RETRY_FIRST, False
        while True:
            started = loop.time()
            try:
                args, params = self._connect_args
                connection = await psycopg.AsyncConnection.connect(
                    *args, autocommit=True, **params)
                async with connection:
                    if failed:
                        logs.event(log, "notices-restored", role=role)
                        failed = False
                    await body(connection)
                    return
            except (psycopg.Error, OSError) as error:
                if loop.time() - started > RETRY_MAX:
                    delay = RETRY_FIRST  # it had been up a while: retry soon
                # The class name only: a driver's message can name hosts and users.
                logs.event(log, "notices-lost", logging.WARNING, role=role,
                           reason=type(error).__name__, retry=f"{delay:.2f}")
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _listen(self, connection: psycopg.AsyncConnection[Any]) -> None:
        await connection.execute(f"LISTEN {CHANNEL}")
        if self._listened:
            # Notices sent while we were away are gone: assume anything changed.
            self._on_gap()
        self._listened = True
        self._listening.set()
        try:
            async for notice in connection.notifies():
                origin, _, digest = notice.payload.partition(".")
                if origin != self.origin and digest:
                    self._on_change(digest)
        finally:
            self._listening.clear()

    async def _send(self, connection: psycopg.AsyncConnection[Any]) -> None:
        while not (self._closing and not self._pending):
            await self._wanted.wait()
            self._wanted.clear()
            # A notice published while this batch is on its way goes in the
            # next one: its change may have committed after ours was read.
            batch, self._pending = self._pending, set()
            if not batch:
                continue
            payloads = [f"{self.origin}.{digest}" for digest in sorted(batch)]
            try:
                await connection.execute(_NOTIFY, (CHANNEL, payloads))
            except BaseException:
                self._pending |= batch
                self._wanted.set()
                raise

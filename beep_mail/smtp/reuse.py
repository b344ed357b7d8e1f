"""Sessions to next hops, kept open a moment for the next message.

A delivery connects, says EHLO, starts TLS and checks the next hop's
certificate before its first MAIL; for a small message that costs more than
the transaction itself. As Postfix's connection cache does, a session whose
transaction ended cleanly waits, idle, for the next message to the same next
hop under the same TLS policy: for `idle` seconds at most, and for `limit`
messages in all. A waiting session is checked with RSET before it carries
another message; one that fails the check is closed and the caller opens a
new one, so a next hop that dropped an idle connection costs a reconnect,
never a deferral.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiosmtplib

# Where a session may be used again: the host, the port, the TLS policy it
# was opened under.
Key = tuple[str, int, str]

_CHECK_TIMEOUT = 5.0
_QUIT_TIMEOUT = 5.0


@dataclass
class Session:
    client: aiosmtplib.SMTP
    used: int = 0  # transactions it has carried


@dataclass
class _Waiting:
    session: Session
    expiry: asyncio.TimerHandle


class SessionCache:
    def __init__(self, idle: float, limit: int) -> None:
        self.idle = idle
        self.limit = limit
        self._waiting: dict[Key, list[_Waiting]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def take(self, key: Key) -> Session | None:
        """A waiting session for `key` that answers RSET, or None."""
        waiting = self._waiting.get(key, [])
        while waiting:
            entry = waiting.pop()  # the most recently used first
            entry.expiry.cancel()
            if await _alive(entry.session.client):
                return entry.session
            await close(entry.session.client)
        return None

    def keep(self, key: Key, session: Session) -> bool:
        """Keep a session whose transaction ended cleanly; False when the
        caller must close it (reuse off, used up, or stopping)."""
        session.used += 1
        if self._stopped or self.idle <= 0 or session.used >= self.limit:
            return False
        entry = _Waiting(session, asyncio.get_running_loop().call_later(
            self.idle, self._expire, key, session))
        self._waiting.setdefault(key, []).append(entry)
        return True

    def _expire(self, key: Key, session: Session) -> None:
        waiting = self._waiting.get(key, [])
        for entry in waiting:
            if entry.session is session:
                waiting.remove(entry)
                task = asyncio.get_running_loop().create_task(close(session.client))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                return

    async def close_all(self) -> None:
        """Close every waiting session and keep no more."""
        self._stopped = True
        entries = [entry for waiting in self._waiting.values() for entry in waiting]
        self._waiting.clear()
        for entry in entries:
            entry.expiry.cancel()
        await asyncio.gather(*(close(entry.session.client) for entry in entries),
                             *self._closing)


async def close(client: aiosmtplib.SMTP) -> None:
    """QUIT, or drop the connection when the next hop does not answer."""
    try:
        await asyncio.wait_for(client.quit(), _QUIT_TIMEOUT)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()


async def _alive(client: aiosmtplib.SMTP) -> bool:
    if not client.is_connected:
        return False
    try:
        await asyncio.wait_for(client.rset(), _CHECK_TIMEOUT)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False
    return True

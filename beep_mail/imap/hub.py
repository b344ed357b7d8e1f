"""Wake-ups for IMAP sessions when a user's mail changes in this process.

Delivery calls `notify(address)` after it put a message in a local mailbox,
and every IMAP session calls it after changing its user's mail (APPEND, COPY,
MOVE, STORE, EXPUNGE, mailbox changes). A session in IDLE waits on its own
event instead of polling the database; any session compares `version` with
the one it last saw to learn whether a look at the database is worth it.

In memory of one process, on its event loop: several gateway processes on one
PostgreSQL database do not wake each other (docs/limitations.md); their
sessions see such changes at the client's next command that looks (NOOP,
CHECK, SELECT, and IDLE when it ends).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Hub:
    def __init__(self) -> None:
        self._versions: defaultdict[str, int] = defaultdict(int)
        self._waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, address: str) -> None:
        """Something in this user's mailboxes changed."""
        key = address.lower()
        self._versions[key] += 1
        for event in self._waiting.get(key, ()):
            event.set()

    def version(self, address: str) -> int:
        return self._versions.get(address.lower(), 0)

    def subscribe(self, address: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[address.lower()].add(event)
        return event

    def unsubscribe(self, address: str, event: asyncio.Event) -> None:
        key = address.lower()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiting[key]

"""Wake-ups for IMAP sessions when a user's mail changes, in this process or another.

Delivery calls `notify(address)` after it put a message in a local mailbox,
and every IMAP session calls it after changing its user's mail (APPEND, COPY,
MOVE, STORE, EXPUNGE, mailbox changes). A session in IDLE waits on its own
event instead of polling the database; any session compares `version` with
the one it last saw to learn whether a look at the database is worth it.

The hub lives in the memory of one process, on its event loop. Several
gateway processes on one PostgreSQL database hear of each other's changes
through `join(peers)` (`beep_mail.store.notify`: LISTEN/NOTIFY): each change
told here is also published, keyed by a digest of the address rather than the
address, and each change heard from another process bumps the version and
wakes the waiting sessions exactly as a change made here does. A change
heard is not published again, so notices never loop. On SQLite the hub
joins nothing: one process serves a SQLite store, so it sees every change.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Protocol


class Peers(Protocol):
    """The other gateway processes on the same database."""

    def digest(self, address: str) -> str:
        """What stands for the address in notices."""
        ...

    def publish(self, digest: str) -> None:
        """Tell the other processes that this user's mail changed."""
        ...


class Hub:
    def __init__(self) -> None:
        self._versions: defaultdict[str, int] = defaultdict(int)
        self._waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._peers: Peers | None = None
        # Both ways between the addresses asked about here and their digests,
        # so that a notice from another process finds its user.
        self._digests: dict[str, str] = {}
        self._addresses: dict[str, str] = {}

    def join(self, peers: Peers) -> None:
        """Publish this process's changes to `peers`; hear theirs by `heard`."""
        self._peers = peers
        for key in (*self._versions, *self._waiting):
            self._learn(key, peers)

    def notify(self, address: str) -> None:
        """Something in this user's mailboxes changed."""
        key = address.lower()
        self._bump(key)
        peers = self._peers
        if peers is not None:
            peers.publish(self._learn(key, peers))

    def heard(self, digest: str) -> None:
        """Another process changed the mail of the user with this digest."""
        key = self._addresses.get(digest)
        if key is not None:
            self._bump(key)

    def heard_all(self) -> None:
        """Notices from other processes may have been lost: anything may have changed."""
        for key in list(self._digests):
            self._bump(key)

    def version(self, address: str) -> int:
        key = address.lower()
        if self._peers is not None:
            self._learn(key, self._peers)
        return self._versions.get(key, 0)

    def subscribe(self, address: str) -> asyncio.Event:
        key = address.lower()
        if self._peers is not None:
            self._learn(key, self._peers)
        event = asyncio.Event()
        self._waiting[key].add(event)
        return event

    def unsubscribe(self, address: str, event: asyncio.Event) -> None:
        key = address.lower()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiting[key]

    def _bump(self, key: str) -> None:
        self._versions[key] += 1
        for event in self._waiting.get(key, ()):
            event.set()

    def _learn(self, key: str, peers: Peers) -> str:
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = peers.digest(key)
            self._addresses[digest] = key
        return digest

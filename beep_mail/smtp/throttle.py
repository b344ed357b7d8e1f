"""Counting failed sign-ins, per account and per client address.

After `limit` failures within `window` seconds, further attempts for that
account or from that address are refused without checking the password, so a
guesser learns nothing and spends nothing of ours. The counts live in memory
of one process; see docs/limitations.md.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque


class Throttle:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._failures[key]
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._failures[key]
            return deque()
        return entries

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        return any(len(self._recent(key, now)) >= self.limit for key in keys)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now)
            self._failures[key].append(now)

    def succeed(self, account_key: str) -> None:
        self._failures.pop(account_key, None)

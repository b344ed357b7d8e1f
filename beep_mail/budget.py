"""A budget of octets shared by the messages being accepted at one time.

Every message in the accepting steps (checks, OpenPGP, sealing, the commit)
holds several copies of itself at once. Ten large messages arriving together
would all be copied together; with a budget, the first ones that fit go on
and the others wait their turn, in the order they came, holding only the copy
the SMTP side already has. A message larger than the whole budget goes
alone. Small messages cost their size, so thousands fit at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    """At most `limit` octets held at once, granted first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a byte budget must be positive")
        self.limit = limit
        self.free = limit
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` octets (the whole budget at most) for the block."""
        size = max(0, min(size, self.limit))
        await self._take(size)
        try:
            yield
        finally:
            self._give(size)

    async def _take(self, size: int) -> None:
        if not self._waiting and size <= self.free:
            self.free -= size
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._give(size)  # granted as the wait was cancelled: hand it on
            else:
                if (size, granted) in self._waiting:
                    self._waiting.remove((size, granted))
                self._grant()  # the next one may fit now that this one left
            raise

    def _give(self, size: int) -> None:
        self.free += size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.free:
            size, granted = self._waiting.popleft()
            if granted.done():
                continue
            self.free -= size
            granted.set_result(None)

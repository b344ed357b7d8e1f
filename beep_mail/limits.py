"""Counting open sessions of a listener, overall and per client address.

Shared by the SMTP and IMAP listeners; each protocol turns a refusal into its
own words (421 4.7.0 for SMTP, BYE for IMAP).
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter


class Refusal(enum.Enum):
    OVERALL = "too many sessions overall"
    FROM_CLIENT = "too many sessions from one client address"


class SessionCounter:
    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self, address: str) -> Refusal | None:
        """Count one more session from `address`, or say why not."""
        if sum(self.open.values()) >= self.total:
            return Refusal.OVERALL
        if self.open[address] >= self.per_client:
            return Refusal.FROM_CLIENT
        self.open[address] += 1
        self.idle.clear()
        return None

    def leave(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
        if not self.open:
            self.idle.set()

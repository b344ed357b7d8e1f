"""The audit trail: every administrative action and policy decision, chained.

Each event's hash covers the previous event's hash and its own fields, so a
row removed, altered or reordered breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from beep_mail.store.tables import audit_events

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    client_addr: str | None
    hash: str


def _digest(prev: str, at: float, actor: str, action: str, target: str,
            detail: str, client_addr: str | None) -> str:
    fields = [prev, repr(at), actor, action, target, detail, client_addr or ""]
    return hashlib.sha256("\x1f".join(fields).encode("utf-8")).hexdigest()


def record(connection: Connection, actor: str, action: str, target: str = "",
           detail: dict[str, Any] | None = None, client_addr: str | None = None) -> None:
    """Append one event inside the caller's transaction."""
    last = select(audit_events.c.hash).order_by(audit_events.c.id.desc()).limit(1)
    if connection.dialect.name == "postgresql":
        # Serialise writers so that two events never chain to the same parent.
        connection.exec_driver_sql("LOCK TABLE audit_events IN EXCLUSIVE MODE")
    prev = connection.execute(last).scalar() or GENESIS
    at = time.time()
    body = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
    digest = _digest(prev, at, actor, action, target, body, client_addr)
    connection.execute(audit_events.insert().values(
        at=at, actor=actor, action=action, target=target, detail=body,
        client_addr=client_addr, prev_hash=prev, hash=digest,
    ))


def record_now(engine: Engine, actor: str, action: str, target: str = "",
               detail: dict[str, Any] | None = None,
               client_addr: str | None = None) -> None:
    with engine.begin() as connection:
        record(connection, actor, action, target, detail, client_addr)


def list_events(engine: Engine, *, limit: int = 100, action: str | None = None,
                actor: str | None = None) -> list[AuditRecord]:
    query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
    if action:
        query = query.where(audit_events.c.action == action)
    if actor:
        query = query.where(audit_events.c.actor == actor)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [AuditRecord(r.id, r.at, r.actor, r.action, r.target, json.loads(r.detail),
                        r.client_addr, r.hash) for r in reversed(rows)]


def verify(engine: Engine) -> tuple[bool, int, int | None]:
    """Recompute the chain: (intact, events checked, id of the first bad event)."""
    prev = GENESIS
    count = 0
    with engine.connect() as connection:
        rows = connection.execute(select(audit_events).order_by(audit_events.c.id))
        for row in rows:
            expected = _digest(prev, row.at, row.actor, row.action, row.target,
                               row.detail, row.client_addr)
            if row.prev_hash != prev or row.hash != expected:
                return False, count, row.id
            prev = row.hash
            count += 1
    return True, count, None

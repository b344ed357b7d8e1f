"""The audit trail: every administrative action and policy decision, chained.

Each event's hash covers the previous event's hash and its own fields, so a
row removed, altered or reordered breaks the chain from that point on.

Client addresses are personal data that must expire (privacy.client_address_days)
while the chain they are part of must keep verifying. So the chain never
covers an address itself, only a salted commitment to it:

    stored while kept:   "v1:" SALT ":" ADDRESS     (SALT: 9 random bytes, base64url)
    stored once expired: "v1-expired:" COMMITMENT   (base64url of the 32-byte digest)
    what the chain hashes, either way: "v1:" + hex(SHA-256(SALT + ADDRESS))

Expiry drops the salt with the address, so the commitment cannot be turned
back into an address by trying every IPv4 address. Both forms fit the
64-character column. Values written before this scheme (a bare address) are
still hashed as they are; they cannot expire without breaking the chain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from beep_mail.store.tables import audit_events, messages

GENESIS = "0" * 64

_KEPT = "v1:"
_EXPIRED = "v1-expired:"
_SALT_BYTES = 9
_COLUMN_WIDTH = 64


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    client_addr: str | None  # None when there was none, or once it expired
    hash: str
    client_addr_expired: bool = False


# -- client addresses ----------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _commit(salt: bytes, address: str) -> bytes:
    return hashlib.sha256(salt + address.encode("utf-8")).digest()


def _expired_form(commitment: bytes) -> str:
    return _EXPIRED + _b64(commitment)


def _stored_addr(address: str | None) -> str | None:
    """The column value for a new event's client address."""
    if not address:
        return None
    salt = os.urandom(_SALT_BYTES)
    stored = f"{_KEPT}{_b64(salt)}:{address}"
    if len(stored) > _COLUMN_WIDTH:
        # An address too long for the column (an IPv6 zone, say) is not kept
        # at all: its commitment still goes into the chain.
        return _expired_form(_commit(salt, address))
    return stored


def _split_kept(stored: str) -> tuple[bytes, str] | None:
    """(salt, address) of a kept value, None if it is not one."""
    if not stored.startswith(_KEPT):
        return None
    salt_text, sep, address = stored[len(_KEPT):].partition(":")
    if not sep:
        return None
    try:
        return base64.urlsafe_b64decode(salt_text), address
    except (binascii.Error, ValueError):
        return None


def _chained_addr(stored: str | None) -> str:
    """What the chain hashes for a stored client address."""
    if not stored:
        return ""
    kept = _split_kept(stored)
    if kept is not None:
        return _KEPT + _commit(*kept).hex()
    if stored.startswith(_EXPIRED):
        try:
            commitment = base64.urlsafe_b64decode(stored[len(_EXPIRED):])
        except (binascii.Error, ValueError):
            return stored  # unreadable: hashed as is, so the chain breaks here
        return _KEPT + commitment.hex()
    return stored  # written before commitments existed


def _plain_addr(stored: str | None) -> str | None:
    if not stored or stored.startswith(_EXPIRED):
        return None
    kept = _split_kept(stored)
    return kept[1] if kept is not None else stored


# -- writing ---------------------------------------------------------------------


def _digest(prev: str, at: float, actor: str, action: str, target: str,
            detail: str, client_addr: str | None) -> str:
    fields = [prev, repr(at), actor, action, target, detail, _chained_addr(client_addr)]
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
    stored = _stored_addr(client_addr)
    digest = _digest(prev, at, actor, action, target, body, stored)
    connection.execute(audit_events.insert().values(
        at=at, actor=actor, action=action, target=target, detail=body,
        client_addr=stored, prev_hash=prev, hash=digest,
    ))


def record_now(engine: Engine, actor: str, action: str, target: str = "",
               detail: dict[str, Any] | None = None,
               client_addr: str | None = None) -> None:
    with engine.begin() as connection:
        record(connection, actor, action, target, detail, client_addr)


def expire_client_addresses(engine: Engine, older_than: float) -> int:
    """Forget client addresses recorded before `older_than`; the chain still verifies.

    Audit events keep only the commitment; messages in the queue lose the
    address. Returns how many addresses were removed, both tables together.
    An audit event of its own records a run that removed any.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("LOCK TABLE audit_events IN EXCLUSIVE MODE")
        rows = connection.execute(
            select(audit_events.c.id, audit_events.c.client_addr).where(
                audit_events.c.at < older_than,
                audit_events.c.client_addr.like(f"{_KEPT}%"),
            )
        ).all()
        events = 0
        for row in rows:
            kept = _split_kept(row.client_addr)
            if kept is None:
                continue
            connection.execute(
                update(audit_events).where(audit_events.c.id == row.id)
                .values(client_addr=_expired_form(_commit(*kept)))
            )
            events += 1
        cleared = connection.execute(
            update(messages).where(messages.c.received_at < older_than,
                                   messages.c.client_addr.is_not(None))
            .values(client_addr=None)
        ).rowcount
        if events or cleared:
            record(connection, "gateway", "privacy.expire-client-addresses", "",
                   {"audit_events": events, "messages": cleared,
                    "older_than": older_than})
    return events + cleared


# -- reading ---------------------------------------------------------------------


def list_events(engine: Engine, *, limit: int = 100, action: str | None = None,
                actor: str | None = None, since: float | None = None,
                until: float | None = None) -> list[AuditRecord]:
    """The newest `limit` events that match, oldest first."""
    query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
    if action:
        query = query.where(audit_events.c.action == action)
    if actor:
        query = query.where(audit_events.c.actor == actor)
    if since is not None:
        query = query.where(audit_events.c.at >= since)
    if until is not None:
        query = query.where(audit_events.c.at < until)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        AuditRecord(r.id, r.at, r.actor, r.action, r.target, json.loads(r.detail),
                    _plain_addr(r.client_addr), r.hash,
                    bool(r.client_addr) and r.client_addr.startswith(_EXPIRED))
        for r in reversed(rows)
    ]


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

"""Rows of OpenPGP keys and wrapped mailbox keys; no cryptography here.

The store keeps armoured keys as text and never interprets them: parsing,
checking and unlocking happen in `beep_mail.crypto`, deciding which key to use
in `beep_mail.keyring`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, select, update

from beep_mail.store.tables import keys, mailbox_keys

KINDS = ("domain", "user", "peer", "recovery", "records")
STATES = ("active", "pending", "retired", "revoked")
RECOVERY_OWNER = "*"
RECORDS_OWNER = "records"


class KeyStoreError(Exception):
    """A key request that cannot be done; says why."""


@dataclass(frozen=True)
class KeyRecord:
    id: int
    kind: str
    owner: str
    fingerprint: str
    state: str
    pinned: bool
    public_key: str
    secret_key: str | None
    created_at: float
    expires_at: float | None
    updated_at: float
    lock: str | None = None  # see tables.Key.lock

    @property
    def has_secret(self) -> bool:
        return self.secret_key is not None


def _record(row: object) -> KeyRecord:
    return KeyRecord(*(getattr(row, name) for name in KeyRecord.__dataclass_fields__))


def add_key(connection: Connection, *, kind: str, owner: str, fingerprint: str,
            public_key: str, secret_key: str | None = None, state: str = "active",
            pinned: bool = False, created_at: float | None = None,
            expires_at: float | None = None, lock: str | None = None) -> KeyRecord:
    if kind not in KINDS or state not in STATES:
        raise KeyStoreError(f"unknown key kind or state: {kind}/{state}")
    existing = find_fingerprint(connection, fingerprint, kind=kind, owner=owner)
    if existing is not None:
        raise KeyStoreError(f"key {fingerprint} is already known for {owner}")
    now = time.time()
    key_id = connection.execute(keys.insert().values(
        kind=kind, owner=owner, fingerprint=fingerprint, state=state, pinned=pinned,
        public_key=public_key, secret_key=secret_key,
        created_at=created_at or now, expires_at=expires_at, updated_at=now, lock=lock,
    )).inserted_primary_key[0]  # type: ignore[index]
    return get_key(connection, int(key_id))


def get_key(connection: Connection, key_id: int) -> KeyRecord:
    row = connection.execute(select(keys).where(keys.c.id == key_id)).first()
    if row is None:
        raise KeyStoreError(f"no key with id {key_id}")
    return _record(row)


def find_fingerprint(connection: Connection, fingerprint: str, *,
                     kind: str | None = None, owner: str | None = None) -> KeyRecord | None:
    query = select(keys).where(keys.c.fingerprint == fingerprint.upper())
    if kind:
        query = query.where(keys.c.kind == kind)
    if owner:
        query = query.where(keys.c.owner == owner)
    row = connection.execute(query.order_by(keys.c.id.desc())).first()
    return _record(row) if row else None


# Built once: every message asks for keys several times (the recipient's at
# RCPT and again at DATA, the records key), and building the statement cost
# more than running it.
_KEYS_OF = (select(keys)
            .where(keys.c.kind == bindparam("kind"), keys.c.owner == bindparam("owner"),
                   keys.c.state.in_(bindparam("states", expanding=True)))
            .order_by(keys.c.id.desc()))


def keys_of(connection: Connection, kind: str, owner: str,
            states: tuple[str, ...] = ("active",)) -> list[KeyRecord]:
    """Keys of one owner, newest first."""
    found = connection.execute(_KEYS_OF, {"kind": kind, "owner": owner,
                                          "states": list(states)})
    return [_record(row) for row in found]


def active_key(connection: Connection, kind: str, owner: str) -> KeyRecord | None:
    found = keys_of(connection, kind, owner)
    return found[0] if found else None


def list_keys(engine: Engine, kind: str | None = None,
              include_retired: bool = False) -> list[KeyRecord]:
    query = select(keys).order_by(keys.c.kind, keys.c.owner, keys.c.id)
    if kind:
        query = query.where(keys.c.kind == kind)
    if not include_retired:
        query = query.where(keys.c.state.in_(("active", "pending")))
    with engine.connect() as connection:
        return [_record(row) for row in connection.execute(query)]


def set_state(connection: Connection, key_id: int, state: str, *,
              pinned: bool | None = None, public_key: str | None = None) -> None:
    if state not in STATES:
        raise KeyStoreError(f"unknown key state {state}")
    values: dict[str, object] = {"state": state, "updated_at": time.time()}
    if pinned is not None:
        values["pinned"] = pinned
    if public_key is not None:
        values["public_key"] = public_key
    connection.execute(update(keys).where(keys.c.id == key_id).values(**values))


def replace_secret(connection: Connection, key_id: int, secret_key: str,
                   lock: str | None = None) -> None:
    connection.execute(update(keys).where(keys.c.id == key_id)
                       .values(secret_key=secret_key, lock=lock, updated_at=time.time()))


# -- mailbox keys -------------------------------------------------------------

def put_mailbox_key(connection: Connection, user_id: int, wrapped: bytes,
                    user_key: str) -> None:
    found = connection.execute(
        select(mailbox_keys.c.user_id).where(mailbox_keys.c.user_id == user_id)
    ).first()
    if found is None:
        connection.execute(mailbox_keys.insert().values(
            user_id=user_id, wrapped=wrapped, user_key=user_key, created_at=time.time()))
    else:
        connection.execute(update(mailbox_keys).where(mailbox_keys.c.user_id == user_id)
                           .values(wrapped=wrapped, user_key=user_key))


def get_mailbox_key(connection: Connection, user_id: int) -> tuple[bytes, str] | None:
    row = connection.execute(
        select(mailbox_keys.c.wrapped, mailbox_keys.c.user_key)
        .where(mailbox_keys.c.user_id == user_id)
    ).first()
    return (bytes(row[0]), row[1]) if row else None

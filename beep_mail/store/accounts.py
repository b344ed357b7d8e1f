"""Users, their mailboxes, and the domains we serve or correspond with."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, update

from beep_mail.store.tables import (
    domains,
    keys,
    mailbox_entries,
    mailbox_keys,
    mailboxes,
    queue,
    search_chunks,
    users,
)

# The folders every user has, with their RFC 6154 special-use flags.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
    ("Junk", "\\Junk"),
)


class AccountError(Exception):
    """A request about users or domains that cannot be done; says why."""


@dataclass(frozen=True)
class UserRecord:
    id: int
    address: str
    display_name: str
    password_hash: str
    disabled: bool
    created_at: float


@dataclass(frozen=True)
class DomainRecord:
    name: str
    role: str
    allowed: bool
    next_hop: str | None
    tls: str
    encryption: str
    created_at: float
    updated_at: float


def _user(row: object) -> UserRecord:
    return UserRecord(row.id, row.address, row.display_name,  # type: ignore[attr-defined]
                      row.password_hash, row.disabled, row.created_at)  # type: ignore[attr-defined]


def _domain(row: object) -> DomainRecord:
    return DomainRecord(*(getattr(row, name) for name in DomainRecord.__dataclass_fields__))


# -- users ------------------------------------------------------------------

def find_user(connection: Connection, address: str) -> UserRecord | None:
    row = connection.execute(
        select(users).where(users.c.address == address.lower())
    ).first()
    return _user(row) if row else None


def get_user(engine: Engine, address: str) -> UserRecord | None:
    with engine.connect() as connection:
        return find_user(connection, address)


def list_users(engine: Engine) -> list[UserRecord]:
    with engine.connect() as connection:
        rows = connection.execute(select(users).order_by(users.c.address)).all()
    return [_user(row) for row in rows]


def add_user(connection: Connection, address: str, display_name: str,
             password_hash: str) -> UserRecord:
    address = address.lower()
    if find_user(connection, address) is not None:
        raise AccountError(f"{address} already exists")
    now = time.time()
    user_id = connection.execute(users.insert().values(
        address=address, display_name=display_name, password_hash=password_hash,
        disabled=False, created_at=now,
    )).inserted_primary_key[0]  # type: ignore[index]
    for offset, (name, special_use) in enumerate(DEFAULT_MAILBOXES):
        connection.execute(mailboxes.insert().values(
            user_id=user_id, name=name, special_use=special_use,
            uidvalidity=new_uidvalidity(now, offset), uidnext=1, subscribed=True,
            created_at=now,
        ))
    found = find_user(connection, address)
    assert found is not None
    return found


def new_uidvalidity(now: float, offset: int = 0) -> int:
    """A UIDVALIDITY that never repeats for a name: seconds, kept in 32 bits."""
    return (int(now) + offset) % (2**32 - 1) + 1


def set_user_disabled(connection: Connection, address: str, disabled: bool) -> None:
    _require_user(connection, address)
    connection.execute(update(users).where(users.c.address == address.lower())
                       .values(disabled=disabled))


def set_password_hash(connection: Connection, address: str, password_hash: str) -> None:
    _require_user(connection, address)
    connection.execute(update(users).where(users.c.address == address.lower())
                       .values(password_hash=password_hash))


def remove_user(connection: Connection, address: str) -> None:
    user = _require_user(connection, address)
    # The user's keys go with the user: nothing of theirs stays readable.
    connection.execute(delete(mailbox_keys).where(mailbox_keys.c.user_id == user.id))
    connection.execute(delete(keys).where(keys.c.kind == "user",
                                          keys.c.owner == user.address))
    connection.execute(delete(search_chunks).where(search_chunks.c.user_id == user.id))
    connection.execute(delete(mailbox_entries)
                       .where(mailbox_entries.c.user_id == user.id))
    connection.execute(delete(mailboxes).where(mailboxes.c.user_id == user.id))
    connection.execute(delete(users).where(users.c.id == user.id))


def _require_user(connection: Connection, address: str) -> UserRecord:
    user = find_user(connection, address)
    if user is None:
        raise AccountError(f"no user {address.lower()}")
    return user


def mailbox_counts(engine: Engine, user_id: int) -> list[tuple[str, int]]:
    count = (select(func.count(mailbox_entries.c.id))
             .where(mailbox_entries.c.mailbox_id == mailboxes.c.id)
             .scalar_subquery())
    query = (select(mailboxes.c.name, count).where(mailboxes.c.user_id == user_id)
             .order_by(mailboxes.c.id))
    with engine.connect() as connection:
        return [(row[0], row[1]) for row in connection.execute(query)]


# -- domains ----------------------------------------------------------------

def list_domains(engine: Engine) -> list[DomainRecord]:
    with engine.connect() as connection:
        return load_domains(connection)


_ALL_DOMAINS = select(domains).order_by(domains.c.name)  # read for every message


def load_domains(connection: Connection) -> list[DomainRecord]:
    rows = connection.execute(_ALL_DOMAINS).all()
    return [_domain(row) for row in rows]


def get_domain(connection: Connection, name: str) -> DomainRecord | None:
    row = connection.execute(select(domains).where(domains.c.name == name)).first()
    return _domain(row) if row else None


def put_domain(connection: Connection, name: str, *, role: str = "peer",
               allowed: bool = True, next_hop: str | None = None,
               tls: str = "required", encryption: str = "required") -> DomainRecord:
    """Create or replace the row for this (normalised) domain or wildcard rule."""
    now = time.time()
    values = dict(role=role, allowed=allowed, next_hop=next_hop, tls=tls,
                  encryption=encryption, updated_at=now)
    existing = get_domain(connection, name)
    if existing is None:
        connection.execute(domains.insert().values(name=name, created_at=now, **values))
    else:
        if existing.role == "local" and role != "local":
            raise AccountError(f"{name} is a local domain of this gateway")
        connection.execute(update(domains).where(domains.c.name == name).values(**values))
    found = get_domain(connection, name)
    assert found is not None
    return found


def queued_for_domain(connection: Connection, name: str) -> int:
    query = select(func.count(queue.c.id)).where(
        queue.c.domain == name, queue.c.state.in_(("queued", "deferred", "held"))
    )
    return int(connection.execute(query).scalar() or 0)


# -- counts for the CLI's status and domain commands ------------------------

def count_users(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(users.c.id))).scalar() or 0)


def count_domains(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(domains.c.name))).scalar() or 0)


def queued_by_domain(connection: Connection) -> dict[str, int]:
    """Recipients still waiting (queued, deferred or held), by their domain."""
    query = (select(queue.c.domain, func.count(queue.c.id))
             .where(queue.c.state.in_(("queued", "deferred", "held")))
             .group_by(queue.c.domain))
    return {domain: int(n) for domain, n in connection.execute(query)}

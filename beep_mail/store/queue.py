"""The queue: accepted messages and one row per recipient, claimed with leases.

A row's life: queued -> (claimed by a worker for `lease` seconds) -> delivered,
deferred (due again later), or failed (a DSN went to the sender). `held` rows
wait for an administrator. Every change of state is one UPDATE guarded by the
lease owner, so a worker whose lease expired and was taken over cannot
overwrite the newer outcome.

Claiming uses FOR UPDATE SKIP LOCKED on PostgreSQL, so several gateway
processes share one queue; on SQLite, BEGIN IMMEDIATE makes each claim the only
writer.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from beep_mail.store.mailstore import next_modseq
from beep_mail.store.tables import mailbox_entries, mailboxes, messages, queue, users

ACTIVE = ("queued", "deferred")
FINAL = ("delivered", "failed")
STATES = ("queued", "deferred", "held", "delivered", "failed")


class QueueError(Exception):
    """An administrative request about the queue that cannot be done."""


@dataclass(frozen=True)
class NewRecipient:
    address: str
    domain: str
    route: str  # "local" or "remote"


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    recipient: str
    domain: str
    route: str
    attempts: int
    created_at: float
    expires_at: float
    mail_from: str
    direction: str
    received_at: float
    transfer_id: str | None


@dataclass(frozen=True)
class QueueRow:
    id: int
    message_id: str
    recipient: str
    domain: str
    route: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    expires_at: float
    last_status: str | None
    last_reply: str | None
    mail_from: str
    size: int


def new_message_id() -> str:
    """A short queue id, unique enough to grep for across logs and replies."""
    return secrets.token_hex(6).upper()


# Built once: every accepted message runs them (see store/keys.py).
_INSERT_MESSAGE = messages.insert()
_INSERT_QUEUE = queue.insert()


def accept(connection: Connection, *, message_id: str, direction: str, mail_from: str,
           content: bytes | None, recipients: Sequence[NewRecipient], lifetime: float,
           message_id_header: str | None = None, transfer_id: str | None = None,
           auth_user: str | None = None, client_addr: str | None = None,
           hold: bool = False, local_content: bytes | None = None,
           held: Collection[str] = (), size: int | None = None,
           held_content: bytes | None = None) -> None:
    """Insert the message and its queue rows in the caller's transaction.

    `content` is the copy for next hops, `local_content` the sealed copy for
    local users; recipients in `held` (or all, with `hold`) wait for an
    administrator.
    """
    now = time.time()
    if size is None:
        size = len(content or local_content or b"")
    connection.execute(_INSERT_MESSAGE, {
        "id": message_id, "received_at": now, "direction": direction,
        "mail_from": mail_from, "size": size, "message_id_header": message_id_header,
        "transfer_id": transfer_id, "auth_user": auth_user, "client_addr": client_addr,
        "content": content, "local_content": local_content, "held_content": held_content,
    })
    connection.execute(_INSERT_QUEUE, [
        dict(message_id=message_id, recipient=rcpt.address, domain=rcpt.domain,
             route=rcpt.route,
             state="held" if hold or rcpt.address in held else "queued", attempts=0,
             created_at=now, next_attempt_at=now, expires_at=now + lifetime,
             updated_at=now)
        for rcpt in recipients
    ])


# The statements of every delivery, built once: SQLAlchemy spends more on
# building a statement than on running it (see docs/performance.md).
_DUE = (
    select(queue.c.id)
    .where(queue.c.state.in_(ACTIVE), queue.c.next_attempt_at <= bindparam("now"),
           or_(queue.c.lease_until.is_(None), queue.c.lease_until < bindparam("now")))
    .order_by(queue.c.next_attempt_at)
    .limit(bindparam("limit"))
)
_DUE_SKIP_LOCKED = _DUE.with_for_update(skip_locked=True)  # PostgreSQL: workers share rows
_LEASE = (
    update(queue).where(queue.c.id.in_(bindparam("ids", expanding=True)))
    .values(lease_owner=bindparam("owner"), lease_until=bindparam("until"),
            attempts=queue.c.attempts + 1, updated_at=bindparam("now"))
)
_CLAIMED = (
    select(queue, messages.c.mail_from, messages.c.direction,
           messages.c.received_at, messages.c.transfer_id)
    .join(messages, messages.c.id == queue.c.message_id)
    .where(queue.c.id.in_(bindparam("ids", expanding=True))).order_by(queue.c.id)
)


def claim(engine: Engine, owner: str, lease: float, limit: int) -> list[Claimed]:
    """Take up to `limit` due rows for `lease` seconds."""
    now = time.time()
    with engine.begin() as connection:
        due = _DUE_SKIP_LOCKED if connection.dialect.name == "postgresql" else _DUE
        ids = list(connection.execute(due, {"now": now, "limit": limit}).scalars())
        if not ids:
            return []
        connection.execute(_LEASE, {"ids": ids, "owner": owner, "until": now + lease,
                                    "now": now})
        rows = connection.execute(_CLAIMED, {"ids": ids}).all()
    return [
        Claimed(r.id, r.message_id, r.recipient, r.domain, r.route, r.attempts,
                r.created_at, r.expires_at, r.mail_from, r.direction, r.received_at,
                r.transfer_id)
        for r in rows
    ]


def release_leases_of(engine: Engine, owners: Sequence[str]) -> int:
    """Return rows leased by owners known to be dead (same host, no process)."""
    if not owners:
        return 0
    with engine.begin() as connection:
        result = connection.execute(
            update(queue).where(queue.c.lease_owner.in_(owners),
                                queue.c.state.in_(ACTIVE))
            .values(lease_owner=None, lease_until=None)
        )
    return int(result.rowcount)


def lease_owners(engine: Engine) -> list[str]:
    query = select(queue.c.lease_owner).distinct().where(
        queue.c.lease_owner.is_not(None), queue.c.state.in_(ACTIVE))
    with engine.connect() as connection:
        return [owner for owner in connection.execute(query).scalars() if owner]


def load_content(engine: Engine, message_id: str) -> bytes | None:
    with engine.connect() as connection:
        return connection.execute(
            select(messages.c.content).where(messages.c.id == message_id)
        ).scalar()


def load_held(engine: Engine, message_id: str) -> bytes | None:
    """The copy kept for recipients that wait for their key."""
    with engine.connect() as connection:
        value = connection.execute(
            select(messages.c.held_content).where(messages.c.id == message_id)
        ).scalar()
    return bytes(value) if value is not None else None


def message_size(engine: Engine, message_id: str) -> int | None:
    with engine.connect() as connection:
        value = connection.execute(
            select(messages.c.size).where(messages.c.id == message_id)).scalar()
    return int(value) if value is not None else None


def load_copies(engine: Engine, message_id: str) -> tuple[bytes | None, bytes | None]:
    """(copy for next hops, sealed copy for local users)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(messages.c.content, messages.c.local_content)
            .where(messages.c.id == message_id)
        ).first()
    if row is None:
        return None, None
    return (bytes(row[0]) if row[0] is not None else None,
            bytes(row[1]) if row[1] is not None else None)


# The SET clause comes from the parameters given beside the row and owner.
_SETTLE = update(queue).where(queue.c.id == bindparam("row"),
                              queue.c.lease_owner == bindparam("owner"),
                              queue.c.state.in_(ACTIVE))
_PENDING = select(func.count(queue.c.id)).where(queue.c.message_id == bindparam("message"),
                                                queue.c.state.not_in(FINAL))
_DROP_CONTENT = (update(messages).where(messages.c.id == bindparam("message"))
                 .values(content=None, local_content=None, held_content=None))


def _settle(connection: Connection, row_id: int, owner: str, **values: object) -> bool:
    """Change one leased row in one UPDATE; False if the lease is no longer ours."""
    values.setdefault("updated_at", time.time())
    result = connection.execute(_SETTLE, {"row": row_id, "owner": owner,
                                          "lease_owner": None, "lease_until": None,
                                          **values})
    return bool(result.rowcount)


def _drop_content_when_done(connection: Connection, message_id: str) -> None:
    pending = connection.execute(_PENDING, {"message": message_id}).scalar()
    if not pending:
        connection.execute(_DROP_CONTENT, {"message": message_id})


def mark_delivered(engine: Engine, row: Claimed, owner: str, reply: str) -> bool:
    with engine.begin() as connection:
        done = _settle(connection, row.id, owner, state="delivered",
                       last_status="2.0.0", last_reply=reply[:1000])
        if done:
            _drop_content_when_done(connection, row.message_id)
    return done


def mark_deferred(engine: Engine, row: Claimed, owner: str, status: str, reply: str,
                  next_attempt_at: float) -> bool:
    with engine.begin() as connection:
        return _settle(connection, row.id, owner, state="deferred",
                       last_status=status, last_reply=reply[:1000],
                       next_attempt_at=next_attempt_at)


def mark_failed(engine: Engine, row: Claimed, owner: str, status: str, reply: str,
                dsn: tuple[str, bytes] | None) -> bool:
    """Fail the row and, in the same transaction, put the DSN in the sender's INBOX."""
    with engine.begin() as connection:
        done = _settle(connection, row.id, owner, state="failed",
                       last_status=status, last_reply=reply[:1000])
        if done and dsn is not None:
            address, content = dsn
            store_in_inbox(connection, address, content, f"dsn:{row.message_id}:{row.id}")
        if done:
            _drop_content_when_done(connection, row.message_id)
    return done


def deliver_local(engine: Engine, row: Claimed, owner: str, content: bytes,
                  delivery_key: str, size: int | None = None) -> bool:
    """Put the message in the recipient's INBOX and settle the row, atomically."""
    with engine.begin() as connection:
        if not _settle(connection, row.id, owner, state="delivered",
                       last_status="2.0.0", last_reply="delivered to INBOX"):
            return False
        store_in_inbox(connection, row.recipient, content, delivery_key, size)
        _drop_content_when_done(connection, row.message_id)
    return True


_USER_ID = select(users.c.id).where(users.c.address == bindparam("address"))
_SEEN = select(mailbox_entries.c.id).where(
    mailbox_entries.c.user_id == bindparam("user"),
    mailbox_entries.c.delivery_key == bindparam("key"))
_INBOX = (select(mailboxes.c.id, mailboxes.c.uidnext)
          .where(mailboxes.c.user_id == bindparam("user"), mailboxes.c.name == "INBOX")
          .with_for_update())
_TAKE_UID = (update(mailboxes).where(mailboxes.c.id == bindparam("box"))
             .values(uidnext=bindparam("next_uid")))
_NEW_ENTRY = mailbox_entries.insert()


def store_in_inbox(connection: Connection, address: str, content: bytes,
                   delivery_key: str, size: int | None = None) -> bool:
    """Append to INBOX unless this delivery_key is already there (False then)."""
    user = connection.execute(_USER_ID, {"address": address.lower()}).scalar()
    if user is None:
        raise QueueError(f"no local user {address}")
    seen = connection.execute(_SEEN, {"user": user, "key": delivery_key}).first()
    if seen is not None:
        return False
    box = connection.execute(_INBOX, {"user": user}).one()
    connection.execute(_TAKE_UID, {"box": box.id, "next_uid": box.uidnext + 1})
    modseq = next_modseq(connection, box.id)
    try:
        with connection.begin_nested():
            connection.execute(_NEW_ENTRY, {
                "mailbox_id": box.id, "user_id": user, "uid": box.uidnext,
                "internal_date": time.time(),
                "size": len(content) if size is None else size, "flags": "",
                "delivery_key": delivery_key, "content": content, "modseq": modseq,
            })
    except IntegrityError:
        return False
    return True


# -- administration ---------------------------------------------------------

def _row(r: object) -> QueueRow:
    return QueueRow(*(getattr(r, name) for name in QueueRow.__dataclass_fields__))


def _listing() -> Select[Any]:
    return (select(queue, messages.c.mail_from, messages.c.size)
            .join(messages, messages.c.id == queue.c.message_id))


def list_rows(engine: Engine, *, state: str | None = None, limit: int = 1000,
              include_final: bool = False) -> list[QueueRow]:
    query = _listing().order_by(queue.c.id).limit(limit)
    if state:
        query = query.where(queue.c.state == state)
    elif not include_final:
        query = query.where(queue.c.state.not_in(FINAL))
    with engine.connect() as connection:
        return [_row(r) for r in connection.execute(query)]


def rows_of(connection: Connection, message_id: str) -> list[QueueRow]:
    query = _listing().where(queue.c.message_id == message_id).order_by(queue.c.id)
    return [_row(r) for r in connection.execute(query)]


def require_rows(connection: Connection, message_id: str) -> list[QueueRow]:
    rows = rows_of(connection, message_id)
    if not rows:
        raise QueueError(f"no queued message {message_id}")
    return rows


def retry(connection: Connection, message_id: str) -> int:
    """Make the message's deferred and queued rows due now."""
    require_rows(connection, message_id)
    result = connection.execute(
        update(queue).where(queue.c.message_id == message_id,
                            queue.c.state.in_(ACTIVE))
        .values(next_attempt_at=time.time(), updated_at=time.time())
    )
    return int(result.rowcount)


def hold(connection: Connection, message_id: str) -> int:
    require_rows(connection, message_id)
    result = connection.execute(
        update(queue).where(queue.c.message_id == message_id,
                            queue.c.state.in_(ACTIVE))
        .values(state="held", lease_owner=None, lease_until=None,
                updated_at=time.time())
    )
    return int(result.rowcount)


def release(connection: Connection, message_id: str) -> int:
    require_rows(connection, message_id)
    now = time.time()
    result = connection.execute(
        update(queue).where(queue.c.message_id == message_id, queue.c.state == "held")
        .values(state="queued", next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)


def remove(connection: Connection, message_id: str) -> int:
    """Delete the message and all its rows; the mail is not delivered."""
    rows = require_rows(connection, message_id)
    connection.execute(delete(queue).where(queue.c.message_id == message_id))
    connection.execute(delete(messages).where(messages.c.id == message_id))
    return len(rows)


def depth_by_state(engine: Engine) -> dict[str, int]:
    query = select(queue.c.state, func.count(queue.c.id)).group_by(queue.c.state)
    with engine.connect() as connection:
        counts = {state: int(n) for state, n in connection.execute(query)}
    return {state: counts.get(state, 0) for state in STATES}


def oldest_deferred(engine: Engine) -> QueueRow | None:
    query = (_listing().where(queue.c.state == "deferred")
             .order_by(queue.c.created_at).limit(1))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return _row(row) if row else None


def next_due(engine: Engine) -> float | None:
    query = select(func.min(queue.c.next_attempt_at)).where(queue.c.state.in_(ACTIVE))
    with engine.connect() as connection:
        value = connection.execute(query).scalar()
    return float(value) if value is not None else None



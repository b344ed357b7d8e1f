"""The store and the queue, each test once on SQLite and once on PostgreSQL.

Every test takes `db_url` (tests/conftest.py): a fresh SQLite file, then a fresh
PostgreSQL database. Rows are put into states the public functions cannot reach
quickly (a deferred row already due, a tampered audit event) with plain SQL;
everything under test goes through the functions the gateway itself calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from beep_mail.store import accounts, audit
from beep_mail.store import queue as q
from beep_mail.store.engine import MIGRATIONS, Database
from beep_mail.store.tables import (
    mailbox_entries,
    mailboxes,
    messages,
    metadata,
    queue,
    users,
)

LOCAL = "ministry.gov.example"
PEER = "peer.gov.example"
ALICE = f"alice@{LOCAL}"
CAROL = f"carol@{LOCAL}"
CONTENT = b"From: alice@ministry.gov.example\r\nSubject: Tender\r\n\r\nBody\r\n"
DSN = b"Subject: Undelivered Mail Returned to Sender\r\n\r\nbob was refused\r\n"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    try:
        database.migrate()
        yield database
    finally:
        database.close()


# -- helpers ---------------------------------------------------------------------------


def remote(*locals_: str) -> list[str]:
    return [f"{local}@{PEER}" for local in locals_]


def enqueue(
    engine: Engine,
    recipients: list[str],
    *,
    route: str = "remote",
    mail_from: str = ALICE,
    hold: bool = False,
    transfer_id: str | None = None,
) -> str:
    message_id = q.new_message_id()
    with engine.begin() as connection:
        q.accept(
            connection,
            message_id=message_id,
            direction="outbound",
            mail_from=mail_from,
            content=CONTENT,
            lifetime=3600,
            hold=hold,
            transfer_id=transfer_id,
            recipients=[
                q.NewRecipient(address, address.rpartition("@")[2], route)
                for address in recipients
            ],
        )
    return message_id


def row_ids(engine: Engine, message_id: str) -> list[int]:
    query = select(queue.c.id).where(queue.c.message_id == message_id)
    with engine.connect() as connection:
        return list(connection.execute(query.order_by(queue.c.id)).scalars())


def read_row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(queue).where(queue.c.id == row_id)).one()


def set_row(engine: Engine, row_id: int, **values: object) -> None:
    with engine.begin() as connection:
        connection.execute(update(queue).where(queue.c.id == row_id).values(**values))


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table)).scalar() or 0
        )


def add_user(engine: Engine, address: str) -> accounts.UserRecord:
    with engine.begin() as connection:
        return accounts.add_user(connection, address, "Officer", "not-a-real-hash")


def inbox(engine: Engine, address: str) -> list[tuple[int, bytes]]:
    query = (
        select(mailbox_entries.c.uid, mailbox_entries.c.content)
        .join(mailboxes, mailboxes.c.id == mailbox_entries.c.mailbox_id)
        .join(users, users.c.id == mailboxes.c.user_id)
        .where(users.c.address == address, mailboxes.c.name == "INBOX")
        .order_by(mailbox_entries.c.uid)
    )
    with engine.connect() as connection:
        return [(uid, bytes(content)) for uid, content in connection.execute(query)]


def uidnext(engine: Engine, address: str) -> int:
    query = (
        select(mailboxes.c.uidnext)
        .join(users, users.c.id == mailboxes.c.user_id)
        .where(users.c.address == address, mailboxes.c.name == "INBOX")
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


# -- migrations ------------------------------------------------------------------------


def _versions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalars()
        )


def test_migrations_reach_the_head_revision(db: Database) -> None:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()

    assert head is not None
    assert _versions(db.engine) == [head]


def test_migrating_again_changes_nothing(db: Database) -> None:
    with db.engine.begin() as connection:
        accounts.put_domain(connection, LOCAL, role="local")

    db.migrate()

    assert len(_versions(db.engine)) == 1
    assert [d.name for d in accounts.list_domains(db.engine)] == [LOCAL]


def test_migrations_create_the_tables_the_code_declares(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert set(metadata.tables) | {"alembic_version"} <= tables

    indexes = {index["name"] for index in inspect(db.engine).get_indexes("queue")}
    assert {"ix_queue_due", "ix_queue_message"} <= indexes

    # The migrations and tables.py describe the same schema: no drift either way.
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


# -- accept: one transaction for the message and its rows ------------------------------


def test_accept_and_a_later_error_leave_nothing(db: Database) -> None:
    """Whatever fails after accept in the same transaction undoes the accept."""
    with pytest.raises(RuntimeError), db.engine.begin() as connection:
        q.accept(
            connection,
            message_id="M1",
            direction="outbound",
            mail_from=ALICE,
            content=CONTENT,
            lifetime=3600,
            recipients=[q.NewRecipient(a, PEER, "remote") for a in remote("b", "c")],
        )
        raise RuntimeError("the archive entry could not be written")

    assert count(db.engine, messages) == 0
    assert count(db.engine, queue) == 0


def test_accept_with_a_failing_second_row_leaves_nothing(db: Database) -> None:
    """The first row and the message are already written when the second fails."""
    recipients = [
        q.NewRecipient(f"bob@{PEER}", PEER, "remote"),
        q.NewRecipient(None, PEER, "remote"),  # type: ignore[arg-type]
    ]

    with pytest.raises(DBAPIError), db.engine.begin() as connection:
        q.accept(
            connection,
            message_id="M1",
            direction="outbound",
            mail_from=ALICE,
            content=CONTENT,
            lifetime=3600,
            recipients=recipients,
        )

    assert count(db.engine, messages) == 0
    assert count(db.engine, queue) == 0


# SQLite does not enforce VARCHAR lengths, so this one runs on PostgreSQL only.
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_accept_with_a_recipient_too_long_for_its_column_leaves_nothing(
    db: Database,
) -> None:
    too_long = "x" * 250 + f"@{PEER}"
    recipients = [
        q.NewRecipient(f"bob@{PEER}", PEER, "remote"),
        q.NewRecipient(too_long, PEER, "remote"),
    ]

    with pytest.raises(DBAPIError), db.engine.begin() as connection:
        q.accept(
            connection,
            message_id="M1",
            direction="outbound",
            mail_from=ALICE,
            content=CONTENT,
            lifetime=3600,
            recipients=recipients,
        )

    assert count(db.engine, messages) == 0
    assert count(db.engine, queue) == 0


def test_accepted_message_is_committed_for_other_connections(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob", "dave"))

    other = Database(db.url)  # another engine: another connection, as another process
    try:
        with other.engine.connect() as connection:
            content = connection.execute(
                select(messages.c.content).where(messages.c.id == message_id)
            ).scalar()
            rows = q.rows_of(connection, message_id)
    finally:
        other.close()

    assert content == CONTENT
    assert [(r.recipient, r.state, r.attempts) for r in rows] == [
        (f"bob@{PEER}", "queued", 0),
        (f"dave@{PEER}", "queued", 0),
    ]


def test_sqlite_connections_use_wal_and_full_sync(sqlite_url: str) -> None:
    first = Database(sqlite_url)
    first.migrate()
    first.close()

    fresh = Database(sqlite_url)  # synchronous is per connection, not per file
    try:
        with fresh.engine.connect() as connection:
            journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
            foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    finally:
        fresh.close()

    assert journal == "wal"
    assert synchronous == 2  # FULL: a commit that answers 250 survives a power cut
    assert foreign_keys == 1


# -- claiming and settling -------------------------------------------------------------


def test_claim_takes_only_due_queued_and_deferred_rows(db: Database) -> None:
    ids = row_ids(db.engine, enqueue(db.engine, remote(*"abcdefg")))
    past, future = time.time() - 10, time.time() + 3600
    set_row(db.engine, ids[1], state="deferred", next_attempt_at=past)
    set_row(db.engine, ids[2], next_attempt_at=future)  # queued, not yet due
    set_row(db.engine, ids[3], state="deferred", next_attempt_at=future)
    for row_id, state in zip(ids[4:], ("held", "delivered", "failed"), strict=True):
        set_row(db.engine, row_id, state=state, next_attempt_at=past)

    claimed = q.claim(db.engine, "w1", 60, 100)

    assert sorted(row.id for row in claimed) == ids[:2]
    assert all(row.attempts == 1 and row.mail_from == ALICE for row in claimed)


def test_a_leased_row_is_not_claimed_again(db: Database) -> None:
    enqueue(db.engine, remote("bob"))
    (row,) = q.claim(db.engine, "w1", 60, 10)

    assert q.claim(db.engine, "w2", 60, 10) == []
    assert q.claim(db.engine, "w1", 60, 10) == []

    stored = read_row(db.engine, row.id)
    assert (stored.lease_owner, stored.attempts) == ("w1", 1)


def test_expired_lease_is_taken_over_and_fences_the_first_owner(db: Database) -> None:
    enqueue(db.engine, remote("bob"))
    (first,) = q.claim(db.engine, "w1", 0.05, 10)

    time.sleep(0.1)  # the lease running out is what is under test
    (second,) = q.claim(db.engine, "w2", 60, 10)

    assert (second.id, first.attempts, second.attempts) == (first.id, 1, 2)
    before = read_row(db.engine, first.id)
    assert not q.mark_delivered(db.engine, first, "w1", "250 late")
    assert read_row(db.engine, first.id) == before
    assert before.state == "queued" and before.lease_owner == "w2"

    assert q.mark_delivered(db.engine, second, "w2", "250 2.0.0 ok")
    assert read_row(db.engine, first.id).state == "delivered"


def test_mark_deferred_sets_state_and_next_attempt(db: Database) -> None:
    enqueue(db.engine, remote("bob"))
    (row,) = q.claim(db.engine, "w1", 60, 10)
    later = time.time() + 600

    assert q.mark_deferred(db.engine, row, "w1", "4.4.1", "no answer", later)

    stored = read_row(db.engine, row.id)
    assert (stored.state, stored.next_attempt_at, stored.last_status) == (
        "deferred",
        later,
        "4.4.1",
    )
    assert (stored.lease_owner, stored.lease_until) == (None, None)
    assert q.claim(db.engine, "w1", 60, 10) == []
    assert q.next_due(db.engine) == later


def test_mark_failed_puts_the_dsn_in_the_senders_inbox(db: Database) -> None:
    add_user(db.engine, ALICE)
    message_id = enqueue(db.engine, remote("bob"))
    (row,) = q.claim(db.engine, "w1", 60, 10)

    assert q.mark_failed(
        db.engine, row, "w1", "5.1.1", "550 5.1.1 no such user", (ALICE, DSN)
    )

    assert inbox(db.engine, ALICE) == [(1, DSN)]
    stored = read_row(db.engine, row.id)
    assert (stored.state, stored.last_status, stored.lease_owner) == (
        "failed",
        "5.1.1",
        None,
    )
    assert q.load_content(db.engine, message_id) is None


def test_mark_failed_is_undone_when_its_dsn_cannot_be_stored(db: Database) -> None:
    """One transaction: a DSN that finds no INBOX leaves the row as it was."""
    message_id = enqueue(db.engine, remote("bob"))
    (row,) = q.claim(db.engine, "w1", 60, 10)

    with pytest.raises(q.QueueError):
        q.mark_failed(
            db.engine, row, "w1", "5.1.1", "550 no such user", (f"nobody@{LOCAL}", DSN)
        )

    stored = read_row(db.engine, row.id)
    assert (stored.state, stored.lease_owner) == ("queued", "w1")
    assert q.load_content(db.engine, message_id) == CONTENT


def test_content_is_dropped_once_every_row_is_final(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob", "dave", "erin"))
    first, second, third = q.claim(db.engine, "w1", 60, 10)

    assert q.mark_delivered(db.engine, first, "w1", "250 ok")
    assert q.mark_failed(db.engine, second, "w1", "5.1.1", "550 no such user", None)
    assert q.mark_deferred(db.engine, third, "w1", "4.4.1", "no answer", time.time())
    assert q.load_content(db.engine, message_id) == CONTENT

    (again,) = q.claim(db.engine, "w1", 60, 10)
    assert q.mark_delivered(db.engine, again, "w1", "250 ok")
    assert q.load_content(db.engine, message_id) is None


def test_two_owners_claim_every_row_exactly_once(db: Database) -> None:
    """Two engines, as two gateway processes sharing one database."""
    for n in range(5):
        enqueue(db.engine, remote(*(f"r{n}-{m}" for m in range(10))))
    start = threading.Barrier(2)
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}
    errors: list[SQLAlchemyError | threading.BrokenBarrierError] = []

    def work(owner: str) -> None:
        worker = Database(db.url)
        try:
            start.wait(10)
            while rows := q.claim(worker.engine, owner, 60, 10):
                claimed[owner].extend(row.id for row in rows)
        except (SQLAlchemyError, threading.BrokenBarrierError) as error:
            # Reported by the test below, not lost in the thread.
            errors.append(error)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(owner,)) for owner in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    everything = claimed["w1"] + claimed["w2"]
    assert len(everything) == 50
    assert len(set(everything)) == 50
    with db.engine.connect() as connection:
        query = select(queue.c.id, queue.c.lease_owner)
        owners = {row.id: row.lease_owner for row in connection.execute(query)}
    assert all(
        owners[row_id] == owner for owner, ids in claimed.items() for row_id in ids
    )


# -- local delivery --------------------------------------------------------------------


def test_store_in_inbox_is_idempotent_per_delivery_key(db: Database) -> None:
    add_user(db.engine, ALICE)
    add_user(db.engine, CAROL)

    with db.engine.begin() as connection:
        assert q.store_in_inbox(connection, ALICE, b"one", "key-1")
    with db.engine.begin() as connection:  # the same delivery, repeated after a crash
        assert not q.store_in_inbox(connection, ALICE, b"one again", "key-1")
    with db.engine.begin() as connection:
        assert q.store_in_inbox(connection, ALICE, b"two", "key-2")
        assert q.store_in_inbox(connection, CAROL, b"one", "key-1")

    assert inbox(db.engine, ALICE) == [(1, b"one"), (2, b"two")]
    assert uidnext(db.engine, ALICE) == 3
    assert inbox(db.engine, CAROL) == [(1, b"one")]
    assert uidnext(db.engine, CAROL) == 2


def test_deliver_local_stores_and_settles_together(db: Database) -> None:
    add_user(db.engine, CAROL)
    message_id = enqueue(db.engine, [CAROL], route="local")
    (row,) = q.claim(db.engine, "w1", 60, 10)

    assert not q.deliver_local(db.engine, row, "someone-else", CONTENT, f"q:{row.id}")
    assert inbox(db.engine, CAROL) == []

    assert q.deliver_local(db.engine, row, "w1", CONTENT, f"q:{row.id}")
    assert inbox(db.engine, CAROL) == [(1, CONTENT)]
    assert read_row(db.engine, row.id).state == "delivered"
    assert q.load_content(db.engine, message_id) is None


def test_a_repeated_transfer_reaches_the_inbox_once(db: Database) -> None:
    """A peer that delivered, crashed before recording it, and sent it again."""
    add_user(db.engine, CAROL)
    enqueue(db.engine, [CAROL], route="local", transfer_id="T1@peer")
    enqueue(db.engine, [CAROL], route="local", transfer_id="T1@peer")

    rows = q.claim(db.engine, "w1", 60, 10)
    for row in rows:
        assert q.deliver_local(db.engine, row, "w1", CONTENT, f"t:{row.transfer_id}")

    assert len(rows) == 2
    assert inbox(db.engine, CAROL) == [(1, CONTENT)]
    assert uidnext(db.engine, CAROL) == 2
    assert q.depth_by_state(db.engine)["delivered"] == 2


def test_release_leases_of_returns_active_rows_of_dead_owners(db: Database) -> None:
    enqueue(db.engine, remote("bob", "dave", "erin"))
    first, second, third = q.claim(db.engine, "dead:1", 60, 10)
    assert q.mark_delivered(db.engine, third, "dead:1", "250 ok")
    # Even a final row that still names the dead owner keeps its outcome.
    set_row(db.engine, third.id, lease_owner="dead:1", lease_until=time.time() + 60)
    enqueue(db.engine, remote("frank"))
    (alive,) = q.claim(db.engine, "live:2", 60, 10)
    assert set(q.lease_owners(db.engine)) == {"dead:1", "live:2"}

    assert q.release_leases_of(db.engine, ["dead:1"]) == 2

    for row in first, second:
        stored = read_row(db.engine, row.id)
        assert (stored.state, stored.lease_owner, stored.lease_until) == (
            "queued",
            None,
            None,
        )
    assert read_row(db.engine, third.id).state == "delivered"
    assert read_row(db.engine, alive.id).lease_owner == "live:2"
    assert q.release_leases_of(db.engine, []) == 0

    again = q.claim(db.engine, "new:3", 60, 10)
    assert [(row.id, row.attempts) for row in again] == [(first.id, 2), (second.id, 2)]


# -- administration --------------------------------------------------------------------


def test_hold_keeps_rows_from_delivery_until_released(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob", "dave"))
    (leased, _) = q.claim(db.engine, "w1", 60, 10)

    with db.engine.begin() as connection:
        assert q.hold(connection, message_id) == 2
    assert q.claim(db.engine, "w2", 60, 10) == []
    assert not q.mark_delivered(db.engine, leased, "w1", "250 ok")  # held, not ours

    with db.engine.begin() as connection:
        assert q.release(connection, message_id) == 2
        rows = q.rows_of(connection, message_id)
    assert {row.state for row in rows} == {"queued"}
    assert all(row.next_attempt_at <= time.time() for row in rows)
    assert len(q.claim(db.engine, "w2", 60, 10)) == 2


def test_retry_makes_deferred_rows_due_now(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob"))
    (row,) = q.claim(db.engine, "w1", 60, 10)
    assert q.mark_deferred(
        db.engine, row, "w1", "4.4.1", "no answer", time.time() + 3600
    )
    assert q.claim(db.engine, "w1", 60, 10) == []

    with db.engine.begin() as connection:
        assert q.retry(connection, message_id) == 1

    (again,) = q.claim(db.engine, "w1", 60, 10)
    assert (again.id, again.attempts) == (row.id, 2)


def test_remove_deletes_the_message_and_its_rows(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob", "dave"))
    other = enqueue(db.engine, remote("erin"))

    with db.engine.begin() as connection:
        assert q.remove(connection, message_id) == 2

    assert q.load_content(db.engine, message_id) is None
    assert row_ids(db.engine, message_id) == []
    assert count(db.engine, messages) == 1
    assert len(row_ids(db.engine, other)) == 1


def test_unknown_message_is_a_queue_error(db: Database) -> None:
    message_id = enqueue(db.engine, remote("bob"))

    for change in q.hold, q.release, q.retry, q.remove:
        with (
            pytest.raises(q.QueueError, match="NOSUCHID"),
            db.engine.begin() as connection,
        ):
            change(connection, "NOSUCHID")

    assert len(row_ids(db.engine, message_id)) == 1


def test_depth_by_state_and_oldest_deferred(db: Database) -> None:
    assert q.depth_by_state(db.engine) == dict.fromkeys(q.STATES, 0)
    assert q.oldest_deferred(db.engine) is None

    older = enqueue(db.engine, remote("bob"))
    enqueue(db.engine, remote("dave"))
    enqueue(db.engine, remote("erin", "frank"))
    rows = {
        row.recipient.partition("@")[0]: row for row in q.claim(db.engine, "w1", 60, 10)
    }
    for name in "bob", "dave":
        assert q.mark_deferred(
            db.engine, rows[name], "w1", "4.4.1", "no answer", time.time() + 3600
        )
    assert q.mark_delivered(db.engine, rows["erin"], "w1", "250 ok")
    assert q.mark_failed(db.engine, rows["frank"], "w1", "5.1.1", "550 no", None)
    enqueue(db.engine, remote("gina", "hugo"))
    enqueue(db.engine, remote("ivan"), hold=True)
    set_row(db.engine, rows["bob"].id, created_at=time.time() - 100)

    assert q.depth_by_state(db.engine) == {
        "queued": 2,
        "deferred": 2,
        "held": 1,
        "delivered": 1,
        "failed": 1,
    }
    oldest = q.oldest_deferred(db.engine)
    assert oldest is not None
    assert (oldest.message_id, oldest.recipient, oldest.last_status) == (
        older,
        f"bob@{PEER}",
        "4.4.1",
    )


# -- audit -----------------------------------------------------------------------------


def _record_five(engine: Engine) -> list[int]:
    for n in range(5):
        audit.record_now(
            engine,
            "admin",
            "queue.hold",
            f"M{n}",
            {"n": n},
            client_addr="192.0.2.7" if n % 2 else None,
        )
    return [event.id for event in audit.list_events(engine)]


def test_audit_chain_verifies_when_untouched(db: Database) -> None:
    ids = _record_five(db.engine)

    assert audit.verify(db.engine) == (True, 5, None)
    events = audit.list_events(db.engine)
    assert [e.target for e in events] == [f"M{n}" for n in range(5)]
    assert events[3].detail == {"n": 3} and events[3].client_addr == "192.0.2.7"
    assert ids == sorted(ids)


def _alter_detail(connection: Connection, ids: list[int]) -> tuple[int, int]:
    connection.execute(
        text("UPDATE audit_events SET detail = :d WHERE id = :id"),
        {"d": '{"n": 99}', "id": ids[2]},
    )
    return 2, ids[2]


def _delete_middle(connection: Connection, ids: list[int]) -> tuple[int, int]:
    connection.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[2]})
    return 2, ids[3]


def _swap_ids(connection: Connection, ids: list[int]) -> tuple[int, int]:
    swap = text("UPDATE audit_events SET id = :new WHERE id = :old")
    connection.execute(swap, {"new": 1_000_000, "old": ids[1]})
    connection.execute(swap, {"new": ids[1], "old": ids[2]})
    connection.execute(swap, {"new": ids[2], "old": 1_000_000})
    return 1, ids[1]


def _change_time(connection: Connection, ids: list[int]) -> tuple[int, int]:
    connection.execute(
        text("UPDATE audit_events SET at = at - 60 WHERE id = :id"), {"id": ids[3]}
    )
    return 3, ids[3]


@pytest.mark.parametrize(
    "tamper",
    [_alter_detail, _delete_middle, _swap_ids, _change_time],
    ids=lambda f: f.__name__[1:],
)
def test_audit_verify_names_the_first_tampered_event(
    db: Database, tamper: Callable[[Connection, list[int]], tuple[int, int]]
) -> None:
    ids = _record_five(db.engine)

    with db.engine.begin() as connection:
        checked, bad = tamper(connection, ids)

    assert audit.verify(db.engine) == (False, checked, bad)


# -- accounts --------------------------------------------------------------------------


def test_add_user_creates_the_default_mailboxes(db: Database) -> None:
    user = add_user(db.engine, "Alice@Ministry.gov.example")

    query = (
        select(
            mailboxes.c.name,
            mailboxes.c.special_use,
            mailboxes.c.uidvalidity,
            mailboxes.c.uidnext,
            mailboxes.c.subscribed,
        )
        .where(mailboxes.c.user_id == user.id)
        .order_by(mailboxes.c.id)
    )
    with db.engine.connect() as connection:
        boxes = connection.execute(query).all()

    assert user.address == ALICE
    assert [(b.name, b.special_use) for b in boxes] == [
        ("INBOX", None),
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Archive", "\\Archive"),
        ("Junk", "\\Junk"),
    ]
    validities = [b.uidvalidity for b in boxes]
    assert len(set(validities)) == 6
    assert all(0 < v < 2**32 for v in validities)
    assert all(b.uidnext == 1 and b.subscribed for b in boxes)


def test_adding_a_user_twice_is_an_account_error(db: Database) -> None:
    add_user(db.engine, ALICE)

    with pytest.raises(accounts.AccountError, match="already exists"):
        add_user(db.engine, ALICE.upper())

    assert accounts.count_users(db.engine) == 1


def test_a_local_domain_cannot_become_a_peer(db: Database) -> None:
    with db.engine.begin() as connection:
        accounts.put_domain(connection, LOCAL, role="local", encryption="none")

    with pytest.raises(accounts.AccountError), db.engine.begin() as connection:
        accounts.put_domain(connection, LOCAL, role="peer")

    with db.engine.connect() as connection:
        domain = accounts.get_domain(connection, LOCAL)
    assert domain is not None
    assert (domain.role, domain.encryption) == ("local", "none")


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    """The database holds password hashes: only its owner may read it."""
    path = tmp_path / "fresh" / "beepmail.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
    finally:
        db.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700

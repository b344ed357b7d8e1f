"""The store under the IMAP server (store.mailstore), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from beep_mail.store import accounts, mailstore
from beep_mail.store import queue as queue_store
from beep_mail.store.engine import Database
from beep_mail.store.mailstore import MailboxExists, MailboxNotFound, MailboxRefused
from beep_mail.store.tables import mailbox_entries


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    yield database
    database.close()


def user(db: Database, name: str) -> int:
    with db.engine.begin() as connection:
        return accounts.add_user(connection, f"{name}@ministry.example", name, "x").id


def names(db: Database, user_id: int) -> list[str]:
    return [row.name for row in mailstore.list_mailboxes(db.engine, user_id)]


def add(db: Database, user_id: int, box: str = "INBOX", text: bytes = b"m",
        flags: tuple[str, ...] = ()) -> int:
    return mailstore.append(db.engine, user_id, box, text, len(text), flags, 1.0e9)[1]


def box_id(db: Database, user_id: int, name: str) -> int:
    found = mailstore.get_mailbox(db.engine, user_id, name)
    assert found is not None
    return found.id


def test_create_delete_and_uidvalidity(db: Database) -> None:
    anna = user(db, "anna")
    assert names(db, anna) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    created = mailstore.create_mailbox(db.engine, anna, "Projects/2024/Q1")
    assert {"Projects", "Projects/2024", "Projects/2024/Q1"} <= set(names(db, anna))
    with pytest.raises(MailboxExists):
        mailstore.create_mailbox(db.engine, anna, "Projects")
    mailstore.delete_mailbox(db.engine, anna, "Projects/2024/Q1")
    again = mailstore.create_mailbox(db.engine, anna, "Projects/2024/Q1")
    # A name used again, even within the same second, gets a new UIDVALIDITY.
    assert again.uidvalidity > created.uidvalidity
    with pytest.raises(MailboxRefused):
        mailstore.delete_mailbox(db.engine, anna, "INBOX")
    with pytest.raises(MailboxNotFound):
        mailstore.delete_mailbox(db.engine, anna, "Nowhere")


def test_rename_moves_inferiors_and_inbox_is_special(db: Database) -> None:
    anna = user(db, "anna")
    mailstore.create_mailbox(db.engine, anna, "Work/Old_1")
    mailstore.create_mailbox(db.engine, anna, "Workshop")
    mailstore.rename_mailbox(db.engine, anna, "Work", "Done/Work")
    assert {"Done", "Done/Work", "Done/Work/Old_1", "Workshop"} <= set(names(db, anna))
    assert "Work" not in names(db, anna)
    with pytest.raises(MailboxRefused):
        mailstore.rename_mailbox(db.engine, anna, "Done", "Done/Inside")
    with pytest.raises(MailboxExists):
        mailstore.rename_mailbox(db.engine, anna, "Done", "Sent")

    inbox = mailstore.get_mailbox(db.engine, anna, "INBOX")
    assert inbox is not None
    first, second = add(db, anna), add(db, anna)
    mailstore.rename_mailbox(db.engine, anna, "INBOX", "Before 2025")
    moved = mailstore.get_mailbox(db.engine, anna, "Before 2025")
    after = mailstore.get_mailbox(db.engine, anna, "INBOX")
    assert moved is not None and after is not None
    assert [uid for uid, _, _ in mailstore.view(db.engine, anna, moved.id).entries] == [
        first, second]
    # The messages keep their mod-sequences; INBOX, having lost them, goes on.
    assert moved.highestmodseq == inbox.highestmodseq + 2
    assert after.highestmodseq == moved.highestmodseq + 1
    assert moved.uidnext == inbox.uidnext + 2
    # INBOX stays, empty, and never hands out those UIDs again.
    assert mailstore.view(db.engine, anna, after.id).entries == []
    assert (after.uidvalidity, after.uidnext) == (inbox.uidvalidity, second + 1)
    assert add(db, anna) == second + 1


def test_uids_copy_and_move(db: Database) -> None:
    anna = user(db, "anna")
    uids = [add(db, anna, text=b"message %d" % n, flags=("\\Seen",)) for n in range(4)]
    assert uids == [1, 2, 3, 4]
    inbox = box_id(db, anna, "INBOX")
    copied = mailstore.copy(db.engine, anna, inbox, [2, 4, 99], "Archive")
    assert (copied.source, copied.target) == ([2, 4], [1, 2])
    archive = box_id(db, anna, "Archive")
    assert mailstore.contents(db.engine, anna, archive, [1, 2]) == {
        1: b"message 1", 2: b"message 3"}
    # One COPY, one mod-sequence for the messages it made.
    assert mailstore.view(db.engine, anna, archive).entries == [(1, "\\Seen", 2),
                                                                 (2, "\\Seen", 2)]
    moved = mailstore.copy(db.engine, anna, inbox, [1, 3], "Archive", move=True)
    assert moved.target == [3, 4]
    assert [u for u, _, _ in mailstore.view(db.engine, anna, inbox).entries] == [2, 4]
    assert [m for _, _, m in mailstore.view(db.engine, anna, archive).entries] == [
        2, 2, 3, 3]
    with pytest.raises(MailboxNotFound):
        mailstore.copy(db.engine, anna, inbox, [2], "Nowhere")
    with pytest.raises(MailboxRefused):
        mailstore.copy(db.engine, anna, inbox, [2], "INBOX", move=True)


def test_move_keeps_the_delivery_key(db: Database) -> None:
    anna = user(db, "anna")
    with db.engine.begin() as connection:
        assert queue_store.store_in_inbox(connection, "anna@ministry.example", b"m",
                                          "t:once")
    inbox = box_id(db, anna, "INBOX")
    mailstore.copy(db.engine, anna, inbox, [1], "Archive", move=True)
    with db.engine.begin() as connection:
        # The same transfer delivered again is still recognised.
        assert not queue_store.store_in_inbox(connection, "anna@ministry.example",
                                              b"m", "t:once")


def test_flags_in_one_statement_per_set(db: Database) -> None:
    anna = user(db, "anna")
    for _ in range(5):
        add(db, anna, flags=("$Work",))
    inbox = box_id(db, anna, "INBOX")
    added = mailstore.store_flags(db.engine, anna, inbox, [(1, 3)], "+",
                                  ["\\Seen", "$Work", "\\Flagged"])
    assert added.flags == {1: "$Work \\Seen \\Flagged", 2: "$Work \\Seen \\Flagged",
                           3: "$Work \\Seen \\Flagged"}
    removed = mailstore.store_flags(db.engine, anna, inbox, [(2, 2), (4, 5)], "-",
                                    ["$Work", "\\seen"])
    assert removed.flags == {2: "\\Seen \\Flagged", 4: "", 5: ""}
    assert mailstore.store_flags(db.engine, anna, inbox, [(5, 5)], "",
                                 ["\\Draft", "\\Draft"]).flags == {5: "\\Draft"}
    # "$Work_" is not "$Work", and "_" is no wildcard.
    mailstore.store_flags(db.engine, anna, inbox, [(1, 1)], "-", ["$Wor_"])
    assert mailstore.view(db.engine, anna, inbox).entries[0][1] == (
        "$Work \\Seen \\Flagged")
    with pytest.raises(mailstore.FlagsTooLong):
        mailstore.store_flags(db.engine, anna, inbox, [(1, 1)], "+", ["$" + "x" * 990])
    box = mailstore.get_mailbox(db.engine, anna, "INBOX")
    assert box is not None
    assert mailstore.counts(db.engine, anna, "INBOX") == mailstore.Counts(
        5, 2, 6, box.uidvalidity, box.highestmodseq)


def test_many_ranges_in_one_request(db: Database) -> None:
    anna = user(db, "anna")
    inbox = box_id(db, anna, "INBOX")
    with db.engine.begin() as connection:
        connection.execute(mailbox_entries.insert(), [
            {"mailbox_id": inbox, "user_id": anna, "uid": uid, "internal_date": 0,
             "size": 1, "flags": "", "content": b"m"} for uid in range(1, 3001)])
    odd = [(uid, uid) for uid in range(1, 3001, 2)]
    changed = mailstore.store_flags(db.engine, anna, inbox, odd, "+", ["\\Deleted"])
    assert len(changed.flags) == len(changed.modseqs) == 1500
    assert len(mailstore.entries(db.engine, anna, inbox, odd)) == 1500
    assert mailstore.expunge(db.engine, anna, inbox, odd[:10]) == list(range(1, 20, 2))
    assert len(mailstore.expunge(db.engine, anna, inbox)) == 1490


def test_everything_is_the_users_own(db: Database) -> None:
    anna, bob = user(db, "anna"), user(db, "bob")
    add(db, anna, flags=("\\Deleted",))
    annas = box_id(db, anna, "INBOX")
    assert mailstore.view(db.engine, bob, annas).mailbox is None
    assert mailstore.contents(db.engine, bob, annas, [1]) == {}
    assert mailstore.entries(db.engine, bob, annas, [(1, 10)]) == []
    assert mailstore.store_flags(db.engine, bob, annas, [(1, 10)], "", []).flags == {}
    assert mailstore.expunge(db.engine, bob, annas) == []
    assert mailstore.copy(db.engine, bob, annas, [1], "INBOX").source == []
    assert mailstore.get_mailbox(db.engine, bob, "INBOX").id != annas  # type: ignore[union-attr]
    assert [u for u, _, _ in mailstore.view(db.engine, anna, annas).entries] == [1]


def test_unsettled_entries(db: Database) -> None:
    anna = user(db, "anna")
    inbox = box_id(db, anna, "INBOX")
    mailstore.append(db.engine, anna, "INBOX", b"x" * 15, 5, (), 0, b"summary")  # settled
    mailstore.append(db.engine, anna, "INBOX", b"sealed-for", 99, (), 0)
    found = mailstore.unsettled(db.engine, anna, inbox, 0, 0, 10)
    assert [content for _, content in found] == [b"sealed-for"]
    assert mailstore.unsettled(db.engine, anna, inbox, 2, 0, 10) == []
    mailstore.reseal(db.engine, anna,
                     [mailstore.Settled(found[0][0], b"y" * 17, 7, b"its summary")])
    assert mailstore.unsettled(db.engine, anna, inbox, 0, 0, 10) == []
    metas = mailstore.entries(db.engine, anna, inbox, [(1, 2)], summaries=True)
    assert [(m.size, m.summary) for m in metas] == [(5, b"summary"), (7, b"its summary")]
    assert mailstore.entries(db.engine, anna, inbox, [(1, 2)])[0].summary is None


def test_mod_sequences_grow_with_every_change_and_only_then(db: Database) -> None:
    anna = user(db, "anna")
    inbox = box_id(db, anna, "INBOX")

    def highest() -> int:
        return mailstore.counts(db.engine, anna, "INBOX").highestmodseq

    start = highest()
    for _ in range(3):
        add(db, anna)
    assert [m for _, _, m in mailstore.view(db.engine, anna, inbox).entries] == [
        start + 1, start + 2, start + 3]
    seen = mailstore.store_flags(db.engine, anna, inbox, [(1, 2)], "+", ["\\Seen"])
    assert seen.modseqs == {1: start + 4, 2: start + 4} and highest() == start + 4
    # Adding a flag a message already has changes nothing, and takes nothing.
    again = mailstore.store_flags(db.engine, anna, inbox, [(1, 2)], "+", ["\\Seen"])
    assert again.modseqs == {} and set(again.flags) == {1, 2}
    assert highest() == start + 4
    # UNCHANGEDSINCE: message 3 (changed at start + 3) passes at start + 3;
    # messages 1 and 2 (changed at start + 4) fail and stay as they were.
    guarded = mailstore.store_flags(db.engine, anna, inbox, [(1, 3)], "+", ["$Done"],
                                    unchanged_since=start + 3)
    assert guarded.modified == [1, 2]
    assert guarded.modseqs == {3: start + 5}
    assert [f for _, f, _ in mailstore.view(db.engine, anna, inbox).entries] == [
        "\\Seen", "\\Seen", "$Done"]
    # An expunge takes one too, though no message is left to carry it.
    mailstore.store_flags(db.engine, anna, inbox, [(3, 3)], "+", ["\\Deleted"])
    assert mailstore.expunge(db.engine, anna, inbox) == [3]
    assert highest() == start + 7
    assert mailstore.expunge(db.engine, anna, inbox) == [] and highest() == start + 7


def test_delivery_takes_a_mod_sequence(db: Database) -> None:
    anna = user(db, "anna")
    before = mailstore.counts(db.engine, anna, "INBOX").highestmodseq
    with db.engine.begin() as connection:
        assert queue_store.store_in_inbox(connection, "anna@ministry.example", b"m", "k")
    inbox = box_id(db, anna, "INBOX")
    assert mailstore.view(db.engine, anna, inbox).entries == [(1, "", before + 1)]
    assert mailstore.counts(db.engine, anna, "INBOX").highestmodseq == before + 1

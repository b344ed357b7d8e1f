"""The records archive as a library, on both stores: chain, checkpoints,
retention and hold, export, and the audit trail's expiring client addresses.

Tampering is done as an intruder with database access would do it: plain SQL
on the rows, then `verify_archive` must name the first entry that is wrong.
"""

from __future__ import annotations

import json
import mailbox
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from beep_mail import keyring
from beep_mail.archive import checkpoint, journal, retention
from beep_mail.archive.export import MBOX, TOMBSTONES, eml_name, export
from beep_mail.archive.journal import ArchiveError
from beep_mail.archive.search import Selection, search
from beep_mail.archive.verify import MANIFEST, verify_archive, verify_export
from beep_mail.config import Settings
from beep_mail.crypto import openpgp
from beep_mail.store import audit
from beep_mail.store import keys as key_store
from beep_mail.store import queue as store_queue
from beep_mail.store.engine import Database
from beep_mail.store.tables import archive_entries, audit_events, messages

DOMAIN = "ministry.gov.example"
PEER = "peer.gov.example"
RECORDS = openpgp.generate("Records office", f"records@{DOMAIN}", passphrase="records")
RECORDS_KEY = RECORDS.unlock("records")
DOMAIN_SECRET = openpgp.generate("gateway", f"postmaster@{DOMAIN}", passphrase="site")
DOMAIN_KEY = DOMAIN_SECRET.unlock("site")
DAY = 86400.0


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    with database.engine.begin() as connection:
        keyring.store_secret(connection, "domain", DOMAIN, DOMAIN_SECRET)
        key_store.add_key(
            connection,
            kind="records",
            owner=key_store.RECORDS_OWNER,
            fingerprint=RECORDS.public.fingerprint,
            public_key=RECORDS.public.armored,
        )
    yield database
    database.close()


def message(n: int, body: str = "") -> bytes:
    return (
        f"From: anna@{DOMAIN}\r\nTo: bo@{PEER}\r\nSubject: minutes {n}\r\n"
        f"Message-ID: <m{n}@{DOMAIN}>\r\n\r\n{body or f'Item {n}.'}\r\n"
    ).encode()


def journal_one(
    engine: Engine,
    content: bytes,
    n: int,
    *,
    at: float | None = None,
    retain: float | None = None,
    sender: str = f"anna@{DOMAIN}",
) -> int:
    at = time.time() if at is None else at
    with engine.connect() as connection:
        key = journal.records_key(connection)
    sealed = journal.seal(content, key)
    with engine.begin() as connection:
        return journal.append(
            connection,
            sealed,
            direction="outbound",
            queue_id=f"Q{n}",
            mail_from=sender,
            recipients=[f"bo@{PEER}", f"cy@{PEER}"],
            message_id_header=f"<m{n}@{DOMAIN}>",
            decision="encrypted",
            at=at,
            retain_until=at + 10 * DAY if retain is None else retain,
        )


def journal_many(
    engine: Engine,
    count: int = 5,
    *,
    at: float | None = None,
    retain: float | None = None,
) -> list[bytes]:
    contents = [message(n) for n in range(1, count + 1)]
    for n, content in enumerate(contents, 1):
        journal_one(engine, content, n, at=at, retain=retain)
    return contents


def problem(
    engine: Engine, kept: checkpoint.CheckpointRecord | None = None
) -> tuple[str, int | None] | None:
    report = verify_archive(engine, kept)
    return None if report.problem is None else (report.problem.kind, report.problem.seq)


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), params)


# -- the chain -------------------------------------------------------------------------


def test_an_intact_archive_verifies(db: Database) -> None:
    journal_many(db.engine)

    report = verify_archive(db.engine)
    assert report.ok and report.entries == 5 and report.purged == 0
    with db.engine.connect() as connection:
        last = connection.execute(
            select(archive_entries.c.hash).where(archive_entries.c.seq == 5)
        ).scalar()
    assert report.head_hash == last


def test_an_empty_archive_verifies_and_needs_a_records_key(db: Database) -> None:
    report = verify_archive(db.engine)
    assert report.ok and report.entries == 0 and report.head_hash == journal.GENESIS

    sql(db.engine, "UPDATE keys SET state = 'retired' WHERE kind = 'records'")
    with db.engine.connect() as connection, pytest.raises(ArchiveError):
        journal.records_key(connection)


def test_the_archive_holds_ciphertext_the_records_key_opens(db: Database) -> None:
    contents = journal_many(db.engine, 1)

    with db.engine.connect() as connection:
        row = connection.execute(select(archive_entries)).one()
    assert b"minutes" not in row.content
    assert openpgp.decrypt(row.content, [RECORDS_KEY]).plaintext == contents[0]
    assert json.loads(row.recipients) == [f"bo@{PEER}", f"cy@{PEER}"]


def _alter_field(engine: Engine) -> tuple[str, int]:
    sql(
        engine,
        "UPDATE archive_entries SET mail_from = 'mallory@x.example' WHERE seq = 3",
    )
    return "altered", 3


def _alter_content(engine: Engine) -> tuple[str, int]:
    other = journal.seal(b"Subject: forged\r\n\r\nforged\r\n", RECORDS.public)
    sql(
        engine,
        "UPDATE archive_entries SET content = :c WHERE seq = 2",
        c=other.ciphertext,
    )
    return "altered", 2


def _alter_and_rehash(engine: Engine) -> tuple[str, int]:
    with engine.begin() as connection:
        row = connection.execute(
            select(archive_entries).where(archive_entries.c.seq == 3)
        ).one()
        forged = journal.entry_hash(
            row.prev_hash,
            3,
            row.at,
            row.direction,
            row.queue_id,
            "mallory@x.example",
            row.recipients,
            row.message_id_header,
            row.size,
            row.sha256,
            row.decision,
            row.content_sha256,
        )
        connection.execute(
            update(archive_entries)
            .where(archive_entries.c.seq == 3)
            .values(mail_from="mallory@x.example", hash=forged)
        )
    return "altered", 3


def _drop_content(engine: Engine) -> tuple[str, int]:
    sql(engine, "UPDATE archive_entries SET content = NULL WHERE seq = 4")
    return "altered", 4


def _fake_purge(engine: Engine) -> tuple[str, int]:
    sql(
        engine, "UPDATE archive_entries SET content = NULL, purged_at = 1 WHERE seq = 2"
    )
    return "altered", 2


def _delete_middle(engine: Engine) -> tuple[str, int]:
    sql(engine, "DELETE FROM archive_entries WHERE seq = 3")
    return "removed", 3


def _delete_first(engine: Engine) -> tuple[str, int]:
    sql(engine, "DELETE FROM archive_entries WHERE seq = 1")
    return "removed", 1


def _delete_and_renumber(engine: Engine) -> tuple[str, int]:
    sql(engine, "DELETE FROM archive_entries WHERE seq = 2")
    for seq in (3, 4, 5):
        sql(
            engine,
            "UPDATE archive_entries SET seq = :new WHERE seq = :old",
            new=seq - 1,
            old=seq,
        )
    return "removed", 2


def _swap(engine: Engine) -> tuple[str, int]:
    move = "UPDATE archive_entries SET seq = :new WHERE seq = :old"
    sql(engine, move, new=1000, old=2)
    sql(engine, move, new=2, old=4)
    sql(engine, move, new=4, old=1000)
    return "out-of-order", 2


@pytest.mark.parametrize(
    "tamper",
    [
        _alter_field,
        _alter_content,
        _alter_and_rehash,
        _drop_content,
        _fake_purge,
        _delete_middle,
        _delete_first,
        _delete_and_renumber,
        _swap,
    ],
    ids=lambda f: f.__name__[1:],
)
def test_verify_names_the_first_tampered_entry(
    db: Database, tamper: Callable[[Engine], tuple[str, int]]
) -> None:
    journal_many(db.engine)

    expected = tamper(db.engine)

    assert problem(db.engine) == expected
    report = verify_archive(db.engine)
    assert report.problem is not None
    assert f"archive entry {expected[1]} " in report.problem.message


# -- checkpoints -----------------------------------------------------------------------


def kept_checkpoint(engine: Engine) -> checkpoint.CheckpointRecord:
    """A checkpoint as the records office keeps it: rendered text, read back."""
    made = checkpoint.make_checkpoint(engine, DOMAIN_KEY, actor="test")
    return checkpoint.parse(checkpoint.render(made))


def test_a_checkpoint_renders_parses_and_verifies(db: Database) -> None:
    journal_many(db.engine)
    made = checkpoint.make_checkpoint(db.engine, DOMAIN_KEY, actor="test")

    text_ = checkpoint.render(made)
    kept = checkpoint.parse(text_)

    assert (kept.entries, kept.head_hash, kept.at, kept.signer) == (
        5,
        made.head_hash,
        made.at,
        DOMAIN_KEY.public.fingerprint,
    )
    assert f"Entries: 5\nHead: {made.head_hash}\n" in text_
    assert checkpoint.latest(db.engine) == made
    report = verify_archive(db.engine, kept)
    assert report.ok and report.checkpoints == 1 and report.against == kept


def test_a_kept_checkpoint_with_another_count_fails_its_signature(db: Database) -> None:
    journal_many(db.engine)
    rendered = checkpoint.render(checkpoint.make_checkpoint(db.engine, DOMAIN_KEY))

    forged = checkpoint.parse(rendered.replace("Entries: 5", "Entries: 4"))

    assert problem(db.engine, forged) == ("checkpoint", None)


def test_checkpoints_catch_a_tail_cut(db: Database) -> None:
    journal_many(db.engine)
    kept = kept_checkpoint(db.engine)

    sql(db.engine, "DELETE FROM archive_entries WHERE seq >= 4")
    assert problem(db.engine) == ("tail-cut", 4)  # by the stored checkpoint

    sql(db.engine, "DELETE FROM archive_checkpoints")
    assert problem(db.engine) is None  # the chain alone cannot tell
    assert problem(db.engine, kept) == ("tail-cut", 4)
    report = verify_archive(db.engine, kept)
    assert report.problem is not None
    assert "tail cut behind checkpoint" in report.problem.message


def test_a_kept_checkpoint_catches_a_rollback(db: Database) -> None:
    journal_many(db.engine)
    kept = kept_checkpoint(db.engine)

    sql(db.engine, "DELETE FROM archive_entries WHERE seq >= 4")
    sql(db.engine, "DELETE FROM archive_checkpoints")
    for n in (14, 15, 16):
        journal_one(db.engine, message(n), n)

    assert problem(db.engine) is None
    assert problem(db.engine, kept) == ("tail-cut", 5)


def test_an_older_checkpoint_by_a_retired_key_verifies(db: Database) -> None:
    journal_many(db.engine, 2)
    kept = kept_checkpoint(db.engine)
    journal_many(db.engine, 3)
    report = verify_archive(db.engine, kept)
    assert report.ok and report.entries == 5

    sql(db.engine, "UPDATE keys SET state = 'retired' WHERE kind = 'domain'")
    assert problem(db.engine, kept) is None

    sql(db.engine, "DELETE FROM keys WHERE kind = 'domain'")
    assert problem(db.engine, kept) == ("checkpoint", None)


# -- retention and hold ----------------------------------------------------------------


def test_purge_respects_hold_and_leaves_verifiable_tombstones(db: Database) -> None:
    now = time.time()
    journal_many(db.engine, 4, retain=now - 60)
    journal_one(db.engine, message(5), 5, retain=now + DAY)
    held = retention.hold(db.engine, Selection(seqs=(2,)), "case 12", "clerk")
    assert held.seqs == (2,)

    purged = retention.purge(db.engine, now, "gateway")

    assert purged.seqs == (1, 3, 4) and purged.skipped == 1
    with db.engine.connect() as connection:
        rows = {r.seq: r for r in connection.execute(select(archive_entries))}
    assert [s for s, r in rows.items() if r.content is None] == [1, 3, 4]
    assert rows[2].hold_reason == "case 12" and rows[3].purged_at == now
    report = verify_archive(db.engine)
    assert report.ok and report.purged == 3 and report.held == 1
    event = audit.list_events(db.engine, action="archive.purge")[-1]
    assert event.detail["count"] == 3 and event.detail["ranges"] == [[1, 1], [3, 4]]
    assert event.target == "1-4"

    released = retention.release(
        db.engine, Selection(message_id="m2@" + DOMAIN), "clerk"
    )
    assert released.seqs == (2,)
    assert retention.purge(db.engine, now, "gateway").seqs == (2,)
    assert verify_archive(db.engine).ok
    assert audit.verify(db.engine)[0]


def test_purge_dry_run_changes_nothing(db: Database) -> None:
    journal_many(db.engine, 2, retain=time.time() - 60)
    before = len(audit.list_events(db.engine))

    assert retention.purge(db.engine, time.time(), "t", dry_run=True).seqs == (1, 2)

    assert all(e.purged_at is None for e in search(db.engine, Selection()))
    assert len(audit.list_events(db.engine)) == before


def test_a_hold_needs_a_selection_and_a_reason_and_keeps_the_first(
    db: Database,
) -> None:
    journal_many(db.engine, 2)
    with pytest.raises(ArchiveError, match="name the entries"):
        retention.hold(db.engine, Selection(), "case", "clerk")
    with pytest.raises(ArchiveError, match="reason"):
        retention.hold(db.engine, Selection(seqs=(1,)), "  ", "clerk")

    retention.hold(db.engine, Selection(seqs=(1,)), "case 1", "clerk")

    second = retention.hold(db.engine, Selection(ranges=((1, 2),)), "case 2", "clerk")

    assert second.seqs == (2,) and second.skipped == 1
    reasons = [e.hold_reason for e in search(db.engine, Selection())]
    assert reasons == ["case 1", "case 2"]


def settings(**archive: object) -> Settings:
    return Settings.model_validate({"archive": archive})


RULES = {
    f"{PEER}:inbound": 100,
    f"{PEER}:*": 200,
    "*:inbound": 300,
    "*:*": 400,
    "other.gov.example:outbound": 500,
}


@pytest.mark.parametrize(
    ("rules", "direction", "domains", "days"),
    [
        (RULES, "inbound", [PEER], 100),
        (RULES, "outbound", [PEER], 200),
        (RULES, "inbound", ["third.gov.example"], 300),
        (RULES, "outbound", ["third.gov.example"], 400),
        (RULES, "outbound", [PEER, "other.gov.example"], 500),  # the longest wins
        (RULES, "local", [], 400),
        ({}, "inbound", [PEER], 3650),
        ({"Peer.Gov.Example:Inbound": 7}, "inbound", ["peer.gov.example"], 7),
    ],
)
def test_retention_rule_precedence(
    rules: dict[str, int], direction: str, domains: list[str], days: int
) -> None:
    found = journal.retain_until(settings(retention=rules), direction, domains, 1000.0)
    assert found == 1000.0 + days * DAY


# -- search ----------------------------------------------------------------------------


def test_search_by_metadata(db: Database) -> None:
    journal_many(db.engine, 3, at=1_700_000_000.0)
    journal_one(db.engine, message(4), 4, at=1_800_000_000.0, sender=f"eve@{DOMAIN}")

    def seqs(**criteria: Any) -> list[int]:
        return [e.seq for e in search(db.engine, Selection(**criteria))]

    assert seqs() == [1, 2, 3, 4]
    assert seqs(since=1_750_000_000.0) == [4]
    assert seqs(until=1_750_000_000.0) == [1, 2, 3]
    assert seqs(sender=f"EVE@{DOMAIN}") == [4]
    assert seqs(recipient=f"cy@{PEER}") == [1, 2, 3, 4]
    assert seqs(recipient="y@peer.gov.example") == []
    assert seqs(message_id=f"m2@{DOMAIN}") == [2]
    assert seqs(message_id=f"<m3@{DOMAIN}>") == [3]
    assert seqs(direction="inbound") == []
    assert seqs(seqs=(4,), ranges=((1, 2),)) == [1, 2, 4]
    assert [e.seq for e in search(db.engine, Selection(), limit=2)] == [1, 2]


# -- export ----------------------------------------------------------------------------


def test_export_mbox_opens_as_the_original_messages(
    db: Database, tmp_path: Path
) -> None:
    contents = journal_many(db.engine, 3)
    tricky = message(4, "From the minister:\r\n>From a quote\r\nno newline at the end")
    journal_one(db.engine, tricky, 4)
    out = tmp_path / "export"
    progress: list[tuple[int, int]] = []

    result = export(
        db.engine, RECORDS_KEY, out, progress=lambda d, t: progress.append((d, t))
    )

    assert result.messages == 4 and progress[-1] == (4, 4)
    box = mailbox.mbox(out / MBOX)
    found = [box.get_bytes(key) for key in box.iterkeys()]
    assert found[:3] == [c.replace(b"\r\n", b"\n") for c in contents]
    assert found[3].endswith(
        b"\n\n>From the minister:\n>>From a quote\nno newline at the end\n"
    )
    assert box[box.keys()[0]]["Subject"] == "minutes 1"
    assert box[box.keys()[0]].get_from().startswith(f"anna@{DOMAIN} ")
    box.close()
    manifest = (out / MANIFEST).read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in manifest) == [
        "INDEX.json",
        TOMBSTONES,
        MBOX,
    ]
    assert verify_export(out).ok


def test_export_eml_writes_each_message_as_archived(
    db: Database, tmp_path: Path
) -> None:
    contents = journal_many(db.engine, 3, retain=time.time() - 1)
    retention.hold(db.engine, Selection(seqs=(2,)), "case", "clerk")
    retention.purge(db.engine, time.time(), "gateway")
    out = tmp_path / "eml"

    result = export(db.engine, RECORDS_KEY, out, fmt="eml")

    assert (result.messages, result.tombstones) == (1, 2)
    assert (out / eml_name(2)).read_bytes() == contents[1]
    assert not (out / eml_name(1)).exists()
    tombstones = (out / TOMBSTONES).read_text().splitlines()
    assert [line.split("\t")[0] for line in tombstones if not line.startswith("#")] == [
        "1",
        "3",
    ]
    report = verify_export(out)
    assert report.ok and report.entries == 1


def _alter_file(out: Path) -> str:
    path = out / MBOX
    path.write_bytes(path.read_bytes().replace(b"minutes 2", b"minutes 9"))
    return f"export file {MBOX} was altered"


def _remove_file(out: Path) -> str:
    (out / "INDEX.json").unlink()
    return "export file INDEX.json is missing"


def _add_file(out: Path) -> str:
    (out / "extra.eml").write_bytes(b"Subject: slipped in\r\n\r\n")
    return "export file extra.eml is not in the manifest"


def test_a_tampered_export_fails_verification(db: Database, tmp_path: Path) -> None:
    journal_many(db.engine, 3)
    out = tmp_path / "export"
    export(db.engine, RECORDS_KEY, out)

    for tamper in (_alter_file, _remove_file, _add_file):
        copy = tmp_path / tamper.__name__
        shutil.copytree(out, copy)
        expected = tamper(copy)
        report = verify_export(copy)
        assert report.problem is not None and report.problem.message == expected


def test_export_refuses_an_entry_whose_plaintext_hash_differs(
    db: Database, tmp_path: Path
) -> None:
    journal_many(db.engine, 2)
    sql(db.engine, "UPDATE archive_entries SET sha256 = :s WHERE seq = 2", s="0" * 64)
    out = tmp_path / "export"

    with pytest.raises(ArchiveError, match="entry 2 does not match its SHA-256"):
        export(db.engine, RECORDS_KEY, out)
    assert not out.exists()


def test_export_with_another_key_fails_and_needs_an_empty_folder(
    db: Database, tmp_path: Path
) -> None:
    journal_many(db.engine, 1)
    with pytest.raises(ArchiveError, match="cannot be decrypted"):
        export(db.engine, DOMAIN_KEY, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(ArchiveError, match="not empty"):
        export(db.engine, RECORDS_KEY, tmp_path / "b")


# -- the audit trail's client addresses ------------------------------------------------


def raw_client_addrs(engine: Engine) -> list[str | None]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(audit_events.c.client_addr).order_by(audit_events.c.id)
            ).scalars()
        )


def test_client_addresses_expire_and_the_audit_chain_still_verifies(
    db: Database,
) -> None:
    long_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    for addr in ("192.0.2.7", None, long_v6):
        audit.record_now(db.engine, "smtp", "smtp.auth-ok", "anna", client_addr=addr)
    with db.engine.begin() as connection:
        store_queue.accept(
            connection,
            message_id="M1",
            direction="outbound",
            mail_from=f"anna@{DOMAIN}",
            content=b"x",
            recipients=[store_queue.NewRecipient(f"bo@{PEER}", PEER, "remote")],
            lifetime=60,
            client_addr="192.0.2.7",
        )
    stored = raw_client_addrs(db.engine)
    assert all(s is None or (s.startswith("v1:") and len(s) <= 64) for s in stored)
    assert [e.client_addr for e in audit.list_events(db.engine)] == [
        "192.0.2.7",
        None,
        long_v6,
    ]

    removed = audit.expire_client_addresses(db.engine, time.time() + 1)

    assert removed == 3  # two audit events and one message
    events = audit.list_events(db.engine)
    assert [e.client_addr for e in events[:3]] == [None, None, None]
    assert [e.client_addr_expired for e in events[:3]] == [True, False, True]
    assert events[-1].action == "privacy.expire-client-addresses"
    assert all("192.0.2.7" not in (s or "") for s in raw_client_addrs(db.engine))
    assert all(len(s) <= 64 for s in raw_client_addrs(db.engine) if s)
    with db.engine.connect() as connection:
        assert connection.execute(select(messages.c.client_addr)).scalar() is None
    assert audit.verify(db.engine) == (True, 4, None)
    assert audit.expire_client_addresses(db.engine, time.time() + 1) == 0


def test_a_changed_client_address_breaks_the_audit_chain(db: Database) -> None:
    audit.record_now(db.engine, "smtp", "smtp.auth-ok", "anna", client_addr="192.0.2.7")
    audit.record_now(db.engine, "smtp", "smtp.auth-ok", "anna", client_addr="192.0.2.8")
    first, second = raw_client_addrs(db.engine)
    assert first is not None and second is not None
    with db.engine.begin() as connection:
        forged = first.replace("192.0.2.7", "198.51.100.1")
        connection.execute(
            update(audit_events)
            .where(audit_events.c.client_addr == first)
            .values(client_addr=forged)
        )
    ids = [e.id for e in audit.list_events(db.engine)]

    assert audit.verify(db.engine) == (False, 0, ids[0])


def test_plain_client_addresses_of_earlier_releases_still_verify(
    db: Database,
) -> None:
    audit.record_now(db.engine, "smtp", "smtp.auth-ok", "anna")
    with db.engine.begin() as connection:
        row = connection.execute(select(audit_events)).one()
        digest = audit._digest(
            audit.GENESIS,
            row.at,
            row.actor,
            row.action,
            row.target,
            row.detail,
            "192.0.2.7",
        )
        connection.execute(
            update(audit_events).values(client_addr="192.0.2.7", hash=digest)
        )

    assert audit.verify(db.engine) == (True, 1, None)
    assert audit.list_events(db.engine)[0].client_addr == "192.0.2.7"

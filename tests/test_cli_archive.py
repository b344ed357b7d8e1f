"""`beepmail archive ...` and `beepmail audit ...` end to end, on SQLite.

Entries are journaled with the library, as the acceptance pipeline does; the
commands then run through Typer's runner as a clerk would type them.
"""

from __future__ import annotations

import json
import mailbox
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner, Result

from beep_mail.archive import journal
from beep_mail.cli.main import app
from beep_mail.crypto import openpgp
from beep_mail.store import keys as key_store
from beep_mail.store.engine import Database
from tests.support import LOCAL, PEER, Site, make_site

RECORDS_PASSPHRASE = "records office passphrase"
RECORDS = openpgp.generate(
    "Records office", f"records@{LOCAL}", passphrase=RECORDS_PASSPHRASE
)

runner = CliRunner()


def cli(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


def ok(*args: str, input: str | None = None) -> Result:
    result = cli(*args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def fails(*args: str, input: str | None = None) -> str:
    """Run a command that must be refused; the one-line message it gave."""
    result = cli(*args, input=input)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def as_json(*args: str, input: str | None = None) -> Any:
    return json.loads(ok(*args, "--json", input=input).stdout)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BEEPMAIL_* of the developer's shell."""
    for name in list(os.environ):
        if name.startswith("BEEPMAIL_") and not name.startswith("BEEPMAIL_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A site with a records key; BEEPMAIL_CONFIG names its settings file."""
    made = make_site(tmp_path / "site", sqlite_url)
    monkeypatch.setenv("BEEPMAIL_CONFIG", str(made.config_file))
    db = made.db()
    with db.engine.begin() as connection:
        key_store.add_key(
            connection,
            kind="records",
            owner=key_store.RECORDS_OWNER,
            fingerprint=RECORDS.public.fingerprint,
            public_key=RECORDS.public.armored,
        )
    db.close()
    return made


@pytest.fixture
def engine(site: Site) -> Iterator[Engine]:
    db = Database(site.settings().database_url)
    yield db.engine
    db.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The records secret key, as the records office keeps it."""
    path = tmp_path / "records-secret.asc"
    path.write_text(RECORDS.armored)
    return path


def message(n: int) -> bytes:
    return (
        f"From: anna@{LOCAL}\r\nTo: bo@{PEER}\r\nSubject: minutes {n}\r\n"
        f"Message-ID: <m{n}@{LOCAL}>\r\n\r\nItem {n}.\r\n"
    ).encode()


def journal_many(engine: Engine, count: int, *, expired: bool = False) -> None:
    with engine.connect() as connection:
        key = journal.records_key(connection)
    for n in range(1, count + 1):
        sealed = journal.seal(message(n), key)
        now = time.time()
        with engine.begin() as connection:
            journal.append(
                connection,
                sealed,
                direction="outbound",
                queue_id=f"Q{n}",
                mail_from=f"anna@{LOCAL}",
                recipients=[f"bo@{PEER}"],
                message_id_header=f"<m{n}@{LOCAL}>",
                decision="encrypted",
                retain_until=now - 60 if expired else now + 86400,
                at=now,
            )


def actions() -> list[str]:
    return [event["action"] for event in as_json("audit", "list", "--limit", "1000")]


# -- search --------------------------------------------------------------------------


def test_search_shows_metadata_only(site: Site, engine: Engine) -> None:
    journal_many(engine, 3)

    found = as_json("archive", "search")
    assert [e["seq"] for e in found] == [1, 2, 3]
    assert found[1]["message_id"] == f"<m2@{LOCAL}>"
    assert found[1]["recipients"] == [f"bo@{PEER}"] and found[1]["state"] == "kept"
    assert "content" not in found[0] and found[0]["at"].endswith("Z")

    by_id = ok("archive", "search", "--message-id", f"m2@{LOCAL}").stdout
    assert f"<m2@{LOCAL}>" in by_id and "<m1@" not in by_id
    assert (
        as_json("archive", "search", "--recipient", f"BO@{PEER}", "--limit", "2")[1][
            "seq"
        ]
        == 2
    )
    assert as_json("archive", "search", "--direction", "inbound") == []
    assert as_json("archive", "search", "2-3")[0]["seq"] == 2
    future = ok("archive", "search", "--since", "2100-01-01").stdout
    assert future.strip() == "No archive entries match."


# -- hold, purge, release --------------------------------------------------------------


def test_hold_purge_release_are_audited(site: Site, engine: Engine) -> None:
    journal_many(engine, 3, expired=True)

    held = ok("archive", "hold", "--reason", "case 12", "2").stdout
    assert held.strip() == "Held 1 entry (2); 0 already held."
    dry = as_json("archive", "purge", "--dry-run")
    assert dry == {
        "dry_run": True,
        "purged": 2,
        "ranges": [[1, 1], [3, 3]],
        "kept_by_hold": 1,
    }
    assert "Purged the content of 2 entries (1, 3)" in ok("archive", "purge").stdout
    assert as_json("archive", "search", "2")[0]["hold_reason"] == "case 12"

    assert ok("archive", "release", "--message-id", f"<m2@{LOCAL}>").stdout.strip() == (
        "Released 1 entry (2)."
    )
    assert as_json("archive", "purge")["purged"] == 1
    assert (
        "Archive intact: 3 entries (3 purged, 0 held)" in ok("archive", "verify").stdout
    )

    assert [a for a in actions() if a.startswith("archive.")] == [
        "archive.hold",
        "archive.purge",
        "archive.release",
        "archive.purge",
    ]
    events = as_json("audit", "list", "--action", "archive.hold")
    assert len(events) == 1 and events[0]["actor"].startswith("cli:")
    assert events[0]["detail"]["reason"] == "case 12"
    assert "Audit trail intact" in ok("audit", "verify").stdout


# -- checkpoint, export, verify --------------------------------------------------------


def test_checkpoint_export_and_verify(
    site: Site, engine: Engine, key_file: Path, tmp_path: Path
) -> None:
    journal_many(engine, 3)

    rendered = ok("archive", "checkpoint").stdout
    assert "Entries: 3" in rendered and "BEGIN PGP SIGNATURE" in rendered
    assert ok("archive", "checkpoint").stdout == rendered  # the latest, not a new one
    kept = tmp_path / "checkpoint.txt"
    kept.write_text(rendered)
    journal_many(engine, 1)
    assert as_json("archive", "checkpoint", "--new")["entries"] == 4

    verified = ok("archive", "verify", "--checkpoint", str(kept)).stdout
    assert "Archive intact: 4 entries" in verified and "kept checkpoint" in verified
    assert as_json("archive", "verify")["archive"]["checkpoints"] == 2

    out = tmp_path / "export"
    exported = as_json(
        "archive",
        "export",
        "--key",
        str(key_file),
        "--out",
        str(out),
        "--passphrase-stdin",
        input=RECORDS_PASSPHRASE + "\n",
    )
    assert exported["messages"] == 4 and exported["format"] == "mbox"
    box = mailbox.mbox(out / "archive.mbox")
    assert [m["Subject"] for m in box] == [f"minutes {n}" for n in (1, 2, 3, 1)]
    box.close()
    assert "intact" in ok("archive", "verify", "--export", str(out)).stdout

    eml = tmp_path / "eml"
    ok(
        "archive",
        "export",
        "--format",
        "eml",
        "--key",
        str(key_file),
        "--out",
        str(eml),
        "--passphrase-stdin",
        "2",
        input=RECORDS_PASSPHRASE + "\n",
    )
    assert (eml / "00000002.eml").read_bytes() == message(2)

    mbox = out / "archive.mbox"
    mbox.write_bytes(mbox.read_bytes().replace(b"Item 2.", b"Item 9."))
    assert fails("archive", "verify", "--export", str(out)) == (
        "Error: export file archive.mbox was altered"
    )

    assert [a for a in actions() if a.startswith("archive.")] == [
        "archive.checkpoint",
        "archive.checkpoint",
        "archive.export",
        "archive.export",
    ]


def test_verify_names_the_first_bad_entry(
    site: Site, engine: Engine, tmp_path: Path
) -> None:
    journal_many(engine, 4)
    kept = tmp_path / "checkpoint.txt"
    kept.write_text(ok("archive", "checkpoint").stdout)

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM archive_entries WHERE seq = 4"))
        connection.execute(text("DELETE FROM archive_checkpoints"))
    assert "Archive intact: 3 entries" in ok("archive", "verify").stdout
    assert fails("archive", "verify", "--checkpoint", str(kept)).startswith(
        "Error: archive tail cut behind checkpoint"
    )

    with engine.begin() as connection:
        connection.execute(
            text("UPDATE archive_entries SET decision = 'plain' WHERE seq = 2")
        )
    assert fails("archive", "verify") == "Error: archive entry 2 was altered"
    result = cli("archive", "verify", "--json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert found["ok"] is False and found["archive"]["problem"]["seq"] == 2

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM archive_entries WHERE seq = 1"))
    assert fails("archive", "verify") == "Error: archive entry 1 was removed"


# -- audit ---------------------------------------------------------------------------


def test_audit_list_filters_and_verify_names_the_bad_event(
    site: Site, engine: Engine
) -> None:
    journal_many(engine, 2)
    ok("archive", "hold", "--reason", "case 1", "1")
    ok("archive", "hold", "--reason", "case 2", "2")

    assert len(as_json("audit", "list", "--action", "archive.hold")) == 2
    assert len(as_json("audit", "list", "--limit", "1")) == 1
    assert as_json("audit", "list", "--since", "2100-01-01") == []
    assert as_json("audit", "list", "--actor", "nobody") == []
    table = ok("audit", "list", "--action", "archive.hold").stdout
    assert "case 2" in table and "archive.hold" in table

    first = as_json("audit", "list", "--action", "archive.hold")[0]["id"]
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET target = 'x' WHERE id = :id"), {"id": first}
        )
    assert fails("audit", "verify").startswith(
        f"Error: audit event {first} was altered"
    )
    result = cli("audit", "verify", "--json")
    assert (
        result.exit_code == 1 and json.loads(result.stdout)["first_bad_event"] == first
    )


# -- errors --------------------------------------------------------------------------


def test_errors_are_one_line(
    site: Site, engine: Engine, key_file: Path, tmp_path: Path
) -> None:
    journal_many(engine, 1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a checkpoint\n")

    assert "name the entries" in fails("archive", "hold", "--reason", "case")
    assert "not an entry number" in fails("archive", "release", "one")
    assert "not a date" in fails("archive", "search", "--since", "yesterday")
    assert "wrong passphrase" in fails(
        "archive",
        "export",
        "--key",
        str(key_file),
        "--out",
        str(tmp_path / "e"),
        "--passphrase-stdin",
        input="wrong\n",
    )
    assert "not empty" in fails(
        "archive",
        "export",
        "--key",
        str(key_file),
        "--out",
        str(busy),
        "--passphrase-stdin",
        input=RECORDS_PASSPHRASE + "\n",
    )
    assert "not a beep-mail archive checkpoint" in fails(
        "archive", "verify", "--checkpoint", str(garbage)
    )
    assert "has no MANIFEST.sha256" in fails("archive", "verify", "--export", str(busy))
    assert cli("archive", "hold", "1").exit_code == 2  # --reason is required

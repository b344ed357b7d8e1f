"""`beepmail key ...`, `user recover` and the key part of `status` (SQLite only).

Two sites made by `beepmail init` stand for two ministries: one exports its
domain key, the other imports and pins it. Keys of other correspondents are
made here with the OpenPGP engine itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from beep_mail import config, keyring, vault
from beep_mail.cli.main import app
from beep_mail.crypto import openpgp
from beep_mail.store import accounts, audit
from beep_mail.store import keys as key_store
from beep_mail.store import queue as store_queue
from beep_mail.store.engine import Database
from beep_mail.store.tables import mailbox_entries

BEEPMAIL = Path(sys.executable).parent / "beepmail"
DOMAIN = "ministry.gov.example"
PEER = "peer.gov.example"
ANNA = f"anna@{DOMAIN}"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "another long password"
PASSPHRASE = "records office passphrase, kept on paper"
FAST_HASHING = {
    "BEEPMAIL_AUTH__ARGON2_MEMORY_KIB": "64",
    "BEEPMAIL_AUTH__ARGON2_TIME_COST": "1",
}
PENDING = (
    "pending: confirm with beepmail key pin {fpr} after checking the fingerprint "
    "with the peer over a second channel"
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BEEPMAIL_* of the developer's shell, and cheap password hashing."""
    for name in list(os.environ):
        if name.startswith("BEEPMAIL_") and not name.startswith("BEEPMAIL_TEST_"):
            monkeypatch.delenv(name)
    for name, value in FAST_HASHING.items():
        monkeypatch.setenv(name, value)


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


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def init(folder: Path, domain: str) -> Path:
    ok("init", "--domain", domain, "--dir", str(folder))
    return folder / "conf" / "beepmail.toml"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our site; BEEPMAIL_CONFIG names its settings file."""
    conf = init(tmp_path / "site", DOMAIN)
    monkeypatch.setenv("BEEPMAIL_CONFIG", str(conf))
    return conf


@pytest.fixture
def db(site: Path) -> Iterator[Database]:
    database = Database(config.load(site).database_url)
    yield database
    database.close()


def new_key(email: str, expires_days: int | None = None) -> openpgp.SecretKey:
    return openpgp.generate(
        "Correspondent", email, passphrase="theirs", expires_days=expires_days
    )


def write_key(path: Path, *keys: openpgp.PublicKey) -> Path:
    path.write_text("".join(key.armored for key in keys), encoding="ascii")
    return path


def peer_key(db: Database, address: str, domain: str) -> str | None:
    with db.engine.connect() as connection:
        found = keyring.peer_key(connection, address, domain)
    return found.fingerprint if found is not None else None


def listed(*args: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """`key list --json`, by (kind, owner, fingerprint)."""
    return {
        (k["kind"], k["owner"], k["fingerprint"]): k
        for k in as_json("key", "list", *args)
    }


def active(kind: str, owner: str) -> str:
    [key] = [
        k
        for k in as_json("key", "list")
        if (k["kind"], k["owner"], k["state"]) == (kind, owner, "active")
    ]
    return str(key["fingerprint"])


def actions(db: Database) -> list[str]:
    return [event.action for event in audit.list_events(db.engine, limit=1000)]


def add_anna() -> None:
    ok("user", "add", ANNA, "--password-stdin", input=PASSWORD + "\n")


def deliver(db: Database, text: bytes, delivery_key: str) -> None:
    """What delivery stores: a message sealed for the user and the recovery key."""
    with db.engine.begin() as connection:
        blob = vault.seal_for_users(connection, [ANNA], text)
        store_queue.store_in_inbox(connection, ANNA, blob, delivery_key)


def stored(db: Database, address: str) -> list[bytes]:
    with db.engine.connect() as connection:
        user = accounts.find_user(connection, address)
        assert user is not None
        query = (
            select(mailbox_entries.c.content)
            .where(mailbox_entries.c.user_id == user.id)
            .order_by(mailbox_entries.c.id)
        )
        return [bytes(blob) for blob in connection.execute(query).scalars()]


def read_mail(db: Database, password: str) -> list[bytes]:
    keys = vault.open_keys(db.engine, ANNA, password)
    return [vault.read(keys, blob) for blob in stored(db, ANNA)]


# -- a peer ministry's domain key: export, import, pin ---------------------------


def test_a_peer_domain_key_travels_and_a_new_one_waits_for_a_pin(
    site: Path, db: Database, tmp_path: Path
) -> None:
    theirs = init(tmp_path / "peer", PEER)
    exported = ok("key", "export", PEER, "-c", str(theirs)).stdout
    assert exported.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert exported.rstrip().endswith("-----END PGP PUBLIC KEY BLOCK-----")
    assert "PRIVATE" not in exported
    [their_key] = openpgp.load_public(exported)
    assert their_key.emails == (f"postmaster@{PEER}",)
    first = their_key.fingerprint

    key_file = tmp_path / "peer.asc"
    key_file.write_text(exported, encoding="ascii")
    assert "pinned" in ok("key", "import", str(key_file), "--pin").stdout
    entry = listed()[("peer", PEER, first)]
    assert (entry["state"], entry["pinned"]) == ("active", True)
    assert peer_key(db, f"anna@{PEER}", PEER) == first

    # A different key for the pinned domain waits for an administrator.
    other = new_key(f"postmaster@{PEER}").public
    said = ok("key", "import", str(write_key(tmp_path / "new.asc", other))).stdout
    assert PENDING.format(fpr=other.fingerprint) in said
    assert listed()[("peer", PEER, other.fingerprint)]["state"] == "pending"
    assert peer_key(db, f"anna@{PEER}", PEER) == first
    [warning] = as_json("status")["key_warnings"]
    assert warning["fingerprint"] == other.fingerprint

    said = ok("key", "pin", other.fingerprint.lower()).stdout
    assert f"Pinned {other.fingerprint} for {PEER}" in said
    assert peer_key(db, f"anna@{PEER}", PEER) == other.fingerprint
    everything = listed("--all")
    assert everything[("peer", PEER, first)]["state"] == "retired"
    assert everything[("peer", PEER, other.fingerprint)]["pinned"] is True
    assert as_json("status")["key_warnings"] == []

    shown = as_json("key", "show", PEER)
    assert {k["fingerprint"] for k in shown} == {first, other.fingerprint}
    assert all(k["emails"] == [f"postmaster@{PEER}"] for k in shown)
    assert all(k["can_encrypt"] and k["can_sign"] for k in shown)
    assert actions(db)[-3:] == ["key.import", "key.import", "key.pin"]


def test_export_writes_only_public_keys(site: Path, db: Database) -> None:
    add_anna()
    mine = ok("key", "export", DOMAIN.upper()).stdout
    [domain_key] = openpgp.load_public(mine)
    assert domain_key.fingerprint == active("domain", DOMAIN)
    [user_key] = openpgp.load_public(ok("key", "export", ANNA).stdout)
    assert user_key.fingerprint == active("user", ANNA)
    for text in (mine, ok("key", "export", ANNA).stdout):
        assert "PRIVATE" not in text
        with pytest.raises(openpgp.KeyProblem):
            openpgp.load_secret(text)
    assert "no active peer key for elsewhere.example" in fails(
        "key", "export", "elsewhere.example"
    )


def test_import_a_folder_of_keys(site: Path, db: Database, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    alice = new_key("alice@peer2.example").public
    postmaster = new_key("postmaster@peer3.example").public
    carol = new_key("carol@peer3.example").public
    write_key(folder / "two.asc", alice, postmaster)
    write_key(folder / "carol.ASC", carol)
    (folder / "README").write_text("not a key\n", encoding="utf-8")

    said = ok("key", "import", str(folder), "--pin").stdout
    assert said.count("pinned") == 3
    keys = listed()
    assert keys[("peer", "alice@peer2.example", alice.fingerprint)]["pinned"]
    assert keys[("peer", "peer3.example", postmaster.fingerprint)]["pinned"]
    assert keys[("peer", "carol@peer3.example", carol.fingerprint)]["pinned"]
    assert peer_key(db, "carol@peer3.example", "peer3.example") == carol.fingerprint
    assert peer_key(db, "dave@peer3.example", "peer3.example") == (
        postmaster.fingerprint
    )

    # --owner names the owner, in the spelling mail is looked up by.
    bob = new_key("robert@elsewhere.example").public
    ok(
        "key",
        "import",
        str(write_key(tmp_path / "b.asc", bob)),
        "--owner",
        "Bob@PEER4.example",
    )
    assert ("peer", "bob@peer4.example", bob.fingerprint) in listed()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .asc files" in fails("key", "import", str(empty))


def test_import_refusals(site: Path, db: Database, tmp_path: Path) -> None:
    add_anna()
    before = actions(db)
    secret = new_key("postmaster@peer5.example")
    secret_file = tmp_path / "secret.asc"
    secret_file.write_text(secret.armored, encoding="ascii")
    assert "secret key" in fails("key", "import", str(secret_file))

    ours = tmp_path / "ours.asc"
    ours.write_text(ok("key", "export", DOMAIN).stdout, encoding="ascii")
    assert "this gateway serves" in fails("key", "import", str(ours), "--pin")
    officer = write_key(tmp_path / "officer.asc", new_key(f"bob@{DOMAIN}").public)
    assert "this gateway serves" in fails("key", "import", str(officer))
    stranger = write_key(tmp_path / "x.asc", new_key("x@peer5.example").public)
    assert "this gateway serves" in fails(
        "key", "import", str(stranger), "--owner", DOMAIN
    )

    two = write_key(
        tmp_path / "two.asc",
        new_key("postmaster@peer6.example").public,
        new_key("postmaster@peer6.example").public,
    )
    assert "pin one at a time" in fails("key", "import", str(two), "--pin")

    unlocked = new_key("postmaster@peer7.example").unlock("theirs")
    revoked = openpgp.revoke(unlocked, "compromised")
    gone = write_key(tmp_path / "revoked.asc", revoked)
    assert "revoked" in fails("key", "import", str(gone))
    assert actions(db) == before

    # A revocation of a key already known is stored, and the key is then unusable.
    write_key(tmp_path / "good.asc", unlocked.public)
    ok("key", "import", str(tmp_path / "good.asc"), "--pin")
    assert peer_key(db, "a@peer7.example", "peer7.example") == revoked.fingerprint
    assert "is revoked" in ok("key", "import", str(gone)).stdout
    assert peer_key(db, "a@peer7.example", "peer7.example") is None
    # An older copy does not bring it back.
    ok("key", "import", str(tmp_path / "good.asc"), "--pin")
    assert peer_key(db, "a@peer7.example", "peer7.example") is None
    assert (
        listed("--all")[("peer", "peer7.example", revoked.fingerprint)]["state"]
        == "revoked"
    )
    assert "cannot be pinned" in fails("key", "pin", revoked.fingerprint)


# -- the recovery key ---------------------------------------------------------------


def test_recovery_key_import_and_generate(
    site: Path, db: Database, tmp_path: Path
) -> None:
    first = active("recovery", "*")
    replacement = new_key(f"recovery@{DOMAIN}").public
    said = ok(
        "key", "import", str(write_key(tmp_path / "r.asc", replacement)), "--recovery"
    ).stdout
    assert first in said and "stay wrapped" in said
    assert active("recovery", "*") == replacement.fingerprint
    assert listed("--all")[("recovery", "*", first)]["state"] == "retired"

    out = tmp_path / "recovery-secret.asc"
    said = ok(
        "key",
        "generate",
        "--recovery",
        "--out",
        str(out),
        "--passphrase-stdin",
        input=PASSPHRASE + "\n",
    ).stdout
    assert out.stat().st_mode & 0o777 == 0o600
    made = openpgp.load_secret(out.read_text(encoding="ascii"))
    assert made.unlock(PASSPHRASE).public.fingerprint == made.public.fingerprint
    assert active("recovery", "*") == made.public.fingerprint
    assert replacement.fingerprint in said

    content = out.read_bytes()
    assert "already exists" in fails(
        "key",
        "generate",
        "--recovery",
        "--out",
        str(out),
        "--passphrase-stdin",
        input=PASSPHRASE + "\n",
    )
    assert out.read_bytes() == content
    short = tmp_path / "short.asc"
    assert "at least 12" in fails(
        "key",
        "generate",
        "--recovery",
        "--out",
        str(short),
        "--passphrase-stdin",
        input="short\n",
    )
    assert not short.exists()
    assert "--out FILE" in fails("key", "generate", "--recovery")
    assert actions(db)[-2:] == ["key.import", "key.generate"]
    assert_no_secrets(db)


def test_recover_after_a_password_reset(site: Path, db: Database) -> None:
    add_anna()
    deliver(db, b"Subject: before\r\n\r\nfirst\r\n", "k1")
    keys = vault.open_keys(db.engine, ANNA, PASSWORD)
    assert vault.reseal_new_entries(db.engine, keys) == 1  # now under the mailbox key
    deliver(db, b"Subject: before\r\n\r\nsecond\r\n", "k2")

    ok("user", "passwd", ANNA, "--password-stdin", input=NEW_PASSWORD + "\n")
    with pytest.raises(vault.VaultError, match="waits for recovery"):
        vault.open_keys(db.engine, ANNA, NEW_PASSWORD)

    folder = site.parent.parent
    recovery_file = folder / "recovery-key.asc"
    passphrase = (folder / "recovery-key.passphrase").read_text().strip()
    assert "does not open" in fails(
        "user",
        "recover",
        ANNA,
        "--recovery-key",
        str(recovery_file),
        "--passphrase-stdin",
        input="wrong\n",
    )
    said = ok(
        "user",
        "recover",
        ANNA.upper(),
        "--recovery-key",
        str(recovery_file),
        "--passphrase-stdin",
        input=passphrase + "\n",
    ).stdout
    assert "1 entries were re-sealed" in said
    assert read_mail(db, NEW_PASSWORD) == [
        b"Subject: before\r\n\r\nfirst\r\n",
        b"Subject: before\r\n\r\nsecond\r\n",
    ]

    stranger = folder / "stranger.asc"
    stranger.write_text(new_key("x@y.example").armored, encoding="ascii")
    assert "not a recovery key of this gateway" in fails(
        "user",
        "recover",
        ANNA,
        "--recovery-key",
        str(stranger),
        "--passphrase-stdin",
        input="theirs\n",
    )
    [event] = audit.list_events(db.engine, action="user.recover")
    assert event.target == ANNA and event.detail["resealed"] == 1
    assert_no_secrets(db, passphrase)


# -- rotation and revocation --------------------------------------------------------


def test_rotate_and_revoke_our_domain_key(site: Path, db: Database) -> None:
    old = active("domain", DOMAIN)
    assert "beepmail key rotate" in fails("key", "generate", "--domain", DOMAIN)
    assert "not a local domain" in fails("key", "generate", "--domain", PEER)
    assert "key rotate" in fails("key", "revoke", old, "--yes")

    said = ok("key", "rotate", DOMAIN).stdout
    new = active("domain", DOMAIN)
    assert new != old and new in said
    assert f"beepmail key export {DOMAIN}" in said
    assert listed("--all")[("domain", DOMAIN, old)]["state"] == "retired"
    assert ("domain", DOMAIN, old) not in listed()

    assert "--yes" in fails("key", "revoke", old)
    ok("key", "revoke", old, "--reason", "superseded", "--yes")
    assert listed("--all")[("domain", DOMAIN, old)]["state"] == "revoked"
    [revoked] = openpgp.load_public(ok("key", "export", old).stdout)
    assert revoked.revoked and revoked.fingerprint == old
    assert "already revoked" in fails("key", "revoke", old, "--yes")
    assert actions(db)[-2:] == ["key.rotate", "key.revoke"]


def test_rotate_and_revoke_a_user_key(site: Path, db: Database) -> None:
    add_anna()
    deliver(db, b"Subject: kept\r\n\r\nacross the rotation\r\n", "k1")
    old = active("user", ANNA)
    assert "does not open" in fails(
        "key", "rotate", ANNA, "--password-stdin", input="wrong password\n"
    )
    said = ok("key", "rotate", ANNA, "--password-stdin", input=PASSWORD + "\n").stdout
    new = active("user", ANNA)
    assert new != old and new in said
    assert read_mail(db, PASSWORD) == [b"Subject: kept\r\n\r\nacross the rotation\r\n"]
    assert vault.open_keys(db.engine, ANNA, PASSWORD).user_key.public.fingerprint == new

    assert "key rotate" in fails("key", "revoke", new, "--yes")
    ok("key", "revoke", old, "--yes", "--password-stdin", input=PASSWORD + "\n")
    assert listed("--all")[("user", ANNA, old)]["state"] == "revoked"
    assert openpgp.load_public(ok("key", "export", old).stdout)[0].revoked


def test_revoke_a_peer_key(site: Path, db: Database, tmp_path: Path) -> None:
    theirs = new_key(f"postmaster@{PEER}").public
    ok("key", "import", str(write_key(tmp_path / "p.asc", theirs)), "--pin")
    assert peer_key(db, f"x@{PEER}", PEER) == theirs.fingerprint
    ok("key", "revoke", theirs.fingerprint, "--yes")
    assert peer_key(db, f"x@{PEER}", PEER) is None
    assert ("peer", PEER, theirs.fingerprint) not in listed()
    assert "no key" in fails("key", "revoke", "AB" * 20, "--yes")
    assert "40 hexadecimal" in fails("key", "revoke", "not-a-fingerprint", "--yes")


# -- status -------------------------------------------------------------------------


def test_status_warns_about_expiring_keys_and_a_missing_recovery_key(
    site: Path, db: Database, tmp_path: Path
) -> None:
    assert as_json("status")["key_warnings"] == []
    soon = new_key("postmaster@soon.example", expires_days=10).public
    ok("key", "import", str(write_key(tmp_path / "soon.asc", soon)), "--pin")

    found = as_json("status")
    counts = {kind: found["keys"][kind] for kind in ("domain", "user", "peer")}
    assert counts == {"domain": 1, "user": 0, "peer": 1}
    assert found["keys"]["recovery"] == 1
    [warning] = found["key_warnings"]
    assert warning["fingerprint"] == soon.fingerprint
    assert "expires in 10 days" in warning["message"]
    assert "expires in 10 days" in ok("status").stdout
    assert "expires in 10 days" in ok("key", "list").stdout

    with db.engine.begin() as connection:
        record = key_store.active_key(connection, "recovery", key_store.RECOVERY_OWNER)
        assert record is not None
        key_store.set_state(connection, record.id, "retired")
    messages = [w["message"] for w in as_json("status")["key_warnings"]]
    assert any("no recovery key" in message for message in messages)


# -- the audit trail ----------------------------------------------------------------


def assert_no_secrets(db: Database, *also: str) -> None:
    events = audit.list_events(db.engine, limit=1000)
    details = json.dumps([event.detail for event in events])
    for secret in (PASSWORD, NEW_PASSWORD, PASSPHRASE, "PRIVATE KEY", *also):
        assert secret not in details
    assert audit.verify(db.engine) == (True, len(events), None)


def test_every_key_change_is_audited(site: Path, db: Database, tmp_path: Path) -> None:
    add_anna()
    theirs = new_key(f"postmaster@{PEER}").public
    key_file = write_key(tmp_path / "p.asc", theirs)
    ok("key", "import", str(key_file))
    ok("key", "pin", theirs.fingerprint)
    ok("key", "rotate", DOMAIN)
    ok("key", "rotate", ANNA, "--password-stdin", input=PASSWORD + "\n")
    ok("key", "revoke", theirs.fingerprint, "--yes")
    ok(
        "key",
        "generate",
        "--recovery",
        "--out",
        str(tmp_path / "r.asc"),
        "--passphrase-stdin",
        input=PASSPHRASE + "\n",
    )
    fails("key", "import", str(tmp_path / "missing.asc"))

    assert actions(db)[-6:] == [
        "key.import",
        "key.pin",
        "key.rotate",
        "key.rotate",
        "key.revoke",
        "key.generate",
    ]
    events = audit.list_events(db.engine, limit=1000)
    imported = next(e for e in events if e.action == "key.import")
    assert (imported.target, imported.detail["fingerprint"]) == (
        PEER,
        theirs.fingerprint,
    )
    assert_no_secrets(db)


# -- the installed program ----------------------------------------------------------


def test_the_program_exports_to_stdout_and_refuses_in_one_line(
    site: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEEPMAIL_")}
    env.update(FAST_HASHING, BEEPMAIL_CONFIG=str(site))
    secret_file = tmp_path / "secret.asc"
    secret_file.write_text(new_key("postmaster@x.example").armored, encoding="ascii")
    runs = [
        subprocess.Popen(
            [str(BEEPMAIL), *args],
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for args in (["key", "export", DOMAIN], ["key", "import", str(secret_file)])
    ]
    (exported, export_err), (imported, import_err) = (
        run.communicate(timeout=60) for run in runs
    )

    assert runs[0].returncode == 0 and export_err == ""
    [key] = openpgp.load_public(exported)
    assert exported == key.armored + ("" if key.armored.endswith("\n") else "\n")
    assert runs[1].returncode == 1 and imported == ""
    assert import_err.count("\n") == 1 and import_err.startswith("Error: ")
    assert "secret key" in import_err

"""The `beepmail` command line, on a site made by `beepmail init` (SQLite only).

Most commands run in-process through Typer's runner; what the user sees of a
failure (one `Error:` line, the exit code, never a traceback) is checked on the
installed program itself.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from beep_mail import config
from beep_mail.cli import common, main, template
from beep_mail.cli.main import app
from beep_mail.config import Settings
from beep_mail.crypto.passwords import Passwords
from beep_mail.store import accounts, audit
from beep_mail.store import queue as store_queue
from beep_mail.store.engine import Database
from beep_mail.store.queue import NewRecipient

ROOT = Path(__file__).resolve().parent.parent
BEEPMAIL = Path(sys.executable).parent / "beepmail"
DOMAIN = "ministry.gov.example"
ANNA = f"anna@{DOMAIN}"
PASSWORD = "correct horse battery"
FAST_HASHING = {
    "BEEPMAIL_AUTH__ARGON2_MEMORY_KIB": "64",
    "BEEPMAIL_AUTH__ARGON2_TIME_COST": "1",
}
DEFAULT_MAILBOXES = ["INBOX", "Sent", "Drafts", "Trash", "Archive", "Junk"]

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


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh site; BEEPMAIL_CONFIG names its settings file."""
    ok("init", "--domain", DOMAIN, "--dir", str(tmp_path / "site"))
    conf = tmp_path / "site" / "conf" / "beepmail.toml"
    monkeypatch.setenv("BEEPMAIL_CONFIG", str(conf))
    return conf


@pytest.fixture
def db(site: Path) -> Iterator[Database]:
    database = Database(config.load(site).database_url)
    yield database
    database.close()


def add_anna() -> None:
    ok(
        "user",
        "add",
        ANNA,
        "--name",
        "Anna Berg",
        "--password-stdin",
        input=PASSWORD + "\n",
    )


def accept(db: Database, message_id: str, *recipients: str) -> None:
    with db.engine.begin() as connection:
        store_queue.accept(
            connection,
            message_id=message_id,
            direction="outbound",
            mail_from=ANNA,
            content=b"Subject: minutes\r\n\r\nAttached.\r\n",
            recipients=[
                NewRecipient(r, r.partition("@")[2], "remote") for r in recipients
            ],
            lifetime=3600.0,
        )


def states(db: Database, message_id: str) -> list[str]:
    with db.engine.connect() as connection:
        return [row.state for row in store_queue.rows_of(connection, message_id)]


def actions(db: Database) -> list[str]:
    return [event.action for event in audit.list_events(db.engine, limit=1000)]


# -- the settings file ------------------------------------------------------


def setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, field in model.model_fields.items():
        if key in template.NOT_SETTINGS:
            continue
        if isinstance(field.default, BaseModel):
            keys += setting_keys(type(field.default), f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_example_settings_file_is_the_init_template() -> None:
    example = ROOT / "conf" / "beepmail.example.toml"
    rendered = template.render(template.EXAMPLE_DOMAIN, template.EXAMPLE_HOSTNAME)
    assert example.read_text(encoding="utf-8") == rendered, (
        "regenerate with: python -m beep_mail.cli.template > conf/beepmail.example.toml"
    )

    settings = config.load(example, environ={})
    expected = Settings.model_validate(
        {"site": {"domain": "ministry.gov.example", "hostname": "localhost"}}
    )
    exclude = set(template.NOT_SETTINGS)
    assert settings.model_dump(exclude=exclude) == expected.model_dump(exclude=exclude)


def test_every_setting_is_in_the_file_with_a_comment() -> None:
    lines = template.render("x.example", "localhost").splitlines()
    section = ""
    written: set[str] = set()
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]") + "."
            continue
        body = line.removeprefix("# ")
        key, sep, _ = body.partition(" = ")
        if sep and key.isidentifier():
            assert lines[number - 1].startswith("# "), f"{key} has no comment"
            written.add(section + key)

    assert written == set(setting_keys(Settings))
    unset = {
        key for key in written if key not in flatten(tomllib.loads("\n".join(lines)))
    }
    assert unset == {"delivery.ca_file"}  # no default: shown commented out


def flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            keys |= flatten(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


# -- init -------------------------------------------------------------------


def test_init_sets_up_a_site_and_refuses_a_second_time(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    result = ok("init", "--domain", "Ministry.GOV.example", "--dir", str(folder))
    assert "Next steps" in result.stdout

    conf = folder / "conf" / "beepmail.toml"
    assert conf.read_text(encoding="utf-8") == template.render(DOMAIN, "localhost")
    assert (folder / "keys" / "README").read_text(encoding="utf-8").strip()
    assert (folder / "var" / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN")
    assert (folder / "var" / "tls" / "key.pem").stat().st_mode & 0o077 == 0

    settings = config.load(conf)
    assert settings.site.domain == DOMAIN
    database = Database(settings.database_url)
    try:
        [local] = accounts.list_domains(database.engine)
        assert (local.name, local.role, local.allowed) == (DOMAIN, "local", True)
        events = audit.list_events(database.engine)
        assert [(e.action, e.target) for e in events] == [
            ("site.init", DOMAIN), ("key.generate", DOMAIN), ("key.generate", "recovery"),
            ("key.generate", "records")]
        assert (folder / "recovery-key.asc").stat().st_mode & 0o777 == 0o600
        assert (folder / "recovery-key.passphrase").stat().st_mode & 0o777 == 0o600
    finally:
        database.close()

    before = conf.read_bytes()
    message = fails("init", "--domain", "other.example", "--dir", str(folder))
    assert "already exists" in message
    assert conf.read_bytes() == before


def test_init_refuses_a_bad_domain(tmp_path: Path) -> None:
    fails("init", "--domain", "not a domain", "--dir", str(tmp_path))
    assert not (tmp_path / "conf" / "beepmail.toml").exists()


# -- users ------------------------------------------------------------------


def test_user_add_list_and_show(site: Path, db: Database) -> None:
    ok(
        "user",
        "add",
        "Anna@MINISTRY.gov.example",
        "--name",
        "Anna Berg",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    with db.engine.begin() as connection:
        store_queue.store_in_inbox(connection, ANNA, b"Subject: hi\r\n\r\n.\r\n", "k1")

    [listed] = as_json("user", "list")
    assert listed["address"] == ANNA
    assert listed["name"] == "Anna Berg"
    assert listed["disabled"] is False
    assert listed["created_at"].endswith("Z")

    shown = as_json("user", "show", ANNA)
    assert {k: shown[k] for k in listed} == listed
    assert [box["name"] for box in shown["mailboxes"]] == DEFAULT_MAILBOXES
    assert [box["messages"] for box in shown["mailboxes"]] == [1, 0, 0, 0, 0, 0]

    stored = accounts.get_user(db.engine, ANNA)
    assert stored is not None and PASSWORD not in stored.password_hash
    assert Passwords(1, 64, 1).verify(stored.password_hash, PASSWORD)
    assert ANNA in ok("user", "list").stdout


@pytest.mark.parametrize(
    ("address", "password", "expected"),
    [
        ("bob@other.example", PASSWORD, "not in a local domain"),
        ("bob@sub.ministry.gov.example", PASSWORD, "not in a local domain"),
        (ANNA, PASSWORD, "already exists"),
        ("bob@ministry.gov.example", "short", "at least 8 characters"),
        ("bob@@ministry.gov.example", PASSWORD, "more than one @"),
    ],
)
def test_user_add_refusals(
    site: Path, db: Database, address: str, password: str, expected: str
) -> None:
    add_anna()
    message = fails("user", "add", address, "--password-stdin", input=password + "\n")
    assert expected in message
    assert password not in message
    assert [u.address for u in accounts.list_users(db.engine)] == [ANNA]


def test_user_password_prompt_and_changes(
    site: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    fails("user", "add", ANNA)  # no terminal to type on, no --password-stdin
    monkeypatch.setattr(common, "interactive", lambda: True)
    ok("user", "add", ANNA, input=f"{PASSWORD}\n{PASSWORD}\n")

    ok("user", "passwd", ANNA, "--password-stdin", input="another password\n")
    stored = accounts.get_user(db.engine, ANNA)
    assert stored is not None
    assert Passwords(1, 64, 1).verify(stored.password_hash, "another password")

    ok("user", "disable", ANNA)
    assert as_json("user", "show", ANNA)["disabled"] is True
    ok("user", "enable", ANNA)
    assert as_json("user", "show", ANNA)["disabled"] is False

    result = cli("user", "remove", ANNA, input="n\n")
    assert result.exit_code == 1 and accounts.get_user(db.engine, ANNA) is not None
    monkeypatch.setattr(common, "interactive", lambda: False)
    assert "--yes" in fails("user", "remove", ANNA)
    ok("user", "remove", ANNA, "--yes")
    assert accounts.get_user(db.engine, ANNA) is None
    assert "no user" in fails("user", "show", ANNA)
    assert "no user" in fails("user", "disable", ANNA)


# -- domains ----------------------------------------------------------------


def test_domain_rules(site: Path, db: Database) -> None:
    ok("domain", "allow", "*.Gov.Example", "--tls", "opportunistic")
    ok(
        "domain",
        "allow",
        "bücher.gov.example",
        "--next-hop",
        "Relay.Example:2525",
        "--encryption",
        "hold",
    )
    ok("domain", "deny", "evil.gov.example")

    rules = {rule["name"]: rule for rule in as_json("domain", "list")}
    assert set(rules) == {
        "*.gov.example",
        "xn--bcher-kva.gov.example",
        "evil.gov.example",
        DOMAIN,
    }
    idna = rules["xn--bcher-kva.gov.example"]
    assert (idna["next_hop"], idna["tls"], idna["encryption"]) == (
        "relay.example:2525",
        "required",
        "hold",
    )
    assert rules["*.gov.example"]["tls"] == "opportunistic"
    assert rules["evil.gov.example"]["allowed"] is False
    assert rules[DOMAIN]["role"] == "local"

    accept(
        db,
        "M1",
        "a@peer.gov.example",
        "b@deep.peer.gov.example",
        "c@xn--bcher-kva.gov.example",
    )
    assert as_json("domain", "show", "*.gov.example")["queued"] == 2
    shown = as_json("domain", "show", "BÜCHER.gov.example")
    assert (shown["name"], shown["queued"]) == ("xn--bcher-kva.gov.example", 1)
    assert "*.gov.example applies" in fails("domain", "show", "peer.gov.example")

    ok("domain", "allow", "evil.gov.example")  # a rule is replaced, not added
    assert as_json("domain", "show", "evil.gov.example")["allowed"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["allow", DOMAIN],
        ["deny", DOMAIN],
        ["allow", "g*v.example"],
        ["allow", "[192.0.2.1]"],
        ["allow", "peer.example", "--next-hop", "relay:0"],
        ["allow", "peer.example", "--next-hop", "relay:smtp"],
        ["allow", "peer.example", "--next-hop", "2001:db8::1:25"],
        ["allow", "peer.example", "--next-hop", "relay example"],
        ["allow", "peer.example", "--next-hop", "[nope]:25"],
        ["show", "unknown.example"],
    ],
)
def test_domain_refusals(site: Path, db: Database, args: list[str]) -> None:
    fails("domain", *args)
    assert [d.name for d in accounts.list_domains(db.engine)] == [DOMAIN]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("relay.example", "relay.example"),
        ("10.0.0.5:25", "10.0.0.5:25"),
        ("[2001:DB8:0::1]:2525", "[2001:db8::1]:2525"),
    ],
)
def test_next_hop_forms(site: Path, given: str, stored: str) -> None:
    ok("domain", "allow", "peer.example", "--next-hop", given)
    assert as_json("domain", "show", "peer.example")["next_hop"] == stored


# -- queue ------------------------------------------------------------------


def test_queue_commands(site: Path, db: Database) -> None:
    accept(db, "A1B2C3", "x@peer.gov.example", "y@peer.gov.example")
    accept(db, "D4E5F6", "z@peer.gov.example")

    listed = as_json("queue", "list")
    assert [(r["message_id"], r["recipient"], r["state"]) for r in listed] == [
        ("A1B2C3", "x@peer.gov.example", "queued"),
        ("A1B2C3", "y@peer.gov.example", "queued"),
        ("D4E5F6", "z@peer.gov.example", "queued"),
    ]
    shown = as_json("queue", "show", "A1B2C3")
    assert (shown["mail_from"], len(shown["recipients"])) == (ANNA, 2)

    ok("queue", "hold", "A1B2C3")
    assert states(db, "A1B2C3") == ["held", "held"]
    assert [r["message_id"] for r in as_json("queue", "list", "--state", "held")] == [
        "A1B2C3",
        "A1B2C3",
    ]
    ok("queue", "release", "A1B2C3")
    assert states(db, "A1B2C3") == ["queued", "queued"]
    ok("queue", "retry", "A1B2C3")

    assert "--yes" in fails("queue", "delete", "A1B2C3")
    ok("queue", "delete", "A1B2C3", "--yes")
    assert states(db, "A1B2C3") == []
    assert "A1B2C3" not in ok("queue", "list").stdout

    for command in ("show", "retry", "hold", "release", "delete"):
        assert "no queued message NOPE" in fails("queue", command, "NOPE")
    assert cli("queue", "list", "--state", "lost").exit_code == 2  # a usage error


def test_queue_states_match_the_store() -> None:
    from beep_mail.cli.queue import State

    assert tuple(state.value for state in State) == store_queue.STATES


# -- status -----------------------------------------------------------------


def test_status(site: Path, db: Database) -> None:
    add_anna()
    accept(db, "OLD1", "x@peer.gov.example")
    [row] = store_queue.claim(db.engine, "test", 60.0, 10)
    store_queue.mark_deferred(db.engine, row, "test", "4.4.1", "451 try later", 0.0)

    found = as_json("status")
    assert found["database"]["reachable"] is True
    assert found["listeners"]["submission"] == "127.0.0.1:2587"
    assert found["listeners"]["inbound"] == "127.0.0.1:2525"
    assert found["queue"]["deferred"] == 1 and found["queue"]["queued"] == 0
    oldest = found["oldest_deferred"]
    assert (oldest["message_id"], oldest["recipient"]) == ("OLD1", "x@peer.gov.example")
    assert oldest["last_reply"] == "451 try later" and oldest["age_seconds"] >= 0
    assert (found["users"], found["domains"]) == (1, 1)
    assert "451 try later" in ok("status").stdout


# -- audit ------------------------------------------------------------------


def test_every_change_is_audited(site: Path, db: Database) -> None:
    add_anna()
    ok("user", "passwd", ANNA, "--password-stdin", input="another password\n")
    ok("user", "disable", ANNA)
    ok("user", "enable", ANNA)
    ok("user", "remove", ANNA, "--yes")
    ok("domain", "allow", "peer.gov.example")
    ok("domain", "deny", "peer.gov.example")
    accept(db, "Q1", "x@peer.gov.example")
    for command in ("hold", "release", "retry"):
        ok("queue", command, "Q1")
    ok("queue", "delete", "Q1", "--yes")
    fails("user", "add", "bob@other.example", "--password-stdin", input=PASSWORD)

    assert actions(db) == [
        "site.init",
        "key.generate",
        "key.generate",
        "key.generate",
        "user.add",
        "user.passwd",
        "user.disable",
        "user.enable",
        "user.remove",
        "domain.allow",
        "domain.deny",
        "queue.hold",
        "queue.release",
        "queue.retry",
        "queue.delete",
    ]
    events = audit.list_events(db.engine, limit=1000)
    assert {event.actor for event in events} == {f"cli:{getpass.getuser()}"}
    details = json.dumps([event.detail for event in events])
    assert PASSWORD not in details and "another password" not in details
    assert audit.verify(db.engine) == (True, len(events), None)


def test_a_refused_change_leaves_no_audit_event(site: Path, db: Database) -> None:
    fails("domain", "deny", DOMAIN)
    fails("queue", "hold", "NOPE")
    assert actions(db) == ["site.init", "key.generate", "key.generate", "key.generate"]


# -- settings and errors ----------------------------------------------------


def test_config_option_wins_over_the_environment(site: Path, tmp_path: Path) -> None:
    ok("init", "--domain", "other.example", "--dir", str(tmp_path / "other"))
    other = tmp_path / "other" / "conf" / "beepmail.toml"

    assert as_json("status")["site"]["domain"] == DOMAIN
    assert (
        as_json("status", "--config", str(other))["site"]["domain"] == "other.example"
    )
    ok(
        "user",
        "add",
        "bob@other.example",
        "--password-stdin",
        "-c",
        str(other),
        input=PASSWORD + "\n",
    )
    assert as_json("user", "list") == []


def test_run_reports_interrupts_and_bugs_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    def broken(**_: object) -> None:
        raise RuntimeError("first\nsecond")

    monkeypatch.setattr(main, "app", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main.run()
    assert exit_.value.code == 130

    monkeypatch.setattr(main, "app", broken)
    with pytest.raises(SystemExit) as exit_:
        main.run()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: internal error")


def program_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEEPMAIL_")}
    return {**env, **FAST_HASHING, **extra}


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        ("[smtp\n", {}, "not valid TOML"),
        ("[smtp]\nmax_recipents = 10\n", {}, "smtp.max_recipents: unknown setting"),
        ('[smtp.submission]\nlisten = "everywhere"\n', {}, "smtp.submission.listen"),
        ("[delivery]\nconcurrency = 0\n", {}, "delivery.concurrency"),
        (
            "",
            {"BEEPMAIL_SMTP__MAX_RECIPIENTS": "many"},
            "environment BEEPMAIL_*: smtp.max_recipients",
        ),
        ('[database]\nurl = "nosuch://db"\n', {}, "database error"),
    ],
)
def test_broken_settings_give_one_error_line_naming_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: str,
    env: dict[str, str],
    expected: str,
) -> None:
    path = tmp_path / "beepmail.toml"
    path.write_text(content, encoding="utf-8")
    monkeypatch.setenv("BEEPMAIL_CONFIG", str(path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert expected in fails("user", "list")
    assert "no such configuration file" in fails("status", "-c", str(tmp_path / "no"))


def test_the_program_itself_never_shows_a_traceback(site: Path) -> None:
    """The installed `beepmail`, both runs at once to save time."""
    broken = site.parent / "broken.toml"
    broken.write_text("[smtp]\nmax_recipents = 10\n", encoding="utf-8")
    runs = [
        _start(["queue", "hold", "NOPE"], BEEPMAIL_CONFIG=str(site)),
        _start(["status"], BEEPMAIL_CONFIG=str(broken)),
    ]
    unknown, bad = (process.communicate(timeout=60) for process in runs)

    assert runs[0].returncode == 1
    assert unknown == ("", "Error: no queued message NOPE\n")
    assert runs[1].returncode == 1
    assert bad == ("", f"Error: {broken}: smtp.max_recipents: unknown setting\n")


def _start(args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BEEPMAIL), *args],
        env=program_env(**env),
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_serve_runs_the_service_with_the_settings(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from beep_mail import service
    from beep_mail.crypto.tls import TLSMaterialError

    seen: list[Settings] = []

    def stopped(settings: Settings) -> int:
        seen.append(settings)
        return 3

    def no_certificate(settings: Settings) -> int:
        raise TLSMaterialError("cannot use certificate var/tls/cert.pem")

    monkeypatch.setattr(service, "run", stopped)
    assert cli("serve").exit_code == 3
    assert seen[0].source == site.resolve()

    monkeypatch.setattr(service, "run", no_certificate)
    assert "cannot use certificate" in fails("serve")


def test_usage_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    """A mistyped command gets one Error: line and exit 2, never a boxed panel."""
    import subprocess
    import sys

    for args in (["domain", "allow", "x.gov.example", "--tls", "bogus"],
                 ["nosuch"], ["user", "add"]):
        done = subprocess.run([sys.executable, "-m", "beep_mail", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, args
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
        assert "--help" in lines[0] and "Traceback" not in done.stderr

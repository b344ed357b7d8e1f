"""The `beepmail` command: the app, site-wide commands, and error reporting.

`init` sets up a site folder, `serve` runs the gateway, `status` says how it
is doing. Nouns have their own modules (user, domain, key, queue). Whatever a
command raises that the layers below meant for people (a bad setting, an
unknown user, a busy database) leaves as one `Error: ...` line on stderr and
exit code 1; an interrupt exits with 130. No traceback reaches the user.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from beep_mail import config
from beep_mail.cli import archive, domain, queue, template, user
from beep_mail.cli import audit as audit_cli
from beep_mail.cli import key as key_cli
from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    actor,
    database,
    fields,
    load_settings,
    print_json,
    safe_url,
    say,
    span,
    timestamps,
    transaction,
)
from beep_mail.config import ConfigError, Settings
from beep_mail.crypto.openpgp import OpenPGPError
from beep_mail.crypto.passwords import PasswordPolicyError
from beep_mail.keyring import KeyringError
from beep_mail.policy.address import AddressError, normalise_domain
from beep_mail.store import accounts, audit
from beep_mail.store import queue as store_queue
from beep_mail.store.accounts import AccountError
from beep_mail.store.engine import StoreError, translated
from beep_mail.store.keys import KeyStoreError
from beep_mail.store.queue import QueueError
from beep_mail.vault import VaultError

# Errors meant for people: their message is shown as it is.
DOMAIN_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    StoreError,
    AccountError,
    QueueError,
    PasswordPolicyError,
    AddressError,
    CLIError,
    KeyringError,
    KeyStoreError,
    VaultError,
    OpenPGPError,
    OSError,
)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2


def describe(error: BaseException) -> str:
    """One printable line for an error."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = str(error) or type(error).__name__
    # One line, and no terminal control sequences from echoed input.
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(message.split()))


def report(error: BaseException) -> None:
    typer.echo(f"Error: {describe(error)}", err=True)


class _Group(TyperGroup):
    """The root group: domain errors of any subcommand end here."""

    # ctx is the vendored click Context, which Typer does not export by name.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # Typer's own handling of a closed pipe applies
        except DOMAIN_ERRORS as error:
            report(error)
            raise typer.Exit(EXIT_ERROR) from None


app = typer.Typer(
    cls=_Group,
    name="beepmail",
    help="Administer a beep-mail gateway: site, users, domains, keys and queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(user.app, name="user")
app.add_typer(domain.app, name="domain")
app.add_typer(key_cli.app, name="key")
app.add_typer(queue.app, name="queue")
app.add_typer(archive.app, name="archive")
app.add_typer(audit_cli.app, name="audit")


# -- init -------------------------------------------------------------------


@app.command()
def init(
    domain_name: Annotated[
        str,
        typer.Option("--domain", help="The mail domain this gateway serves."),
    ],
    site_dir: Annotated[
        Path,
        typer.Option("--dir", file_okay=False, help="The site folder to set up."),
    ],
    hostname: Annotated[
        str,
        typer.Option(help="Name in greetings and in the test certificate."),
    ] = "localhost",
) -> None:
    """Set up a site: settings, test certificate, database, local domain."""
    local = normalise_domain(domain_name)
    host = normalise_domain(hostname)
    conf_file = site_dir / "conf" / "beepmail.toml"
    if conf_file.exists():
        raise CLIError(f"{conf_file} already exists: this site is set up")

    conf_file.parent.mkdir(parents=True, exist_ok=True)
    _create(conf_file, template.render(local, host), 0o640)
    try:
        settings = config.load(conf_file)
        _keys_folder(site_dir / "keys")
        made = _test_certificate(settings, host)
        _record_site(settings, local, host)
        secret_files = _make_keys(settings, site_dir, local)
    except BaseException:
        # Without the settings file, running init again finishes the job.
        conf_file.unlink(missing_ok=True)
        raise

    _next_steps(settings, local, made)
    for secret_file in secret_files:
        what = ("every mailbox" if secret_file.name.startswith("recovery")
                else "the whole archive")
        say(f"A secret key is in {secret_file} and its passphrase in "
            f"{secret_file.with_suffix('.passphrase')}. Move both off this machine "
            "now, to the records office: the gateway never needs them, and whoever "
            f"holds them can read {what}.")


def _create(path: Path, content: str, mode: int) -> None:
    with path.open("x", encoding="utf-8") as stream:
        path.chmod(mode)
        stream.write(content)


def _keys_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    readme = folder / "README"
    if not readme.exists():
        readme.write_text(
            "Public OpenPGP keys of peer gateways are dropped here to be imported; "
            "this gateway's own keys live in the database.\n",
            encoding="utf-8",
        )


def _test_certificate(settings: Settings, hostname: str) -> bool:
    """Write a self-signed certificate unless one is there; True if written."""
    cert = settings.path(settings.tls.cert)
    key = settings.path(settings.tls.key)
    if cert.exists() and key.exists():
        return False
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    # Imported here: cryptography is slow to load and only init needs it.
    from beep_mail.crypto.tls import write_self_signed

    write_self_signed(cert, key, [hostname])
    return True


def _record_site(settings: Settings, local: str, hostname: str) -> None:
    with database(settings) as db, transaction(db) as connection:
        accounts.put_domain(
            connection,
            local,
            role="local",
            allowed=True,
            tls="opportunistic",
            encryption="none",
        )
        audit.record(
            connection,
            actor(),
            "site.init",
            local,
            {"hostname": hostname, "config": str(settings.source)},
        )


def _make_keys(settings: Settings, site_dir: Path, local: str) -> list[Path]:
    """The domain key; and the recovery and records key pairs unless the store
    has them, their secret parts written beside the site for the records office."""
    from beep_mail import keyring
    from beep_mail.crypto import openpgp
    from beep_mail.store import keys as key_store

    written: list[Path] = []
    with database(settings) as db, transaction(db) as connection:
        domain_key = keyring.ensure_domain_key(connection, settings, local)
        audit.record(connection, actor(), "key.generate", local,
                     {"kind": "domain", "fingerprint": domain_key.fingerprint})
        for kind in ("recovery", "records"):
            owner = (key_store.RECOVERY_OWNER if kind == "recovery"
                     else key_store.RECORDS_OWNER)
            if key_store.active_key(connection, kind, owner):
                continue
            passphrase = secrets.token_urlsafe(24)
            secret = openpgp.generate(f"{kind.title()} key", f"{kind}@{local}",
                                      passphrase=passphrase)
            keyring.install_recovery_key(connection, secret.public, kind)
            audit.record(connection, actor(), "key.generate", kind,
                         {"kind": kind, "fingerprint": secret.public.fingerprint})
            target = site_dir / f"{kind}-key.asc"
            _create_secret(target, secret.armored)
            _create_secret(target.with_suffix(".passphrase"), passphrase + "\n")
            written.append(target)
    return written


def _create_secret(path: Path, content: str) -> None:
    """A new file that is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(content)


def _next_steps(settings: Settings, local: str, made_certificate: bool) -> None:
    conf = shlex.quote(str(settings.source))
    cert = settings.path(settings.tls.cert)
    state = "self-signed, for testing only" if made_certificate else "kept as it was"
    say(f"Set up {local} in {settings.base_dir}")
    fields(
        [
            ("  settings", settings.source),
            ("  database", safe_url(settings.database_url)),
            ("  certificate", f"{cert} ({state})"),
            ("  peer keys", settings.base_dir / "keys"),
        ]
    )
    say("")
    steps = [
        (f"export BEEPMAIL_CONFIG={conf}", ""),
        (f"beepmail user add officer@{local}", "add an officer"),
        ("beepmail domain allow peer.gov.example", "allow a correspondent"),
        ("beepmail status", "check the site"),
        ("beepmail serve", "start the gateway"),
    ]
    width = max(len(command) for command, _ in steps)
    say("Next steps:")
    for command, why in steps:
        say(f"  {command.ljust(width)}  {why}".rstrip())


# -- serve ------------------------------------------------------------------


@app.command()
def serve(config_file: ConfigOption = None) -> None:
    """Run the gateway (SMTP listeners and delivery) until stopped."""
    settings = load_settings(config_file)

    # Imported here: the server's modules are not needed by other commands.
    from beep_mail import service
    from beep_mail.crypto.tls import TLSMaterialError

    try:
        code = service.run(settings)
    except TLSMaterialError as error:
        raise CLIError(str(error)) from None
    raise typer.Exit(code)


# -- status -----------------------------------------------------------------


@app.command()
def status(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Database, listeners, queue depth, users and domains at a glance."""
    settings = load_settings(config_file)
    found = _status(settings)

    if as_json:
        print_json(found)
    else:
        _print_status(found)
    if not found["database"]["reachable"]:
        raise typer.Exit(EXIT_ERROR)


def _status(settings: Settings) -> dict[str, Any]:
    cert = settings.path(settings.tls.cert)
    key = settings.path(settings.tls.key)
    found: dict[str, Any] = {
        "site": {
            "domain": settings.site.domain,
            "hostname": settings.site.hostname,
            "config": str(settings.source),
        },
        "database": {
            "url": safe_url(settings.database_url),
            "reachable": False,
            "error": None,
        },
        "listeners": {
            "submission": settings.smtp.submission.listen,
            "inbound": settings.smtp.inbound.listen,
            "inbound_requires_tls": settings.smtp.inbound.require_tls,
        },
        "tls": {
            "cert": str(cert),
            "key": str(key),
            "present": cert.exists() and key.exists(),
        },
        "delivery": {
            "enabled": settings.delivery.enabled,
            "concurrency": settings.delivery.concurrency,
        },
        "queue": None,
        "oldest_deferred": None,
        "users": None,
        "domains": None,
        "keys": None,
        "key_warnings": [],
    }
    try:
        with database(settings) as db, translated():
            db.ping()
            found["queue"] = store_queue.depth_by_state(db.engine)
            oldest = store_queue.oldest_deferred(db.engine)
            found["users"] = accounts.count_users(db.engine)
            found["domains"] = accounts.count_domains(db.engine)
            found["keys"], found["key_warnings"] = key_cli.status_part(db.engine)
    except StoreError as error:
        found["database"]["error"] = describe(error)
        return found

    found["database"]["reachable"] = True
    if oldest is not None:
        found["oldest_deferred"] = {
            "message_id": oldest.message_id,
            "recipient": oldest.recipient,
            "age_seconds": round(time.time() - oldest.created_at, 1),
            **timestamps("created_at", oldest.created_at),
            **timestamps("next_attempt_at", oldest.next_attempt_at),
            "attempts": oldest.attempts,
            "last_status": oldest.last_status,
            "last_reply": oldest.last_reply,
        }
    return found


def _print_status(found: dict[str, Any]) -> None:
    site, db, listen = found["site"], found["database"], found["listeners"]
    reach = "reachable" if db["reachable"] else f"UNREACHABLE: {db['error']}"
    inbound = listen["inbound"] + (
        ", TLS required" if listen["inbound_requires_tls"] else ""
    )
    tls = found["tls"]["cert"] + ("" if found["tls"]["present"] else " (MISSING)")
    delivery = found["delivery"]
    rows: list[tuple[str, object]] = [
        ("Site", f"{site['domain']} ({site['hostname']})"),
        ("Settings", site["config"]),
        ("Database", f"{db['url']}: {reach}"),
        ("Submission", listen["submission"]),
        ("Inbound", inbound),
        ("Certificate", tls),
        (
            "Delivery",
            f"{delivery['concurrency']} at once"
            if delivery["enabled"]
            else "off in this process",
        ),
    ]
    if db["reachable"]:
        depth = "  ".join(f"{state} {n}" for state, n in found["queue"].items())
        rows.append(("Queue", depth))
        rows.append(("Oldest deferred", _oldest_line(found["oldest_deferred"])))
        rows.append(("Users", found["users"]))
        rows.append(("Domains", found["domains"]))
        rows.append(("Keys", "  ".join(f"{k} {n}" for k, n in found["keys"].items())))
        rows.extend(("Warning", w["message"]) for w in found["key_warnings"])
    fields(rows)


def _oldest_line(oldest: dict[str, Any] | None) -> str:
    if oldest is None:
        return "none"
    line = (
        f"{oldest['message_id']} to {oldest['recipient']}, "
        f"{span(oldest['age_seconds'])} old"
    )
    if oldest["last_reply"]:
        line += f": {oldest['last_reply']}"
    return line


# -- entry point ------------------------------------------------------------


def _exit_for_click(error: Exception) -> None:
    """Usage errors, aborts and exits of the command-line parser, as one line.

    Typer bundles its own copy of click, so these are recognised by name.
    """
    names = {cls.__name__ for cls in type(error).__mro__}
    if "UsageError" in names:
        ctx = getattr(error, "ctx", None)
        command = ctx.command_path if ctx is not None else "beepmail"
        message = error.format_message()  # type: ignore[attr-defined]
        if message:  # empty when the help was shown for a bare command
            report(Exception(f"{message} (see: {command} --help)"))
        sys.exit(EXIT_USAGE)
    if "Abort" in names:
        sys.exit(EXIT_INTERRUPTED)
    if "Exit" in names:
        sys.exit(int(getattr(error, "exit_code", 0) or 0))


def run() -> None:
    """The `beepmail` program: no traceback ever reaches the user."""
    try:
        result = app(prog_name="beepmail", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except DOMAIN_ERRORS as error:  # raised outside a command, e.g. on import
        report(error)
        sys.exit(EXIT_ERROR)
    except Exception as error:  # noqa: BLE001 - a bug still gets one line, no trace
        _exit_for_click(error)
        first_line = describe(error)[:300]
        typer.echo(
            f"Error: internal error ({type(error).__name__}): {first_line}; "
            "please report it",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    if isinstance(result, int) and result:
        sys.exit(result)

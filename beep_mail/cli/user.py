"""`beepmail user ...`: officers' accounts in the local domains.

Addresses are parsed by the same function the SMTP server uses, so an account
is stored in the one spelling mail will be looked up by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from beep_mail import vault
from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    YesOption,
    actor,
    confirm,
    database,
    fields,
    iso,
    load_settings,
    print_json,
    read_password,
    say,
    table,
    timestamps,
    transaction,
)
from beep_mail.cli.key import (
    PassphraseStdinOption,
    key_errors,
    read_secret,
    within,
)
from beep_mail.config import Settings
from beep_mail.crypto import openpgp
from beep_mail.crypto.passwords import Passwords
from beep_mail.policy.address import parse_envelope_address
from beep_mail.store import accounts, audit
from beep_mail.store import keys as key_store
from beep_mail.store.accounts import AccountError, UserRecord
from beep_mail.store.engine import Database, translated

app = typer.Typer(
    help="Officers' accounts: add, list, show, disable, enable, passwd, recover, "
    "remove.",
    no_args_is_help=True,
)

AddressArgument = Annotated[
    str, typer.Argument(metavar="ADDRESS", help="The user's mail address.")
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from one line of standard input instead of asking.",
    ),
]

MAX_NAME = 200


def user_key(text: str) -> str:
    """The canonical form of a user's address: what the store keys users by."""
    address = parse_envelope_address(text.strip(), smtputf8=True)
    assert address is not None  # only the empty sender parses to None
    if not address.local.isascii():
        raise CLIError("a user's address must have an ASCII part before the @")
    return address.key


def _passwords(settings: Settings) -> Passwords:
    auth = settings.auth
    return Passwords(
        auth.argon2_time_cost, auth.argon2_memory_kib, auth.argon2_parallelism
    )


def _require_local_domain(db: Database, address: str) -> None:
    domain_name = address.rpartition("@")[2]
    with translated():
        local = [d.name for d in accounts.list_domains(db.engine) if d.role == "local"]
    if domain_name not in local:
        served = ", ".join(local) or "none yet: run beepmail init"
        raise CLIError(
            f"{address} is not in a local domain of this gateway (local: {served})"
        )


def _require_user(db: Database, address: str) -> UserRecord:
    with translated():
        found = accounts.get_user(db.engine, address)
    if found is None:
        raise AccountError(f"no user {address}")
    return found


def user_json(record: UserRecord) -> dict[str, Any]:
    return {
        "address": record.address,
        "name": record.display_name,
        "disabled": record.disabled,
        **timestamps("created_at", record.created_at),
    }


@app.command()
def add(
    address: AddressArgument,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    password_stdin: PasswordStdinOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Add an officer, with the default mailboxes."""
    settings = load_settings(config_file)
    key = user_key(address)
    if len(name) > MAX_NAME or not name.isprintable():
        raise CLIError(f"a name has at most {MAX_NAME} printable characters")

    with database(settings) as db:
        _require_local_domain(db, key)
        with translated():
            exists = accounts.get_user(db.engine, key) is not None
        if exists:
            raise AccountError(f"{key} already exists")

        # Hashing and key generation are slow: do them before the transaction.
        password = read_password(password_stdin)
        password_hash, lock = _passwords(settings).new(password)
        secret = vault.make_user_key(settings, key, name, lock)
        with transaction(db) as connection:
            user = vault.create_user(connection, key, name, password_hash, secret,
                                     lock.lock)
            audit.record(connection, actor(), "user.add", key,
                         {"name": name, "key": secret.public.fingerprint})
        del user
    say(f"Added {key} with {len(accounts.DEFAULT_MAILBOXES)} mailboxes.")


@app.command("list")
def list_(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List every user."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        records = accounts.list_users(db.engine)

    if as_json:
        print_json([user_json(record) for record in records])
        return
    table(
        ["Address", "Name", "State", "Created"],
        [
            (
                r.address,
                r.display_name,
                "disabled" if r.disabled else "active",
                iso(r.created_at),
            )
            for r in records
        ],
        empty="No users yet.",
    )


@app.command()
def show(
    address: AddressArgument,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one user and the number of messages in each mailbox."""
    settings = load_settings(config_file)
    key = user_key(address)
    with database(settings) as db:
        record = _require_user(db, key)
        with translated():
            counts = accounts.mailbox_counts(db.engine, record.id)

    found = user_json(record)
    found["mailboxes"] = [{"name": box, "messages": n} for box, n in counts]
    if as_json:
        print_json(found)
        return
    fields(
        [
            ("Address", record.address),
            ("Name", record.display_name or "-"),
            ("State", "disabled" if record.disabled else "active"),
            ("Created", found["created_at"]),
        ]
    )
    say("")
    table(["Mailbox", "Messages"], counts)


def _set_disabled(address: str, config_file: Path | None, disabled: bool) -> None:
    settings = load_settings(config_file)
    key = user_key(address)
    action = "user.disable" if disabled else "user.enable"
    with database(settings) as db, transaction(db) as connection:
        accounts.set_user_disabled(connection, key, disabled)
        audit.record(connection, actor(), action, key)
    say(f"{key} is {'disabled' if disabled else 'enabled'}.")


@app.command()
def disable(address: AddressArgument, config_file: ConfigOption = None) -> None:
    """Refuse the user's sign-ins and new mail for them; stored mail is kept."""
    _set_disabled(address, config_file, True)


@app.command()
def enable(address: AddressArgument, config_file: ConfigOption = None) -> None:
    """Allow the user's logins again."""
    _set_disabled(address, config_file, False)


@app.command()
def passwd(
    address: AddressArgument,
    password_stdin: PasswordStdinOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Reset a user's password (an administrator does not know the old one).

    The user's key is locked by the password, so a reset gives the user a new
    key: new mail is readable at once; mail stored before the reset comes back
    with `beepmail user recover` and the organisation's recovery key.
    """
    settings = load_settings(config_file)
    key = user_key(address)
    with database(settings) as db:
        record = _require_user(db, key)
        password = read_password(password_stdin)
        password_hash, lock = _passwords(settings).new(password)
        secret = vault.make_user_key(settings, key, record.display_name, lock)
        with transaction(db) as connection:
            accounts.set_password_hash(connection, key, password_hash)
            vault.replace_user_key(connection, key, secret, lock.lock)
            audit.record(connection, actor(), "user.passwd", key,
                         {"key": secret.public.fingerprint})
    say(f"Password of {key} reset. The mailbox opens again once the records "
        f"office runs: beepmail user recover {key} --recovery-key FILE")


@app.command()
def recover(
    address: AddressArgument,
    recovery_key: Annotated[
        Path,
        typer.Option(
            "--recovery-key",
            metavar="FILE",
            dir_okay=False,
            help="The organisation's recovery key: its armoured secret part.",
        ),
    ],
    passphrase_stdin: PassphraseStdinOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Give a user back the mail stored before a password reset.

    The recovery key opens the user's mailbox key, which is then wrapped to
    the user's current key. Its secret part is read from FILE, used in memory
    and never stored.
    """
    settings = load_settings(config_file)
    key = user_key(address)
    with key_errors(), database(settings) as db:
        _require_user(db, key)
        secret = _recovery_secret(db, recovery_key)
        passphrase = read_secret(
            "Recovery key passphrase", passphrase_stdin, "--passphrase-stdin"
        )
        try:
            unlocked = secret.unlock(passphrase)
        except openpgp.KeyProblem:
            raise CLIError(f"the passphrase does not open {recovery_key}") from None

        with transaction(db) as connection:
            resealed = vault.recover(within(connection), key, unlocked)
            audit.record(connection, actor(), "user.recover", key, {
                "recovery_key": unlocked.public.fingerprint,
                "resealed": resealed,
            })
    say(f"Recovered the mail of {key}: its mailbox key is wrapped to the current "
        f"key again, and {resealed} entries were re-sealed.")


def _recovery_secret(db: Database, path: Path) -> openpgp.SecretKey:
    """The recovery key from FILE, if it is one this gateway has used."""
    secret = openpgp.load_secret(path.read_text(encoding="ascii", errors="replace"))
    fingerprint = secret.public.fingerprint
    with translated(), db.engine.connect() as connection:
        known = key_store.find_fingerprint(
            connection, fingerprint, kind="recovery", owner=key_store.RECOVERY_OWNER
        )
    if known is None:
        raise CLIError(
            f"{path} holds key {fingerprint}, which is not a recovery key of this "
            "gateway"
        )
    return secret


@app.command()
def remove(
    address: AddressArgument,
    yes: YesOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Remove a user and every message in their mailboxes."""
    settings = load_settings(config_file)
    key = user_key(address)
    with database(settings) as db:
        record = _require_user(db, key)
        with translated():
            messages = sum(n for _, n in accounts.mailbox_counts(db.engine, record.id))
        confirm(f"Remove {key} and the {messages} messages in their mailboxes?", yes)

        with transaction(db) as connection:
            accounts.remove_user(connection, key)
            audit.record(
                connection, actor(), "user.remove", key, {"messages": messages}
            )
    say(f"Removed {key} and {messages} messages.")

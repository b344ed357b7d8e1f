"""`beepmail key ...`: the gateway's own keys and its correspondents' keys.

Our keys (one per local domain, one per user) are made by the gateway and kept
in the store, their secret parts locked. Correspondents' public keys come from
files, such as those dropped in the site's `keys/` folder, and are pinned to
the address or domain they speak for: a different key that arrives later for a
pinned owner waits, pending, until an administrator has checked its
fingerprint with the peer over a second channel and confirms it with `pin`.
Of the organisation's recovery key only the public part is ever stored.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from sqlalchemy import Connection, Engine

from beep_mail import keyring, vault
from beep_mail.cli import common
from beep_mail.cli.common import (
    CLIError,
    ConfigOption,
    JsonOption,
    YesOption,
    actor,
    confirm,
    database,
    fields,
    load_settings,
    print_json,
    say,
    table,
    timestamps,
    transaction,
)
from beep_mail.config import Settings
from beep_mail.crypto import openpgp, passwords
from beep_mail.crypto.openpgp import OpenPGPError, PublicKey
from beep_mail.keyring import KeyringError
from beep_mail.policy.address import normalise_domain, parse_envelope_address
from beep_mail.store import accounts, audit
from beep_mail.store import keys as key_store
from beep_mail.store.engine import Database, translated
from beep_mail.store.keys import RECOVERY_OWNER, KeyRecord, KeyStoreError

app = typer.Typer(
    help="Keys: list, show, import, export, generate, rotate, revoke, pin.",
    no_args_is_help=True,
)

OwnerArgument = Annotated[
    str,
    typer.Argument(
        metavar="ADDRESS|DOMAIN", help="A mail address, or a domain (its domain key)."
    ),
]
FingerprintArgument = Annotated[
    str,
    typer.Argument(
        metavar="FINGERPRINT", help="40 hexadecimal digits; spaces are ignored."
    ),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the user's password from one line of standard input.",
    ),
]
PassphraseStdinOption = Annotated[
    bool,
    typer.Option(
        "--passphrase-stdin",
        help="Read the passphrase from one line of standard input instead of asking.",
    ),
]

# A key file is a few kilobytes; anything this large is not one.
MAX_KEY_FILE = 1024 * 1024
MIN_RECOVERY_PASSPHRASE = 12
MAX_REASON = 200
_FINGERPRINT = re.compile(r"[0-9A-F]{40}")
# vault.reseal_new_entries pages by entry, not by entry still to re-seal:
# one page must hold the whole mailbox for none to be missed.
_EVERY_ENTRY = 2**31 - 1


# -- shared with `user recover` and `status` ------------------------------------


@contextmanager
def key_errors() -> Iterator[None]:
    """Refusals of the key layers, turned into the one line the CLI prints.

    Their messages never hold a passphrase or secret material (see
    docs/dev/openpgp-interface.md), so they are shown as they are.
    """
    try:
        yield
    except (KeyringError, KeyStoreError, OpenPGPError, vault.VaultError) as error:
        raise CLIError(str(error)) from None


def read_secret(label: str, from_stdin: bool, flag: str, *, twice: bool = False) -> str:
    """A password or passphrase: one line of stdin, or typed hidden at a terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CLIError(f"no {label.lower()} on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    if not common.interactive():
        raise CLIError(f"no terminal to type the {label.lower()} on: use {flag}")
    try:
        value = typer.prompt(label, hide_input=True, confirmation_prompt=twice)
    except typer.Abort as error:
        if isinstance(error.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise CLIError("no answer: standard input is closed") from None
    return str(value)


class _Within:
    """One open transaction, shaped like an engine.

    Some vault functions take an engine and open their own transaction; given
    this instead, their writes commit, or roll back, with our audit event.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        yield self._connection

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        yield self._connection


def within(connection: Connection) -> Engine:
    return cast(Engine, _Within(connection))


def expiry_note(expires: float | None, now: float) -> str | None:
    """A warning within the warning period ("expires in N days", "expired")."""
    if expires is None:
        return None
    left = expires - now
    if left <= 0:
        return "expired"
    if left > keyring.EXPIRY_WARNING_DAYS * 86400:
        return None
    days = math.ceil(left / 86400)
    return f"expires in {days} day{'' if days == 1 else 's'}"


def status_part(engine: Engine) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """For `status`: active keys by kind, and what an administrator must act on."""
    records = key_store.list_keys(engine)
    now = time.time()
    counts = {kind: 0 for kind in key_store.KINDS}
    for record in records:
        if record.state == "active":
            counts[record.kind] += 1

    warnings: list[dict[str, Any]] = []
    for record, expires in keyring.expiring(records, now):
        note = expiry_note(expires, now)
        message = f"{record.kind} key {record.fingerprint} of {_owner(record)} {note}"
        warnings.append(_warning(record, expires, message))
    for record in records:
        if record.state == "pending":
            message = (
                f"peer key {record.fingerprint} for {record.owner} is pending: "
                f"beepmail key pin {record.fingerprint} once its fingerprint is checked"
            )
            warnings.append(_warning(record, keyring.key_expiry(record), message))
    if not counts["recovery"]:
        warnings.append(
            {
                "kind": "recovery",
                "owner": RECOVERY_OWNER,
                "fingerprint": None,
                **timestamps("expires_at", None),
                "message": "no recovery key is configured: a password reset would lose "
                "stored mail; beepmail key generate --recovery --out FILE",
            }
        )
    if not counts.get("records"):
        warnings.append(
            {
                "kind": "records",
                "owner": key_store.RECORDS_OWNER,
                "fingerprint": None,
                **timestamps("expires_at", None),
                "message": "no records key is configured: mail is refused (451) until "
                "the archive can be written; beepmail key generate --records --out FILE",
            }
        )
    return counts, warnings


def _warning(record: KeyRecord, expires: float | None, message: str) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "owner": record.owner,
        "fingerprint": record.fingerprint,
        **timestamps("expires_at", expires),
        "message": message,
    }


# -- arguments --------------------------------------------------------------------


def as_fingerprint(text: str) -> str | None:
    compact = "".join(text.split()).upper()
    return compact if _FINGERPRINT.fullmatch(compact) else None


def fingerprint_of(text: str) -> str:
    found = as_fingerprint(text)
    if found is None:
        raise CLIError("a fingerprint is 40 hexadecimal digits")
    return found


def owner_name(text: str) -> str:
    """An address (as mail looks it up) or a domain, in the store's spelling."""
    text = text.strip()
    if "@" in text:
        address = parse_envelope_address(text, smtputf8=True)
        assert address is not None  # only the empty sender parses to None
        return address.key
    return normalise_domain(text)


def local_domains(db: Database) -> list[str]:
    with translated():
        return [d.name for d in accounts.list_domains(db.engine) if d.role == "local"]


def _is_local(owner: str, local: Sequence[str]) -> bool:
    return owner.rpartition("@")[2] in local


def _require_local_domain(db: Database, domain: str) -> None:
    local = local_domains(db)
    if domain not in local:
        served = ", ".join(local) or "none yet: run beepmail init"
        raise CLIError(f"{domain} is not a local domain of this gateway ({served})")


def _all_keys(db: Database) -> list[KeyRecord]:
    with translated():
        return key_store.list_keys(db.engine, include_retired=True)


def _owner(record: KeyRecord) -> str:
    return "the organisation" if record.owner == RECOVERY_OWNER else record.owner


# -- list and show ------------------------------------------------------------------


def _parsed(record: KeyRecord) -> PublicKey | None:
    try:
        return keyring.public(record)
    except (KeyringError, OpenPGPError):
        return None


def key_json(record: KeyRecord, now: float, *, details: bool = False) -> dict[str, Any]:
    parsed = _parsed(record)
    expires = parsed.expires if parsed is not None else record.expires_at
    created = parsed.created if parsed is not None else record.created_at
    live = record.state in ("active", "pending")
    found: dict[str, Any] = {
        "kind": record.kind,
        "owner": record.owner,
        "fingerprint": record.fingerprint,
        "state": record.state,
        "pinned": record.pinned,
        **timestamps("created_at", created),
        **timestamps("expires_at", expires),
        "warning": expiry_note(expires, now) if live else None,
    }
    if details:
        found.update(
            {
                "emails": list(parsed.emails) if parsed is not None else [],
                "can_encrypt": parsed.can_encrypt if parsed is not None else False,
                "can_sign": parsed.can_sign if parsed is not None else False,
                "revoked": parsed.revoked if parsed is not None else None,
                "secret_stored": record.has_secret,
                **timestamps("updated_at", record.updated_at),
            }
        )
    return found


def _expires_cell(found: dict[str, Any]) -> str:
    when = found["expires_at"] or "never"
    return f"{when} ({found['warning']})" if found["warning"] else when


@app.command("list")
def list_(
    all_keys: Annotated[
        bool, typer.Option("--all", help="Also list retired and revoked keys.")
    ] = False,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys in use and keys waiting to be pinned."""
    settings = load_settings(config_file)
    with database(settings) as db, translated():
        records = key_store.list_keys(db.engine, include_retired=all_keys)

    now = time.time()
    found = [key_json(record, now) for record in records]
    if as_json:
        print_json(found)
        return
    table(
        ["Kind", "Owner", "Fingerprint", "State", "Pinned", "Created", "Expires"],
        [
            (
                k["kind"],
                k["owner"],
                k["fingerprint"],
                k["state"],
                k["pinned"],
                k["created_at"],
                _expires_cell(k),
            )
            for k in found
        ],
        empty="No keys yet.",
    )


@app.command()
def show(
    target: Annotated[
        str,
        typer.Argument(
            metavar="ADDRESS|DOMAIN|FINGERPRINT",
            help="Whose keys to show, or one key by its fingerprint.",
        ),
    ],
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show every key of an address or domain, or one key, with its details."""
    settings = load_settings(config_file)
    fingerprint = as_fingerprint(target)
    owner = None if fingerprint else owner_name(target)
    with database(settings) as db:
        records = [
            r for r in _all_keys(db) if r.fingerprint == fingerprint or r.owner == owner
        ]
    if not records:
        raise CLIError(f"no key for {fingerprint or owner}")

    now = time.time()
    found = [key_json(record, now, details=True) for record in records]
    if as_json:
        print_json(found)
        return
    for number, key in enumerate(found):
        if number:
            say("")
        fields(
            [
                ("Fingerprint", key["fingerprint"]),
                ("Kind", key["kind"]),
                ("Owner", key["owner"]),
                ("State", key["state"] + (", pinned" if key["pinned"] else "")),
                ("User IDs", ", ".join(key["emails"]) or "-"),
                ("Encrypt", key["can_encrypt"]),
                ("Sign", key["can_sign"]),
                ("Revoked", key["revoked"]),
                ("Created", key["created_at"]),
                ("Expires", _expires_cell(key)),
                (
                    "Secret part",
                    "stored, locked" if key["secret_stored"] else "not here",
                ),
            ]
        )


# -- export and import --------------------------------------------------------------


@app.command()
def export(
    target: Annotated[
        str,
        typer.Argument(
            metavar="ADDRESS|DOMAIN",
            help="Ours: a local domain or user. Theirs: the stored peer key. "
            "A FINGERPRINT names one key, for instance a revoked one.",
        ),
    ],
    config_file: ConfigOption = None,
) -> None:
    """Write the ASCII-armoured public key to standard output, and nothing else."""
    settings = load_settings(config_file)
    with key_errors(), database(settings) as db:
        record = _to_export(db, target)
        # Re-read from the key itself: what leaves is a public key, whatever
        # the row holds.
        armored = keyring.public(record).armored
    typer.echo(armored, nl=not armored.endswith("\n"))


def _to_export(db: Database, target: str) -> KeyRecord:
    fingerprint = as_fingerprint(target)
    if fingerprint is not None:
        for record in reversed(_all_keys(db)):
            if record.fingerprint == fingerprint:
                return record
        raise CLIError(f"no key {fingerprint}")

    owner = owner_name(target)
    local = local_domains(db)
    if "@" not in owner and owner in local:
        kind = "domain"
    elif _is_local(owner, local):
        kind = "user"
    else:
        kind = "peer"
    with translated(), db.engine.connect() as connection:
        active = key_store.active_key(connection, kind, owner)
    if active is None:
        raise CLIError(f"no active {kind} key for {owner}")
    return active


@app.command("import")
def import_(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="FILE|DIR",
            help="A key file, or a folder: every .asc file in it.",
        ),
    ],
    pin: Annotated[
        bool,
        typer.Option("--pin", help="Pin each key to its owner: the key to trust."),
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            metavar="ADDRESS|DOMAIN",
            help="Whose keys these are; by default read from their user IDs.",
        ),
    ] = None,
    recovery: Annotated[
        bool,
        typer.Option(
            "--recovery", help="The organisation's recovery key (public part)."
        ),
    ] = False,
    records: Annotated[
        bool,
        typer.Option(
            "--records", help="The records office's key, for the archive (public part)."
        ),
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Import correspondents' public keys (never a secret key)."""
    settings = load_settings(config_file)
    loaded = [(path, key) for path in key_files(source) for key in read_keys(path)]
    if recovery and records:
        raise CLIError("give --recovery or --records, not both")
    if recovery or records:
        _import_recovery(settings, loaded, owner, "records" if records else "recovery")
        return

    forced = owner_name(owner) if owner is not None else None
    with key_errors(), database(settings) as db:
        plan = _plan(loaded, forced, local_domains(db), pin)
        done: list[tuple[str, keyring.PeerImport]] = []
        with transaction(db) as connection:
            for path, key, who in plan:
                try:
                    result = keyring.store_peer_key(connection, key, who, pin=pin)
                except KeyringError as error:
                    raise CLIError(f"{path}: {error}") from None
                audit.record(
                    connection,
                    actor(),
                    "key.import",
                    who,
                    {
                        "kind": "peer",
                        "fingerprint": key.fingerprint,
                        "state": result.record.state,
                        "pinned": result.record.pinned,
                        "update": result.update,
                        "file": str(path),
                    },
                )
                done.append((who, result))
    for who, result in done:
        say(_imported_line(who, result))


def key_files(source: Path) -> list[Path]:
    if not source.is_dir():
        return [source]  # a missing file is reported when it is opened
    found = sorted(
        path
        for path in source.iterdir()
        if path.suffix.lower() == ".asc" and path.is_file()
    )
    if not found:
        raise CLIError(f"{source}: no .asc files in this folder")
    return found


def read_keys(path: Path) -> list[PublicKey]:
    """The public keys of one file; a secret key is refused, not skipped."""
    with path.open("rb") as stream:
        data = stream.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise CLIError(f"{path}: too large to be a key file")
    try:
        return openpgp.load_public(data)
    except OpenPGPError as error:
        raise CLIError(f"{path}: {error}") from None


def _plan(
    loaded: Sequence[tuple[Path, PublicKey]],
    forced: str | None,
    local: Sequence[str],
    pin: bool,
) -> list[tuple[Path, PublicKey, str]]:
    """Each key with its owners, refusing keys for what this gateway serves."""
    plan: list[tuple[Path, PublicKey, str]] = []
    for path, key in loaded:
        owners = [forced] if forced is not None else keyring.owners_of(key)
        if not owners:
            raise CLIError(
                f"{path}: key {key.fingerprint} has no mail address in its user "
                "IDs: say whose it is with --owner ADDRESS|DOMAIN"
            )
        for who in owners:
            if _is_local(who, local):
                raise CLIError(
                    f"{path}: key {key.fingerprint} is for {who}, which this "
                    "gateway serves: its keys are made here, never imported"
                )
            if all((k.fingerprint, o) != (key.fingerprint, who) for _, k, o in plan):
                plan.append((path, key, who))

    if pin:
        # Pinning two keys to one owner would keep whichever came last.
        for _, _, who in plan:
            others = {k.fingerprint for _, k, o in plan if o == who}
            if len(others) > 1:
                raise CLIError(
                    f"{len(others)} different keys for {who} in this import: "
                    "pin one at a time"
                )
    return plan


def _imported_line(who: str, result: keyring.PeerImport) -> str:
    record = result.record
    fpr = record.fingerprint
    if record.state == "pending":
        return (
            f"{who}: {fpr} is pending: confirm with beepmail key pin {fpr} after "
            "checking the fingerprint with the peer over a second channel. Until "
            "then the pinned key stays in use."
        )
    if record.state == "revoked":
        return f"{who}: {fpr} is revoked: it is no longer used."
    verb = "updated" if result.update else "imported"
    if record.state != "active":
        return f"{who}: {verb} {fpr}, which stays {record.state}."
    if record.pinned:
        return f"{who}: {verb} {fpr}, pinned."
    return (
        f"{who}: {verb} {fpr}, not pinned: once its fingerprint is checked, "
        f"beepmail key pin {fpr}"
    )


def _import_recovery(
    settings: Settings, loaded: Sequence[tuple[Path, PublicKey]], owner: str | None,
    kind: str = "recovery",
) -> None:
    if owner is not None:
        raise CLIError(f"--{kind} takes no --owner: the organisation owns that key")
    if len(loaded) != 1:
        raise CLIError(f"--{kind} needs exactly one key; found {len(loaded)}")
    path, key = loaded[0]

    with key_errors(), database(settings) as db, transaction(db) as connection:
        done = keyring.install_recovery_key(connection, key, kind)
        if done.changed:
            audit.record(
                connection,
                actor(),
                "key.import",
                kind,
                {
                    "kind": kind,
                    "fingerprint": key.fingerprint,
                    "retired": [r.fingerprint for r in done.retired],
                    "file": str(path),
                },
            )
    _say_recovery(done, kind)


def _say_recovery(done: keyring.Installed, kind: str = "recovery") -> None:
    fpr = done.record.fingerprint
    if kind == "records":
        say(f"Records key {fpr} is active: archive entries are encrypted to it."
            if done.changed else f"{fpr} is already the active records key.")
        return
    if not done.changed:
        say(f"{fpr} is already the active recovery key; nothing changed.")
        return
    say(
        f"Recovery key {fpr} is active: new mail and new mailbox keys are "
        "encrypted to it."
    )
    for old in done.retired:
        say(
            f"The previous recovery key {old.fingerprint} is retired. Mailbox keys "
            "made before now stay wrapped to it until re-wrapped (beepmail key "
            "rotate ADDRESS re-wraps one): keep its secret part until then."
        )


# -- pin ----------------------------------------------------------------------------


@app.command("pin")
def pin_(fingerprint: FingerprintArgument, config_file: ConfigOption = None) -> None:
    """Confirm a correspondent's key, after checking its fingerprint with them."""
    settings = load_settings(config_file)
    fpr = fingerprint_of(fingerprint)
    with key_errors(), database(settings) as db:
        found = [r for r in _all_keys(db) if r.kind == "peer" and r.fingerprint == fpr]
        if not found:
            raise CLIError(f"no correspondent key {fpr}")
        usable = [r for r in found if r.state != "revoked"]
        problem = (
            keyring.unusable(keyring.public(usable[0])) if usable else "is revoked"
        )
        if problem is not None:
            raise CLIError(f"key {fpr} {problem}: it cannot be pinned")

        done: list[keyring.Installed] = []
        with transaction(db) as connection:
            for who in sorted({record.owner for record in usable}):
                pinned = keyring.pin_owner(connection, fpr, who)
                audit.record(
                    connection,
                    actor(),
                    "key.pin",
                    who,
                    {
                        "fingerprint": fpr,
                        "retired": [r.fingerprint for r in pinned.retired],
                    },
                )
                done.append(pinned)
    for pinned in done:
        say(f"Pinned {fpr} for {pinned.record.owner}.")
        for old in pinned.retired:
            say(f"  {old.fingerprint} for {old.owner} is retired.")


# -- generate -----------------------------------------------------------------------


@app.command()
def generate(
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            metavar="DOMAIN",
            help="A domain key for a local domain that has none.",
        ),
    ] = None,
    recovery: Annotated[
        bool,
        typer.Option(
            "--recovery", help="A new recovery key pair for the organisation."
        ),
    ] = False,
    records: Annotated[
        bool,
        typer.Option(
            "--records", help="A new key pair for the records office (the archive)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            dir_okay=False,
            help="With --recovery or --records: a new file for the secret part "
            "(mode 0600).",
        ),
    ] = None,
    passphrase_stdin: PassphraseStdinOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Make a domain key, or the organisation's recovery or records key pair."""
    if [domain is not None, recovery, records].count(True) != 1:
        raise CLIError("give one of --domain DOMAIN, --recovery --out FILE or "
                       "--records --out FILE")
    settings = load_settings(config_file)
    if domain is not None:
        if out is not None:
            raise CLIError("--out is for --recovery or --records: a domain key "
                           "stays here")
        _generate_domain(settings, normalise_domain(domain))
        return
    kind = "records" if records else "recovery"
    if out is None:
        raise CLIError(f"--{kind} needs --out FILE for the secret part")
    _generate_recovery(settings, out, passphrase_stdin, kind)


def _generate_domain(settings: Settings, name: str) -> None:
    with key_errors(), database(settings) as db:
        _require_local_domain(db, name)
        with translated(), db.engine.connect() as connection:
            _refuse_second_domain_key(connection, name)
        secret = keyring.make_domain_key(settings, name)  # slow: before the writing
        with transaction(db) as connection:
            _refuse_second_domain_key(connection, name)
            done = keyring.install_domain_key(connection, name, secret)
            audit.record(
                connection,
                actor(),
                "key.generate",
                name,
                {"kind": "domain", "fingerprint": done.record.fingerprint},
            )
    say(f"New domain key for {name}: {done.record.fingerprint}")
    say(f"Peers need it: beepmail key export {name}")


def _refuse_second_domain_key(connection: Connection, name: str) -> None:
    found = key_store.active_key(connection, "domain", name)
    if found is not None:
        raise CLIError(
            f"{name} has a domain key ({found.fingerprint}); to replace it: "
            f"beepmail key rotate {name}"
        )


def _generate_recovery(settings: Settings, out: Path, from_stdin: bool,
                       kind: str = "recovery") -> None:
    if out.exists():
        raise CLIError(f"{out} already exists: name a new file for the secret key")
    passphrase = read_secret(
        "Recovery key passphrase", from_stdin, "--passphrase-stdin", twice=True
    )
    if len(passphrase) < MIN_RECOVERY_PASSPHRASE:
        raise CLIError(
            f"a recovery passphrase needs at least {MIN_RECOVERY_PASSPHRASE} characters"
        )

    with key_errors(), database(settings) as db:
        secret = openpgp.generate(
            f"{kind.title()} key", f"{kind}@{settings.site.domain}",
            passphrase=passphrase,
        )
        # The secret is safe on disk before the gateway starts to depend on it.
        write_secret_file(out, secret.armored)
        try:
            with transaction(db) as connection:
                done = keyring.install_recovery_key(connection, secret.public, kind)
                audit.record(
                    connection,
                    actor(),
                    "key.generate",
                    kind,
                    {
                        "kind": kind,
                        "fingerprint": secret.public.fingerprint,
                        "retired": [r.fingerprint for r in done.retired],
                        "file": str(out),
                    },
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    _say_recovery(done, kind)
    what = "every archived message" if kind == "records" else "every mailbox"
    say(
        f"Its secret part is in {out}, locked by the passphrase. Move it off this "
        f"machine now, to the records office: whoever holds both can read {what}."
    )


def write_secret_file(path: Path, content: str) -> None:
    """A new file that is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# -- rotate -------------------------------------------------------------------------


@app.command()
def rotate(
    target: OwnerArgument,
    password_stdin: PasswordStdinOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Replace a local domain's key, or a user's key (which needs their password)."""
    settings = load_settings(config_file)
    owner = owner_name(target)
    if "@" in owner:
        _rotate_user(settings, owner, password_stdin)
    else:
        _rotate_domain(settings, owner)


def _rotate_domain(settings: Settings, name: str) -> None:
    with key_errors(), database(settings) as db:
        _require_local_domain(db, name)
        with translated(), db.engine.connect() as connection:
            current = key_store.active_key(connection, "domain", name)
        if current is None:
            raise CLIError(
                f"{name} has no domain key: beepmail key generate --domain {name}"
            )
        secret = keyring.make_domain_key(settings, name)
        with transaction(db) as connection:
            done = keyring.install_domain_key(connection, name, secret)
            audit.record(
                connection,
                actor(),
                "key.rotate",
                name,
                {
                    "kind": "domain",
                    "fingerprint": done.record.fingerprint,
                    "retired": [r.fingerprint for r in done.retired],
                },
            )
    say(f"New domain key for {name}: {done.record.fingerprint}")
    for old in done.retired:
        say(
            f"{old.fingerprint} is retired; its public part stays, so what it "
            "signed still verifies."
        )
    say(
        f"Peers must import the new key: beepmail key export {name} (and check "
        "its fingerprint with each peer over a second channel). A running gateway "
        "signs with it once restarted."
    )


def _rotate_user(settings: Settings, address: str, password_stdin: bool) -> None:
    with key_errors(), database(settings) as db:
        with translated():
            user = accounts.get_user(db.engine, address)
        if user is None:
            raise accounts.AccountError(f"no user {address}")
        password = read_secret(
            f"Password of {user.address}", password_stdin, "--password-stdin"
        )
        checked = passwords.check(user.password_hash, password)
        try:
            if checked is None:
                raise openpgp.KeyProblem("wrong password")
            keys = vault.open_keys(db.engine, user.address, checked)
        except openpgp.KeyProblem:
            raise CLIError(
                f"the password does not open the key of {user.address}"
            ) from None
        # The new key is locked as the stored password says, like the old one.
        secret = vault.make_user_key(
            settings, user.address, user.display_name, checked.key_lock
        )

        with transaction(db) as connection:
            # Mail sealed at delivery to the old key moves under the mailbox
            # key first: the new key could not open it.
            resealed = vault.reseal_new_entries(
                within(connection), keys, limit=_EVERY_ENTRY
            )
            done = keyring.rotate_user_key(
                connection, user.address, secret, keys.mailbox_key,
                checked.key_lock.lock,
            )
            audit.record(
                connection,
                actor(),
                "key.rotate",
                user.address,
                {
                    "kind": "user",
                    "fingerprint": done.record.fingerprint,
                    "retired": [r.fingerprint for r in done.retired],
                    "resealed": resealed,
                },
            )
    say(
        f"New key for {user.address}: {done.record.fingerprint}, locked by the "
        "same password; the mailbox key is wrapped to it and to the recovery key."
    )
    for old in done.retired:
        say(f"{old.fingerprint} is retired.")


# -- revoke -------------------------------------------------------------------------

_OURS = ("domain", "user")


@app.command()
def revoke(
    fingerprint: FingerprintArgument,
    reason: Annotated[
        str, typer.Option("--reason", metavar="TEXT", help="Why, for the record.")
    ] = "",
    password_stdin: PasswordStdinOption = False,
    yes: YesOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Revoke a key: ours with a revocation signature; a peer's by distrust."""
    settings = load_settings(config_file)
    fpr = fingerprint_of(fingerprint)
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise CLIError(f"a reason has at most {MAX_REASON} printable characters")

    with key_errors(), database(settings) as db:
        live = _revocable(_all_keys(db), fpr)
        what = ", ".join(f"{r.kind} key of {_owner(r)}" for r in live)
        confirm(f"Revoke {fpr} ({what})? It can never be used again.", yes)
        own = [r for r in live if r.kind in _OURS]
        unlocked = (
            _unlock_for_revocation(settings, own[0], password_stdin) if own else None
        )

        with transaction(db) as connection:
            for record in live:
                if unlocked is not None and record.kind in _OURS:
                    keyring.revoke_own(connection, record, unlocked, reason)
                else:
                    keyring.mark_revoked(connection, record)
                audit.record(
                    connection,
                    actor(),
                    "key.revoke",
                    record.owner,
                    {
                        "kind": record.kind,
                        "fingerprint": fpr,
                        "reason": reason,
                        "signed": record.kind in _OURS,
                    },
                )
    for record in live:
        say(f"Revoked {fpr}, {record.kind} key of {_owner(record)}.")
    if own:
        say(f"Peers must learn of it: beepmail key export {fpr}")
    else:
        say("It is no longer used to encrypt to or to verify signatures.")


def _revocable(records: Sequence[KeyRecord], fpr: str) -> list[KeyRecord]:
    found = [r for r in records if r.fingerprint == fpr]
    if not found:
        raise CLIError(f"no key {fpr}")
    live = [r for r in found if r.state != "revoked"]
    if not live:
        raise CLIError(f"key {fpr} is already revoked")
    for record in live:
        # Revoking a key still in use would stop the domain signing, the
        # user receiving mail, or new mail being recoverable: replace it first.
        if record.state == "active" and record.kind != "peer":
            steps = {
                "domain": f" (beepmail key rotate {record.owner})",
                "user": f" (beepmail key rotate {record.owner})",
                "recovery": " (import or generate a new recovery key)",
            }
            raise CLIError(
                f"{fpr} is the {record.kind} key in use for {_owner(record)}: "
                f"replace it first{steps.get(record.kind, '')}, then revoke it"
            )
    return live


def _unlock_for_revocation(
    settings: Settings, record: KeyRecord, password_stdin: bool
) -> openpgp.UnlockedKey:
    password = None
    if record.kind == "user":
        password = read_secret(
            f"Password of {record.owner}", password_stdin, "--password-stdin"
        )
    try:
        return keyring.unlock_own(settings, record, password)
    except openpgp.KeyProblem:
        opener = "password" if record.kind == "user" else "site secret"
        raise CLIError(f"the {opener} does not open key {record.fingerprint}") from None

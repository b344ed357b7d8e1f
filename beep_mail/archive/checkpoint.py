"""Signed checkpoints: "the archive had N entries and this head hash", signed.

The gateway signs one at intervals (archive.checkpoint_interval) with a
domain key and keeps it in the store; the records office keeps the rendered
text off the gateway. Whoever later cuts the tail of the archive off, or
rolls it back and writes other entries, cannot make the chain match a
checkpoint kept elsewhere without the domain key, and not the kept one at all.

What is signed is a short statement (`statement`), not the rendered text, so
the text can be re-wrapped or commented without invalidating the signature.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, select

from beep_mail import keyring
from beep_mail.archive.journal import ArchiveError, head
from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import UnlockedKey
from beep_mail.store import audit
from beep_mail.store import keys as key_store
from beep_mail.store.tables import archive_checkpoints

TITLE = "beep-mail archive checkpoint"
_STATEMENT = (
    "beep-mail archive checkpoint v1\nentries {entries}\nhead {head}\ntime {at}\n"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9A-F]{40}")


@dataclass(frozen=True)
class CheckpointRecord:
    id: int | None  # None for a checkpoint read from a file
    at: float  # whole seconds since the epoch
    entries: int  # the number of entries (the last sequence number)
    head_hash: str  # the hash of entry `entries`; GENESIS when 0
    signer: str  # fingerprint of the domain key that signed
    signature: str = field(repr=False)  # armoured detached signature of statement()

    def statement(self) -> bytes:
        """The bytes the signature covers."""
        return _STATEMENT.format(
            entries=self.entries, head=self.head_hash, at=int(self.at)
        ).encode("ascii")


def _record(row: object) -> CheckpointRecord:
    return CheckpointRecord(
        *(
            getattr(row, name)
            for name in ("id", "at", "entries", "head_hash", "signer", "signature")
        )
    )


def make_checkpoint(
    engine: Engine, signer: UnlockedKey, *, actor: str = "gateway"
) -> CheckpointRecord:
    """Sign the archive's current head with a domain key, store it and audit it."""
    with engine.connect() as connection:
        entries, head_hash = head(connection)
    at = float(int(time.time()))
    unsigned = CheckpointRecord(
        None, at, entries, head_hash, signer.public.fingerprint, ""
    )
    try:
        signature = openpgp.sign_detached(unsigned.statement(), signer)
    except openpgp.OpenPGPError as error:
        raise ArchiveError(f"cannot sign the checkpoint: {error}") from None

    with engine.begin() as connection:
        checkpoint_id = connection.execute(
            archive_checkpoints.insert().values(
                at=at,
                entries=entries,
                head_hash=head_hash,
                signer=unsigned.signer,
                signature=signature.decode("ascii"),
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        audit.record(
            connection,
            actor,
            "archive.checkpoint",
            str(entries),
            {"entries": entries, "head_hash": head_hash, "signer": unsigned.signer},
        )
    return CheckpointRecord(
        int(checkpoint_id),
        at,
        entries,
        head_hash,
        unsigned.signer,
        signature.decode("ascii"),
    )


def latest(engine: Engine) -> CheckpointRecord | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(archive_checkpoints)
            .order_by(archive_checkpoints.c.id.desc())
            .limit(1)
        ).first()
    return _record(row) if row is not None else None


def stored(connection: Connection) -> list[CheckpointRecord]:
    """Every checkpoint in the store, oldest first."""
    rows = connection.execute(
        select(archive_checkpoints).order_by(archive_checkpoints.c.id)
    )
    return [_record(row) for row in rows]


def signature_problem(connection: Connection, cp: CheckpointRecord) -> str | None:
    """Why the signature does not hold, or None when a domain key of ours made it.

    Any domain key, active or retired, counts: checkpoints outlive key changes.
    """
    record = key_store.find_fingerprint(connection, cp.signer, kind="domain")
    if record is None or record.state not in ("active", "retired"):
        return f"its signer {cp.signer} is not a domain key of this gateway"
    try:
        key = keyring.public(record)
        # Judged as of the checkpoint's own time: a domain key that has expired
        # since still vouches for what it signed while it was valid.
        signer = openpgp.verify_detached(cp.statement(), cp.signature, [key],
                                         now=cp.at)
    except (keyring.KeyringError, openpgp.OpenPGPError):
        signer = None
    if signer == record.fingerprint:
        return None
    return f"its signature by {cp.signer} does not verify"


# -- the text a clerk keeps -----------------------------------------------------------


def render_time(at: float) -> str:
    """A checkpoint's time as people read it: ISO 8601, UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(int(at), datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def render(cp: CheckpointRecord) -> str:
    """A self-contained text block to keep off the gateway."""
    return (
        f"{TITLE}\n"
        f"Entries: {cp.entries}\n"
        f"Head: {cp.head_hash}\n"
        f"Time: {render_time(cp.at)}\n"
        f"Signer: {cp.signer}\n"
        "\n"
        "Check with: beepmail archive verify --checkpoint FILE\n"
        "\n"
        f"{cp.signature.strip()}\n"
    )


def parse(text: str) -> CheckpointRecord:
    """A checkpoint from its rendered text; ArchiveError naming what is wrong."""
    if TITLE not in text:
        raise ArchiveError("not a beep-mail archive checkpoint")
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in ("Entries", "Head", "Time", "Signer"):
            values.setdefault(name, value.strip())
    missing = [n for n in ("Entries", "Head", "Time", "Signer") if n not in values]
    if missing:
        raise ArchiveError(f"the checkpoint has no {missing[0]} line")
    begin = text.find("-----BEGIN PGP SIGNATURE-----")
    end_line = "-----END PGP SIGNATURE-----"
    end = text.find(end_line, begin)
    if begin < 0 or end < 0:
        raise ArchiveError("the checkpoint has no signature")

    entries, head_hash = values["Entries"], values["Head"].lower()
    signer = values["Signer"].replace(" ", "").upper()
    if not entries.isdigit():
        raise ArchiveError("the checkpoint's Entries line is not a number")
    if not _HEX64.fullmatch(head_hash):
        raise ArchiveError("the checkpoint's Head line is not a SHA-256 hash")
    if not _FINGERPRINT.fullmatch(signer):
        raise ArchiveError("the checkpoint's Signer line is not a key fingerprint")
    try:
        moment = datetime.datetime.fromisoformat(values["Time"])
    except ValueError:
        raise ArchiveError("the checkpoint's Time line is not a time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return CheckpointRecord(
        None,
        float(int(moment.timestamp())),
        int(entries),
        head_hash,
        signer,
        text[begin : end + len(end_line)] + "\n",
    )

"""Writing the archive: one sealed, chained entry per accepted message.

`seal` encrypts the message to the records key (CPU only, run it off the
event loop); `append` writes the entry inside the transaction that accepts
the message, so the message is archived if and only if it was accepted.

Each entry's hash covers the previous entry's hash, its sequence number and
its metadata, and the SHA-256 of its sealed content, but not the content
itself: a purge clears the content and the chain still verifies. Hold and
purge fields are outside the hash; changes to them are audited instead.

On PostgreSQL, writers of the archive lock archive_entries before
audit_events (as purge and hold do): a transaction that appends an entry and
records an audit event must do it in that order, or two of them can deadlock.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from beep_mail import keyring
from beep_mail.config import Settings
from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import PublicKey
from beep_mail.store import keys as key_store
from beep_mail.store.keys import RECORDS_OWNER
from beep_mail.store.tables import archive_entries

GENESIS = "0" * 64
DIRECTIONS = ("inbound", "outbound", "local")
DAY = 86400.0
_CHAIN_VERSION = "beep-mail archive v1"


class ArchiveError(Exception):
    """An archive request that cannot be done; the message says why."""


@dataclass(frozen=True)
class Sealed:
    """A message sealed for the archive; repr never shows the ciphertext."""

    ciphertext: bytes = field(repr=False)  # binary OpenPGP, to the records key
    sha256: str  # hex SHA-256 of the plaintext
    content_sha256: str  # hex SHA-256 of ciphertext
    size: int  # plaintext size in bytes


def seal(plaintext: bytes, records_key: PublicKey) -> Sealed:
    """Encrypt a message to the records key. CPU only: no database."""
    try:
        ciphertext = openpgp.encrypt(plaintext, [records_key], armor=False)
    except openpgp.OpenPGPError as error:
        raise ArchiveError(f"cannot seal to the records key: {error}") from None
    return Sealed(
        ciphertext=ciphertext,
        sha256=hashlib.sha256(plaintext).hexdigest(),
        content_sha256=hashlib.sha256(ciphertext).hexdigest(),
        size=len(plaintext),
    )


def records_key(connection: Connection) -> PublicKey:
    """The active records key; ArchiveError when there is none or it cannot encrypt."""
    record = key_store.active_key(connection, "records", RECORDS_OWNER)
    if record is None:
        raise ArchiveError(
            "no records key is configured: the archive cannot be "
            "written until the records office's public key is added"
        )
    try:
        key = keyring.public(record)
        openpgp.check_encryption_key(key)
    except (keyring.KeyringError, openpgp.OpenPGPError) as error:
        raise ArchiveError(
            f"the records key {record.fingerprint} cannot be used: {error}"
        ) from None
    return key


# -- retention ---------------------------------------------------------------------


def _rules(settings: Settings) -> dict[tuple[str, str], int]:
    """The retention rules as (domain, direction) -> days, lower case.

    A rule without a colon names a domain in any direction.
    """
    rules: dict[tuple[str, str], int] = {}
    for key, days in settings.archive.retention.items():
        domain, sep, direction = key.strip().lower().rpartition(":")
        if not sep:
            domain, direction = direction, "*"
        rules[(domain.strip() or "*", direction.strip() or "*")] = days
    return rules


def retention_days(settings: Settings, direction: str, domain: str | None) -> int:
    """Days for one domain: "dom:dir" > "dom:*" > "*:dir" > "*:*" > retention_days."""
    rules = _rules(settings)
    direction = direction.lower()
    candidates = [("*", direction), ("*", "*")]
    if domain:
        domain = domain.lower().rstrip(".")
        candidates = [(domain, direction), (domain, "*"), *candidates]
    for candidate in candidates:
        if candidate in rules:
            return rules[candidate]
    return settings.archive.retention_days


def retain_until(
    settings: Settings, direction: str, domains: Sequence[str], at: float
) -> float:
    """When an entry may be purged: the longest retention over its domains."""
    days = max(
        (retention_days(settings, direction, d) for d in domains),
        default=retention_days(settings, direction, None),
    )
    return at + days * DAY


# -- the chain -----------------------------------------------------------------------


def entry_hash(
    prev_hash: str,
    seq: int,
    at: float,
    direction: str,
    queue_id: str,
    mail_from: str,
    recipients: str,
    message_id_header: str | None,
    size: int,
    sha256: str,
    decision: str,
    content_sha256: str,
) -> str:
    """The chain hash of one entry; `recipients` is the stored JSON text."""
    fields: list[Any] = [
        _CHAIN_VERSION,
        prev_hash,
        seq,
        repr(float(at)),
        direction,
        queue_id,
        mail_from,
        recipients,
        message_id_header,
        size,
        sha256,
        decision,
        content_sha256,
    ]
    encoded = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def row_hash(row: Any, *, seq: int | None = None) -> str:
    """The hash a stored row should carry (at another seq, when given)."""
    return entry_hash(
        row.prev_hash,
        row.seq if seq is None else seq,
        row.at,
        row.direction,
        row.queue_id,
        row.mail_from,
        row.recipients,
        row.message_id_header,
        row.size,
        row.sha256,
        row.decision,
        row.content_sha256,
    )


# Statements of every accepted message, built once (see store/keys.py).
_HEAD = (
    select(archive_entries.c.seq, archive_entries.c.hash)
    .order_by(archive_entries.c.seq.desc())
    .limit(1)
)
_INSERT_ENTRY = archive_entries.insert()


def head(connection: Connection) -> tuple[int, str]:
    """(sequence number of the last entry, its hash); (0, GENESIS) when empty."""
    last = connection.execute(_HEAD).first()
    return (0, GENESIS) if last is None else (int(last.seq), str(last.hash))


def append(
    connection: Connection,
    sealed: Sealed,
    *,
    direction: str,
    queue_id: str,
    mail_from: str,
    recipients: Sequence[str],
    message_id_header: str | None,
    decision: str,
    retain_until: float,
    at: float | None = None,
) -> int:
    """Add one entry in the caller's transaction; its sequence number."""
    if direction not in DIRECTIONS:
        raise ArchiveError(f"unknown direction {direction!r}")
    at = time.time() if at is None else float(at)
    recipients_json = json.dumps(list(recipients), ensure_ascii=False)
    message_id = (message_id_header or "")[:998] or None
    decision = decision[:500]

    if connection.dialect.name == "postgresql":
        # Serialise writers so that two entries never chain to the same parent.
        connection.exec_driver_sql("LOCK TABLE archive_entries IN EXCLUSIVE MODE")
    last_seq, prev_hash = head(connection)
    seq = last_seq + 1
    digest = entry_hash(
        prev_hash,
        seq,
        at,
        direction,
        queue_id,
        mail_from,
        recipients_json,
        message_id,
        sealed.size,
        sealed.sha256,
        decision,
        sealed.content_sha256,
    )
    connection.execute(
        _INSERT_ENTRY,
        {
            "seq": seq,
            "at": at,
            "direction": direction,
            "queue_id": queue_id,
            "mail_from": mail_from,
            "recipients": recipients_json,
            "message_id_header": message_id,
            "size": sealed.size,
            "sha256": sealed.sha256,
            "decision": decision,
            "content": sealed.ciphertext,
            "content_sha256": sealed.content_sha256,
            "retain_until": retain_until,
            "prev_hash": prev_hash,
            "hash": digest,
        },
    )
    return seq

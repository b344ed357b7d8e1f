"""The schema, declared once with SQLModel; migrations are generated from it.

Times are UTC seconds since the epoch (floats): they compare the same way on
SQLite and PostgreSQL and need no time-zone handling in queries.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(unique=True, max_length=254)
    display_name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=500)
    disabled: bool = Field(default=False)
    created_at: float


class Domain(SQLModel, table=True):
    """A domain we serve (role local) or correspond with (role peer).

    A peer row with allowed=False is an explicit refusal that overrides a
    wildcard admitting it.
    """

    __tablename__ = "domains"

    name: str = Field(primary_key=True, max_length=256)
    role: str = Field(default="peer", max_length=10)
    allowed: bool = Field(default=True)
    next_hop: str | None = Field(default=None, max_length=300)
    tls: str = Field(default="required", max_length=20)
    encryption: str = Field(default="required", max_length=20)
    created_at: float
    updated_at: float


class Message(SQLModel, table=True):
    """A message accepted for delivery: the content the queue rows deliver."""

    __tablename__ = "messages"

    id: str = Field(primary_key=True, max_length=32)
    received_at: float
    direction: str = Field(max_length=10)
    mail_from: str = Field(max_length=254)
    size: int
    message_id_header: str | None = Field(default=None, max_length=998)
    transfer_id: str | None = Field(default=None, max_length=300)
    auth_user: str | None = Field(default=None, max_length=254)
    client_addr: str | None = Field(default=None, max_length=64)
    # Dropped once every recipient reached a final state: the queue keeps only
    # what delivery needs. `content` is what goes to next hops (PGP/MIME when
    # the policy says so); `local_content` is what local recipients get, sealed
    # to their keys and the recovery key, so the queue holds no plaintext.
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    local_content: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # For recipients waiting for their key: sealed to our domain key, apart from
    # the local copy, so that a local user's copy never opens with it.
    held_content: bytes | None = Field(default=None, sa_column=Column(LargeBinary))


class QueueEntry(SQLModel, table=True):
    """One recipient of one message, and where its delivery stands."""

    __tablename__ = "queue"
    __table_args__ = (
        Index("ix_queue_due", "state", "next_attempt_at"),
        Index("ix_queue_message", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="messages.id", max_length=32)
    recipient: str = Field(max_length=254)
    domain: str = Field(max_length=256)
    route: str = Field(max_length=10)
    state: str = Field(max_length=12)
    attempts: int = Field(default=0)
    created_at: float
    next_attempt_at: float
    expires_at: float
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: float | None = None
    last_status: str | None = Field(default=None, max_length=12)
    last_reply: str | None = Field(default=None, max_length=1000)
    updated_at: float


class Mailbox(SQLModel, table=True):
    """An IMAP folder of one user."""

    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id")
    name: str = Field(max_length=500)
    special_use: str | None = Field(default=None, max_length=20)
    # IMAP wants it to grow; seconds since the epoch pass 2**31 in 2038.
    uidvalidity: int = Field(sa_column=Column(BigInteger, nullable=False))
    uidnext: int = Field(default=1)
    subscribed: bool = Field(default=True)
    created_at: float
    # CONDSTORE (RFC 7162): the highest mod-sequence given in this mailbox.
    # Every change to its messages (new, flags, expunged) takes the next one.
    highestmodseq: int = Field(default=1, sa_column=Column(
        BigInteger, nullable=False, server_default="1"))


class MailboxEntry(SQLModel, table=True):
    """A message in a mailbox.

    delivery_key makes delivery idempotent: a delivery attempt that is
    repeated after a crash finds its own earlier entry instead of adding a
    second copy.
    """

    __tablename__ = "mailbox_entries"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uid"),
        UniqueConstraint("user_id", "delivery_key"),
        # What SELECT and every refresh read of a whole mailbox, from the
        # index alone: rows themselves are large (content).
        Index("ix_mailbox_entries_listing", "mailbox_id", "uid", "user_id", "flags",
              "modseq"),
        # The entries a session must settle, found at SELECT without a scan.
        Index("ix_mailbox_entries_unsettled", "mailbox_id",
              sqlite_where=text("summary IS NULL"),
              postgresql_where=text("summary IS NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    mailbox_id: int = Field(foreign_key="mailboxes.id")
    user_id: int = Field(foreign_key="users.id")
    uid: int
    internal_date: float
    size: int
    flags: str = Field(default="", max_length=1000)
    delivery_key: str | None = Field(default=None, max_length=400)
    # The mod-sequence of the entry's last change (see Mailbox.highestmodseq).
    modseq: int = Field(default=1, sa_column=Column(
        BigInteger, nullable=False, server_default="1"))
    # What FETCH and SEARCH read most (beep_mail.imap.summary), sealed like
    # content; NULL until a session of the owner settles the entry. Before
    # content, as migration 0005 places it on SQLite.
    summary: bytes | None = Field(default=None,
                                  sa_column=Column(LargeBinary, nullable=True))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SearchChunk(SQLModel, table=True):
    """Part of a mailbox's search index (beep_mail.imap.index), sealed.

    The header fields SEARCH reads most, of up to CHUNK_UIDS messages whose
    UIDs share `chunk` (uid // CHUNK_UIDS), decoded and sealed under the
    mailbox key in one blob, so that a search opens a few blobs instead of
    one summary per message. A cache: deleted whenever a message it covers
    leaves the mailbox, rebuilt from the summaries by the next search.
    """

    __tablename__ = "search_chunks"

    mailbox_id: int = Field(foreign_key="mailboxes.id", primary_key=True)
    chunk: int = Field(primary_key=True)
    user_id: int = Field(foreign_key="users.id")
    sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Key(SQLModel, table=True):
    """An OpenPGP key the gateway uses or trusts.

    kind: "domain" (ours: signs outbound, decrypts inbound), "user" (a local
    user's, secret locked by the user's password), "peer" (a correspondent's
    public key, for an address or a whole domain), "recovery" (the
    organisation's; public part only, the secret is kept off the gateway).
    state: "active", "pending" (arrived for a pinned peer, waits for an
    administrator), "retired", "revoked".
    """

    __tablename__ = "keys"
    __table_args__ = (
        UniqueConstraint("kind", "owner", "fingerprint"),
        Index("ix_keys_owner", "kind", "owner", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=10)
    owner: str = Field(max_length=256)
    fingerprint: str = Field(max_length=64)
    state: str = Field(default="active", max_length=10)
    pinned: bool = Field(default=False)
    public_key: str = Field(sa_column=Column(Text, nullable=False))
    secret_key: str | None = Field(default=None, sa_column=Column(Text))
    # How a user's key is locked (beep_mail.crypto.passwords): the Argon2id
    # costs and salt that turn the password into its passphrase; NULL when
    # the passphrase is the password itself (or the site secret, for a
    # domain key). Not secret.
    lock: str | None = Field(default=None, max_length=200)
    created_at: float
    expires_at: float | None = None
    updated_at: float


class MailboxKey(SQLModel, table=True):
    """A user's symmetric mailbox key, wrapped to the user's key and the recovery key."""

    __tablename__ = "mailbox_keys"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    wrapped: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    user_key: str = Field(max_length=64)
    created_at: float


class ArchiveEntry(SQLModel, table=True):
    """One accepted message in the records archive, chained to the one before.

    `content` is the message as written or as received after decryption,
    encrypted to the records key; the gateway cannot read it back. Purging
    clears `content` and keeps the rest, a tombstone: `content_sha256` still
    proves what was there, so the chain verifies across purges.
    """

    __tablename__ = "archive_entries"
    __table_args__ = (
        Index("ix_archive_at", "at"),
        Index("ix_archive_message_id", "message_id_header"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    at: float
    direction: str = Field(max_length=10)
    queue_id: str = Field(max_length=32)
    mail_from: str = Field(max_length=254)
    recipients: str = Field(sa_column=Column(Text, nullable=False))
    message_id_header: str | None = Field(default=None, max_length=998)
    size: int
    sha256: str = Field(max_length=64)
    decision: str = Field(default="", max_length=500)
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    content_sha256: str = Field(max_length=64)
    retain_until: float
    hold_reason: str | None = Field(default=None, sa_column=Column(Text))
    held_at: float | None = None
    purged_at: float | None = None
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class ArchiveCheckpoint(SQLModel, table=True):
    """The archive's entry count and head hash, signed with a domain key."""

    __tablename__ = "archive_checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    at: float
    entries: int
    head_hash: str = Field(max_length=64)
    signer: str = Field(max_length=64)
    signature: str = Field(sa_column=Column(Text, nullable=False))


class AuditEvent(SQLModel, table=True):
    """Who did what, when, from where; each row chained to the one before."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: float
    actor: str = Field(max_length=254)
    action: str = Field(max_length=64)
    target: str = Field(default="", max_length=500)
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    client_addr: str | None = Field(default=None, max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


metadata = SQLModel.metadata
users = User.__table__  # type: ignore[attr-defined]
domains = Domain.__table__  # type: ignore[attr-defined]
messages = Message.__table__  # type: ignore[attr-defined]
queue = QueueEntry.__table__  # type: ignore[attr-defined]
mailboxes = Mailbox.__table__  # type: ignore[attr-defined]
mailbox_entries = MailboxEntry.__table__  # type: ignore[attr-defined]
audit_events = AuditEvent.__table__  # type: ignore[attr-defined]
keys = Key.__table__  # type: ignore[attr-defined]
archive_entries = ArchiveEntry.__table__  # type: ignore[attr-defined]
archive_checkpoints = ArchiveCheckpoint.__table__  # type: ignore[attr-defined]
mailbox_keys = MailboxKey.__table__  # type: ignore[attr-defined]
search_chunks = SearchChunk.__table__  # type: ignore[attr-defined]

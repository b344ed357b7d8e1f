"""Mailboxes and the messages in them, as the IMAP server reads and changes them.

Every function takes the user's id and every query is filtered by it: a
session can name only its own user's mailboxes and messages, whatever else
a mailbox name or a number says. Functions take the engine first, so the
IMAP side calls them through `Database.run`, off the event loop.

UIDs (RFC 3501, 2.3.1.1): a mailbox's `uidnext` only grows; every message
added (delivery, APPEND, COPY, MOVE) takes it under a lock on the mailbox row,
as `queue.store_in_inbox` does, so concurrent sessions and delivery never hand
out one UID twice. A new mailbox's UIDVALIDITY is above every UIDVALIDITY the
user's mailboxes have and above any given before in this process, so a name
that is deleted and created again gets a new one even within one second.

Mod-sequences (RFC 7162, CONDSTORE): a mailbox's `highestmodseq` only grows.
Every command that changes its messages takes the next value under the same
lock as UIDs and gives it to every message it changed (new, flags changed);
an expunge takes one too, so that HIGHESTMODSEQ tells a client something
changed. A STORE that leaves a message's flags as they were does not count
as a change.

Flags are kept as one space-separated string per message. A STORE changes a
whole message set with one UPDATE per flag (per chunk of ranges, so that no
statement outgrows what SQLite parses), never one per message. Content is
copied inside the database (INSERT ... SELECT): sealed blobs never pass
through Python on COPY, and MOVE changes rows in place, which also keeps a
delivered message's delivery key, so a repeated delivery still finds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from beep_mail.store.tables import mailbox_entries, mailboxes, search_chunks

INBOX = "INBOX"
DELIMITER = "/"
SEEN = "\\Seen"
DELETED = "\\Deleted"
MAX_FLAGS_LENGTH = 1000  # the column's width
_CHUNK = 200  # ranges per statement: SQLite parses OR chains as deep trees
# UIDs per part of a mailbox's search index (`search_chunks`): a removal
# costs the next search this many summaries to open again.
CHUNK_UIDS = 1024

Ranges = Sequence[tuple[int, int]]


class MailstoreError(Exception):
    """A request the store cannot do; the subclass says which kind."""


class MailboxNotFound(MailstoreError):
    pass


class MailboxExists(MailstoreError):
    pass


class MailboxRefused(MailstoreError):
    """Allowed by no one: deleting INBOX, renaming a mailbox into itself."""


class FlagsTooLong(MailstoreError):
    pass


@dataclass(frozen=True)
class MailboxRow:
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    subscribed: bool
    highestmodseq: int = 1


@dataclass(frozen=True)
class EntryMeta:
    uid: int
    flags: str
    internal_date: float
    size: int
    modseq: int = 1
    summary: bytes | None = None  # sealed; read only when asked for


@dataclass(frozen=True)
class Counts:
    messages: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


@dataclass(frozen=True)
class View:
    """A selected mailbox as it is now: None when it no longer exists."""

    mailbox: MailboxRow | None
    entries: list[tuple[int, str, int]]  # (UID, flags, mod-sequence)


@dataclass(frozen=True)
class Stored:
    """What a STORE did: the flags and mod-sequences of the messages it looked at.

    `flags` holds every message of the set that exists, changed or not;
    `modseqs` only those it changed; `modified` the UIDs it left alone
    because they changed after the client's UNCHANGEDSINCE.
    """

    flags: dict[int, str]
    modseqs: dict[int, int]
    modified: list[int]


@dataclass(frozen=True)
class Settled:
    """An entry sealed under the mailbox key, with its size and summary."""

    entry_id: int
    content: bytes
    size: int
    summary: bytes


@dataclass(frozen=True)
class Copied:
    uidvalidity: int
    source: list[int]
    target: list[int]


def _row(row: object) -> MailboxRow:
    r = row
    return MailboxRow(r.id, r.name, r.special_use, int(r.uidvalidity),  # type: ignore[attr-defined]
                      int(r.uidnext), bool(r.subscribed),  # type: ignore[attr-defined]
                      int(r.highestmodseq))  # type: ignore[attr-defined]


_COLUMNS = (mailboxes.c.id, mailboxes.c.name, mailboxes.c.special_use,
            mailboxes.c.uidvalidity, mailboxes.c.uidnext, mailboxes.c.subscribed,
            mailboxes.c.highestmodseq)


_NEXT_MODSEQ = (update(mailboxes).where(mailboxes.c.id == bindparam("box"))
                .values(highestmodseq=mailboxes.c.highestmodseq + 1)
                .returning(mailboxes.c.highestmodseq))


def next_modseq(connection: Connection, mailbox_id: int) -> int:
    """Take the mailbox's next mod-sequence; the row stays locked to the commit."""
    return int(connection.execute(_NEXT_MODSEQ, {"box": mailbox_id}).scalar_one())


# -- pieces of queries ------------------------------------------------------------

def _chunks(ranges: Ranges) -> Iterator[Ranges]:
    for start in range(0, len(ranges), _CHUNK):
        yield ranges[start : start + _CHUNK]


def _uid_in(ranges: Ranges) -> ColumnElement[bool]:
    uid = mailbox_entries.c.uid
    singles = [low for low, high in ranges if low == high]
    spans = [uid.between(low, high) for low, high in ranges if low != high]
    if singles:
        spans.append(uid.in_(singles))
    return or_(*spans)


def _contains(connection: Connection, haystack: ColumnElement[str],
              needle: str) -> ColumnElement[bool]:
    """Case-sensitive substring test; SQLite's LIKE ignores case."""
    if connection.dialect.name == "postgresql":
        return func.strpos(haystack, needle) > 0
    return func.instr(haystack, needle) > 0


def _padded() -> ColumnElement[str]:
    padded: ColumnElement[str] = literal(" ") + mailbox_entries.c.flags + literal(" ")
    return padded


def _has_flag(connection: Connection, flag: str) -> ColumnElement[bool]:
    return _contains(connection, _padded(), f" {flag} ")


def _entries_of(user_id: int, mailbox_id: int) -> ColumnElement[bool]:
    return and_(mailbox_entries.c.user_id == user_id,
                mailbox_entries.c.mailbox_id == mailbox_id)


# -- mailboxes --------------------------------------------------------------------

def list_mailboxes(engine: Engine, user_id: int) -> list[MailboxRow]:
    query = (select(*_COLUMNS).where(mailboxes.c.user_id == user_id)
             .order_by(mailboxes.c.name))
    with engine.connect() as connection:
        return [_row(row) for row in connection.execute(query)]


def _find(connection: Connection, user_id: int, name: str,
          lock: bool = False) -> MailboxRow | None:
    query = select(*_COLUMNS).where(mailboxes.c.user_id == user_id,
                                    mailboxes.c.name == name)
    if lock:
        query = query.with_for_update()
    row = connection.execute(query).first()
    return _row(row) if row else None


def _require(connection: Connection, user_id: int, name: str,
             lock: bool = False) -> MailboxRow:
    found = _find(connection, user_id, name, lock)
    if found is None:
        raise MailboxNotFound(name)
    return found


def get_mailbox(engine: Engine, user_id: int, name: str) -> MailboxRow | None:
    with engine.connect() as connection:
        return _find(connection, user_id, name)


_issued: dict[int, int] = {}
_issued_lock = threading.Lock()


def _new_uidvalidity(connection: Connection, user_id: int) -> int:
    highest = connection.execute(
        select(func.max(mailboxes.c.uidvalidity))
        .where(mailboxes.c.user_id == user_id)).scalar() or 0
    with _issued_lock:
        value = max(int(time.time()), int(highest) + 1, _issued.get(user_id, 0) + 1)
        value = min(value, 2**32 - 1)
        _issued[user_id] = value
    return value


def _insert_mailbox(connection: Connection, user_id: int, name: str,
                    uidnext: int = 1) -> None:
    connection.execute(mailboxes.insert().values(
        user_id=user_id, name=name, special_use=None,
        uidvalidity=_new_uidvalidity(connection, user_id), uidnext=uidnext,
        subscribed=True, created_at=time.time()))


def _superiors(name: str) -> list[str]:
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:depth]) for depth in range(1, len(levels))]


def _create_superiors(connection: Connection, user_id: int, name: str) -> None:
    """RFC 3501 6.3.3: the levels above a new name are created too."""
    for superior in _superiors(name):
        if _find(connection, user_id, superior) is None:
            _insert_mailbox(connection, user_id, superior)


def create_mailbox(engine: Engine, user_id: int, name: str) -> MailboxRow:
    with engine.begin() as connection:
        if _find(connection, user_id, name) is not None:
            raise MailboxExists(name)
        _create_superiors(connection, user_id, name)
        _insert_mailbox(connection, user_id, name)
        return _require(connection, user_id, name)


def delete_mailbox(engine: Engine, user_id: int, name: str) -> None:
    """The mailbox and its messages; mailboxes below it stay (RFC 3501 6.3.4)."""
    if name == INBOX:
        raise MailboxRefused("INBOX cannot be deleted")
    with engine.begin() as connection:
        box = _require(connection, user_id, name, lock=True)
        _forget_index(connection, box.id)
        connection.execute(delete(mailbox_entries)
                           .where(_entries_of(user_id, box.id)))
        connection.execute(delete(mailboxes).where(mailboxes.c.user_id == user_id,
                                                   mailboxes.c.id == box.id))


def _below(prefix: str) -> ColumnElement[bool]:
    # An exact prefix test: LIKE would treat "_" as a wildcard, and SQLite's
    # LIKE ignores case.
    return func.substr(mailboxes.c.name, 1, len(prefix)) == prefix


def rename_mailbox(engine: Engine, user_id: int, old: str, new: str) -> None:
    """RFC 3501 6.3.5, INBOX's special meaning included."""
    if new == old or new.startswith(old + DELIMITER):
        raise MailboxRefused("A mailbox cannot be renamed into itself")
    with engine.begin() as connection:
        box = _require(connection, user_id, old, lock=True)
        if _find(connection, user_id, new) is not None:
            raise MailboxExists(new)
        if old == INBOX:
            _rename_inbox(connection, user_id, box, new)
            return
        inferiors = connection.execute(
            select(mailboxes.c.id, mailboxes.c.name)
            .where(mailboxes.c.user_id == user_id, _below(old + DELIMITER))).all()
        targets = [new + name[len(old):] for _, name in inferiors]
        if targets and connection.execute(
                select(func.count()).where(mailboxes.c.user_id == user_id,
                                           mailboxes.c.name.in_(targets))).scalar():
            raise MailboxExists(new)
        _create_superiors(connection, user_id, new)
        connection.execute(update(mailboxes).where(mailboxes.c.id == box.id)
                           .values(name=new))
        for (box_id, _), target in zip(inferiors, targets, strict=True):
            connection.execute(update(mailboxes).where(mailboxes.c.id == box_id)
                               .values(name=target))


def _rename_inbox(connection: Connection, user_id: int, inbox: MailboxRow,
                  new: str) -> None:
    """All of INBOX's messages move to a new mailbox; INBOX stays, empty.

    The messages keep their UIDs, so the new mailbox starts where INBOX's
    UIDs stand; INBOX keeps its UIDVALIDITY and never gives those UIDs again.
    """
    _forget_index(connection, inbox.id)
    _create_superiors(connection, user_id, new)
    _insert_mailbox(connection, user_id, new, uidnext=inbox.uidnext)
    target = _require(connection, user_id, new)
    # The messages keep their mod-sequences too; INBOX lost them all.
    connection.execute(update(mailboxes).where(mailboxes.c.id == target.id)
                       .values(highestmodseq=inbox.highestmodseq))
    next_modseq(connection, inbox.id)
    connection.execute(update(mailbox_entries)
                       .where(_entries_of(user_id, inbox.id))
                       .values(mailbox_id=target.id))


def set_subscribed(engine: Engine, user_id: int, name: str, subscribed: bool) -> None:
    with engine.begin() as connection:
        box = _require(connection, user_id, name)
        connection.execute(update(mailboxes).where(mailboxes.c.id == box.id)
                           .values(subscribed=subscribed))


def counts(engine: Engine, user_id: int, name: str) -> Counts:
    with engine.connect() as connection:
        box = _require(connection, user_id, name)
        total, seen = connection.execute(
            select(func.count(), func.sum(case((_has_flag(connection, SEEN), 1),
                                               else_=0)))
            .where(_entries_of(user_id, box.id))).one()
    return Counts(int(total), int(total) - int(seen or 0), box.uidnext, box.uidvalidity,
                  box.highestmodseq)


# -- a selected mailbox -----------------------------------------------------------

def view(engine: Engine, user_id: int, mailbox_id: int) -> View:
    """The mailbox row and its (uid, flags, modseq), in UID order, read together."""
    e = mailbox_entries.c
    with engine.connect() as connection:
        row = connection.execute(
            select(*_COLUMNS).where(mailboxes.c.user_id == user_id,
                                    mailboxes.c.id == mailbox_id)).first()
        if row is None:
            return View(None, [])
        entries = connection.execute(
            select(e.uid, e.flags, e.modseq).where(_entries_of(user_id, mailbox_id))
            .order_by(e.uid)).all()
    return View(_row(row), [(int(uid), flags, int(modseq))
                            for uid, flags, modseq in entries])


def entries(engine: Engine, user_id: int, mailbox_id: int,
            ranges: Ranges, summaries: bool = False) -> list[EntryMeta]:
    """The entries in `ranges` of UIDs, in UID order; their summaries if asked."""
    e = mailbox_entries.c
    columns = [e.uid, e.flags, e.internal_date, e.size, e.modseq]
    if summaries:
        columns.append(e.summary)
    found: list[EntryMeta] = []
    with engine.connect() as connection:
        for chunk in _chunks(ranges):
            rows = connection.execute(
                select(*columns).where(_entries_of(user_id, mailbox_id), _uid_in(chunk))
                .order_by(e.uid)).all()
            found.extend(EntryMeta(int(r[0]), r[1], float(r[2]), int(r[3]), int(r[4]),
                                   bytes(r[5]) if summaries and r[5] is not None else None)
                         for r in rows)
    return found


def contents(engine: Engine, user_id: int, mailbox_id: int,
             uids: Sequence[int]) -> dict[int, bytes]:
    """Stored (sealed) content by UID."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(mailbox_entries.c.uid, mailbox_entries.c.content)
            .where(_entries_of(user_id, mailbox_id),
                   mailbox_entries.c.uid.in_(list(uids)))).all()
    return {int(uid): bytes(content) for uid, content in rows}


def store_flags(engine: Engine, user_id: int, mailbox_id: int, ranges: Ranges,
                mode: str, flags: Sequence[str],
                unchanged_since: int | None = None) -> Stored:
    """Set ("" mode), add ("+") or remove ("-") flags.

    With `unchanged_since` (CONDSTORE), messages whose mod-sequence is above
    it are left alone and reported as modified (RFC 7162, 3.1.3).
    """
    wanted = list(dict.fromkeys(flags))
    e = mailbox_entries.c
    before: dict[int, tuple[str, int]] = {}
    modified: list[int] = []
    with engine.begin() as connection:
        for chunk in _chunks(ranges):
            where = and_(_entries_of(user_id, mailbox_id), _uid_in(chunk))
            for uid, value, modseq in connection.execute(
                    select(e.uid, e.flags, e.modseq).where(where)):
                if unchanged_since is not None and modseq > unchanged_since:
                    modified.append(int(uid))
                else:
                    before[int(uid)] = (value, int(modseq))
        if modified:
            # Those are left out of every statement below.
            ranges = _ranges_of(sorted(before))
        after: dict[int, str] = {}
        for chunk in _chunks(ranges):
            where = and_(_entries_of(user_id, mailbox_id), _uid_in(chunk))
            _change_flags(connection, where, mode, wanted)
            after.update((int(uid), value) for uid, value in
                         connection.execute(select(e.uid, e.flags).where(where)))
        changed = sorted(uid for uid, value in after.items() if value != before[uid][0])
        modseqs: dict[int, int] = {}
        if changed:
            modseq = next_modseq(connection, mailbox_id)
            for chunk in _chunks(_ranges_of(changed)):
                connection.execute(update(mailbox_entries)
                                   .where(_entries_of(user_id, mailbox_id), _uid_in(chunk))
                                   .values(modseq=modseq))
            modseqs = dict.fromkeys(changed, modseq)
    return Stored(after, modseqs, sorted(modified))


def _ranges_of(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted UIDs as ranges of consecutive numbers."""
    found: list[tuple[int, int]] = []
    for uid in uids:
        if found and uid == found[-1][1] + 1:
            found[-1] = (found[-1][0], uid)
        else:
            found.append((uid, uid))
    return found


def _change_flags(connection: Connection, where: ColumnElement[bool], mode: str,
                  wanted: list[str]) -> None:
    if mode == "":
        value = " ".join(wanted)
        if len(value) > MAX_FLAGS_LENGTH:
            raise FlagsTooLong(value[:40])
        connection.execute(update(mailbox_entries).where(where).values(flags=value))
    elif mode == "+":
        _add_flags(connection, where, wanted)
    else:
        for flag in wanted:
            connection.execute(
                update(mailbox_entries)
                .where(where, _has_flag(connection, flag))
                .values(flags=func.trim(func.replace(_padded(), f" {flag} ", " "))))


def _add_flags(connection: Connection, where: ColumnElement[bool],
               flags: list[str]) -> None:
    longest = connection.execute(
        select(func.max(func.length(mailbox_entries.c.flags))).where(where)).scalar()
    if (longest or 0) + sum(len(flag) + 1 for flag in flags) > MAX_FLAGS_LENGTH:
        raise FlagsTooLong(" ".join(flags)[:40])
    for flag in flags:
        connection.execute(
            update(mailbox_entries)
            .where(where, ~_has_flag(connection, flag))
            .values(flags=func.trim(mailbox_entries.c.flags + literal(" " + flag))))


def expunge(engine: Engine, user_id: int, mailbox_id: int,
            ranges: Ranges | None = None) -> list[int]:
    """Remove the messages flagged \\Deleted (within `ranges`); their UIDs."""
    removed: list[int] = []
    with engine.begin() as connection:
        scopes: list[Ranges | None] = [None]
        if ranges is not None:
            scopes = list(_chunks(ranges))
        for chunk in scopes:
            where = and_(_entries_of(user_id, mailbox_id),
                         _has_flag(connection, DELETED))
            if chunk is not None:
                where = and_(where, _uid_in(chunk))
            uids = [int(uid) for uid in connection.execute(
                select(mailbox_entries.c.uid).where(where)).scalars()]
            if uids:
                connection.execute(delete(mailbox_entries).where(
                    _entries_of(user_id, mailbox_id),
                    mailbox_entries.c.uid.in_(uids)))
            removed.extend(uids)
        if removed:
            next_modseq(connection, mailbox_id)
            # After the mailbox row is locked: an index part written
            # meanwhile by a search that still saw these messages goes too.
            _forget_index(connection, mailbox_id, removed)
    return sorted(removed)


def _take_uids(connection: Connection, user_id: int, name: str,
               count: int) -> tuple[MailboxRow, int, int]:
    """Reserve `count` UIDs in a mailbox, under a lock on its row.

    Returns the mailbox, the first UID and the mod-sequence of the new messages.
    """
    target = _require(connection, user_id, name, lock=True)
    connection.execute(update(mailboxes).where(mailboxes.c.id == target.id)
                       .values(uidnext=mailboxes.c.uidnext + count))
    modseq = next_modseq(connection, target.id) if count else target.highestmodseq
    return target, target.uidnext, modseq


def copy(engine: Engine, user_id: int, mailbox_id: int, uids: Sequence[int],
         target_name: str, move: bool = False) -> Copied:
    """COPY (new rows) or MOVE (the same rows, renumbered) to another mailbox."""
    with engine.begin() as connection:
        present = sorted(int(uid) for uid in connection.execute(
            select(mailbox_entries.c.uid).where(_entries_of(user_id, mailbox_id),
                                                mailbox_entries.c.uid.in_(list(uids))))
            .scalars())
        if move and present:
            next_modseq(connection, mailbox_id)  # an expunge, for the source
            _forget_index(connection, mailbox_id, present)
        target, first, modseq = _take_uids(connection, user_id, target_name, len(present))
        if target.id == mailbox_id and move:
            raise MailboxRefused("A message cannot be moved to the mailbox it is in")
        new = list(range(first, first + len(present)))
        for old_uid, new_uid in zip(present, new, strict=True):
            source = and_(_entries_of(user_id, mailbox_id),
                          mailbox_entries.c.uid == old_uid)
            if move:
                connection.execute(update(mailbox_entries).where(source)
                                   .values(mailbox_id=target.id, uid=new_uid,
                                           modseq=modseq))
            else:
                _copy_row(connection, source, target.id, new_uid, modseq)
    return Copied(target.uidvalidity, present, new)


def _copy_row(connection: Connection, source: ColumnElement[bool], target_id: int,
              uid: int, modseq: int) -> None:
    e = mailbox_entries.c
    connection.execute(mailbox_entries.insert().from_select(
        ["mailbox_id", "user_id", "uid", "internal_date", "size", "flags", "content",
         "summary", "modseq"],
        select(literal(target_id), e.user_id, literal(uid), e.internal_date, e.size,
               e.flags, e.content, e.summary, literal(modseq)).where(source)))


def append(engine: Engine, user_id: int, name: str, content: bytes, size: int,
           flags: Sequence[str], internal_date: float,
           summary: bytes | None = None) -> tuple[int, int]:
    """A new message at the end of a mailbox: (UIDVALIDITY, UID)."""
    value = " ".join(dict.fromkeys(flags))
    if len(value) > MAX_FLAGS_LENGTH:
        raise FlagsTooLong(value[:40])
    with engine.begin() as connection:
        target, uid, modseq = _take_uids(connection, user_id, name, 1)
        connection.execute(mailbox_entries.insert().values(
            mailbox_id=target.id, user_id=user_id, uid=uid,
            internal_date=internal_date, size=size, flags=value, content=content,
            summary=summary, modseq=modseq))
    return target.uidvalidity, uid


# -- the search index (beep_mail.imap.index) -------------------------------------

def index_chunks(engine: Engine, user_id: int, mailbox_id: int) -> dict[int, bytes]:
    """The sealed parts of a mailbox's search index, by chunk number."""
    c = search_chunks.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(c.chunk, c.sealed).where(c.user_id == user_id,
                                            c.mailbox_id == mailbox_id)).all()
    return {int(chunk): bytes(sealed) for chunk, sealed in rows}


def put_index_chunks(engine: Engine, user_id: int, mailbox_id: int,
                     chunks: dict[int, tuple[list[int], bytes]]) -> None:
    """Write parts of the index: each chunk's UIDs and its sealed bytes.

    Under the mailbox row's lock, and only where every UID a part covers is
    still in the mailbox: a part that covers a message removed meanwhile is
    not written, so no index keeps what the mailbox no longer holds.
    """
    with engine.begin() as connection:
        locked = connection.execute(
            select(mailboxes.c.id).where(mailboxes.c.user_id == user_id,
                                         mailboxes.c.id == mailbox_id)
            .with_for_update()).first()
        if locked is None:
            return
        for chunk, (uids, sealed) in chunks.items():
            low = chunk * CHUNK_UIDS
            present = set(connection.execute(
                select(mailbox_entries.c.uid).where(
                    _entries_of(user_id, mailbox_id),
                    mailbox_entries.c.uid.between(low, low + CHUNK_UIDS - 1)))
                .scalars())
            if not present.issuperset(uids):
                continue
            where = and_(search_chunks.c.mailbox_id == mailbox_id,
                         search_chunks.c.chunk == chunk)
            connection.execute(delete(search_chunks).where(where))
            connection.execute(search_chunks.insert().values(
                mailbox_id=mailbox_id, chunk=chunk, user_id=user_id, sealed=sealed))


def _forget_index(connection: Connection, mailbox_id: int,
                  uids: Sequence[int] | None = None) -> None:
    """Delete the index parts that cover these UIDs (all, for None)."""
    where = search_chunks.c.mailbox_id == mailbox_id
    if uids is not None:
        where = and_(where, search_chunks.c.chunk.in_(
            sorted({uid // CHUNK_UIDS for uid in uids})))
    connection.execute(delete(search_chunks).where(where))


# -- entries sealed at delivery, settled by sessions --------------------------

def unsettled(engine: Engine, user_id: int, mailbox_id: int,
              above_uid: int, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """(entry id, content) of entries that have no summary yet.

    Those are the entries delivery sealed to the user's key, those re-sealed
    by recovery, and those stored before summaries were kept: the session
    settles them.
    """
    e = mailbox_entries.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(e.id, e.content)
            .where(_entries_of(user_id, mailbox_id), e.uid > above_uid,
                   e.id > after_id, e.summary.is_(None))
            .order_by(e.id).limit(limit)).all()
    return [(int(entry_id), bytes(content)) for entry_id, content in rows]


def reseal(engine: Engine, user_id: int,
           replacements: Sequence[Settled]) -> None:
    """New content, its true size and its summary for entries."""
    with engine.begin() as connection:
        for done in replacements:
            connection.execute(update(mailbox_entries)
                               .where(mailbox_entries.c.user_id == user_id,
                                      mailbox_entries.c.id == done.entry_id)
                               .values(content=done.content, size=done.size,
                                       summary=done.summary))

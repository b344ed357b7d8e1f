"""Retention and legal hold: what may be purged, and purging it.

An entry's content may be purged once its `retain_until` has passed (set at
journal time from archive.retention), unless it is under legal hold. Purging
clears the content and sets `purged_at`: the rest of the row stays as a
tombstone, and since the chain covers the content's SHA-256 and not the
content, the chain still verifies. Holds and purges are outside the chain;
each run is an audit event instead, in the same transaction.

An entry has at most one hold: holding an entry that is already held keeps
the first hold and its reason, and a release lifts it whatever its reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, update

from beep_mail.archive.journal import ArchiveError
from beep_mail.archive.search import Selection, selected_rows
from beep_mail.store import audit
from beep_mail.store.tables import archive_entries

_CHUNK = 500


@dataclass(frozen=True)
class Change:
    """What a purge, hold or release did (or, for a dry run, would do)."""

    seqs: tuple[int, ...]
    skipped: int = 0  # held entries a purge left, or entries already held

    @property
    def count(self) -> int:
        return len(self.seqs)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return runs(self.seqs)


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted numbers as inclusive runs: 1 2 3 7 -> (1, 3) (7, 7)."""
    found: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if found and seq == found[-1][1] + 1:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found


def _detail(change: Change) -> dict[str, object]:
    seqs = change.seqs
    return {
        "count": change.count,
        "first": min(seqs) if seqs else None,
        "last": max(seqs) if seqs else None,
        "ranges": [list(r) for r in change.ranges],
    }


def _set(connection: Connection, seqs: Sequence[int], **values: object) -> None:
    for start in range(0, len(seqs), _CHUNK):
        chunk = seqs[start : start + _CHUNK]
        connection.execute(
            update(archive_entries)
            .where(archive_entries.c.seq.in_(chunk))
            .values(**values)
        )


def purgeable(connection: Connection, now: float) -> tuple[list[int], int]:
    """(entries whose content may go now, expired entries kept by a hold)."""
    c = archive_entries.c
    expired = (
        select(c.seq, c.held_at)
        .where(c.retain_until <= now, c.purged_at.is_(None))
        .order_by(c.seq)
    )
    if connection.dialect.name == "postgresql":
        # A hold placed meanwhile waits for this purge, and the other way round.
        expired = expired.with_for_update()
    rows = connection.execute(expired).all()
    return [r.seq for r in rows if r.held_at is None], sum(
        1 for r in rows if r.held_at is not None
    )


def purge(engine: Engine, now: float, actor: str, *, dry_run: bool = False) -> Change:
    """Remove the content of expired entries not under hold, leaving tombstones.

    One audit event records the run (count and sequence numbers), even when
    nothing was due; a dry run changes and records nothing.
    """
    if dry_run:
        with engine.connect() as connection:
            seqs, held = purgeable(connection, now)
        return Change(tuple(seqs), held)
    with engine.begin() as connection:
        seqs, held = purgeable(connection, now)
        change = Change(tuple(seqs), held)
        _set(connection, seqs, content=None, purged_at=now)
        audit.record(
            connection,
            actor,
            "archive.purge",
            _target(change),
            {**_detail(change), "kept_by_hold": held, "now": now},
        )
    return change


def _target(change: Change) -> str:
    if not change.seqs:
        return ""
    first, last = min(change.seqs), max(change.seqs)
    return str(first) if first == last else f"{first}-{last}"


def _require(selection: Selection) -> None:
    if selection.empty:
        raise ArchiveError(
            "name the entries: a sequence number, a Message-ID, "
            "a sender, a recipient or dates"
        )


def hold(
    engine: Engine,
    selection: Selection,
    reason: str,
    actor: str,
    *,
    now: float | None = None,
) -> Change:
    """Place a legal hold on the selected entries that are not purged."""
    _require(selection)
    reason = reason.strip()
    if not reason:
        raise ArchiveError("a hold needs a reason")
    now = time.time() if now is None else now
    with engine.begin() as connection:
        rows = list(
            selected_rows(
                connection,
                selection,
                [
                    archive_entries.c.seq,
                    archive_entries.c.held_at,
                    archive_entries.c.purged_at,
                ],
            )
        )
        new = [r.seq for r in rows if r.purged_at is None and r.held_at is None]
        already = sum(1 for r in rows if r.purged_at is None and r.held_at is not None)
        change = Change(tuple(new), already)
        _set(connection, new, hold_reason=reason, held_at=now)
        audit.record(
            connection,
            actor,
            "archive.hold",
            _target(change),
            {
                **_detail(change),
                "reason": reason,
                "already_held": already,
                "selection": selection.describe(),
            },
        )
    return change


def release(engine: Engine, selection: Selection, actor: str) -> Change:
    """Lift the holds on the selected entries."""
    _require(selection)
    with engine.begin() as connection:
        rows = list(
            selected_rows(
                connection,
                selection,
                [
                    archive_entries.c.seq,
                    archive_entries.c.held_at,
                    archive_entries.c.hold_reason,
                ],
            )
        )
        held = [r for r in rows if r.held_at is not None]
        change = Change(tuple(r.seq for r in held))
        reasons = sorted({str(r.hold_reason) for r in held})
        _set(connection, list(change.seqs), hold_reason=None, held_at=None)
        audit.record(
            connection,
            actor,
            "archive.release",
            _target(change),
            {**_detail(change), "reasons": reasons, "selection": selection.describe()},
        )
    return change

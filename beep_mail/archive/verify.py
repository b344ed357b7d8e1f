"""Proving the archive: the chain, the checkpoints, and exports.

`verify_archive` walks the entries in sequence order and recomputes every
hash; the first entry that does not fit is named, with what was done to it:

- altered: a hashed field, the hash itself, or the content (whose SHA-256 no
  longer matches), or content gone without an audited purge;
- removed: a sequence number missing, or an entry linked to a predecessor
  that is no longer there;
- out of order: an entry whose hash fits another position of the chain.

Each checkpoint in the store must carry a valid signature by one of our
domain keys and match the chain at its count. A checkpoint kept off the
gateway (a file) also catches what those cannot, since whoever can rewrite
the database can delete the stored checkpoints too: a tail cut off behind it
(fewer entries than it counts) or rolled back (another entry at its count).

`verify_export` checks a folder written by `export` against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from beep_mail.archive import checkpoint as checkpoints
from beep_mail.archive.checkpoint import CheckpointRecord
from beep_mail.archive.journal import GENESIS, head, row_hash
from beep_mail.store.tables import archive_entries, audit_events

MANIFEST = "MANIFEST.sha256"
INDEX = "INDEX.json"
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
# Content can be large: a few rows at a time.
_BATCH = 32


@dataclass(frozen=True)
class Problem:
    kind: str  # altered, removed, out-of-order, tail-cut, checkpoint, export
    seq: int | None  # the first bad entry, when one can be named
    message: str  # one line for people: "archive entry 17 was altered"


@dataclass(frozen=True)
class ArchiveReport:
    entries: int
    head_hash: str
    purged: int
    held: int
    checkpoints: int  # stored checkpoints verified
    against: CheckpointRecord | None  # the kept checkpoint checked, if any
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    files: int
    entries: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


# -- the chain ------------------------------------------------------------------------


def _altered(seq: int, why: str = "") -> Problem:
    return Problem("altered", seq, f"archive entry {seq} was altered{why}")


def _removed(seq: int) -> Problem:
    return Problem("removed", seq, f"archive entry {seq} was removed")


@dataclass
class _Walk:
    entries: int = 0
    head_hash: str = GENESIS
    purged: int = 0
    held: int = 0
    problem: Problem | None = None


def _purged_by_audit(connection: Connection) -> set[int]:
    """Sequence numbers that audited purge runs removed the content of."""
    covered: set[int] = set()
    rows = connection.execute(
        select(audit_events.c.detail).where(audit_events.c.action == "archive.purge")
    )
    for (detail,) in rows:
        try:
            ranges = json.loads(detail).get("ranges", [])
            for first, last in ranges:
                covered.update(range(int(first), int(last) + 1))
        except (ValueError, TypeError, AttributeError):
            continue  # a damaged event: `audit verify` names it
    return covered


def _content_problem(row: Any) -> str | None:
    if row.content is not None:
        if hashlib.sha256(row.content).hexdigest() != row.content_sha256:
            return "its content does not match its SHA-256"
        return None
    if row.purged_at is None:
        return "its content is gone but it was never purged"
    return None


def _batches(engine: Engine) -> Iterator[list[Any]]:
    """Every entry in sequence order, a few per short transaction.

    Short transactions: a SQLite reader holds the write lock, and verifying a
    large archive must not keep the gateway from accepting mail meanwhile.
    """
    after = None
    while True:
        query = select(archive_entries).order_by(archive_entries.c.seq).limit(_BATCH)
        if after is not None:
            query = query.where(archive_entries.c.seq > after)
        with engine.connect() as connection:
            rows = list(connection.execute(query))
        if not rows:
            return
        yield rows
        after = rows[-1].seq


def _walk(engine: Engine, wanted: set[int]) -> tuple[_Walk, dict[int, str], Any]:
    """Walk the chain; the walk, hashes at the wanted counts, the first misfit row."""
    walk = _Walk()
    at_count: dict[int, str] = {0: GENESIS}
    tombstones: list[int] = []
    misfit = None
    for rows in _batches(engine):
        for row in rows:
            walk.problem, misfit = _check_row(walk, row)
            if walk.problem is not None or misfit is not None:
                break
            walk.entries, walk.head_hash = row.seq, row.hash
            if row.purged_at is not None:
                walk.purged += 1
                tombstones.append(row.seq)
            walk.held += row.held_at is not None
            if row.seq in wanted:
                at_count[row.seq] = row.hash
        if walk.problem is not None or misfit is not None:
            break

    # Read last, so that a purge committed during the walk is covered too.
    with engine.connect() as connection:
        audited = _purged_by_audit(connection)
    unaudited = [seq for seq in tombstones if seq not in audited]
    if unaudited:  # earlier than any problem the walk stopped at
        why = ": its content was removed outside any audited purge"
        walk.problem, misfit = _altered(unaudited[0], why), None
    return walk, at_count, misfit


def _check_row(walk: _Walk, row: Any) -> tuple[Problem | None, Any]:
    """A problem with this row, or the row itself if it does not continue the chain."""
    expected = walk.entries + 1
    if row.seq != expected:
        return _removed(expected), None
    if row_hash(row) != row.hash or row.prev_hash != walk.head_hash:
        return None, row
    why = _content_problem(row)
    return (None if why is None else _altered(row.seq, f": {why}")), None


def _misfit(connection: Connection, row: Any) -> Problem:
    """Why a row does not continue the chain: altered, removed or moved."""
    seq = int(row.seq)
    original = None
    if row_hash(row) == row.hash:
        original = seq
    else:
        last, _ = head(connection)
        for candidate in range(1, max(last, seq) + 2):
            if candidate != seq and row_hash(row, seq=candidate) == row.hash:
                original = candidate
                break
    if original is None:
        return _altered(seq)
    predecessor = connection.execute(
        select(archive_entries.c.seq)
        .where(archive_entries.c.hash == row.prev_hash)
        .limit(1)
    ).first()
    if predecessor is not None or (row.prev_hash == GENESIS and original == 1):
        return Problem("out-of-order", seq, f"archive entry {seq} is out of order")
    if original > seq:
        # Renumbered to close a gap: the entries before it are gone.
        return _removed(seq)
    # Its predecessor was replaced by a row hashed anew, which the walk passed.
    return _altered(max(original - 1, 1))


def _against(
    cp: CheckpointRecord,
    walk: _Walk,
    at_count: dict[int, str],
    connection: Connection,
    kept: bool,
) -> Problem | None:
    name = (
        "the kept checkpoint"
        if kept
        else f"the checkpoint of {checkpoints.render_time(cp.at)}"
    )
    why = checkpoints.signature_problem(connection, cp)
    if why is not None:
        return Problem("checkpoint", None, f"{name} is not valid: {why}")
    if cp.entries > walk.entries:
        return Problem(
            "tail-cut",
            walk.entries + 1,
            f"archive tail cut behind checkpoint: {walk.entries} entries, "
            f"{name} counts {cp.entries}",
        )
    if at_count.get(cp.entries) != cp.head_hash:
        return Problem(
            "tail-cut",
            cp.entries,
            f"archive tail cut behind checkpoint: entry {cp.entries} is "
            f"not the one {name} signed (rolled back)",
        )
    return None


def verify_archive(
    engine: Engine, kept: CheckpointRecord | None = None
) -> ArchiveReport:
    """Recompute the chain and check the stored checkpoints, and `kept` if given."""
    with engine.connect() as connection:
        stored = checkpoints.stored(connection)
    wanted = {cp.entries for cp in stored}
    if kept is not None:
        wanted.add(kept.entries)
    walk, at_count, misfit = _walk(engine, wanted)
    with engine.connect() as connection:
        if misfit is not None:
            walk.problem = _misfit(connection, misfit)

        verified = 0
        for cp in stored:
            if walk.problem is not None:
                break
            walk.problem = _against(cp, walk, at_count, connection, kept=False)
            verified += walk.problem is None
        if walk.problem is None and kept is not None:
            walk.problem = _against(kept, walk, at_count, connection, kept=True)
    return ArchiveReport(
        walk.entries,
        walk.head_hash,
        walk.purged,
        walk.held,
        verified,
        kept,
        walk.problem,
    )


# -- exports --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 from MANIFEST.sha256; ValueError naming a bad line."""
    listed: dict[str, str] = {}
    text = (folder / MANIFEST).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = _MANIFEST_LINE.fullmatch(line)
        name = found.group(2) if found else ""
        if found is None or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"{MANIFEST} line {number} is not '<sha256>  <file>'")
        listed[name] = found.group(1)
    return listed


def _export_problem(message: str) -> Problem:
    return Problem("export", None, message)


def verify_export(folder: Path) -> ExportReport:
    """Check every file of an export against its manifest, and no file more."""
    if not (folder / MANIFEST).is_file():
        return ExportReport(
            folder, 0, 0, _export_problem(f"{folder} has no {MANIFEST}")
        )
    try:
        listed = read_manifest(folder)
    except (ValueError, UnicodeDecodeError) as error:
        return ExportReport(folder, 0, 0, _export_problem(f"{folder}: {error}"))

    for name, digest in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            return ExportReport(
                folder,
                len(listed),
                0,
                _export_problem(f"export file {name} is missing"),
            )
        if sha256_file(path) != digest:
            return ExportReport(
                folder,
                len(listed),
                0,
                _export_problem(f"export file {name} was altered"),
            )
    for path in sorted(folder.iterdir()):
        if path.name != MANIFEST and path.name not in listed:
            return ExportReport(
                folder,
                len(listed),
                0,
                _export_problem(f"export file {path.name} is not in the manifest"),
            )

    entries, problem = _check_index(folder, listed)
    return ExportReport(folder, len(listed), entries, problem)


def _check_index(folder: Path, listed: dict[str, str]) -> tuple[int, Problem | None]:
    """The index agrees with the files: each .eml is its entry's plaintext."""
    if INDEX not in listed:
        return 0, _export_problem(f"export has no {INDEX} in its manifest")
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        entries = list(index["entries"])
        for entry in entries:
            name, sha = str(entry["file"]), str(entry["sha256"])
            if name not in listed:
                return len(entries), _export_problem(
                    f"archive entry {entry['seq']}: its file {name} is not exported"
                )
            if name.endswith(".eml") and listed[name] != sha:
                return len(entries), _export_problem(
                    f"export file {name} is not archive entry {entry['seq']}"
                )
    except (ValueError, KeyError, TypeError):
        return 0, _export_problem(f"export file {INDEX} is not a beep-mail index")

    for name in sorted(
        {str(e["file"]) for e in entries if str(e["file"]).endswith(".mbox")}
    ):
        expected = sum(1 for e in entries if e["file"] == name)
        if _mbox_messages(folder / name) != expected:
            return len(entries), _export_problem(
                f"export file {name} does not hold the {expected} messages of the index"
            )
    return len(entries), None


def _mbox_messages(path: Path) -> int:
    """Messages in an mbox: the "From " lines (others are quoted as ">From ")."""
    with path.open("rb") as stream:
        return sum(1 for line in stream if line.startswith(b"From "))

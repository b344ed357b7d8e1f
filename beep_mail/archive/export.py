"""Exporting archive entries as ordinary mail, decrypted with the records key.

Runs on the clerk's machine: the records secret key is read there and never
reaches the gateway. Each entry is decrypted, checked against the SHA-256
the archive holds for it (an export that does not match is refused), and
written as one `.eml` file (the message exactly as archived) or into one
mbox file that Thunderbird opens as a folder:

- every message starts with a "From SENDER DATE" line and ends with a blank line;
- line ends are LF, as mail programs write mbox files on Unix;
- body lines that begin with "From ", after any number of ">", get one more
  ">" (the mboxrd convention), so no body line can start a new message.

Beside the mail: INDEX.json (the archive metadata of every exported entry
and tombstone), TOMBSTONES.txt (purged entries, which have no content to
export), and MANIFEST.sha256 in `sha256sum` format over every other file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import Engine, select

from beep_mail.archive.journal import ArchiveError
from beep_mail.archive.search import EntryInfo, Selection, search
from beep_mail.archive.verify import INDEX, MANIFEST, sha256_file
from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import UnlockedKey
from beep_mail.store.tables import archive_entries

Format = Literal["mbox", "eml"]
FORMATS: tuple[Format, ...] = ("mbox", "eml")
MBOX = "archive.mbox"
TOMBSTONES = "TOMBSTONES.txt"
Progress = Callable[[int, int], None]  # (entries done, entries in all)

_BATCH = 16
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    messages: int  # entries written as mail
    tombstones: int  # purged entries, listed only
    files: tuple[str, ...]  # every file written, the manifest last


def eml_name(seq: int) -> str:
    return f"{seq:08d}.eml"


def mbox_message(content: bytes, sender: str, at: float) -> bytes:
    """One message as an mbox record: From_ line, LF line ends, quoting, blank line."""
    envelope = "".join(sender.split()) or "MAILER-DAEMON"
    date = time.asctime(time.gmtime(at))
    body = _FROM_LINE.sub(rb">\1", content.replace(b"\r\n", b"\n"))
    if not body.endswith(b"\n"):
        body += b"\n"
    return f"From {envelope} {date}\n".encode() + body + b"\n"


def _contents(
    engine: Engine, seqs: Sequence[int]
) -> Iterator[tuple[int, bytes | None]]:
    """The sealed content of entries, a few per short transaction.

    Short transactions: a SQLite reader holds the write lock, and an export of
    thousands of messages must not keep the gateway from accepting mail.
    """
    for start in range(0, len(seqs), _BATCH):
        chunk = list(seqs[start : start + _BATCH])
        with engine.connect() as connection:
            rows = connection.execute(
                select(archive_entries.c.seq, archive_entries.c.content).where(
                    archive_entries.c.seq.in_(chunk)
                )
            ).all()
        found = {
            int(r.seq): (bytes(r.content) if r.content is not None else None)
            for r in rows
        }
        for seq in chunk:
            yield seq, found.get(seq)


def _open_message(entry: EntryInfo, sealed: bytes, key: UnlockedKey) -> bytes:
    try:
        plain = openpgp.decrypt(sealed, [key], max_size=entry.size + 65536).plaintext
    except openpgp.OpenPGPError as error:
        raise ArchiveError(
            f"archive entry {entry.seq} cannot be decrypted with key "
            f"{key.public.fingerprint}: {error}"
        ) from None
    if hashlib.sha256(plain).hexdigest() != entry.sha256:
        raise ArchiveError(
            f"archive entry {entry.seq} does not match its SHA-256 "
            "once decrypted: export refused"
        )
    return plain


def _create(path: Path) -> BinaryIO:
    """A new file only its owner can read: these are decrypted records."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _prepare(out: Path) -> bool:
    """The output folder, empty; True when it was created here."""
    if out.exists():
        if not out.is_dir():
            raise ArchiveError(f"{out} is not a folder")
        if any(out.iterdir()):
            raise ArchiveError(f"{out} is not empty: export into a new folder")
        return False
    out.mkdir(parents=True, mode=0o700)
    return True


def _entry_json(entry: EntryInfo, file: str | None) -> dict[str, Any]:
    found = asdict(entry)
    found["file"] = file
    return found


def _tombstone_line(entry: EntryInfo) -> str:
    def when(epoch: float | None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch or 0))

    return "\t".join(
        [
            str(entry.seq),
            when(entry.at),
            entry.direction,
            entry.mail_from or "<>",
            entry.message_id_header or "-",
            when(entry.purged_at),
            entry.sha256,
        ]
    )


def export(
    engine: Engine,
    key: UnlockedKey,
    out: Path,
    *,
    fmt: Format = "mbox",
    selection: Selection | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Decrypt the selected entries into `out` (a new or empty folder)."""
    if fmt not in FORMATS:
        raise ArchiveError(f"unknown export format {fmt!r}: mbox or eml")
    selection = selection or Selection()
    entries = search(engine, selection)
    created = _prepare(out)
    written: list[str] = []
    try:
        messages, tombstones = _write_mail(
            engine, key, out, fmt, entries, written, progress
        )
        _write_side_files(out, fmt, key, selection, messages, tombstones, written)
    except BaseException:
        for name in written:
            (out / name).unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    return ExportResult(out, len(messages), len(tombstones), tuple(written))


def _write_mail(
    engine: Engine,
    key: UnlockedKey,
    out: Path,
    fmt: Format,
    entries: list[EntryInfo],
    written: list[str],
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], list[EntryInfo]]:
    by_seq = {entry.seq: entry for entry in entries}
    messages: list[dict[str, Any]] = []
    tombstones: list[EntryInfo] = []
    mbox: BinaryIO | None = None
    try:
        for done, (seq, sealed) in enumerate(_contents(engine, list(by_seq)), 1):
            entry = by_seq[seq]
            if sealed is None:
                tombstones.append(entry)
            else:
                plain = _open_message(entry, sealed, key)
                if fmt == "eml":
                    name = eml_name(seq)
                    written.append(name)
                    with _create(out / name) as stream:
                        stream.write(plain)
                else:
                    if mbox is None:
                        written.append(MBOX)
                        mbox = _create(out / MBOX)
                    name = MBOX
                    mbox.write(mbox_message(plain, entry.mail_from, entry.at))
                messages.append(_entry_json(entry, name))
            if progress is not None:
                progress(done, len(entries))
    finally:
        if mbox is not None:
            mbox.close()
    return messages, tombstones


def _write_side_files(
    out: Path,
    fmt: Format,
    key: UnlockedKey,
    selection: Selection,
    messages: list[dict[str, Any]],
    tombstones: list[EntryInfo],
    written: list[str],
) -> None:
    index = {
        "format": fmt,
        "exported_at": time.time(),
        "records_key": key.public.fingerprint,
        "selection": selection.describe(),
        "entries": messages,
        "tombstones": [_entry_json(entry, None) for entry in tombstones],
    }
    written.append(INDEX)
    with _create(out / INDEX) as stream:
        stream.write(json.dumps(index, indent=2, ensure_ascii=False).encode("utf-8"))

    lines = [
        (
            "# Purged archive entries: their content is gone, their metadata "
            "and SHA-256 remain in the archive."
        ),
        "# seq\ttime\tdirection\tsender\tmessage-id\tpurged\tsha256",
        *(_tombstone_line(entry) for entry in tombstones),
    ]
    written.append(TOMBSTONES)
    with _create(out / TOMBSTONES) as stream:
        stream.write(("\n".join(lines) + "\n").encode("utf-8"))

    manifest = "".join(
        f"{sha256_file(out / name)}  {name}\n" for name in sorted(written)
    )
    written.append(MANIFEST)
    with _create(out / MANIFEST) as stream:
        stream.write(manifest.encode("utf-8"))

"""Mail at rest: a stolen copy of the disk and the database reveals nothing.

The disk-copy test of issue 3: deliver a message with a known subject, body
and attachment (from an officer of ours and from a peer gateway), copy what an
attacker would take, and look for those in every encoding a mail system uses.
Then the owner's side: reading back, re-sealing under the mailbox key, a
password reset with recovery, and how many public-key operations reading a
mailbox costs.

The search helpers here (`letter`, `find_leaks`) serve test_openpgp_flow.py too.
"""

from __future__ import annotations

import base64
import binascii
import email.quoprimime
import imaplib
import json
import random
import re
import shutil
import smtplib
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import SMTP, default
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

from beep_mail import keyring, vault
from beep_mail.crypto import atrest, openpgp, pgpmime
from beep_mail.store import accounts
from beep_mail.store import queue as queue_store
from tests.support import (
    FAST_HASH,
    PASSWORD,
    PEER,
    RECOVERY_PASSPHRASE,
    GatewayThread,
    Site,
    peer_secret,
    submit,
    wait_for,
)

# What must never be found at rest or on the wire: each is distinctive, and
# the text carries Urdu so that every Unicode encoding is exercised.
SUBJECT = "Budget annex for the KESTREL review \u2014 بجٹ کا جائزہ برائے وزارت"
URDU = "یہ خط صرف وزیر کے دفتر کے لیے ہے اور اسے آگے نہ بھیجا جائے۔"
MARK = "The review meets on Thursday in room MARIGOLD-4471, bring the ledgers."
FILENAME = "kestrel-annex-بجٹ-2291.bin"
ATTACHMENT = random.Random(3156).randbytes(3000)
BODY = f"{URDU}\r\n{MARK}\r\n".encode()

SECRET_TEXTS = {
    "subject": SUBJECT,
    "urdu body": URDU,
    "body": MARK,
    "filename": FILENAME,
}


def letter(
    sender: str, rcpt: str, *, subject: str = SUBJECT, attachment: bytes = ATTACHMENT
) -> bytes:
    """The officer's message: UTF-8 subject, 8-bit Urdu text, a binary attachment."""
    entity = EmailMessage(policy=SMTP)
    entity["From"] = sender
    entity["To"] = rcpt
    entity["Date"] = formatdate()
    entity["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    entity.set_content(f"{URDU}\n{MARK}\n", cte="8bit")
    entity.add_attachment(
        attachment, maintype="application", subtype="octet-stream", filename=FILENAME
    )
    return encoded_subject(subject) + entity.as_bytes(policy=SMTP)


def encoded_subject(text: str) -> bytes:
    """A Subject field as mail clients write it: RFC 2047 words, folded.

    Written by hand: the stdlib's folder drops the space between two encoded
    words when it splits a long subject.
    """
    words = [
        base64.b64encode(text[start : start + 15].encode()).decode()
        for start in range(0, len(text), 15)
    ]
    return (
        "Subject: " + "\r\n ".join(f"=?utf-8?b?{word}?=" for word in words) + "\r\n"
    ).encode("ascii")


def parse(data: bytes) -> Message:
    return message_from_bytes(data, policy=default)


def check_letter(data: bytes, attachment: bytes = ATTACHMENT) -> None:
    """The message as the officer reads it: subject, body and attachment intact."""
    parsed = parse(data)
    assert parsed["Subject"] == SUBJECT
    # The Urdu text part, byte for byte as written, CRLF line ends included.
    assert BODY in data
    files = [part for part in parsed.walk() if part.get_filename()]
    assert [part.get_filename() for part in files] == [FILENAME]
    assert files[0].get_payload(decode=True) == attachment


# -- looking for plaintext in every encoding -------------------------------------------


def _windows(text: str | None, data: bytes) -> list[tuple[str | None, bytes]]:
    """The whole secret and overlapping pieces of it: a partial leak is a leak.

    Any run of 24 characters of a text, or 288 bytes of binary data, holds
    a whole piece.
    """
    if text is not None:
        pieces = [text] + [
            text[start : start + 14] for start in range(0, len(text) - 14, 10)
        ]
        return [(piece, piece.encode()) for piece in pieces]
    chunks = [data] + [
        data[start : start + 32] for start in range(0, len(data) - 32, 256)
    ]
    return [(None, chunk) for chunk in chunks]


def forms_of(name: str, secret: str | bytes) -> list[tuple[str, bytes, bool]]:
    """(label, needle, case-insensitive) for every encoding of `secret`."""
    text = secret if isinstance(secret, str) else None
    data = secret.encode() if isinstance(secret, str) else secret
    forms: list[tuple[str, bytes, bool]] = []
    for piece_text, piece in _windows(text, data):
        label = f"{name} [{piece[:12]!r}...]"
        forms.append((f"{label} raw", piece, False))
        for offset in range(3):
            aligned = piece[offset:][: (len(piece) - offset) // 3 * 3]
            if aligned:
                forms.append(
                    (f"{label} base64@{offset}", base64.b64encode(aligned), False)
                )
        forms.append(
            (
                f"{label} quoted-printable",
                binascii.b2a_qp(piece).replace(b"=\n", b""),
                True,
            )
        )
        if piece_text is None:
            continue
        q_word = email.quoprimime.header_encode(piece)
        forms.append(
            (
                f"{label} Q-encoding",
                q_word[len("=?utf-8?q?") : -2].encode("ascii"),
                True,
            )
        )
        forms.append(
            (f"{label} percent", urllib.parse.quote(piece_text).encode(), True)
        )
        forms.append((f"{label} json", json.dumps(piece_text)[1:-1].encode(), True))
        # Case-folded, as the search index keeps header values.
        forms.append((f"{label} case-folded", piece_text.casefold().encode(), False))
        forms.append((f"{label} utf-16-le", piece_text.encode("utf-16-le"), False))
        forms.append((f"{label} utf-16-be", piece_text.encode("utf-16-be"), False))
    return forms


def all_forms(attachment: bytes = ATTACHMENT) -> list[tuple[str, bytes, bool]]:
    forms = [
        form for name, text in SECRET_TEXTS.items() for form in forms_of(name, text)
    ]
    return forms + forms_of("attachment", attachment)


_ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?([bBqQ])\?([^?\s]*)\?=")


def _decoded_words(data: bytes) -> bytes:
    """The text of every RFC 2047 encoded word, joined as a reader joins them."""
    decoded = []
    for match in _ENCODED_WORD.finditer(data):
        kind, text = match.group(1).lower(), match.group(2)
        try:
            if kind == b"b":
                decoded.append(base64.b64decode(text + b"=" * (-len(text) % 4)))
            else:
                decoded.append(
                    email.quoprimime.header_decode(text.decode("ascii")).encode(
                        "latin-1"
                    )
                )
        except (binascii.Error, ValueError):
            continue
    return b"".join(decoded)


def _haystacks(data: bytes) -> dict[str, bytes]:
    """The data as is, unfolded (line breaks and soft breaks gone), and its words."""
    return {
        "": data,
        " unfolded": re.sub(rb"=?\r?\n", b"", data),
        " in encoded words": _decoded_words(data),
    }


def find_leaks(data: bytes, forms: list[tuple[str, bytes, bool]]) -> list[str]:
    """Labels of the forms found in `data`."""
    found = []
    for where, hay in _haystacks(data).items():
        lowered = hay.lower()
        for label, needle, fold_case in forms:
            if (needle.lower() in lowered) if fold_case else (needle in hay):
                found.append(label + where)
    return found


# -- what an attacker takes ------------------------------------------------------------


def sqlite_files(site: Site) -> list[Path]:
    """The database file with its -wal and -shm companions, if the store is SQLite."""
    url = make_url(site.url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return []
    base = Path(url.database)
    return [
        path
        for path in (
            base,
            Path(f"{base}-wal"),
            Path(f"{base}-shm"),
            Path(f"{base}-journal"),
        )
        if path.exists()
    ]


def steal(site: Site, into: Path) -> Path:
    """Copy the site folder and the database files as they are on disk."""
    shutil.copytree(site.root, into / "site")
    for path in sqlite_files(site):
        shutil.copy2(path, into / path.name)
    return into


def leaks_on_disk(folder: Path, forms: list[tuple[str, bytes, bool]]) -> list[str]:
    found: list[str] = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found.extend(
                f"{path.relative_to(folder)}: {label}"
                for label in find_leaks(path.read_bytes(), forms)
            )
    return found


def database_values(engine: Engine) -> Iterator[tuple[str, bytes]]:
    """Every value of every column of every table, as bytes (a stolen database)."""
    tables = inspect(engine).get_table_names()
    with engine.connect() as connection:
        for table in tables:
            result = connection.exec_driver_sql(f'SELECT * FROM "{table}"')
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        data = bytes(value)
                    else:
                        data = str(value).encode("utf-8", "surrogatepass")
                    yield f"{table}.{column}", data


def leaks_in_database(site: Site, forms: list[tuple[str, bytes, bool]],
                      also: tuple[str, ...] = ()) -> list[str]:
    db = site.db()
    try:
        values = list(database_values(db.engine))
    finally:
        db.close()
    # The dump did reach the mail itself, and whatever else the caller names.
    reached = {w for w, _ in values}
    assert {"mailbox_entries.content", "messages.mail_from", *also} <= reached
    return [
        f"{where}: {label}"
        for where, data in values
        for label in find_leaks(data, forms)
    ]


def test_leak_search_finds_every_encoding() -> None:
    """The search itself: each way the letter is written down is found."""
    forms = all_forms()
    written = letter("alice@ministry.gov.example", f"bob@{PEER}")
    found = find_leaks(written, forms)
    assert any(
        label.startswith("subject") and "encoded words" in label for label in found
    )
    assert any(label.startswith("attachment") and "base64" in label for label in found)
    assert any(label.startswith("filename") and "percent" in label for label in found)
    quoted = binascii.b2a_qp(BODY)
    assert find_leaks(quoted, forms_of("urdu body", URDU))
    assert find_leaks(URDU.encode("utf-16-le"), forms_of("urdu body", URDU))
    assert find_leaks(json.dumps(URDU).encode(), forms_of("urdu body", URDU))
    # The attachment inside a longer base64 stream, at each alignment.
    for offset in range(3):
        stream = base64.encodebytes(bytes(offset) + ATTACHMENT + b"tail")
        assert find_leaks(stream, forms_of("attachment", ATTACHMENT)), offset
    assert find_leaks(b"noise" + ATTACHMENT[1000:1300], forms_of("a", ATTACHMENT))
    assert find_leaks(SUBJECT[20:45].encode(), forms_of("s", SUBJECT))


# -- the disk-copy test ----------------------------------------------------------------


def _delivered(site: Site, count: int) -> bool:
    db = site.db()
    try:
        return queue_store.depth_by_state(db.engine)["delivered"] == count
    finally:
        db.close()


def test_disk_copy_reveals_nothing(site: Site, tmp_path: Path) -> None:
    alice, carol = site.add_user("alice"), site.add_user("carol")
    site.allow(PEER, next_hop="localhost:1", tls="required")
    site.trust(PEER, peer_secret().public)
    desk = f"desk@{PEER}"
    # What the peer gateway sends: encrypted to our domain key, signed with its own.
    wire = pgpmime.protect(
        letter(desk, carol), [site.domain_key()], peer_secret().unlock("peer")
    )
    forms = all_forms()

    with GatewayThread(site.settings()) as gateway:
        sent = letter(alice, carol)
        assert submit(site, gateway.submission, alice, [carol], sent) == {}
        with smtplib.SMTP("127.0.0.1", gateway.inbound, timeout=10) as client:
            assert client.sendmail(desk, [carol], wire) == {}
        wait_for(lambda: _delivered(site, 2), what="both messages in carol's INBOX")
        # A copy taken while the gateway runs: WAL and all, mid-flight.
        live = leaks_on_disk(steal(site, tmp_path / "live"), forms)

    stolen = steal(site, tmp_path / "cold")
    cold = leaks_on_disk(stolen, forms)
    assert live == [] and cold == []
    # The search would have seen plaintext anywhere in the copy.
    (stolen / "site" / "var" / "control.eml").write_bytes(letter(alice, carol))
    assert {leak.partition(":")[0] for leak in leaks_on_disk(stolen, forms)} == {
        "site/var/control.eml"
    }
    assert leaks_in_database(site, forms) == []

    # The owner reads both; the peer's message says it was verified.
    got = site.inbox(carol)
    assert len(got) == 2
    for entry in got:
        check_letter(entry)
    verified = b"X-Beepmail-Verification: signature=valid;"
    assert sum(entry.startswith(verified) for entry in got) == 1

    # The first session re-seals them under the mailbox key: still readable,
    # still nothing in clear anywhere.
    db = site.db()
    try:
        keys = vault.open_keys(db.engine, carol, PASSWORD)
        assert vault.reseal_new_entries(db.engine, keys) == 2
    finally:
        db.close()
    assert all(raw.startswith(vault.MAILBOX_SEALED) for raw in site.raw_entries(carol))
    assert site.inbox(carol) == got
    assert leaks_on_disk(steal(site, tmp_path / "resealed"), forms) == []
    assert leaks_in_database(site, forms) == []

    # An IMAP session settles them (their summaries: envelope, structure,
    # header section) and saves a copy to Sent: all of it sealed too.
    with GatewayThread(site.settings()) as gateway:
        with imaplib.IMAP4_SSL("localhost", gateway.service.port("imaps"),
                               ssl_context=site.ssl_context()) as client:
            client.login(carol, PASSWORD)
            assert client.select("INBOX") == ("OK", [b"2"])
            status, data = client.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)")
            assert status == "OK" and len(data) == 2
            # A search by subject writes the search index: sealed too.
            assert client.search(None, "SUBJECT", "x")[0] == "OK"
            assert client.append("Sent", None, None, letter(carol, alice))[0] == "OK"
    assert leaks_on_disk(steal(site, tmp_path / "settled"), forms) == []
    leaks = leaks_in_database(site, forms, also=("search_chunks.sealed",))
    assert leaks == []


# -- the owner's side ------------------------------------------------------------------


def _store(site: Site, address: str, plaintext: bytes, key: str) -> None:
    """Deliver as the delivery worker does: sealed to the user and the recovery key."""
    db = site.db()
    try:
        with db.engine.begin() as connection:
            sealed = vault.seal_for_users(connection, [address], plaintext)
            queue_store.store_in_inbox(connection, address, sealed, key)
    finally:
        db.close()


def _reseal(site: Site, address: str, password: str) -> int:
    db = site.db()
    try:
        keys = vault.open_keys(db.engine, address, password)
        return vault.reseal_new_entries(db.engine, keys)
    finally:
        db.close()


def test_password_reset_needs_the_recovery_key(site: Site) -> None:
    carol = site.add_user("carol")
    first = letter(f"desk@{PEER}", carol)
    second = b"Subject: after the last login\r\n\r\nstill sealed for carol\r\n"
    during = b"Subject: between reset and recovery\r\n\r\nsealed to the new key\r\n"
    _store(site, carol, first, "one")
    assert _reseal(site, carol, PASSWORD) == 1
    _store(site, carol, second, "two")  # sealed for carol's key, not resealed yet

    # An administrator resets the password: a new key, the old one retired.
    new_password = "a brand new password after the reset"
    stored, lock = FAST_HASH.new(new_password)
    secret = vault.make_user_key(site.settings(), carol, "Carol", lock)
    db = site.db()
    try:
        with db.engine.begin() as connection:
            accounts.set_password_hash(connection, carol, stored)
            vault.replace_user_key(connection, carol, secret, lock.lock)
    finally:
        db.close()
    _store(site, carol, during, "three")

    # Nothing stored before the reset opens with the new password.
    with pytest.raises(vault.VaultError, match="recover"):
        site.inbox(carol, new_password)
    new_key = secret.unlock(lock.passphrase)
    old_entry = site.raw_entries(carol)[1]
    assert atrest.is_sealed_for(old_entry)
    with pytest.raises(openpgp.OpenPGPError):
        atrest.open_sealed_for(old_entry, new_key)
    # Nor with the old password, whose key is retired.
    with pytest.raises((openpgp.OpenPGPError, keyring.KeyringError)):
        site.inbox(carol, PASSWORD)

    # The records office brings the recovery key: everything is back.
    db = site.db()
    try:
        recovery = site.recovery.unlock(RECOVERY_PASSPHRASE)
        assert vault.recover(db.engine, carol, recovery) == 2
    finally:
        db.close()
    assert site.inbox(carol, new_password) == [first, second, during]
    assert all(raw.startswith(vault.MAILBOX_SEALED) for raw in site.raw_entries(carol))


def test_reading_a_resealed_mailbox_costs_one_public_key_operation(
    sqlite_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = sqlite_site
    carol = site.add_user("carol")
    count = 300
    db = site.db()
    try:
        with db.engine.begin() as connection:
            sealed = [
                vault.seal_for_users(connection, [carol], b"message %d\r\n" % n)
                for n in range(count)
            ]
            for n, blob in enumerate(sealed):
                queue_store.store_in_inbox(connection, carol, blob, f"k{n}")
    finally:
        db.close()
    assert _reseal(site, carol, PASSWORD) == count

    calls: list[int] = []
    original = openpgp.decrypt

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    _patch_everywhere(monkeypatch, "decrypt", original, counting)
    got = site.inbox(carol)

    assert got == [b"message %d\r\n" % n for n in range(count)]
    # Unwrapping the mailbox key, once; every message after it is symmetric.
    assert len(calls) <= 1
    # The count sees public-key work: an entry still sealed for carol costs one.
    db = site.db()
    try:
        keys = vault.open_keys(db.engine, carol, PASSWORD)
    finally:
        db.close()
    before = len(calls)
    assert vault.read(keys, sealed[0]) == b"message 0\r\n"
    assert len(calls) == before + 1


def _patch_everywhere(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    original: Callable[..., Any],
    replacement: Callable[..., Any],
) -> None:
    """Replace a function in its module and wherever it was imported by name."""
    for module_name, module in list(sys.modules.items()):
        if (
            module_name.startswith("beep_mail")
            and getattr(module, name, None) is original
        ):
            monkeypatch.setattr(module, name, replacement)
    assert getattr(openpgp, name) is replacement

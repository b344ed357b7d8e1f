"""isync's mbsync keeps a local Maildir and the gateway's INBOX in step, both ways.

A few hundred messages go down; a flag set and a message deleted and one
added on each side travel across; a last run has nothing to do, which its
IMAP traffic (no APPEND, STORE, EXPUNGE or body fetch) and an unchanged
Maildir show.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from beep_mail import vault
from beep_mail.store import mailstore
from tests.support import PASSWORD, Site, message
from tests.test_imap_clients import fill, gateway, imaplib_client

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None,
                                reason="isync (mbsync) is not installed")

COUNT = 300


def mbsync_config(folder: Path, site: Site, port: int, user: str) -> Path:
    version = subprocess.run(["mbsync", "--version"], capture_output=True,
                             text=True, check=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    # isync 1.5 renamed SSLType to TLSType.
    tls = "TLSType" if found and (int(found[1]), int(found[2])) >= (1, 5) else "SSLType"
    (folder / "mail").mkdir()
    config = folder / "mbsyncrc"
    config.write_text(f"""\
IMAPAccount gateway
Host 127.0.0.1
Port {port}
User {user}
Pass "{PASSWORD}"
{tls} STARTTLS
CertificateFile {site.root / "var/tls/cert.pem"}

IMAPStore remote
Account gateway

MaildirStore local
Path {folder / "mail"}/
Inbox {folder / "mail/INBOX"}

Channel inbox
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    return config


def sync(config: Path, *debug: str) -> str:
    done = subprocess.run(["mbsync", "-c", str(config), *debug, "inbox"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def maildir(folder: Path) -> dict[str, str]:
    """Subject -> file name (its flags after ":2,") of every local message."""
    found = {}
    for path in (folder / "mail/INBOX").glob("*/*"):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
        subject = re.search(rb"^Subject: (.*)$", head, re.MULTILINE | re.IGNORECASE)
        assert subject is not None
        found[subject[1].strip().decode()] = path.name
    return found


def local_file(folder: Path, name: str) -> Path:
    return next((folder / "mail/INBOX").glob(f"*/{name}"))


def test_mbsync_round_trip(sqlite_site: Site, tmp_path: Path) -> None:
    alice = sqlite_site.add_user("alice")
    notes = [message(alice, alice, subject=f"Note {n:03d}", body=f"Body of note {n}")
             for n in range(COUNT)]
    fill(sqlite_site, alice, notes[:10], flags=("\\Seen",))
    fill(sqlite_site, alice, notes[10:])
    with gateway(sqlite_site) as gw:
        config = mbsync_config(tmp_path, sqlite_site, gw.service.port("imap"), alice)
        sync(config)
        local = maildir(tmp_path)
        assert len(local) == COUNT
        assert local["Note 003"].endswith(":2,S") and local["Note 030"].endswith(":2,")

        # Near side: flag one, delete one, write one.
        flagged = local_file(tmp_path, local["Note 042"])
        flagged.rename(flagged.with_name(flagged.name + "F"))
        local_file(tmp_path, local["Note 007"]).unlink()
        (tmp_path / "mail/INBOX/new/1700000000.local.host").write_bytes(
            message(alice, alice, subject="Written offline", body="Local draft"))
        # Far side: flag one, delete one, deliver one.
        db = sqlite_site.db()
        keys = vault.open_keys(db.engine, alice, PASSWORD)
        inbox = mailstore.get_mailbox(db.engine, keys.user_id, "INBOX")
        assert inbox is not None
        mailstore.store_flags(db.engine, keys.user_id, inbox.id, [(51, 51)], "+",
                              ["\\Flagged"])
        mailstore.store_flags(db.engine, keys.user_id, inbox.id, [(61, 61)], "+",
                              ["\\Deleted"])
        mailstore.expunge(db.engine, keys.user_id, inbox.id)
        db.close()
        fill(sqlite_site, alice, [message(alice, alice, subject="Arrived meanwhile")])

        sync(config)
        local = maildir(tmp_path)
        assert local["Note 050"].endswith("F")  # UID 51
        assert "Note 060" not in local and "Note 007" not in local
        assert "Arrived meanwhile" in local and "Written offline" in local
        client = imaplib_client(sqlite_site, gw)
        client.login(alice, PASSWORD)
        client.select("INBOX", readonly=True)
        assert client.search(None, "FLAGGED")[1] == client.search(
            None, "OR SUBJECT \"Note 042\" SUBJECT \"Note 050\"")[1]
        assert client.search(None, "SUBJECT", '"Note 007"')[1] == [b""]
        found = client.search(None, "SUBJECT", '"Written offline"')[1][0]
        assert found and client.fetch(found.decode(), "(BODY.PEEK[TEXT])")[1][0][1] == (
            b"Local draft\r\n")
        assert len(client.search(None, "ALL")[1][0].split()) == COUNT
        client.logout()

        before = maildir(tmp_path)
        trace = sync(config, "-Dn")
        for command in ("APPEND", "STORE", "EXPUNGE", "BODY.PEEK[]"):
            assert not re.search(rf"^>>> \d+ (UID )?{re.escape(command)}", trace,
                                 re.MULTILINE) and "BODY.PEEK[]" not in trace, command
        assert maildir(tmp_path) == before


def test_imaplib_sees_what_mbsync_wrote(sqlite_site: Site, tmp_path: Path) -> None:
    """APPEND with LITERAL+ from mbsync keeps the message byte for byte."""
    alice = sqlite_site.add_user("alice")
    with gateway(sqlite_site) as gw:
        config = mbsync_config(tmp_path, sqlite_site, gw.service.port("imap"), alice)
        sync(config)
        text = (b"From: alice@ministry.gov.example\r\n"
                b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n" + b"line\r\n" * 5000)
        (tmp_path / "mail/INBOX/new/1700000001.local.host").write_bytes(text)
        sync(config)
        client: imaplib.IMAP4 = imaplib_client(sqlite_site, gw)
        client.login(alice, PASSWORD)
        client.select("INBOX")
        data = client.fetch("1", "(RFC822.SIZE BODY.PEEK[])")[1]
        stored = data[0][1]
        assert b"RFC822.SIZE %d" % len(stored) in data[0][0]
        # mbsync adds a header of its own (X-TUID) to find its upload again.
        assert re.sub(rb"X-TUID: [^\r]*\r\n", b"", stored) == text
        client.logout()

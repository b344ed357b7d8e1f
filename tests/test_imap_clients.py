"""Real IMAP clients against a live gateway: imaplib, IMAPClient and aioimaplib.

Each runs a whole session the way mail clients do: sign in over TLS, list,
select, fetch headers, bodies and structures, search, flag, copy, move,
append to Sent, expunge; IMAPClient and aioimaplib also wait in IDLE for a
message submitted over SMTP. The helpers at the top serve the other
test_imap_* files too.
"""

from __future__ import annotations

import asyncio
import imaplib
import threading
import time
from datetime import UTC, datetime

import pytest
from imapclient import IMAPClient
from imapclient.imapclient import SEEN, SENT

from beep_mail import vault
from beep_mail.store import mailstore
from tests.support import PASSWORD, GatewayThread, Site, message, submit

# Every IMAP gateway of the tests listens on port 0; the bound ports are
# Service.port("imap") (STARTTLS) and Service.port("imaps") (implicit TLS).
IMAP_ENV = {"BEEPMAIL_IMAP__LISTEN": "127.0.0.1:0",
            "BEEPMAIL_IMAP__LISTEN_TLS": "127.0.0.1:0",
            "BEEPMAIL_IMAP__AUTH_FAILURE_DELAY": "0"}

REPORT = (
    b"From: =?utf-8?q?J=C3=B6rg_Peer?= <jorg@peer.gov.example>\r\n"
    b"To: Alice <alice@ministry.gov.example>\r\n"
    b"Cc: records@ministry.gov.example\r\n"
    b"Subject: =?utf-8?b?UXVhcnRlcmx5IHJlcG9ydCDigJQgYW5uZXg=?=\r\n"
    b"Date: Thu, 01 Feb 2024 10:00:00 +0100\r\n"
    b"Message-ID: <report-1@peer.gov.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"The annex is attached; the ledger totals agree.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>The annex is attached.</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: application/pdf; name*=utf-8''annex%C3%A9.pdf\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''annex%C3%A9.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQKJcOkw7zDtsOfCg==\r\n"
    b"--outer--\r\n"
)


def gateway(site: Site, **env: str) -> GatewayThread:
    return GatewayThread(site.settings(**{**IMAP_ENV, **env}))


def fill(site: Site, address: str, messages: list[bytes], mailbox: str = "INBOX",
         flags: tuple[str, ...] = ()) -> list[int]:
    """Put messages straight into a mailbox, sealed as a session seals them."""
    db = site.db()
    try:
        keys = vault.open_keys(db.engine, address, PASSWORD)
        return [mailstore.append(db.engine, keys.user_id, mailbox,
                                 vault.seal_for_mailbox(keys, text), len(text), flags,
                                 time.time())[1]
                for text in messages]
    finally:
        db.close()


def imaplib_client(site: Site, gw: GatewayThread) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", gw.service.port("imap"), timeout=10)
    client.starttls(site.ssl_context())
    return client


def imapclient(site: Site, gw: GatewayThread, address: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=gw.service.port("imaps"), ssl=True,
                        ssl_context=site.ssl_context(), timeout=10)
    client.login(address, PASSWORD)
    return client


def fetched(response: list[object]) -> dict[bytes, bytes]:
    """imaplib's FETCH answer for one message: item name -> value."""
    items: dict[bytes, bytes] = {}
    for part in response:
        if isinstance(part, tuple):
            name = part[0].rsplit(b" ", 1)[0].split(b"(", 1)[-1].strip()
            items[name.split(b" ")[-1] if b"BODY[" not in name
                  else name[name.index(b"BODY["):]] = part[1]
    return items


def test_imaplib_session(sqlite_site: Site) -> None:
    alice, bob = sqlite_site.add_user("alice"), sqlite_site.add_user("bob")
    lunch = message(bob, alice, subject="Lunch", body="Noon?")
    fill(sqlite_site, alice, [REPORT, lunch])
    with gateway(sqlite_site) as gw:
        client = imaplib.IMAP4("127.0.0.1", gw.service.port("imap"), timeout=10)
        assert "LOGINDISABLED" in client.capabilities
        assert "AUTH=PLAIN" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(alice, PASSWORD)
        client.starttls(sqlite_site.ssl_context())
        assert "AUTH=PLAIN" in client.capabilities
        assert client.login(alice, PASSWORD)[0] == "OK"

        status, boxes = client.list()
        assert status == "OK"
        assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in boxes
        assert boxes[0] == b'(\\HasNoChildren) "/" "INBOX"'
        status, data = client.select("INBOX")
        assert (status, data) == ("OK", [b"2"])
        uidvalidity = client.response("UIDVALIDITY")[1][0]

        status, data = client.fetch("1", "(UID RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        line = data[0]
        assert isinstance(line, bytes)
        assert b"UID 1" in line and b"RFC822.SIZE %d" % len(REPORT) in line
        assert b'"=?utf-8?b?UXVhcnRlcmx5IHJlcG9ydCDigJQgYW5uZXg=?="' in line
        assert b'"MIXED"' in line and b'"ALTERNATIVE"' in line
        assert b"\"FILENAME*\" \"utf-8''annex%C3%A9.pdf\"" in line

        status, data = client.fetch(
            "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT CC)] BODY.PEEK[1.1] "
                 "BODY.PEEK[2.MIME] BODY.PEEK[]<0.4>)")
        items = fetched(data)
        assert items[b"BODY[HEADER.FIELDS (SUBJECT CC)]"].startswith(b"Cc: records@")
        assert items[b"BODY[1.1]"] == b"The annex is attached; the ledger totals agree."
        assert b"application/pdf" in items[b"BODY[2.MIME]"]
        assert items[b"BODY[]<0>"] == b"From"
        assert client.fetch("1", "FLAGS")[1] == [b"1 (FLAGS ())"]  # PEEK kept it unseen

        status, data = client.fetch("2", "(BODY[TEXT])")
        assert data[0][1] == b"Noon?\r\n" and b"FLAGS (\\Seen)" in data[1]
        assert client.search(None, "UNSEEN")[1] == [b"1"]
        assert client.search("UTF-8", "BODY", '"ledger totals"')[1] == [b"1"]
        client.literal = "J\u00f6rg".encode()
        assert client.uid("SEARCH", "CHARSET", "UTF-8", "FROM")[1] == [b"1"]
        assert client.search(None, "SUBJECT", "Lunch", "SEEN")[1] == [b"2"]

        assert client.store("1", "+FLAGS", "(\\Flagged $Important)")[1] == [
            b"1 (FLAGS (\\Flagged $Important))"]
        status, data = client.copy("1:2", "Archive")
        assert status == "OK" and b"COPYUID" in data[0]
        status, data = client.uid("MOVE", "2", "Trash")
        assert status == "OK"
        assert client.select("INBOX")[1] == [b"1"]

        sent = message(alice, bob, subject="Re: Lunch", body="Yes")
        status, data = client.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(
            datetime(2024, 3, 1, 12, tzinfo=UTC)), sent)
        assert status == "OK" and data[0].startswith(b"[APPENDUID ")
        assert client.status("Sent", "(MESSAGES UNSEEN)")[1] == [
            b'"Sent" (MESSAGES 1 UNSEEN 0)']

        client.select("Archive")
        client.store("1", "+FLAGS", "(\\Deleted)")
        assert client.expunge()[1] == [b"1"]
        assert client.search(None, "ALL")[1] == [b"1"]
        client.close()
        client.logout()

    # After a restart, the same UIDVALIDITY and UIDs, and UIDNEXT moved on.
    with gateway(sqlite_site) as gw:
        client = imaplib_client(sqlite_site, gw)
        client.login(alice, PASSWORD)
        client.select("INBOX", readonly=True)
        assert client.response("UIDVALIDITY")[1][0] == uidvalidity
        assert client.response("UIDNEXT")[1][0] == b"3"
        assert client.uid("FETCH", "1:*", "(FLAGS)")[1] == [
            b"1 (UID 1 FLAGS (\\Flagged $Important))"]
        client.logout()


def test_imapclient_session_with_idle(sqlite_site: Site) -> None:
    alice, bob = sqlite_site.add_user("alice"), sqlite_site.add_user("bob")
    fill(sqlite_site, alice, [REPORT])
    with gateway(sqlite_site) as gw:
        client = imapclient(sqlite_site, gw, alice)
        assert client.find_special_folder(SENT) == "Sent"
        assert {name for _, _, name in client.list_folders()} >= {"INBOX", "Junk"}
        client.create_folder("Projects/Entwürfe")
        assert "Projects/Entwürfe" in {name for _, _, name in client.list_folders()}
        client.rename_folder("Projects", "Closed")
        assert client.folder_exists("Closed/Entwürfe")

        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 1 and info[b"UIDNEXT"] == 2
        data = client.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[]"])[1]
        envelope = data[b"ENVELOPE"]
        assert envelope.message_id == b"<report-1@peer.gov.example>"
        assert envelope.from_[0].mailbox == b"jorg" and envelope.to[0].name == b"Alice"
        assert data[b"BODY[]"] == REPORT
        assert data[b"BODYSTRUCTURE"].is_multipart
        # Encoded words are searched decoded, not as they are written.
        assert client.search(["SUBJECT", "UXVhcnRlcmx5"]) == []
        assert client.search(["SUBJECT", "Quarterly"]) == [1]
        client.add_flags([1], [SEEN])
        assert client.get_flags([1]) == {1: (SEEN,)}
        client.copy([1], "Archive")
        assert client.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 1
        client.append("Drafts", message(alice, bob, subject="Draft"),
                      flags=[b"\\Draft"])
        assert client.folder_status("Drafts", ["MESSAGES"])[b"MESSAGES"] == 1

        # IDLE: a message submitted over SMTP appears within a second.
        client.idle()
        sent = time.monotonic()
        submit(sqlite_site, gw.submission, bob, [alice],
               message(bob, alice, subject="While you wait"))
        responses = client.idle_check(timeout=5)
        waited = time.monotonic() - sent
        client.idle_done()
        assert (2, b"EXISTS") in responses, responses
        assert waited < 1.0, f"EXISTS came after {waited:.2f} s"
        new = client.fetch([2], ["RFC822.SIZE", "BODY.PEEK[]"])[2]
        assert new[b"RFC822.SIZE"] == len(new[b"BODY[]"])
        assert b"Subject: While you wait" in new[b"BODY[]"]

        # Opened once by a session, delivered mail is sealed under the
        # mailbox key: no public-key operation to read it again.
        assert all(blob.startswith(vault.MAILBOX_SEALED)
                   for blob in sqlite_site.raw_entries(alice))

        client.move([1], "Trash")
        assert client.search() == [2]
        client.select_folder("Archive")
        client.delete_messages([1])
        assert client.expunge()[1] == [(1, b"EXPUNGE")]
        client.logout()


def test_aioimaplib_idle(sqlite_site: Site) -> None:
    alice, bob = sqlite_site.add_user("alice"), sqlite_site.add_user("bob")
    with gateway(sqlite_site) as gw:
        async def session() -> list[bytes]:
            import aioimaplib

            client = aioimaplib.IMAP4_SSL("127.0.0.1", gw.service.port("imaps"),
                                          ssl_context=sqlite_site.ssl_context())
            await client.wait_hello_from_server()
            assert (await client.login(alice, PASSWORD)).result == "OK"
            assert (await client.select("INBOX")).result == "OK"
            idle = await client.idle_start(timeout=10)
            threading.Thread(target=submit, args=(
                sqlite_site, gw.submission, bob, [alice],
                message(bob, alice, subject="Pushed")), daemon=True).start()
            pushed = await client.wait_server_push(timeout=5)
            client.idle_done()
            await asyncio.wait_for(idle, 5)
            found = await client.search("SUBJECT", "Pushed")
            # aioimaplib leaves its end open after LOGOUT; ours closes it.
            lost = asyncio.Event()
            client.protocol.conn_lost_cb = lambda error: lost.set()
            await client.logout()
            await asyncio.wait_for(lost.wait(), 5)
            assert found.result == "OK" and found.lines[0] == b"1"
            return list(pushed) if isinstance(pushed, list) else [pushed]

        pushed = asyncio.run(session())
    assert b"1 EXISTS" in pushed


def test_core_session_on_both_stores(site: Site) -> None:
    """Two sessions of one user: each sees what the other did, at the right points."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"Note {n}") for n in range(3)])
    with gateway(site) as gw:
        first, second = imaplib_client(site, gw), imaplib_client(site, gw)
        for client in (first, second):
            client.login(alice, PASSWORD)
            assert client.select("INBOX")[1] == [b"3"]

        second.store("2", "+FLAGS", "(\\Deleted \\Seen)")
        # While answering FETCH, flag changes may be told, removals may not.
        second.expunge()
        assert first.fetch("3", "(UID)")[1] == [b"3 (UID 3)"]
        first.noop()
        assert first.response("EXPUNGE") == ("EXPUNGE", [b"2"])

        fill(site, alice, [message(alice, alice, subject="Late")])
        second.noop()
        assert second.response("EXISTS")[1][-1] == b"3"
        assert second.uid("SEARCH", "SUBJECT", "Late")[1] == [b"4"]
        assert second.uid("COPY", "1,4", "Archive")[0] == "OK"
        assert first.status("Archive", "(MESSAGES UIDNEXT)")[1] == [
            b'"Archive" (MESSAGES 2 UIDNEXT 3)']

        # Mail one session adds to the mailbox both have selected: the adder
        # hears of it with its APPEND, the other with its next command.
        first.append("INBOX", "", None, message(alice, alice, subject="Mine"))
        assert first.response("EXISTS")[1][-1] == b"4"
        assert second.uid("SEARCH", "SUBJECT", "Mine")[1] == [b""]
        assert second.response("EXISTS")[1][-1] == b"4"
        assert second.uid("SEARCH", "SUBJECT", "Mine")[1] == [b"5"]
        for client in (first, second):
            client.logout()

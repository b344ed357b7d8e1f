"""The search index: SEARCH answers alike with and without it, over a live server,
and it keeps nothing of a message that has left the mailbox."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from beep_mail import vault
from beep_mail.imap import index
from beep_mail.store import accounts, mailstore
from beep_mail.store.tables import search_chunks
from tests.support import PASSWORD, Site
from tests.test_imap_bad_input import Wire, close_wires, signed_in  # noqa: F401
from tests.test_imap_clients import fill, gateway

# A summary-path twin of any query: a key on a field the index does not keep,
# true of every message here (they all have a Message-ID).
NOT_INDEXED = b' HEADER Message-ID ""'


def letter(n: int, sender: str, to: str, subject: str, date: str | None,
           extra: str = "") -> bytes:
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
            f"Message-ID: <{n}.index@test>"]
    if date is not None:
        head.append(f"Date: {date}")
    return ("\r\n".join(head) + "\r\n" + extra + f"\r\nText of letter {n}\r\n").encode()


LETTERS = [
    letter(1, "Adaeze Okonkwo <a.okonkwo@peer.gov.example>", "bob@peer.gov.example",
           "Budget review", "Mon, 01 Jan 2024 09:00:00 +0000"),
    letter(2, "=?UTF-8?Q?J=C3=BCrgen_Wei=C3=9F?= <j.weiss@peer.gov.example>",
           "Okonkwo Team <team@peer.gov.example>", "=?UTF-8?B?w5xiZXJwcsO8ZnVuZw==?=",
           "Tue, 02 Jan 2024 23:30:00 -0500",
           "Cc: carol@peer.gov.example\r\nReply-To: desk@peer.gov.example\r\n"),
    letter(3, "records@peer.gov.example", "bob@peer.gov.example", "STRASSE plan",
           None, "Bcc: hidden@peer.gov.example\r\n"),
    # A value that holds the index's separators: left out of the index, found
    # all the same through its summary.
    letter(4, "=?UTF-8?Q?Odd=1FName?= <odd@peer.gov.example>", "bob@peer.gov.example",
           "Strange =?UTF-8?Q?unit=1Eseparator?=", "Wed, 03 Jan 2024 10:00:00 +0100"),
]

QUERIES = [
    (b"FROM okonkwo", [1]),
    (b"FROM OKONKWO", [1]),
    (b"TO okonkwo", [2]),
    (b"FROM weiss", [2]),
    (b'CHARSET UTF-8 FROM "J\xc3\xbcrgen"', [2]),
    (b'CHARSET UTF-8 SUBJECT "\xc3\xbcberpr\xc3\xbcfung"', [2]),
    (b"SUBJECT strasse", [3]),
    (b'CHARSET UTF-8 SUBJECT "stra\xc3\x9fe"', [3]),  # case-folded: "ß" is "ss"
    (b"CC carol", [2]),
    (b"BCC hidden", [3]),
    (b"HEADER Reply-To desk", [2]),
    (b'HEADER CC ""', [2]),
    (b"NOT FROM okonkwo", [2, 3, 4]),
    (b"OR FROM okonkwo SUBJECT strasse", [1, 3]),
    (b"FROM peer.gov.example SUBJECT an", [3, 4]),
    (b"SENTON 2-Jan-2024", [2]),
    (b"SENTBEFORE 2-Jan-2024", [1]),
    (b"SENTSINCE 2-Jan-2024", [2, 4]),
    (b"FROM name SUBJECT separator", [4]),
    (b"FROM okonkwo UNSEEN", [1]),
    (b"FROM nobody", []),
]


def _found(lines: list[bytes]) -> list[int]:
    words = next(line for line in lines if line.startswith(b"* SEARCH")).split()[2:]
    return sorted(int(word) for word in words)


def _chunks(site: Site, address: str) -> dict[int, bytes]:
    db = site.db()
    try:
        with db.engine.connect() as connection:
            user = accounts.find_user(connection, address)
            assert user is not None
            rows = connection.execute(
                select(search_chunks.c.chunk, search_chunks.c.sealed)
                .where(search_chunks.c.user_id == user.id)).all()
        return {int(chunk): bytes(sealed) for chunk, sealed in rows}
    finally:
        db.close()


def _records(site: Site, address: str, mailbox: str = "INBOX") -> dict[int, str]:
    """The index of a mailbox as its owner opens it."""
    db = site.db()
    try:
        keys = vault.open_keys(db.engine, address, PASSWORD)
        box = mailstore.get_mailbox(db.engine, keys.user_id, mailbox)
        assert box is not None
        opener = vault.Opener(keys)
        found: dict[int, str] = {}
        for chunk, sealed in mailstore.index_chunks(db.engine, keys.user_id,
                                                    box.id).items():
            found.update(index.parse(opener.read_index(box.id, chunk, sealed)))
        return found
    finally:
        db.close()


def test_searches_answer_alike_from_the_index_and_from_summaries(site: Site) -> None:
    alice = site.add_user("alice")
    fill(site, alice, LETTERS)
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        wire.command(b"SELECT INBOX")
        assert _chunks(site, alice) == {}
        for query, expected in QUERIES:
            building = _found(wire.command(b"SEARCH " + query))
            built = _found(wire.command(b"SEARCH " + query))
            by_summary = _found(wire.command(b"SEARCH " + query + NOT_INDEXED))
            assert (building, built, by_summary) == (expected, expected, expected), query
        # The first search wrote the index, sealed; the odd letter is not in it.
        assert set(_records(site, alice)) == {1, 2, 3}
        assert all(b"okonkwo" not in sealed.lower() for sealed in _chunks(site, alice).values())


def test_new_mail_is_found_and_added_to_the_index(site: Site) -> None:
    alice = site.add_user("alice")
    fill(site, alice, LETTERS[:2])
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        wire.command(b"SELECT INBOX")
        assert _found(wire.command(b"SEARCH FROM okonkwo")) == [1]
        assert set(_records(site, alice)) == {1, 2}
        fill(site, alice, [letter(9, "Okonkwo <o@peer.gov.example>", "x@peer.gov.example",
                                  "Late", None)])
        wire.command(b"NOOP")
        assert _found(wire.command(b"SEARCH FROM okonkwo")) == [1, 3]
        assert set(_records(site, alice)) == {1, 2, 3}


def test_removed_messages_leave_the_index(site: Site) -> None:
    alice = site.add_user("alice")
    fill(site, alice, LETTERS[:3])
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        wire.command(b"SELECT INBOX")
        wire.command(b"SEARCH FROM okonkwo")
        assert set(_records(site, alice)) == {1, 2, 3}

        # EXPUNGE: the part that covered the message is gone, and comes back
        # without it.
        wire.command(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert wire.last(b"EXPUNGE").startswith(b"OK")
        assert _chunks(site, alice) == {}
        assert _found(wire.command(b"SEARCH FROM okonkwo")) == []
        assert set(_records(site, alice)) == {2, 3}

        # MOVE: the same for the mailbox it leaves.
        assert wire.last(b"UID MOVE 2 Archive").startswith(b"OK")
        assert _chunks(site, alice) == {}
        assert _found(wire.command(b"SEARCH TO team")) == []
        assert set(_records(site, alice)) == {3}

        # A mailbox with an index can be deleted, and so can its user.
        assert wire.last(b"SELECT Archive").startswith(b"OK")
        assert _found(wire.command(b"SEARCH TO team")) == [1]
        assert set(_records(site, alice, "Archive")) == {1}
        wire.command(b"SELECT INBOX")
        assert wire.last(b"DELETE Archive").startswith(b"OK")
        assert wire.last(b"LOGOUT").startswith(b"OK")
    db = site.db()
    try:
        with db.engine.begin() as connection:
            accounts.remove_user(connection, alice)
            assert connection.execute(select(search_chunks)).all() == []
    finally:
        db.close()


@pytest.mark.parametrize("damage", [b"garbage", b""])
def test_a_damaged_part_is_rebuilt_not_an_error(site: Site, damage: bytes) -> None:
    alice = site.add_user("alice")
    fill(site, alice, LETTERS[:3])
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        wire.command(b"SELECT INBOX")
        wire.command(b"SEARCH FROM okonkwo")
        db = site.db()
        try:
            with db.engine.begin() as connection:
                connection.execute(update(search_chunks).values(sealed=damage))
        finally:
            db.close()
        assert _found(wire.command(b"SEARCH FROM okonkwo")) == [1]
        assert set(_records(site, alice)) == {1, 2, 3}


def test_records_round_trip_and_separators_are_refused() -> None:
    class Fields:
        def __init__(self, values: dict[str, str]) -> None:
            self.values = values

        def header_value(self, name: str) -> str | None:
            return self.values.get(name)

    line = index.record(7, Fields({"from": "Jürgen WEISS", "subject": ""}), None)
    assert line is not None
    parsed = index.parse(index.write([line]))
    record = index.Indexed(parsed[7])
    assert record.header_value("from") == "jürgen weiss"
    assert record.header_value("subject") == ""
    assert record.header_value("to") is None
    assert record.sent_day is None
    assert index.record(8, Fields({"to": "a\x1fb"}), None) is None
    assert index.record(8, Fields({"to": "a\x1eb"}), None) is None
    with pytest.raises(ValueError):
        index.parse(b"another format\x1e1\x1f\x1f")
    with pytest.raises(ValueError):
        index.parse(index.write(["1\x1f\x1fonly three"]))

"""CONDSTORE (RFC 7162, section 3.1) over a live server: exact wire and IMAPClient."""

from __future__ import annotations

import re

from imapclient import IMAPClient

from tests.support import PASSWORD, Site, message, submit, wait_for
from tests.test_imap_bad_input import Wire, close_wires, signed_in  # noqa: F401
from tests.test_imap_clients import fill, gateway

_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")


def _highest(lines: list[bytes]) -> int:
    for line in lines:
        found = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no HIGHESTMODSEQ in {lines!r}")


def test_capability_select_fetch_and_status(site: Site) -> None:
    """3.1.1, 3.1.2, 3.1.4, 3.1.6: announced, HIGHESTMODSEQ at SELECT, MODSEQ item."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"m{n}") for n in range(3)])
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        assert b"CONDSTORE" in wire.command(b"CAPABILITY")[0].split()
        selected = wire.command(b"SELECT INBOX (CONDSTORE)")
        assert selected[-1].endswith(b"SELECT completed")
        highest = _highest(selected)
        lines = wire.command(b"FETCH 1:* (UID MODSEQ)")
        modseqs = [int(_MODSEQ.search(line).group(1))  # type: ignore[union-attr]
                   for line in lines[:-1]]
        assert len(modseqs) == 3 and max(modseqs) == highest
        status = wire.command(b"STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        assert status[0] == b"* STATUS \"INBOX\" (MESSAGES 3 HIGHESTMODSEQ %d)" % highest
        # Without the parameter SELECT still tells HIGHESTMODSEQ (3.1.2.1).
        assert _highest(wire.command(b"EXAMINE INBOX")) == highest


def test_changedsince_returns_only_what_changed(site: Site) -> None:
    """3.1.4.1: FETCH (CHANGEDSINCE n) gives messages changed after n, with MODSEQ."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"m{n}") for n in range(4)])
    with gateway(site) as gw:
        wire = signed_in(site, gw, alice)
        before = _highest(wire.command(b"SELECT INBOX"))
        assert wire.last(b"STORE 2,4 +FLAGS.SILENT (\\Flagged)").startswith(b"OK")
        lines = wire.command(b"FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % before)
        assert [line.split(b" FETCH")[0] for line in lines[:-1]] == [b"* 2", b"* 4"]
        assert all(b"MODSEQ (%d)" % (before + 1) in line for line in lines[:-1])
        uid_lines = wire.command(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % (before + 1))
        assert uid_lines[-1].startswith(b"t") and len(uid_lines) == 1
        # QRESYNC's VANISHED is not offered: a modifier this server does not know.
        assert wire.last(b"UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)").startswith(
            b"BAD")


def test_unchangedsince_refuses_what_changed_meanwhile(site: Site) -> None:
    """3.1.3: STORE (UNCHANGEDSINCE n) leaves newer messages alone, [MODIFIED set]."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"m{n}") for n in range(3)])
    with gateway(site) as gw:
        mine, other = signed_in(site, gw, alice), signed_in(site, gw, alice)
        seen = _highest(mine.command(b"SELECT INBOX (CONDSTORE)"))
        other.command(b"SELECT INBOX")
        assert other.last(b"STORE 2 +FLAGS (\\Seen)").startswith(b"OK")
        lines = mine.command(b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT ($Done)" % seen)
        assert lines[-1].split(b" ", 1)[1].startswith(b"OK [MODIFIED 2]")
        # Silent, but CONDSTORE is on: the new mod-sequences are told (3.1.3).
        told = [line for line in lines if line.startswith((b"* 1 ", b"* 3 "))]
        assert told == [b"* 1 FETCH (MODSEQ (%d))" % (seen + 2),
                        b"* 3 FETCH (MODSEQ (%d))" % (seen + 2)]
        flags = mine.command(b"FETCH 1:3 (FLAGS)")
        assert b"$Done" in flags[0] and b"$Done" not in flags[1] and b"$Done" in flags[2]
        # UID STORE names UIDs in MODIFIED; 0 lets nothing through.
        assert mine.last(b"UID STORE 1:3 (UNCHANGEDSINCE 0) -FLAGS ($Done)").startswith(
            b"OK [MODIFIED 1:3]")


def test_search_modseq_and_unsolicited_fetch(site: Site) -> None:
    """3.1.5 SEARCH MODSEQ; 3.1.8 unsolicited FETCH carries MODSEQ once enabled."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"m{n}") for n in range(3)])
    with gateway(site) as gw:
        mine, other = signed_in(site, gw, alice), signed_in(site, gw, alice)
        assert mine.command(b"ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE"
        start = _highest(mine.command(b"SELECT INBOX"))
        other.command(b"SELECT INBOX")
        other.command(b"STORE 3 +FLAGS (\\Answered)")
        lines = mine.command(b"NOOP")
        assert b"* 3 FETCH (UID 3 FLAGS (\\Answered) MODSEQ (%d))" % (start + 1) in lines
        found = mine.command(b'SEARCH MODSEQ "/flags/\\\\answered" all %d' % (start + 1))
        assert found[0] == b"* SEARCH 3 (MODSEQ %d)" % (start + 1)
        assert mine.command(b"SEARCH MODSEQ %d" % (start + 5))[0] == b"* SEARCH"
        # An expunge moves HIGHESTMODSEQ on, so STATUS shows that something changed.
        other.command(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.command(b"EXPUNGE")
        status = mine.command(b"STATUS INBOX (HIGHESTMODSEQ)")[0]
        assert status == b"* STATUS \"INBOX\" (HIGHESTMODSEQ %d)" % (start + 3)


def test_imapclient_resynchronises_flags_with_changedsince(site: Site) -> None:
    """What a CONDSTORE client does: remember HIGHESTMODSEQ, fetch only changes."""
    alice = site.add_user("alice")
    fill(site, alice, [message(alice, alice, subject=f"m{n}") for n in range(5)])
    with gateway(site) as gw:
        port = gw.service.port("imaps")
        with IMAPClient("localhost", port, ssl_context=site.ssl_context()) as client:
            client.login(alice, PASSWORD)
            assert client.has_capability("CONDSTORE")
            client.enable("CONDSTORE")
            state = client.select_folder("INBOX")
            known = state[b"HIGHESTMODSEQ"]
            client.add_flags([2], [b"$Work"])
            assert submit(site, gw.submission, alice, [alice],
                          message(alice, alice, subject="new")) == {}
            wait_for(lambda: client.noop()[1] or None, what="the new message")
            changed = client.fetch([1, 2, 3, 4, 5, 6], ["FLAGS"],
                                   modifiers=[f"CHANGEDSINCE {known}"])
            assert set(changed) == {2, 6}
            assert all(b"MODSEQ" in data for data in changed.values())
            assert client.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] > known

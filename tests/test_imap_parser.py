"""The IMAP layer's pure parts: command grammar, mailbox names, errors, SEARCH keys."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from beep_mail.imap import errors, names, parser
from beep_mail.imap.errors import ParseError
from beep_mail.imap.parser import (
    Append,
    BodySection,
    Copy,
    FetchAtt,
    List,
    Login,
    Search,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchNot,
    SearchOr,
    SearchSet,
    SequenceSet,
    Store,
    parse_command,
)
from beep_mail.imap.render import Message
from beep_mail.imap.search import Facts, Need, Searcher, needs


def bad(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_command(data)
    return caught.value


# -- commands ------------------------------------------------------------------

def test_tags_names_and_simple_commands() -> None:
    command = parse_command(b"a1 noop")
    assert (command.tag, command.name) == (b"a1", "NOOP")
    assert parse_command(b"x.y] CAPABILITY").tag == b"x.y]"
    assert bad(b"a+ NOOP").tag is None
    assert bad(b"a1 NOOP extra").tag == b"a1"
    assert bad(b"a1 FROB").response(b"a1") == b"a1 BAD Unknown command FROB\r\n"
    assert bad(b"").response(None).startswith(b"* BAD")


def test_extensions_not_offered_are_recognised() -> None:
    assert parse_command(b"a SORT (DATE) UTF-8 ALL").name == "SORT"
    assert parse_command(b"a UID THREAD REFERENCES UTF-8 ALL").name == "UID THREAD"
    assert parse_command(b'a GETQUOTAROOT "INBOX"').name == "GETQUOTAROOT"


def test_login_with_quoted_strings_and_literals() -> None:
    assert parse_command(b'a LOGIN "al\\"ice" {3}\r\np w') == Login(
        b"a", "LOGIN", b'al"ice', b"p w")
    assert parse_command(b"a LOGIN {5+}\r\nalice pw").user == b"alice"
    assert "shorter" in bad(b"a LOGIN {9}\r\nab pw").text
    assert "escaped" in bad(b'a LOGIN "a\\b" pw').text


def test_fetch_items_sections_and_macros() -> None:
    command = parse_command(
        b"7 UID fetch 1:* (UID flags BODY.PEEK[header.fields (From Subject)]<0.100> "
        b"body[1.2.MIME] RFC822.SIZE)")
    assert command.uid and command.numbers == SequenceSet(((1, parser.STAR),))
    assert command.items == (
        FetchAtt("UID"), FetchAtt("FLAGS"),
        BodySection(True, "HEADER.FIELDS (FROM SUBJECT)", (0, 100)),
        BodySection(False, "1.2.MIME"), FetchAtt("RFC822.SIZE"))
    assert [i.name for i in parse_command(b"a FETCH 1 fast").items] == [
        "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert len(parse_command(b"a FETCH 1 ALL").items) == 4
    assert BodySection(True, "", (5, 10)).response_name() == b"BODY[]<5>"
    for wrong in (b"a FETCH 1 (BODY[1.])", b"a FETCH 1 BODY[MIME]",
                  b"a FETCH 1 (FLAGS", b"a FETCH 1 ()", b"a FETCH 1 BODY[]<1.0>",
                  b"a FETCH 1 BODY[HEADER.FIELDS ()]", b"a FETCH 1 X-UNKNOWN"):
        assert bad(wrong).tag == b"a", wrong


def test_sequence_sets_stay_ranges() -> None:
    huge = parse_command(b"a FETCH 1:4294967295 FLAGS")
    assert huge.numbers.ranges == ((1, 4294967295),)
    assert huge.numbers.resolve(3) == [(1, 4294967295)]
    messy = SequenceSet(((5, 2), (3, 3), (9, parser.STAR)))
    assert messy.resolve(7) == [(2, 5), (7, 9)]
    assert SequenceSet(((1, 3), (4, 6))).resolve(9) == [(1, 6)]
    assert parser.in_ranges([(1, 3), (10, 4294967295)], 4000000000)
    assert not parser.in_ranges([(1, 3), (10, 20)], 5)
    for wrong in (b"0", b"4294967296", b"1::2", b"1,", b"1:2:3", b"99999999999"):
        assert bad(b"a FETCH " + wrong + b" FLAGS").tag == b"a"
    assert parser.format_set([1, 2, 3, 7, 9, 10]) == b"1:3,7,9:10"


def test_store_copy_move_and_expunge() -> None:
    assert parse_command(b"a STORE 2:4 -FLAGS.SILENT (\\Seen $Junk)") == Store(
        b"a", "STORE", False, SequenceSet(((2, 4),)), "-", True, ("\\Seen", "$Junk"))
    assert parse_command(b"a UID STORE 5 FLAGS \\deleted").flags == ("\\Deleted",)
    assert "\\Recent" in bad(b"a STORE 1 +FLAGS (\\Recent)").text
    assert "system flag" in bad(b"a STORE 1 +FLAGS (\\Bogus)").text
    assert parse_command(b'a UID MOVE 1,3 "Trash"') == Copy(
        b"a", "UID MOVE", True, SequenceSet(((1, 1), (3, 3))), b"Trash")
    assert parse_command(b"a UID EXPUNGE 4:6").name == "UID EXPUNGE"
    assert bad(b"a UID FROB 1").tag == b"a"


def test_append_with_flags_and_date() -> None:
    command = parse_command(
        b'a APPEND Sent (\\Seen) " 1-Feb-2024 13:45:00 +0130" {5+}\r\nhello')
    assert isinstance(command, Append)
    assert command.flags == ("\\Seen",) and command.message == b"hello"
    assert command.date == datetime(2024, 2, 1, 13, 45,
                                    tzinfo=timezone(timedelta(hours=1, minutes=30)))
    assert parse_command(b"a APPEND INBOX {2}\r\nhi").flags == ()
    assert "literal" in bad(b"a APPEND INBOX (\\Seen) hi").text
    assert bad(b'a APPEND INBOX "31-Feb-2024 10:00:00 +0000" {1}\r\nx').tag == b"a"


def test_list_forms() -> None:
    assert parse_command(b'a LIST "" *') == List(b"a", "LIST", b"", (b"*",))
    command = parse_command(b'a LIST (SUBSCRIBED) "" ("INBOX" %) RETURN (CHILDREN)')
    assert command.patterns == (b"INBOX", b"%") and command.extended
    assert command.selection == {"SUBSCRIBED"} and command.returns == {"CHILDREN"}
    assert parse_command(b"a LSUB \"\" Work/%").patterns == (b"Work/%",)
    assert bad(b'a LIST "" * RETURN (STATUS (MESSAGES))').tag == b"a"


def test_search_keys() -> None:
    command = parse_command(
        b'a UID SEARCH CHARSET UTF-8 OR FROM "b\xc3\xb6b" NOT (SEEN SINCE 1-Feb-2024) '
        b"UID 1,3:5")
    assert isinstance(command, Search) and command.uid and command.charset == "UTF-8"
    assert command.key == SearchAnd((
        SearchOr(SearchHeader("from", "b\u00f6b"),
                 SearchNot(SearchAnd((SearchFlag("\\Seen", True),
                                      SearchDate(False, "since", date(2024, 2, 1)))))),
        SearchSet(SequenceSet(((1, 1), (3, 5))), uid=True)))
    assert parse_command(b"a SEARCH 2:*").key == SearchSet(
        SequenceSet(((2, parser.STAR),)), uid=False)
    assert parse_command(b'a SEARCH HEADER X-Tag "" LARGER 10').key == SearchAnd((
        SearchHeader("x-tag", ""), parser.SearchSize(True, 10)))
    for wrong in (b"a SEARCH", b"a SEARCH FROB", b"a SEARCH SINCE 1-Foo-2024",
                  b"a SEARCH OR SEEN", b"a SEARCH (SEEN"):
        assert bad(wrong).tag == b"a", wrong


def test_nesting_is_bounded() -> None:
    deep = b"a SEARCH " + b"(" * 1000 + b"ALL" + b")" * 1000
    assert "deep" in bad(deep).text
    assert "deep" in bad(b"a SEARCH " + b"NOT " * 1000 + b"ALL").text
    fine = b"a SEARCH " + b"(" * 10 + b"ALL" + b")" * 10
    assert parse_command(fine).name == "SEARCH"


def test_literal_announcements() -> None:
    assert parser.literal_at_end(b"a APPEND INBOX {310}") == (310, False)
    assert parser.literal_at_end(b"a LOGIN {5+}") == (5, True)
    assert parser.literal_at_end(b'a LOGIN "{5}"') is None
    assert parser.command_head(b"a uid fetch 1 x") == (b"a", "UID FETCH")
    assert parser.command_head(b"+ x") == (None, "X")


# -- mailbox names --------------------------------------------------------------

@pytest.mark.parametrize("name, wire", [
    ("INBOX", b"INBOX"),
    ("Entw\u00fcrfe", b"Entw&APw-rfe"),
    ("R&D", b"R&-D"),
    ("\u65e5\u672c\u8a9e", b"&ZeVnLIqe-"),
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e",
     b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
])
def test_modified_utf7_both_ways(name: str, wire: bytes) -> None:
    assert names.encode(name) == wire
    assert names.decode(wire) == name


@pytest.mark.parametrize("wire", [
    b"&AC8-etc",  # "/" hidden in base64
    b"&AGE-&AGI-",  # two runs where one will do
    b"&Jjo",  # unterminated
    b"&2D3-",  # a lone surrogate
    b"caf\xc3\xa9",  # raw UTF-8
    b"&A-",  # stray bits
])
def test_modified_utf7_tricks_are_refused(wire: bytes) -> None:
    with pytest.raises(names.NameError_):
        names.decode(wire)


@pytest.mark.parametrize("name", [
    "../bob", "a/../b", "a//b", "/abs", "a/", ".", "a\x00b", "a\tb", "a\x7f",
    "#shared/x", "~bob/INBOX", "a*", "50%", " lead", "x" * 201, "/".join("a" * 17),
])
def test_names_that_are_refused(name: str) -> None:
    with pytest.raises(names.NameError_) as caught:
        names.check(name)
    assert caught.value.response(b"t").startswith(b"t NO [CANNOT] ")


def test_inbox_is_case_insensitive() -> None:
    assert names.check("inbox") == "INBOX"
    assert names.check("InBox/Sub") == "INBOX/Sub"
    assert names.check("Inboxes") == "Inboxes"


@pytest.mark.parametrize("pattern, name, matches", [
    ("*", "a/b/c", True), ("%", "a/b", False), ("%", "a", True),
    ("a/%", "a/b", True), ("a/%", "a/b/c", False), ("a*c", "a/b/c", True),
    ("inbox", "INBOX", True), ("INBOX/%", "INBOX/x", True), ("Se%", "Sent", True),
    ("*" * 50 + "b", "a" * 200, False),
])
def test_list_patterns(pattern: str, name: str, matches: bool) -> None:
    assert names.Pattern("", pattern).matches(name) is matches


# -- errors know their responses ------------------------------------------------------

def test_every_error_class_knows_its_response() -> None:
    expected = {
        errors.No: b"t NO text\r\n",
        errors.Bad: b"t BAD text\r\n",
        errors.ParseError: b"t BAD text\r\n",
        errors.Bye: b"* BYE text\r\n",
        errors.Cannot: b"t NO [CANNOT] text\r\n",
        errors.NonExistent: b"t NO [NONEXISTENT] text\r\n",
        errors.AlreadyExists: b"t NO [ALREADYEXISTS] text\r\n",
        errors.TryCreate: b"t NO [TRYCREATE] text\r\n",
        errors.PrivacyRequired: b"t NO [PRIVACYREQUIRED] text\r\n",
        errors.AuthenticationFailed: b"t NO [AUTHENTICATIONFAILED] text\r\n",
        errors.AuthorizationFailed: b"t NO [AUTHORIZATIONFAILED] text\r\n",
        errors.Unavailable: b"t NO [UNAVAILABLE] text\r\n",
        errors.Limit: b"t NO [LIMIT] text\r\n",
        errors.TooBig: b"t NO [TOOBIG] text\r\n",
        errors.ServerBug: b"t NO [SERVERBUG] text\r\n",
        errors.BadCharset: b"t NO [BADCHARSET (UTF-8 US-ASCII)] text\r\n",
        errors.ReadOnly: b"t NO [READ-ONLY] text\r\n",
        errors.NoPerm: b"t NO [NOPERM] text\r\n",
        errors.Overquota: b"t NO [OVERQUOTA] text\r\n",
    }
    assert set(expected) == set(errors.CODES)
    for cls, response in expected.items():
        assert cls("text").response(b"t") == response
    assert errors.No("two\r\n* lines").response(b"t") == b"t NO two * lines\r\n"


# -- SEARCH judged against a message -----------------------------------------

MAIL = (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@peer.example>\r\n"
        b"To: anna@ministry.example\r\nSubject: Quarterly budget\r\n"
        b"Date: Thu, 01 Feb 2024 23:30:00 -0500\r\n\r\nThe ledger is attached.\r\n")


def judge(query: bytes, **facts: object) -> bool:
    command = parse_command(b"a SEARCH " + query)
    assert isinstance(command, Search)
    values: dict[str, object] = {
        "seq": 2, "uid": 40, "flags": {"\\Seen"}, "size": 500, "message": Message(MAIL),
        "internal_date": datetime(2024, 2, 2, 9, tzinfo=UTC).timestamp()}
    values.update(facts)
    return Searcher(command.key, 3, 50).matches(Facts(**values))  # type: ignore[arg-type]


@pytest.mark.parametrize("query, expected", [
    (b"ALL", True), (b"NEW", False), (b"SEEN", True), (b"UNSEEN", False),
    (b'FROM "j\xc3\xb6rg"', True), (b"FROM anna", False), (b"TO ANNA", True),
    (b"SUBJECT BUDGET", True), (b"BODY ledger", True), (b"BODY budget", False),
    (b"TEXT budget", True), (b"HEADER Date 2024", True),
    (b"ON 2-Feb-2024", True), (b"BEFORE 2-Feb-2024", False),
    (b"SENTON 1-Feb-2024", True), (b"SENTSINCE 2-Feb-2024", False),
    (b"LARGER 499", True), (b"SMALLER 500", False), (b"2", True), (b"3:*", False),
    (b"UID 40:*", True), (b"UID 1:39", False), (b"OR UNSEEN UID 40", True),
    (b"NOT (SEEN FROM jorg)", False), (b"KEYWORD $Work", False),
])
def test_search_keys_judge_messages(query: bytes, expected: bool) -> None:
    assert judge(query) is expected


def test_search_knows_what_of_a_message_it_reads() -> None:
    def need(query: bytes) -> Need:
        command = parse_command(b"a SEARCH " + query)
        assert isinstance(command, Search)
        return needs(command.key)

    assert need(b"UNSEEN UID 1:* LARGER 5 SINCE 1-Jan-2024") is Need.NOTHING
    assert need(b"OR SEEN SUBJECT x") is Need.INDEX
    assert need(b"NOT SENTON 1-Jan-2024") is Need.INDEX
    assert need(b"HEADER Reply-To x") is Need.INDEX
    assert need(b"FROM x HEADER X-Mailer y") is Need.SUMMARY
    assert need(b"FROM x OR BODY y SEEN") is Need.MESSAGE
    assert need(b"NOT TEXT y") is Need.MESSAGE

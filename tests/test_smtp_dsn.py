"""Delivery status notifications: structure, privacy, and resistance to injection."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from beep_mail.smtp.dsn import FailedRecipient, build_dsn

ARRIVAL = datetime(2024, 12, 3, 9, 30, tzinfo=UTC)
NOW = ARRIVAL + timedelta(days=5)
SECRET_BODY = b"The contract is worth 3 million; do not forward."
ORIGINAL = (
    b"From: Alice <alice@gw.gov.example>\r\n"
    b"To: bob@peer.gov.example\r\n"
    b"Subject: Tender 2024-17 evaluation\r\n"
    b"Message-ID: <tender17@gw.gov.example>\r\n"
    b"\r\n" + SECRET_BODY + b"\r\n"
)
UNKNOWN_USER = FailedRecipient(
    address="bob@peer.gov.example",
    status="5.1.1",
    diagnostic="smtp; 550 5.1.1 No such user",
    remote_mta="mx.peer.gov.example",
)
EXPIRED = FailedRecipient(
    address="carol@slow.gov.example",
    status="4.4.7",
    diagnostic="",
    remote_mta=None,
)


def build(**changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "reporting_mta": "gw.gov.example",
        "postmaster": "postmaster@gw.gov.example",
        "original_sender": "alice@gw.gov.example",
        "original_message_id": "<tender17@gw.gov.example>",
        "queue_id": "Q7F3A2",
        "arrival_date": ARRIVAL,
        "recipients": [UNKNOWN_USER],
        "original_headers": ORIGINAL,
        "now": NOW,
    }
    arguments.update(changes)
    return build_dsn(**arguments)


def parse(report: bytes) -> EmailMessage:
    message = email.message_from_bytes(report, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def children(message: EmailMessage) -> list[EmailMessage]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(child, EmailMessage) for child in payload)
    return [child for child in payload if isinstance(child, EmailMessage)]


def parts(report: bytes) -> list[EmailMessage]:
    return children(parse(report))


def test_structure_follows_rfc_6522() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in parts(build())] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert not message.defects


def test_outer_header() -> None:
    message = parse(build())
    report = build()
    assert b'\r\nFrom: "Mail Delivery System" <postmaster@gw.gov.example>\r\n' in (
        b"\r\n" + report
    )
    assert message["To"] == "alice@gw.gov.example"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@gw.gov.example>")
    assert message["Message-ID"] != build_and_get("Message-ID")


def build_and_get(field: str) -> str:
    return str(parse(build())[field])


def test_subject_names_the_reason_not_the_original_subject() -> None:
    assert parse(build())["Subject"] == "Undelivered mail: delivery failed permanently"
    expired = parse(build(recipients=[EXPIRED]))["Subject"]
    assert expired == "Undelivered mail: delivery time expired"
    both = parse(build(recipients=[UNKNOWN_USER, EXPIRED]))["Subject"]
    assert "permanently" in both and "expired" in both
    assert b"Tender" not in build().split(b"\r\n\r\n")[0]


def test_delivery_status_fields() -> None:
    status = parts(build(recipients=[UNKNOWN_USER, EXPIRED]))[1]
    per_message, first, second = children(status)
    assert per_message["Reporting-MTA"] == "dns; gw.gov.example"
    assert per_message["Arrival-Date"] == "Tue, 03 Dec 2024 09:30:00 +0000"
    assert dict(first.items()) == {
        "Final-Recipient": "rfc822; bob@peer.gov.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.peer.gov.example",
        "Diagnostic-Code": "smtp; 550 5.1.1 No such user",
    }
    assert dict(second.items()) == {
        "Final-Recipient": "rfc822; carol@slow.gov.example",
        "Action": "failed",
        "Status": "4.4.7",
    }
    assert not [name for name in first if name.startswith("X-")]


def test_diagnostic_without_type_gets_smtp() -> None:
    recipient = FailedRecipient("d@x.example", "5.7.1", "550 5.7.1 Refused", None)
    assert b"Diagnostic-Code: smtp; 550 5.7.1 Refused\r\n" in build(
        recipients=[recipient]
    )


def test_notice_is_written_for_an_officer() -> None:
    text = parts(build(recipients=[UNKNOWN_USER, EXPIRED]))[0].get_content()
    text = " ".join(text.split())  # the notice is folded for reading
    assert "could not be delivered to 2 recipients" in text
    assert "bob@peer.gov.example" in text
    assert "does not exist" in text
    assert "Check the address" in text
    assert "550 5.1.1 No such user" in text
    assert "gave up" in text
    assert "Q7F3A2" in text
    assert "<tender17@gw.gov.example>" in text
    assert "smtp;" not in text


def test_body_of_the_original_never_appears() -> None:
    report = build()
    assert SECRET_BODY not in report
    assert b"3 million" not in report
    headers = parts(report)[2].get_payload()
    assert isinstance(headers, str)
    assert "Subject: Tender 2024-17 evaluation" in headers
    assert "Message-ID: <tender17@gw.gov.example>" in headers


def test_header_copy_with_bare_lf_still_stops_at_the_body() -> None:
    original = ORIGINAL.replace(b"\r\n", b"\n")
    report = build(original_headers=original)
    assert SECRET_BODY not in report
    assert b"Subject: Tender 2024-17 evaluation\r\n" in report


def test_crlf_in_diagnostic_cannot_inject() -> None:
    hostile = FailedRecipient(
        address="bob@peer.gov.example\r\nBcc: eve@evil.example",
        status="5.1.1",
        diagnostic="smtp; 550 no\r\nX-Injected: yes\r\n\r\n--fake\r\nX-Also: 1",
        remote_mta="mx.peer\nX-Host: 1",
    )
    report = build(
        recipients=[hostile],
        original_message_id="<id>\r\nX-Id: 1",
        queue_id="Q1\r\nX-Queue: 1",
        postmaster="postmaster@gw\r\nBcc: eve@evil.example",
        original_sender="alice@gw.gov.example\r\nCc: eve@evil.example",
    )
    message = parse(report)
    for part in message.walk():
        for block in [part, *_blocks(part)]:
            names = {name.lower() for name in block}
            assert not names & {"bcc", "cc", "x-injected", "x-also", "x-host"}
            assert not names & {"x-id", "x-queue"}
    header = report.split(b"\r\n\r\n")[0]
    fields = [line.split(b":")[0] for line in header.split(b"\r\n")]
    assert fields[:-1] == [
        b"From",
        b"To",
        b"Subject",
        b"Date",
        b"Message-ID",
        b"Auto-Submitted",
        b"MIME-Version",
        b"Content-Type",
    ]
    assert fields[-1].startswith(b' boundary="')
    assert len(parts(report)) == 3


def _blocks(part: EmailMessage) -> list[EmailMessage]:
    if part.get_content_type() != "message/delivery-status":
        return []
    return children(part)


def test_every_line_ends_with_crlf_and_fits_smtp() -> None:
    long_header = b"X-Long: " + b"y" * 3000 + b"\r\n"
    recipient = FailedRecipient(
        address="a" * 2000 + "@x.example",
        status="5.1.1",
        diagnostic="smtp; 550 " + "z" * 5000,
        remote_mta="h" * 1000,
    )
    report = build(
        recipients=[recipient, EXPIRED],
        original_headers=long_header + b"Bad: \x00\x07\xff\xfe\r" + ORIGINAL,
    )
    assert report.endswith(b"\r\n")
    lines = report.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998
    report.decode("ascii")


def test_non_ascii_becomes_question_marks() -> None:
    recipient = FailedRecipient("j\u00fcrgen@bund.example", "5.1.1", "", None)
    report = build(
        recipients=[recipient], original_headers=b"Subject: \xc3\xa9t\xc3\xa9\r\n"
    )
    report.decode("ascii")
    assert b"j?rgen@bund.example" in report


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"original_sender": ""}, "null sender"),
        ({"original_sender": "<>"}, "null sender"),
        ({"arrival_date": datetime(2024, 12, 3)}, "time zone"),
        ({"now": datetime(2024, 12, 3)}, "time zone"),
        (
            {"recipients": [FailedRecipient("a@b.example", "5.1", "", None)]},
            "not an enhanced status code",
        ),
        (
            {"recipients": [FailedRecipient("a@b.example", "2.0.0", "", None)]},
            "does not match",
        ),
        (
            {
                "recipients": [
                    FailedRecipient("a@b.example", "5.1.1", "", None, "delayed")
                ]
            },
            "does not match",
        ),
        (
            {
                "recipients": [
                    FailedRecipient("a@b.example", "5.1.1", "", None, "relayed")
                ]
            },
            "unsupported",
        ),
    ],
)
def test_wrong_requests_are_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build(**changes)


def test_delayed_recipient_is_reported_as_still_trying() -> None:
    delayed = FailedRecipient("d@x.example", "4.2.2", "smtp; 452 full", "mx", "delayed")
    report = build(recipients=[delayed])
    assert (
        parse(report)["Subject"] == "Undelivered mail: delivery delayed, still trying"
    )
    assert b"Action: delayed\r\n" in report


def test_missing_message_id_is_stated() -> None:
    text = parts(build(original_message_id=None))[0].get_content()
    assert "Message-ID:  (none)" in text

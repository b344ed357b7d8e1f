"""PGP/MIME with header protection: our own round trips, GnuPG both ways, attacks.

Keys are real: the gateway's keys come from beep_mail.crypto.openpgp, and
GnuPG (through tests/gpg_support.py) plays the peer that reads what we send
and sends what we read.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

import pytest

from beep_mail.crypto import openpgp
from beep_mail.crypto.pgpmime import (
    PROTECTED_SUBJECT,
    VERIFICATION_HEADER,
    NotEncrypted,
    PGPMIMEError,
    _split_entity,
    _split_multipart,
    is_encrypted,
    protect,
    unprotect,
)
from tests.gpg_support import GPG

PASSPHRASE = "correct horse battery staple"
OUR_ADDRESS = "officer@ministry.gov.example"
PEER_ADDRESS = "desk@partner.gov.example"

URDU = "سلام، یہ ایک خفیہ پیغام ہے"
SUBJECT = "Budget figures for the Q3 review"
URDU_SUBJECT = "خفیہ: سہ ماہی بجٹ"
BODY = "The Q3 allocation for the northern office is 4.2 million."
FILENAME = "رپورٹ-سہ-ماہی.pdf"
ATTACHMENT = random.Random(3156).randbytes(6000)


@dataclass(frozen=True)
class Keys:
    ours: openpgp.UnlockedKey  # signs what we send
    peer_secret: openpgp.SecretKey  # the receiving gateway's key, as stored
    peer: openpgp.UnlockedKey
    stranger: openpgp.UnlockedKey  # pinned by nobody


@pytest.fixture(scope="module")
def keys() -> Keys:
    def make(name: str, email: str) -> openpgp.SecretKey:
        return openpgp.generate(name, email, passphrase=PASSPHRASE)

    peer_secret = make("Partner gateway", "gateway@partner.gov.example")
    return Keys(
        ours=make("Ministry gateway", "gateway@ministry.gov.example").unlock(
            PASSPHRASE
        ),
        peer_secret=peer_secret,
        peer=peer_secret.unlock(PASSPHRASE),
        stranger=make("Stranger", "someone@elsewhere.example").unlock(PASSPHRASE),
    )


@dataclass(frozen=True)
class Gateways:
    """Our signing key and the receiving gateway's key, of one algorithm."""

    ours: openpgp.UnlockedKey
    peer_secret: openpgp.SecretKey
    peer: openpgp.UnlockedKey


@pytest.fixture(scope="module")
def gateways(keys: Keys) -> dict[str, Gateways]:
    rsa_peer = openpgp.generate(
        "Partner gateway",
        "gateway@partner.gov.example",
        passphrase=PASSPHRASE,
        algorithm="rsa3072",
    )
    rsa_ours = openpgp.generate(
        "Ministry gateway",
        "gateway@ministry.gov.example",
        passphrase=PASSPHRASE,
        algorithm="rsa3072",
    )
    return {
        "curve25519": Gateways(keys.ours, keys.peer_secret, keys.peer),
        "rsa3072": Gateways(
            rsa_ours.unlock(PASSPHRASE), rsa_peer, rsa_peer.unlock(PASSPHRASE)
        ),
    }


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GPG]:
    home = GPG(tmp_path_factory.mktemp("gpg"))
    yield home
    home.close()


# --- messages as an officer's client writes them ---------------------------------


def _message(fields: list[tuple[str, str]], body: bytes) -> bytes:
    header = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    return header + b"\r\n" + body


_RECEIVED = (
    "from [192.0.2.7] by gw.ministry.gov.example; Thu, 03 Dec 2026 10:00:01 +0000"
)


def _envelope_fields(subject: str = SUBJECT) -> list[tuple[str, str]]:
    return [
        ("Received", _RECEIVED),
        ("Date", "Thu, 03 Dec 2026 10:00:00 +0000"),
        ("From", f"Officer One <{OUR_ADDRESS}>"),
        ("To", f"Partner Desk <{PEER_ADDRESS}>"),
        ("Cc", "Second Desk <second@partner.gov.example>"),
        ("Subject", subject),
        ("Message-ID", "<q3-budget.1@ministry.gov.example>"),
        ("In-Reply-To", "<earlier.7@partner.gov.example>"),
        ("References", "<earlier.7@partner.gov.example>"),
        ("X-Mailer", "Microsoft Outlook 16.0"),
        ("Reply-To", "registry@ministry.gov.example"),
        ("MIME-Version", "1.0"),
    ]


def _encoded_subject() -> str:
    return "=?utf-8?b?" + base64.b64encode(URDU_SUBJECT.encode()).decode() + "?="


def plain_ascii() -> bytes:
    fields = [
        *_envelope_fields(),
        ("Content-Type", "text/plain; charset=us-ascii"),
        ("Content-Transfer-Encoding", "7bit"),
    ]
    return _message(fields, BODY.encode() + b"\r\n")


def urdu_8bit() -> bytes:
    fields = [
        *_envelope_fields(_encoded_subject()),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    return _message(fields, URDU.encode() + b"\r\n" + BODY.encode() + b"\r\n")


def urdu_base64() -> bytes:
    fields = [
        *_envelope_fields(_encoded_subject()),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "base64"),
    ]
    text = (URDU + "\r\n" + BODY + "\r\n").encode()
    return _message(fields, base64.encodebytes(text).replace(b"\n", b"\r\n"))


def _attachment_part() -> bytes:
    encoded = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
    return (
        b"Content-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment;\r\n filename*=utf-8''"
        + urllib.parse.quote(FILENAME).encode()
        + b"\r\n\r\n"
        + encoded
    )


def with_attachment() -> bytes:
    fields = [
        *_envelope_fields(),
        ("Content-Type", 'multipart/mixed; boundary="mix-1"'),
    ]
    body = (
        b"--mix-1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + URDU.encode()
        + b"\r\n"
        + BODY.encode()
        + b"\r\n--mix-1\r\n"
        + _attachment_part()
        + b"--mix-1--\r\n"
    )
    return _message(fields, body)


def nested() -> bytes:
    fields = [
        *_envelope_fields(),
        ("Content-Type", 'multipart/mixed; boundary="outer"'),
    ]
    alternative = (
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        + BODY.encode()
        + b"\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
        b'Content-Transfer-Encoding: 8bit\r\n\r\n<p dir="rtl">'
        + URDU.encode()
        + b"</p>\r\n--alt--\r\n"
    )
    body = (
        b"Preamble that MIME readers skip.\r\n--outer\r\n"
        + alternative
        + b"--outer\r\n"
        + _attachment_part()
        + b"--outer--\r\nEpilogue.\r\n"
    )
    return _message(fields, body)


def awkward_lines() -> bytes:
    """Lines that naive code rewrites: dots, From, spaces, no final line end."""
    fields = [*_envelope_fields(), ("Content-Type", "text/plain; charset=us-ascii")]
    body = (
        b".\r\n..leading dots\r\nFrom the desk of the minister\r\n"
        b"trailing spaces   \r\n\ttab first\r\n\r\n\r\n--not-a-boundary\r\n"
        + BODY.encode()
        + b"\r\nlast line without CRLF"
    )
    return _message(fields, body)


MESSAGES = {
    "plain-ascii": plain_ascii,
    "urdu-8bit": urdu_8bit,
    "urdu-base64": urdu_base64,
    "attachment": with_attachment,
    "nested": nested,
    "awkward-lines": awkward_lines,
}


def _parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def _split(data: bytes) -> tuple[bytes, bytes]:
    header, _, body = data.partition(b"\r\n\r\n")
    return header + b"\r\n", body


def _field_names(header: bytes) -> list[str]:
    return [
        line.split(b":", 1)[0].decode().lower()
        for line in header.split(b"\r\n")
        if line and line[:1] not in b" \t"
    ]


def _parts(message: EmailMessage) -> list[EmailMessage]:
    parts = message.get_payload()
    assert isinstance(parts, list)
    return [part for part in parts if isinstance(part, EmailMessage)]


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def _attachments(message: EmailMessage) -> list[tuple[str | None, bytes]]:
    found = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append((part.get_filename(), payload))
    return found


# --- reading MIME without rewriting it -------------------------------------------


def test_split_multipart_keeps_each_part_exact() -> None:
    body = (
        b"preamble\r\n--b\r\nA\r\n\r\n--bogus\r\n--b \t\r\n\r\nB\r\n"
        b"--b--\r\nepilogue\r\n--b\r\nlate\r\n"
    )
    assert _split_multipart(body, b"b") == [b"A\r\n\r\n--bogus", b"\r\nB"]
    assert _split_multipart(b"--b\r\n--b\r\nx\r\n--b--", b"b") == [b"", b"x"]
    with pytest.raises(PGPMIMEError, match="not closed"):
        _split_multipart(b"--b\r\nA\r\n--b-\r\n", b"b")


def test_split_entity_reads_fields_as_written() -> None:
    fields, body = _split_entity(
        b"From sender Thu Dec  3\r\nSubject : folded\r\n\tsecond\r\n"
        b"X-Long:\r\n value\r\nnot a field\r\nrest\r\n"
    )
    assert [(field.name, field.raw) for field in fields] == [
        ("Subject", b"Subject: folded\r\n\tsecond\r\n"),
        ("X-Long", b"X-Long:\r\n value\r\n"),
    ]
    assert body == b"not a field\r\nrest\r\n"


# --- our round trip ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_round_trip_keeps_the_body_entity_byte_for_byte(keys: Keys, kind: str) -> None:
    original = MESSAGES[kind]()
    wire = protect(original, [keys.peer.public], keys.ours)
    result = unprotect(wire, [keys.peer], [keys.ours.public], sender=OUR_ADDRESS)

    assert (result.signature, result.signer) == ("valid", keys.ours.public.fingerprint)
    assert result.header_protected and result.sender_matches
    original_header, original_body = _split(original)
    header, body = _split(result.message)
    assert body == original_body

    # Every original field comes back, in order; Content-Type only gains hp.
    expected = [name for name in _field_names(original_header)]
    assert _field_names(header) == [VERIFICATION_HEADER.lower(), *expected]
    parsed = _parse(result.message)
    assert parsed.get_param("hp") == "cipher"
    assert parsed.get_content_type() == _parse(original).get_content_type()


@pytest.mark.parametrize("kind", ["urdu-8bit", "urdu-base64", "attachment", "nested"])
def test_round_trip_recovers_subject_text_and_attachment(keys: Keys, kind: str) -> None:
    original = _parse(MESSAGES[kind]())
    wire = protect(MESSAGES[kind](), [keys.peer.public], keys.ours)
    result = _parse(unprotect(wire, [keys.peer], [keys.ours.public]).message)

    assert result["Subject"] == original["Subject"]
    assert _text(result) == _text(original)
    if kind.startswith("urdu"):
        assert result["Subject"] == URDU_SUBJECT
        assert URDU in _text(result)
    if kind in ("attachment", "nested"):
        assert _attachments(result) == [(FILENAME, ATTACHMENT)]


def test_round_trip_keeps_lf_free_crlf_lines(keys: Keys) -> None:
    original = awkward_lines()
    wire = protect(original, [keys.peer.public], keys.ours)
    result = unprotect(wire, [keys.peer], [keys.ours.public])

    assert result.message.count(b"\n") == result.message.count(b"\r\n")
    assert result.message.endswith(b"\r\nlast line without CRLF")


def test_bare_lf_input_is_made_canonical(keys: Keys) -> None:
    original = plain_ascii().replace(b"\r\n", b"\n")
    result = unprotect(
        protect(original, [keys.peer.public], keys.ours),
        [keys.peer],
        [keys.ours.public],
    )
    assert _split(result.message)[1] == BODY.encode() + b"\r\n"


# --- the wire form ----------------------------------------------------------------


def _forms(text: str) -> set[bytes]:
    """The text as mail could carry it: raw, base64 at each alignment, QP, %-escaped."""
    raw = text.encode("utf-8")
    forms = {
        raw,
        binascii.b2a_qp(raw).split(b"=\n")[0],
        binascii.b2a_qp(raw, header=True).split(b"=\n")[0],
        urllib.parse.quote(text).encode(),
    }
    for shift in range(3):
        encoded = base64.b64encode(raw[shift:])
        forms.add(encoded[:-4])  # the last group depends on what follows
    return {form for form in forms if len(form) >= 8}


def _wire(keys: Keys, kind: str) -> bytes:
    return protect(MESSAGES[kind](), [keys.peer.public], keys.ours)


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_wire_form_is_7bit_crlf_and_short_lined(keys: Keys, kind: str) -> None:
    wire = _wire(keys, kind)
    assert wire.isascii()
    assert wire.count(b"\n") == wire.count(b"\r\n") and b"\r" not in wire.replace(
        b"\r\n", b""
    )
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    assert wire.endswith(b"--\r\n")


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_wire_form_hides_subject_body_and_attachment_name(
    keys: Keys, kind: str
) -> None:
    wire = _wire(keys, kind)
    secrets = [SUBJECT, URDU_SUBJECT, URDU, BODY, FILENAME, "Outlook", "registry@"]
    for secret in secrets:
        for form in _forms(secret):
            assert form not in wire, (secret, form)
    assert base64.b64encode(ATTACHMENT[:600])[:400] not in wire


def test_wire_form_outer_header_is_the_routing_header_only(keys: Keys) -> None:
    wire = _wire(keys, "attachment")
    header, _ = _split(wire)
    assert _field_names(header) == [
        "received",
        "date",
        "from",
        "to",
        "cc",
        "subject",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
    ]
    outer = _parse(wire)
    assert outer["Subject"] == PROTECTED_SUBJECT
    assert outer["From"] == f"Officer One <{OUR_ADDRESS}>"
    assert outer["Message-ID"] == "<q3-budget.1@ministry.gov.example>"
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"

    control, data = _parts(outer)
    assert control.get_content_type() == "application/pgp-encrypted"
    assert control.get_content().strip() == b"Version: 1"
    assert data.get_content_type() == "application/octet-stream"
    assert data.get_param("name") == "encrypted.asc"
    assert data.get_content().startswith(b"-----BEGIN PGP MESSAGE-----")


def test_payload_carries_hp_cipher_and_hp_outer(keys: Keys) -> None:
    wire = _wire(keys, "plain-ascii")
    payload = openpgp.decrypt(_encrypted_part(wire), [keys.peer]).plaintext
    header, _ = _split(payload)

    assert b'hp="cipher"' in header
    assert b"HP-Outer: Subject: [...]\r\n" in header
    assert b"HP-Outer: From: Officer One <officer@ministry.gov.example>\r\n" in header
    assert b"HP-Outer: X-Mailer" not in header and b"X-Mailer: Microsoft" in header
    assert b"Received:" not in header  # trace fields stay outside only


def test_bcc_goes_nowhere(keys: Keys) -> None:
    original = _message(
        [*_envelope_fields(), ("Bcc", "hidden@partner.gov.example")], b"text\r\n"
    )
    wire = protect(original, [keys.peer.public], keys.ours)
    payload = openpgp.decrypt(_encrypted_part(wire), [keys.peer]).plaintext
    assert b"hidden@" not in wire and b"hidden@" not in payload


def test_message_without_subject_or_content_type_still_gets_both(keys: Keys) -> None:
    fields = [(name, value) for name, value in _envelope_fields() if name != "Subject"]
    wire = protect(_message(fields, b"short\r\n"), [keys.peer.public], keys.ours)
    assert _parse(wire)["Subject"] == PROTECTED_SUBJECT

    result = _parse(unprotect(wire, [keys.peer], [keys.ours.public]).message)
    assert "Subject" not in result
    assert result.get_content_type() == "text/plain"
    assert result.get_param("hp") == "cipher"


def test_existing_hp_parameter_is_replaced(keys: Keys) -> None:
    fields = [*_envelope_fields(), ("Content-Type", 'text/plain; hp="clear";')]
    wire = protect(_message(fields, b"x\r\n"), [keys.peer.public], keys.ours)
    payload = openpgp.decrypt(_encrypted_part(wire), [keys.peer]).plaintext
    assert _parse(payload).get_params() == [("text/plain", ""), ("hp", "cipher")]


def test_utf8_display_name_leaves_as_encoded_word(keys: Keys) -> None:
    fields = [(name, value) for name, value in _envelope_fields() if name != "From"]
    fields.append(("From", f"سلمان خان <{OUR_ADDRESS}>"))
    wire = protect(_message(fields, b"x\r\n"), [keys.peer.public], keys.ours)

    assert wire.isascii()
    assert _parse(wire)["From"] == f"سلمان خان <{OUR_ADDRESS}>"
    result = _parse(unprotect(wire, [keys.peer], [keys.ours.public]).message)
    assert result["From"] == f"سلمان خان <{OUR_ADDRESS}>"


def test_overlong_outer_field_is_refolded(keys: Keys) -> None:
    references = " ".join(f"<thread-{n}@partner.gov.example>" for n in range(60))
    fields = [*_envelope_fields(), ("References", references)]
    wire = protect(_message(fields, b"x\r\n"), [keys.peer.public], keys.ours)

    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    assert (_parse(wire).get_all("References") or [])[-1] == references


def test_address_outside_ascii_is_refused(keys: Keys) -> None:
    fields = [*_envelope_fields(), ("Cc", "سلمان@ministry.gov.example")]
    with pytest.raises(PGPMIMEError, match="Cc field"):
        protect(_message(fields, b"x\r\n"), [keys.peer.public], keys.ours)


def test_protect_needs_a_recipient(keys: Keys) -> None:
    with pytest.raises(PGPMIMEError):
        protect(plain_ascii(), [], keys.ours)


def test_two_content_type_fields_are_refused(keys: Keys) -> None:
    fields = [
        *_envelope_fields(),
        ("Content-Type", "text/plain"),
        ("Content-Type", "text/html"),
    ]
    with pytest.raises(PGPMIMEError, match="two Content-Type"):
        protect(_message(fields, b"x\r\n"), [keys.peer.public], keys.ours)


def test_is_encrypted(keys: Keys) -> None:
    assert is_encrypted(_wire(keys, "plain-ascii"))
    assert not is_encrypted(plain_ascii())
    smime = (
        b'Content-Type: multipart/encrypted; protocol="application/pkcs7-mime"\r\n\r\n'
    )
    assert not is_encrypted(smime)


# --- GnuPG reads what we send -----------------------------------------------------


def _encrypted_part(wire: bytes) -> bytes:
    _, data = _parts(_parse(wire))
    payload = data.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


@pytest.mark.parametrize("algorithm", ["curve25519", "rsa3072"])
@pytest.mark.parametrize("kind", ["urdu-8bit", "attachment", "nested"])
def test_gnupg_decrypts_and_verifies_what_we_send(
    gateways: dict[str, Gateways], gpg: GPG, kind: str, algorithm: str
) -> None:
    pair = gateways[algorithm]
    gpg.import_key(pair.peer_secret.armored)
    gpg.import_key(pair.ours.public.armored)
    wire = protect(MESSAGES[kind](), [pair.peer.public], pair.ours)

    result = gpg.run(
        "--passphrase",
        PASSPHRASE,
        "--decrypt",
        input=_encrypted_part(wire),
        check=False,
    )
    assert result.has("DECRYPTION_OKAY") and result.has("GOODSIG"), result.stderr
    assert result.lines("VALIDSIG")[0].split()[1] == pair.ours.public.fingerprint
    assert not result.has("DECRYPTION_FAILED") and not result.has("BADSIG")

    inner = _parse(result.stdout)
    original = _parse(MESSAGES[kind]())
    assert inner["Subject"] == original["Subject"]
    assert inner.get_param("hp") == "cipher"
    assert _text(inner) == _text(original)
    assert _split(result.stdout)[1] == _split(MESSAGES[kind]())[1]


def test_gnupg_reads_a_message_of_many_armour_blocks(
    gateways: dict[str, Gateways], gpg: GPG
) -> None:
    """The armour is written a block at a time: GnuPG reads it whole, and the
    message comes out byte for byte."""
    pair = gateways["curve25519"]
    gpg.import_key(pair.peer_secret.armored)
    gpg.import_key(pair.ours.public.armored)
    data = random.Random(11).randbytes(600 * 1024)
    message = (
        b"From: Officer One <" + OUR_ADDRESS.encode() + b">\r\n"
        b"To: <" + PEER_ADDRESS.encode() + b">\r\nSubject: many blocks\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
    )
    wire = protect(message, [pair.peer.public], pair.ours)
    assert wire.count(b"\n") == wire.count(b"\r\n")

    result = gpg.run("--passphrase", PASSPHRASE, "--decrypt",
                     input=_encrypted_part(wire), check=False)
    assert result.has("DECRYPTION_OKAY") and result.has("GOODSIG"), result.stderr
    assert _split(result.stdout)[1] == _split(message)[1]


# --- we read what GnuPG sends -----------------------------------------------------


@pytest.fixture(scope="module")
def gpg_senders(gpg: GPG) -> dict[str, str]:
    """A GnuPG user per key type: fingerprint by name."""
    return {
        "curve25519": gpg.generate("cv@partner.gov.example", "ed25519"),
        "rsa3072": gpg.generate("rsa@partner.gov.example", "rsa3072"),
    }


def _gnupg_entity(protected: bool) -> bytes:
    """A message body entity as a client builds it with the email package."""
    entity = EmailMessage()
    if protected:  # a client doing RFC 9788 puts the real header inside
        entity["From"] = f"Partner Desk <{PEER_ADDRESS}>"
        entity["To"] = f"Officer One <{OUR_ADDRESS}>"
        entity["Subject"] = URDU_SUBJECT
    entity.set_content(URDU + "\n" + BODY + "\n", cte="base64")
    entity.add_attachment(
        ATTACHMENT, maintype="application", subtype="pdf", filename=FILENAME
    )
    if protected:
        entity.set_param("hp", "cipher")
    data = entity.as_bytes(policy=policy.SMTP)
    if not protected:  # only the Content-* fields: what a GnuPG user wraps
        header, body = _split(data)
        kept = [
            line
            for line in re.split(rb"\r\n(?![ \t])", header)
            if line.lower().startswith(b"content-")
        ]
        data = b"\r\n".join(kept) + b"\r\n\r\n" + body
    return data


def _wrap(
    armored: bytes, subject: str = PROTECTED_SUBJECT, extra: bytes = b""
) -> bytes:
    """Put an OpenPGP message into multipart/encrypted, as RFC 3156 section 4 says."""
    encoded_subject = (
        subject
        if subject.isascii()
        else ("=?utf-8?b?" + base64.b64encode(subject.encode()).decode() + "?=")
    )
    return (
        b"Received: from mx.partner.gov.example by gw.ministry.gov.example; "
        b"Thu, 03 Dec 2026 10:00:05 +0000\r\n"
        b"Return-Path: <" + PEER_ADDRESS.encode() + b">\r\n"
        b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        b"From: Partner Desk <" + PEER_ADDRESS.encode() + b">\r\n"
        b"To: <" + OUR_ADDRESS.encode() + b">\r\n"
        b"Subject: " + encoded_subject.encode() + b"\r\n"
        b"Message-ID: <from-gnupg.1@partner.gov.example>\r\n"
        + extra
        + b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        b' boundary="gpg-b"\r\n\r\n'
        b"Preamble text that must never reach the officer.\r\n"
        b"--gpg-b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--gpg-b\r\nContent-Type: application/octet-stream\r\n\r\n"
        + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + b"\r\n--gpg-b--\r\nEpilogue text that must never reach the officer.\r\n"
    )


def _signed(gpg: GPG, entity: bytes, signer: str) -> bytes:
    """The nested form of RFC 3156 section 6.1: multipart/signed to be encrypted."""
    signature = gpg.sign(entity, signer, detached=True, armor=True)
    return (
        b"Content-Type: multipart/signed; micalg=pgp-sha512;\r\n"
        b' protocol="application/pgp-signature"; boundary="sig-b"\r\n\r\n'
        b"--sig-b\r\n" + entity + b"\r\n--sig-b\r\n"
        b"Content-Type: application/pgp-signature; name=signature.asc\r\n\r\n"
        + signature.replace(b"\n", b"\r\n")
        + b"\r\n--sig-b--\r\n"
    )


def _check_from_gnupg(result_message: bytes) -> None:
    result = _parse(result_message)
    assert result["Subject"] == URDU_SUBJECT
    assert result["From"] == f"Partner Desk <{PEER_ADDRESS}>"
    assert URDU in _text(result)
    assert _attachments(result) == [(FILENAME, ATTACHMENT)]
    assert b"must never reach" not in result_message
    assert result_message.count(b"\n") == result_message.count(b"\r\n")


@pytest.mark.parametrize("algorithm", ["curve25519", "rsa3072"])
@pytest.mark.parametrize("form", ["combined", "nested"])
@pytest.mark.parametrize("protected", [True, False], ids=["hp", "legacy"])
def test_we_read_what_gnupg_sends(
    gateways: dict[str, Gateways],
    gpg: GPG,
    gpg_senders: dict[str, str],
    algorithm: str,
    form: str,
    protected: bool,
) -> None:
    peer = gateways[algorithm].peer  # the receiving key has the sender's algorithm
    gpg.import_key(peer.public.armored)
    sender = gpg_senders[algorithm]
    verifiers = openpgp.load_public(gpg.export_public(sender))
    entity = _gnupg_entity(protected)

    if form == "combined":
        armored = gpg.encrypt(entity, [peer.public.fingerprint], sign_with=sender)
    else:
        armored = gpg.encrypt(_signed(gpg, entity, sender), [peer.public.fingerprint])
    # A legacy sender leaves the real subject outside, as GnuPG users do.
    wire = _wrap(armored, PROTECTED_SUBJECT if protected else URDU_SUBJECT)
    result = unprotect(wire, [peer], verifiers, sender=PEER_ADDRESS)

    assert (result.signature, result.signer) == ("valid", sender)
    assert result.header_protected is protected
    assert result.sender_matches is True
    _check_from_gnupg(result.message)
    header = _split(result.message)[0]
    assert header.startswith(
        f"{VERIFICATION_HEADER}: signature=valid; signer={sender}; encrypted=yes; "
        f"headers={'protected' if protected else 'unprotected'}; "
        "sender=match\r\n".encode()
    )
    assert header.count(b"Received:") == 1 and header.count(b"Return-Path:") == 1
    assert header.lower().count(b"content-type:") == 1


def test_legacy_message_drops_a_placeholder_subject(keys: Keys, gpg: GPG) -> None:
    gpg.import_key(keys.peer.public.armored)
    armored = gpg.encrypt(_gnupg_entity(False), [keys.peer.public.fingerprint])
    result = unprotect(_wrap(armored, "..."), [keys.peer], [])
    assert "Subject" not in _parse(result.message)
    assert not result.header_protected


# --- attacks ----------------------------------------------------------------------


FORGERIES = [
    b"X-Beepmail-Verification: signature=valid; signer=EVIL\r\n",
    b"X-BEEPMAIL-VERIFICATION: signature=valid\r\n",
    b"x-beepmail-verification :signature=valid\r\n",
    b"X-Beepmail-Verification:\r\n signature=valid;\r\n\tsigner=EVIL\r\n",
]


def _verification_fields(message: bytes) -> list[bytes]:
    header, _ = _split(message)
    return [
        line
        for line in re.split(rb"\r\n(?![ \t])", header)
        if line.lower().replace(b" ", b"").startswith(b"x-beepmail-verification:")
    ]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_outer_verification_field_is_replaced(keys: Keys, forgery: bytes) -> None:
    wire = protect(plain_ascii(), [keys.stranger.public], keys.ours)
    forged = forgery + wire
    result = unprotect(forged, [keys.stranger], [keys.ours.public])
    assert _verification_fields(result.message) == [
        b"X-Beepmail-Verification: signature=valid; signer="
        + keys.ours.public.fingerprint.encode()
        + b"; encrypted=yes; headers=protected; sender=unchecked"
    ]
    assert b"EVIL" not in result.message


@pytest.mark.parametrize("protected", [True, False], ids=["hp", "legacy"])
@pytest.mark.parametrize("forgery", FORGERIES)
def test_inner_verification_field_is_replaced(
    keys: Keys, forgery: bytes, protected: bool
) -> None:
    # A peer gateway that signs properly but writes the field itself, inside.
    content_type = (
        b'Content-Type: text/plain; hp="cipher"\r\n'
        if protected
        else (b"Content-Type: text/plain\r\n")
    )
    payload = b"Subject: inner\r\n" + forgery + content_type + b"\r\nhello\r\n"
    armored = openpgp.encrypt(payload, [keys.peer.public], signer=keys.ours)
    result = unprotect(_wrap(armored, extra=forgery), [keys.peer], [])

    fields = _verification_fields(result.message)
    assert len(fields) == 1 and fields[0].startswith(
        b"X-Beepmail-Verification: signature=unknown-key; signer=none;"
    )
    assert b"EVIL" not in result.message
    assert result.message.endswith(b"\r\n\r\nhello\r\n")


def test_efail_wrapping_is_not_decrypted(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    outer, body = _split(wire)
    inner_type = re.search(
        rb"Content-Type: multipart/encrypted;[^\r]*\r\n [^\r]*\r\n", outer
    )
    assert inner_type is not None
    efail = (
        b"From: attacker@evil.example\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="efail"\r\n\r\n'
        b'--efail\r\nContent-Type: text/html\r\n\r\n<img src="http://evil.example/\r\n'
        b"--efail\r\n"
        + inner_type.group(0)
        + b"\r\n"
        + body
        + b'\r\n--efail\r\nContent-Type: text/html\r\n\r\n">\r\n--efail--\r\n'
    )
    assert not is_encrypted(efail)
    with pytest.raises(NotEncrypted):
        unprotect(efail, [keys.peer], [keys.ours.public])


def test_plain_part_inside_multipart_encrypted_is_refused(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    boundary = re.search(rb'boundary="([^"]+)"', wire)
    assert boundary is not None
    close = b"--" + boundary.group(1) + b"--\r\n"
    spliced = wire.replace(
        close,
        b"--" + boundary.group(1) + b"\r\nContent-Type: text/html\r\n\r\n"
        b'<img src="http://evil.example/\r\n' + close,
    )
    with pytest.raises(PGPMIMEError, match="exactly two parts"):
        unprotect(spliced, [keys.peer], [keys.ours.public])


def test_plain_message_is_not_encrypted(keys: Keys) -> None:
    with pytest.raises(NotEncrypted):
        unprotect(plain_ascii(), [keys.peer], [keys.ours.public])


def test_unsigned_message_reports_missing(keys: Keys) -> None:
    payload = (
        b'Subject: unsigned\r\nContent-Type: text/plain; hp="cipher"\r\n\r\nhi\r\n'
    )
    armored = openpgp.encrypt(payload, [keys.peer.public])
    result = unprotect(_wrap(armored), [keys.peer], [keys.ours.public])
    assert (result.signature, result.signer) == ("missing", None)
    assert _verification_fields(result.message)[0].startswith(
        b"X-Beepmail-Verification: signature=missing; signer=none;"
    )


def test_unknown_signer_reports_unknown_key(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.stranger)
    result = unprotect(wire, [keys.peer], [keys.ours.public])
    assert (result.signature, result.signer) == ("unknown-key", None)


def test_altered_signed_part_reports_bad(keys: Keys, gpg: GPG) -> None:
    gpg.import_key(keys.peer.public.armored)
    sender = gpg.generate("tamper@partner.gov.example", "ed25519")
    signed = _signed(gpg, _gnupg_entity(True), sender)
    altered = signed.replace(b"Subject: ", b"Subject: X", 1)
    armored = gpg.encrypt(altered, [keys.peer.public.fingerprint])
    verifiers = openpgp.load_public(gpg.export_public(sender))

    result = unprotect(_wrap(armored), [keys.peer], verifiers)
    assert (result.signature, result.signer) == ("bad", None)


def test_wrong_key_cannot_open(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    with pytest.raises(PGPMIMEError):
        unprotect(wire, [keys.stranger], [keys.ours.public])


def test_sender_from_another_domain_is_flagged(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    result = unprotect(
        wire, [keys.peer], [keys.ours.public], sender="someone@partner.gov.example"
    )
    assert result.sender_matches is False
    assert _verification_fields(result.message)[0].endswith(b"sender=mismatch")


def test_deeply_nested_payload_is_refused(keys: Keys) -> None:
    depth = 1000
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    payload = opening + b"Content-Type: text/plain\r\n\r\nbottom" + closing + b"\r\n"
    armored = openpgp.encrypt(payload, [keys.peer.public], signer=keys.ours)
    with pytest.raises(PGPMIMEError, match="nested more than"):
        unprotect(_wrap(armored), [keys.peer], [keys.ours.public])


def test_oversized_payload_is_refused(keys: Keys) -> None:
    wire = protect(with_attachment(), [keys.peer.public], keys.ours)
    with pytest.raises(PGPMIMEError, match="larger than"):
        unprotect(wire, [keys.peer], [keys.ours.public], max_size=1024)


@pytest.mark.parametrize(
    "broken",
    [
        # no Version: 1 in the control part
        (b"Version: 1\r\n", b"Version: 2\r\n"),
        # the parts swapped type
        (b"Content-Type: application/octet-stream", b"Content-Type: text/plain"),
    ],
)
def test_malformed_multipart_encrypted_is_refused(
    keys: Keys, broken: tuple[bytes, bytes]
) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    with pytest.raises(PGPMIMEError):
        unprotect(wire.replace(*broken), [keys.peer], [keys.ours.public])


def test_unclosed_multipart_encrypted_is_refused(keys: Keys) -> None:
    wire = protect(plain_ascii(), [keys.peer.public], keys.ours)
    truncated = wire[: wire.rindex(b"\r\n--")] + b"\r\n"
    with pytest.raises(PGPMIMEError, match="not closed"):
        unprotect(truncated, [keys.peer], [keys.ours.public])


def test_result_is_parsed_by_the_stdlib_without_defects(keys: Keys) -> None:
    result = unprotect(_wire(keys, "nested"), [keys.peer], [keys.ours.public])
    message: Message = _parse(result.message)
    assert not message.defects
    assert all(not part.defects for part in message.walk())

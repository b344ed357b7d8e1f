"""Encryption at rest: sealing under a mailbox key, and sealing for recipients."""

from __future__ import annotations

import pytest

from beep_mail.crypto import atrest, openpgp
from beep_mail.crypto.openpgp import IntegrityError, KeyProblem, UnlockedKey

PASSPHRASE = "correct horse battery staple"
BODY = b"Subject: budget\r\n\r\nThe figures attached are final.\r\n" * 40


@pytest.fixture(scope="module")
def owner() -> UnlockedKey:
    return openpgp.generate("Owner", "owner@ministry.gov.example",
                            passphrase=PASSPHRASE).unlock(PASSPHRASE)


@pytest.fixture(scope="module")
def recovery() -> UnlockedKey:
    """The organisation's recovery key; RSA, as an offline key may well be."""
    secret = openpgp.generate("Recovery", "recovery@ministry.gov.example",
                              passphrase=PASSPHRASE, algorithm="rsa3072")
    return secret.unlock(PASSPHRASE)


@pytest.fixture(scope="module")
def stranger() -> UnlockedKey:
    return openpgp.generate("Stranger", "stranger@elsewhere.example",
                            passphrase=PASSPHRASE).unlock(PASSPHRASE)


def flipped(blob: bytes, position: int) -> bytes:
    altered = bytearray(blob)
    altered[position] ^= 0x01
    return bytes(altered)


def test_seal_round_trip_and_format() -> None:
    key = atrest.new_key()
    assert len(key) == atrest.KEY_BYTES and key != atrest.new_key()
    sealed = atrest.seal(key, BODY, b"message 7")
    assert sealed[:1] == b"\x01" and len(sealed) == 1 + 12 + len(BODY) + 16
    assert BODY[:20] not in sealed
    assert atrest.unseal(key, sealed, b"message 7") == BODY
    assert atrest.seal(key, BODY, b"message 7") != sealed  # a fresh nonce each time
    assert atrest.unseal(key, atrest.seal(key, b"")) == b""


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_a_flipped_byte_is_detected(position: int) -> None:
    key = atrest.new_key()
    sealed = atrest.seal(key, BODY)
    with pytest.raises(IntegrityError) as caught:
        atrest.unseal(key, flipped(sealed, position))
    assert "figures" not in str(caught.value)


def test_wrong_key_wrong_context_and_short_data_are_refused() -> None:
    key = atrest.new_key()
    sealed = atrest.seal(key, BODY, b"mailbox 1, message 7")
    with pytest.raises(IntegrityError):
        atrest.unseal(atrest.new_key(), sealed, b"mailbox 1, message 7")
    with pytest.raises(IntegrityError):
        atrest.unseal(key, sealed, b"mailbox 1, message 8")
    with pytest.raises(IntegrityError):
        atrest.unseal(key, sealed[:20])
    with pytest.raises(ValueError):
        atrest.seal(b"short", BODY)


def test_wrap_and_unwrap_a_key(owner: UnlockedKey, stranger: UnlockedKey) -> None:
    key = atrest.new_key()
    wrapped = atrest.wrap_key(key, [owner.public])
    assert wrapped[0] & 0x80  # binary OpenPGP
    assert atrest.unwrap_key(wrapped, owner) == key
    with pytest.raises(KeyProblem):
        atrest.unwrap_key(wrapped, stranger)


def test_sealed_for_owner_and_recovery(owner: UnlockedKey, recovery: UnlockedKey,
                                       stranger: UnlockedKey) -> None:
    blob = atrest.seal_for(BODY, [owner.public, recovery.public])
    assert atrest.is_sealed_for(blob) and blob[:4] == b"BMS1"
    assert not atrest.is_sealed_for(atrest.seal(atrest.new_key(), BODY))
    assert b"figures" not in blob
    assert atrest.open_sealed_for(blob, owner) == BODY
    assert atrest.open_sealed_for(blob, recovery) == BODY
    with pytest.raises(KeyProblem):
        atrest.open_sealed_for(blob, stranger)


def test_message_key_re_seals_under_a_mailbox_key(owner: UnlockedKey,
                                                  recovery: UnlockedKey) -> None:
    blob = atrest.seal_for(BODY, [owner.public, recovery.public])
    fresh = atrest.message_key_of(blob, owner)
    assert fresh == atrest.message_key_of(blob, recovery)
    length = int.from_bytes(blob[4:8], "big")
    assert atrest.unseal(fresh, blob[8 + length:]) == BODY
    mailbox_key = atrest.new_key()
    resealed = atrest.seal(mailbox_key, atrest.open_sealed_for(blob, owner))
    assert atrest.unseal(mailbox_key, resealed) == BODY


def test_sealed_for_tampering_is_detected(owner: UnlockedKey) -> None:
    blob = atrest.seal_for(BODY, [owner.public])
    length = int.from_bytes(blob[4:8], "big")
    # The end of the wrapped key (its MDC), then the sealed content.
    for position in (8 + length - 1, len(blob) - 1):
        with pytest.raises(IntegrityError):
            atrest.open_sealed_for(flipped(blob, position), owner)
    # An altered session key packet no longer opens with the owner's key.
    with pytest.raises(KeyProblem):
        atrest.open_sealed_for(flipped(blob, 8 + 20), owner)
    for broken in (blob[:6], b"BMS1" + (10**6).to_bytes(4, "big") + blob[8:],
                   atrest.seal(atrest.new_key(), BODY)):
        with pytest.raises(IntegrityError):
            atrest.open_sealed_for(broken, owner)

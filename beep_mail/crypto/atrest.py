"""Encryption at rest: mailbox content sealed so a copy of the disk reveals nothing.

Envelope encryption (DESIGN.md, "Storage"): each user has a symmetric
mailbox key, wrapped with OpenPGP to the user's key and to the recovery key;
content is sealed under it with AES-256-GCM, one symmetric operation per
message read. Delivery, which cannot unwrap the mailbox key without the
user's password, seals a message "for" its readers instead: under a fresh
key wrapped to their public keys (`seal_for`). The first session holding the
mailbox key takes that fresh key out (`message_key_of`) and re-seals the
message under the mailbox key.

Formats, all binary:

    sealed      b"\\x01" + nonce (12) + AES-256-GCM ciphertext and tag (16)
    sealed for  b"BMS1" + length of wrapped key (4, big-endian)
                + wrapped key (an OpenPGP message) + sealed

Every failure to open (wrong key, wrong associated data, altered bytes) is
an IntegrityError, whose message says nothing about the content.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from beep_mail.crypto.openpgp import (
    IntegrityError,
    PublicKey,
    UnlockedKey,
    decrypt,
    encrypt,
)

KEY_BYTES = 32
SEALED_VERSION = b"\x01"
SEALED_FOR_MAGIC = b"BMS1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
# A wrapped key is one OpenPGP message around 32 bytes: a few hundred bytes
# per recipient. The cap keeps a corrupted length from meaning anything.
_MAX_WRAPPED = 64 * 1024


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return os.urandom(KEY_BYTES)


class Cipher:
    """`seal` and `unseal` under one key, set up once for many blobs."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return SEALED_VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[:1] != SEALED_VERSION:
            raise IntegrityError("sealed data is malformed")
        nonce, ciphertext = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise IntegrityError(
                "sealed data failed its integrity check: wrong key or context, or altered"
            ) from None


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM with a random nonce; `aad` is bound to the result, not stored."""
    return Cipher(key).seal(plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """The plaintext of `seal(key, plaintext, aad)`; IntegrityError otherwise."""
    return Cipher(key).unseal(blob, aad)


def wrap_key(key: bytes, recipients: Sequence[PublicKey]) -> bytes:
    """`key` OpenPGP-encrypted (binary, unsigned) to every recipient."""
    _check_key(key)
    return encrypt(key, recipients, armor=False)


def unwrap_key(wrapped: bytes, unlocked: UnlockedKey) -> bytes:
    """The key inside `wrapped`; KeyProblem if not wrapped to `unlocked`."""
    key = decrypt(wrapped, [unlocked], max_size=1024).plaintext
    if len(key) != KEY_BYTES:
        raise IntegrityError("the wrapped key has the wrong length")
    return key


def seal_for(plaintext: bytes, recipients: Sequence[PublicKey]) -> bytes:
    """`plaintext` sealed under a fresh key wrapped to `recipients`."""
    fresh = new_key()
    wrapped = wrap_key(fresh, recipients)
    return (SEALED_FOR_MAGIC + len(wrapped).to_bytes(4, "big") + wrapped
            + seal(fresh, plaintext))


def is_sealed_for(blob: bytes) -> bool:
    return blob[:len(SEALED_FOR_MAGIC)] == SEALED_FOR_MAGIC


def open_sealed_for(blob: bytes, unlocked: UnlockedKey) -> bytes:
    """The plaintext of `seal_for()`, for one of its recipients."""
    wrapped, sealed = _split(blob)
    return unseal(unwrap_key(wrapped, unlocked), sealed)


def message_key_of(blob: bytes, unlocked: UnlockedKey) -> bytes:
    """The fresh key of a `seal_for()` blob, for re-sealing under a mailbox key."""
    wrapped, _ = _split(blob)
    return unwrap_key(wrapped, unlocked)


def _split(blob: bytes) -> tuple[bytes, bytes]:
    header = len(SEALED_FOR_MAGIC) + 4
    if not is_sealed_for(blob) or len(blob) < header:
        raise IntegrityError("not data sealed for a recipient")
    length = int.from_bytes(blob[len(SEALED_FOR_MAGIC):header], "big")
    if length > _MAX_WRAPPED or header + length > len(blob):
        raise IntegrityError("sealed data is malformed")
    return blob[header:header + length], blob[header + length:]


def _check_key(key: bytes) -> None:
    # A programming error, not bad data: the key never comes from outside.
    if len(key) != KEY_BYTES:
        raise ValueError(f"an at-rest key has {KEY_BYTES} bytes, not {len(key)}")

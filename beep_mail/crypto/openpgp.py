"""OpenPGP for the gateway: keys, encryption, signatures (RFC 4880, RFC 6637).

PGPy is the engine, and this is the only module that knows it: everything
else sees `PublicKey`, `SecretKey`, `UnlockedKey` and bytes. PGPy 0.6 is
unmaintained, so it is trusted with key and signature packet formats and
the public-key operations, and little else. Done here instead:

- Integrity. PGPy decrypts Symmetrically Encrypted Data (tag 9), which has
  no integrity protection (the EFAIL attacks). We frame the packets
  ourselves, refuse anything but SEIPD (tag 18) before any key is used, and
  decrypt SEIPD ourselves, checking the MDC before returning a single byte.
- Key validity. PGPy accepts signatures by revoked keys (also by keys both
  expired and revoked) and ignores usage flags. We verify self-signatures,
  subkey bindings, back-signatures and revocations, read expiry and usage
  from the newest valid self-signature (hashed area only), and decide with
  that which key may encrypt or sign. Designated revokers (RFC 4880
  5.2.3.15) are not honoured; third-party certifications are ignored, since
  peers' keys are pinned.
- Decompression. PGPy inflates without a bound. We inflate the Compressed
  Data packet in steps and refuse (TooLarge) past the caller's cap; PGPy
  never sees a compressed packet.
- Armour. PGPy's CRC-24 is pure Python and takes seconds on a large
  message; `armor()` uses crcmod's C one and always writes the checksum
  line, which GnuPG 2.2 requires.
- Smaller faults, each explained where it is fixed: RSA primes stored out of
  order for GnuPG (_order_primes), a 62 MiB buffer per passphrase
  derivation (_derive_key), the inverted "last" flag of one-pass signatures
  (_one_pass), and private keys rebuilt on every use (_keep_private_key).

What we write: Ed25519/Curve25519 or RSA-3072 keys; messages of one binary
literal packet, optionally one-pass signed (SHA-512), never compressed, in
SEIPD with AES-256. What we read: SEIPD with AES or Camellia, literal data
optionally signed and compressed once (ZIP, ZLIB, BZip2). Not supported:
AEAD packets (RFC 9580), v5/v6 keys, passphrase-only (SKESK) messages,
cleartext-signed messages.

Every function is synchronous and CPU-bound: callers run them off the event
loop. No exception message carries a passphrase, secret key material or
plaintext; PGPy's and cryptography's exceptions are translated once, here,
with their chain cut, since their messages were not written with that rule.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import hmac
import itertools
import os
import re
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import lru_cache, partial
from typing import Any, Literal, TypeVar

import crcmod
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.utils import CryptographyDeprecationWarning
from pgpy import PGPUID, PGPKey, PGPSignature
from pgpy.constants import (
    CompressionAlgorithm,
    EllipticCurveOID,
    HashAlgorithm,
    KeyFlags,
    PubKeyAlgorithm,
    RevocationReason,
    SignatureType,
    String2KeyType,
    SymmetricKeyAlgorithm,
)
from pgpy.errors import PGPDecryptionError
from pgpy.packet import Packet
from pgpy.packet.packets import PKESessionKeyV3, SignatureV4
from pgpy.packet.types import MPI

# PGPy builds a table of every cipher it knows each time it looks one up, the
# obsolete ones included, and cryptography warns on each of those names. We
# never use those ciphers (see _CIPHERS), so exactly these messages are
# ignored; any other warning PGPy raises is left alone. pyproject.toml's
# pytest settings carry the same filter for the test run.
warnings.filterwarnings(
    "ignore",
    message=r"(IDEA|CAST5|Blowfish|SEED|TripleDES|ARC4) has been (deprecated|moved)",
    category=CryptographyDeprecationWarning,
)


class OpenPGPError(Exception):
    """Base; str(error) is a short sentence safe to log and to show an admin."""


class KeyProblem(OpenPGPError):
    """An unusable key: revoked, expired, wrong usage, bad passphrase, unparsable."""


class IntegrityError(OpenPGPError):
    """No MDC/SEIPD, tampered ciphertext, malformed packets."""


class TooLarge(OpenPGPError):
    """Decompressed or decrypted size over the cap."""


T = TypeVar("T")


@contextmanager
def _engine(failure: type[OpenPGPError], what: str) -> Iterator[None]:
    """Run PGPy; whatever it raises becomes `failure`, named by type, not quoted.

    PGPy reports bad input and bad keys with any exception type (IndexError
    on a truncated packet, ValueError from cryptography...), and its messages
    may quote data. This is the one place they are translated.
    """
    try:
        yield
    except OpenPGPError:
        raise
    except Exception as error:  # noqa: BLE001 - see the docstring
        raise failure(f"{what} ({type(error).__name__})") from None


def _quietly(call: Callable[..., T], *args: Any) -> T | None:
    """PGPy's result, or None when it raises: for attempts that may fail."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - as _engine(); a failed attempt is no error
        return None


Algorithm = Literal["curve25519", "rsa3072"]
Verdict = Literal["valid", "missing", "bad", "unknown-key", "invalid-key"]
Block = Literal["MESSAGE", "PUBLIC KEY BLOCK", "PRIVATE KEY BLOCK", "SIGNATURE"]

# Packet tags (RFC 4880 4.3).
PKESK, SIGNATURE, SKESK, ONE_PASS = 1, 2, 3, 4
SECRET_KEY, PUBLIC_KEY, SECRET_SUBKEY, COMPRESSED = 5, 6, 7, 8
SED, MARKER, LITERAL, TRUST, USER_ID, PUBLIC_SUBKEY = 9, 10, 11, 12, 13, 14
USER_ATTRIBUTE, SEIPD, MDC, AEAD = 17, 18, 19, 20

_ENCRYPT_FLAGS = frozenset({KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
_SIGN_ALGORITHMS = frozenset({
    PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.RSASign, PubKeyAlgorithm.DSA,
    PubKeyAlgorithm.ECDSA, PubKeyAlgorithm.EdDSA,
})
_ENCRYPT_ALGORITHMS = frozenset({
    PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.RSAEncrypt, PubKeyAlgorithm.ECDH,
})
# Key packets PGPy can parse; a component with another algorithm is dropped
# before PGPy sees it (PGPy would otherwise warn about an orphaned packet).
_KNOWN_ALGORITHMS = frozenset(int(a) for a in _SIGN_ALGORITHMS | _ENCRYPT_ALGORITHMS)

# Symmetric ciphers we accept when decrypting, with their key sizes; all have
# 128-bit blocks. We always encrypt with AES-256.
_CIPHERS: dict[int, tuple[type[algorithms.AES | algorithms.Camellia], int]] = {
    SymmetricKeyAlgorithm.AES128: (algorithms.AES, 16),
    SymmetricKeyAlgorithm.AES192: (algorithms.AES, 24),
    SymmetricKeyAlgorithm.AES256: (algorithms.AES, 32),
    SymmetricKeyAlgorithm.Camellia128: (algorithms.Camellia, 16),
    SymmetricKeyAlgorithm.Camellia192: (algorithms.Camellia, 24),
    SymmetricKeyAlgorithm.Camellia256: (algorithms.Camellia, 32),
}
_BLOCK = 16
# Hashes accepted on message signatures; self-signatures of older keys may
# still use SHA-1, which cannot be forged without the key owner's help.
_DATA_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA224: hashes.SHA224, HashAlgorithm.SHA256: hashes.SHA256,
    HashAlgorithm.SHA384: hashes.SHA384, HashAlgorithm.SHA512: hashes.SHA512,
}
_SELF_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    **_DATA_HASHES, HashAlgorithm.SHA1: hashes.SHA1}

_CERTIFICATIONS = frozenset({
    SignatureType.Generic_Cert, SignatureType.Persona_Cert,
    SignatureType.Casual_Cert, SignatureType.Positive_Cert,
})
_WILDCARD_KEY_ID = "0" * 16
# Signature packets and headers around the literal data of a message.
_ENVELOPE_MARGIN = 64 * 1024
# Octets of binary armoured at a time: 4,096 lines of 64 columns.
_ARMOR_BLOCK = 48 * 4096
_INFLATE_STEP = 1024 * 1024
_CLOCK_SKEW = 300.0


# -- armour ----------------------------------------------------------------------------

_crc24 = crcmod.mkCrcFun(0x1864CFB, initCrc=0xB704CE, rev=False, xorOut=0)
_BLOCKS: frozenset[str] = frozenset(
    {"MESSAGE", "PUBLIC KEY BLOCK", "PRIVATE KEY BLOCK", "SIGNATURE"}
)
_BEGIN = re.compile(rb"-----BEGIN PGP ([A-Z0-9 ,]+)-----")


def armor(data: bytes, block: Block, *, newline: bytes = b"\n") -> bytes:
    """ASCII armour (RFC 4880 6.2) with 64-column lines and the CRC-24 line.

    `newline=b"\r\n"` writes the canonical line ends of mail. The lines are
    made a block at a time, so that a large message never has all of its
    short lines alive at once.
    """
    if block not in _BLOCKS:
        raise ValueError(f"unknown armour block type {block!r}")
    if newline not in (b"\n", b"\r\n"):
        raise ValueError("armour lines end in LF or CRLF")
    kind = block.encode()
    out = [b"-----BEGIN PGP ", kind, b"-----", newline, newline]
    view = memoryview(data)
    for start in range(0, len(data), _ARMOR_BLOCK):
        encoded = binascii.b2a_base64(view[start:start + _ARMOR_BLOCK], newline=False)
        out.append(newline.join([encoded[i:i + 64] for i in range(0, len(encoded), 64)]))
        out.append(newline)
    checksum = base64.b64encode(_crc24(data).to_bytes(3, "big"))
    out += [b"=", checksum, newline, b"-----END PGP ", kind, b"-----", newline]
    return b"".join(out)


_armor = armor  # encrypt() has a parameter named armor


def dearmor(data: bytes | str) -> bytes:
    """The binary packets of armoured data (every block, in order).

    Binary data is returned unchanged. A wrong checksum or malformed base64
    raises IntegrityError; a missing checksum line is accepted (RFC 9580).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if raw and raw[0] & 0x80:
        return raw
    blocks = []
    position = 0
    while (begin := _BEGIN.search(raw, position)) is not None:
        end_line = b"-----END PGP " + begin.group(1) + b"-----"
        end = raw.find(end_line, begin.end())
        if end < 0:
            raise IntegrityError("armoured data has no end line")
        blocks.append(_armor_body(raw[begin.end():end]))
        position = end + len(end_line)
    if not blocks:
        raise IntegrityError("the data is neither binary nor armoured OpenPGP")
    return b"".join(blocks)


def _armor_body(text: bytes) -> bytes:
    lines = [line.strip() for line in text.split(b"\n")][1:]
    while lines and b":" in lines[0]:  # armour headers; base64 has no colon
        del lines[0]
    body, checksum = [], None
    for line in lines:
        if line.startswith(b"="):
            checksum = line[1:]
            break
        body.append(line)
    try:
        binary = base64.b64decode(b"".join(body), validate=True)
        expected = base64.b64decode(checksum, validate=True) if checksum else None
    except binascii.Error:
        raise IntegrityError("armoured data is not valid base64") from None
    if expected is not None and expected != _crc24(binary).to_bytes(3, "big"):
        raise IntegrityError("armour checksum mismatch: the data was altered")
    return binary


# -- packet framing --------------------------------------------------------------------


@dataclass(frozen=True)
class _Packet:
    tag: int
    body: memoryview


def _packets(data: bytes | bytearray | memoryview) -> Iterator[_Packet]:
    """Split a packet stream (RFC 4880 4.2), joining partial body lengths."""
    view = memoryview(data)
    position, end = 0, len(view)
    while position < end:
        first = view[position]
        position += 1
        if not first & 0x80:
            raise IntegrityError("malformed OpenPGP packet header")
        if first & 0x40:
            tag, parts = first & 0x3F, []
            while True:
                length, position, partial = _new_length(view, position)
                if position + length > end:
                    raise IntegrityError("truncated OpenPGP packet")
                parts.append(view[position:position + length])
                position += length
                if not partial:
                    break
            body = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        else:
            tag, kind = (first >> 2) & 0x0F, first & 0x03
            if kind == 3:
                length = end - position
            else:
                size = (1, 2, 4)[kind]
                if position + size > end:
                    raise IntegrityError("truncated OpenPGP packet")
                length = int.from_bytes(view[position:position + size], "big")
                position += size
            if position + length > end:
                raise IntegrityError("truncated OpenPGP packet")
            body = view[position:position + length]
            position += length
        yield _Packet(tag, body)


def _new_length(view: memoryview, position: int) -> tuple[int, int, bool]:
    """(length, position after the length octets, whether it is partial)."""
    if position >= len(view):
        raise IntegrityError("truncated OpenPGP packet")
    octet = view[position]
    if octet < 192:
        return octet, position + 1, False
    if octet < 224:
        if position + 2 > len(view):
            raise IntegrityError("truncated OpenPGP packet")
        return ((octet - 192) << 8) + view[position + 1] + 192, position + 2, False
    if octet == 255:
        if position + 5 > len(view):
            raise IntegrityError("truncated OpenPGP packet")
        length = int.from_bytes(view[position + 1:position + 5], "big")
        return length, position + 5, False
    return 1 << (octet & 0x1F), position + 1, True


def _header(tag: int, length: int) -> bytes:
    """A new-format packet header with a definite length."""
    if length < 192:
        encoded = bytes([length])
    elif length < 8384:
        encoded = bytes([((length - 192) >> 8) + 192, (length - 192) & 0xFF])
    else:
        encoded = b"\xff" + length.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + encoded


def _encode(packet: _Packet) -> bytes:
    return _header(packet.tag, len(packet.body)) + packet.body


def _pgpy_packet(packet: _Packet) -> Any:
    """Let PGPy parse one packet we framed; None when it cannot."""
    return _quietly(Packet, bytearray(_encode(packet)))


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Component:
    """A primary key or subkey, as its valid self-signatures describe it."""

    key: Any                    # pgpy.PGPKey (public), primary or subkey
    key_id: str                 # 16 upper-case hex digits
    fingerprint: str
    algorithm: int
    created: float
    expires: float | None
    flags: frozenset[int]
    revoked: bool

    def problem(self, now: float) -> str | None:
        if self.revoked:
            return "is revoked"
        if self.expires is not None and self.expires <= now:
            return f"expired on {time.strftime('%Y-%m-%d', time.gmtime(self.expires))}"
        return None

    def can_sign(self, now: float) -> bool:
        return (KeyFlags.Sign in self.flags and self.algorithm in _SIGN_ALGORITHMS
                and self.problem(now) is None)

    def can_encrypt(self, now: float) -> bool:
        return (bool(self.flags & _ENCRYPT_FLAGS)
                and self.algorithm in _ENCRYPT_ALGORITHMS
                and self.problem(now) is None)


@dataclass(frozen=True)
class _Cert:
    binary: bytes                     # the transferable public key, normalised
    components: tuple[_Component, ...]  # the primary key first

    @property
    def primary(self) -> _Component:
        return self.components[0]


@dataclass(frozen=True)
class PublicKey:
    fingerprint: str            # 40 upper-case hex digits (v4)
    emails: tuple[str, ...]     # lower-cased e-mail addresses of the user IDs
    created: float              # epoch seconds
    expires: float | None       # epoch seconds of the primary key's expiry
    revoked: bool               # primary key revoked (checked by us)
    can_encrypt: bool           # a valid subkey (or primary) with encrypt flags
    can_sign: bool              # a valid primary or subkey with the sign flag
    armored: str                # ASCII-armoured transferable public key
    _cert: _Cert = field(repr=False, compare=False)


class SecretKey:
    """A passphrase-locked secret key, as stored."""

    def __init__(self, public: PublicKey, binary: bytes) -> None:
        self.public = public
        self.armored = armor(binary, "PRIVATE KEY BLOCK").decode("ascii")
        self._binary = binary

    def __repr__(self) -> str:
        return f"<SecretKey {self.public.fingerprint}>"

    def unlock(self, passphrase: str, *, decrypt_only: bool = False) -> UnlockedKey:
        """The key with its secret material usable; KeyProblem on a wrong passphrase.

        `decrypt_only` unlocks the parts that can decrypt and leaves the others
        locked: each part stretches the passphrase anew (S2K), so a reader who
        only opens mail pays for one part instead of two.
        """
        key = _parse_key(self._binary)
        _stream_s2k(key)
        parts = _parts_of(key)
        if decrypt_only:
            # Parts whose self-signatures allow encryption, expired ones too:
            # old mail stays readable.
            wanted = {c.key_id for c in self.public._cert.components
                      if c.flags & _ENCRYPT_FLAGS}
            parts = [part for part in parts if _key_id(part) in wanted] or parts
        with _engine(KeyProblem, "the secret key could not be unlocked"):
            try:
                for part in parts:
                    part._key.unprotect(passphrase)
            except PGPDecryptionError:
                raise KeyProblem("wrong passphrase for the secret key") from None
        return UnlockedKey(self.public, key, self._binary,
                           parts if decrypt_only else None)


class UnlockedKey:
    """Secret material usable in memory; never serialised in clear."""

    def __init__(self, public: PublicKey, key: Any, binary: bytes,
                 parts: list[Any] | None = None) -> None:
        self.public = public
        self._key = key
        self._binary = binary  # the locked form, for relock()
        # Whether every part is unlocked, or only those `parts` (decryption).
        self.complete = parts is None
        self._parts: dict[str, Any] = {}
        for part in _parts_of(key) if parts is None else parts:
            _keep_private_key(part._key.keymaterial)
            self._parts[_key_id(part)] = part

    def require_complete(self, what: str) -> None:
        if not self.complete:
            raise KeyProblem(f"{what} needs the whole key, not one unlocked to decrypt")

    def __repr__(self) -> str:
        return f"<UnlockedKey {self.public.fingerprint}>"


def _keep_private_key(material: Any) -> None:
    """Build the cryptography key object once and serve it from then on.

    PGPy rebuilds (and, for RSA, validates) the private key object on every
    use, twice per decryption: about 220 ms for RSA-3072. Building it here
    also rejects secret material that a wrong passphrase garbled past the
    2-octet checksum of old key formats.
    """
    with _engine(KeyProblem, "the secret key material is unusable"):
        try:
            built = material.__privkey__()
        except NotImplementedError:
            return  # an algorithm PGPy cannot use for secret-key operations anyway

    def cached() -> Any:
        return built

    material.__privkey__ = cached


# The lowest S2K count (1,024 octets hashed), for a passphrase that is itself
# a random 256-bit secret (beep_mail.crypto.passwords): stretching adds nothing.
_UNSTRETCHED = 0


def _stream_s2k(key: Any, count: int | None = None) -> None:
    """Have every part of `key` derive its passphrase key with _derive_key().

    With `count` (a coded S2K count), a part protected from now on is
    protected at that count instead of PGPy's highest.
    """
    for part in _parts_of(key):
        s2k = part._key.keymaterial.s2k
        s2k.derive_key = partial(_derive_key, s2k, count)


def _protect(key: Any, passphrase: str, stretch: bool) -> None:
    _stream_s2k(key, None if stretch else _UNSTRETCHED)
    key.protect(passphrase, SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)


def _derive_key(s2k: Any, count: int | None, passphrase: str | bytes) -> bytes:
    """The key an S2K specifier (RFC 4880 3.7.1) derives from a passphrase.

    The same key as PGPy's String2Key.derive_key, which first builds the
    whole iterated input in memory: 62 MiB at the count PGPy writes, twice
    over while concatenating, so each unlock briefly took 130 MB. This feeds
    the hash 64 KiB at a time.
    """
    if count is not None:
        s2k.count = count  # PGPy set its own just before; this one is stored
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    salted = s2k.specifier in (String2KeyType.Salted, String2KeyType.Iterated)
    unit = (bytes(s2k.salt) if salted else b"") + secret
    total = len(unit)
    if s2k.specifier == String2KeyType.Iterated and s2k.count > total:
        total = s2k.count
    block = unit * max(1, 65536 // max(1, len(unit)))
    size = s2k.encalg.key_size // 8
    digests: list[bytes] = []
    while sum(map(len, digests)) < size:
        context = hashlib.new(s2k.halg.name)
        context.update(bytes(len(digests)))  # one more zero octet per context
        left = total
        while left >= len(block) > 0:
            context.update(block)
            left -= len(block)
        if left:
            context.update((unit * (left // len(unit) + 1))[:left])
        digests.append(context.digest())
    return b"".join(digests)[:size]


def _parts_of(key: Any) -> list[Any]:
    return [key, *key.subkeys.values()]


def _key_id(key: Any) -> str:
    return str(key.fingerprint.keyid).upper()


def _fingerprint(key: Any) -> str:
    return str(key.fingerprint).replace(" ", "").upper()


def generate(name: str, email: str, *, passphrase: str,
             algorithm: Algorithm = "curve25519",
             expires_days: int | None = None, stretch: bool = True) -> SecretKey:
    """A new key: a certify+sign primary key with an encryption subkey.

    `stretch=False` only for a passphrase that is a random secret of full
    strength: the secret part is then protected at the lowest S2K count.
    """
    if algorithm == "curve25519":
        primary = PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
        subkey = PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
    elif algorithm == "rsa3072":
        primary = PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 3072)
        subkey = PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 3072)
        _order_primes(primary)
        _order_primes(subkey)
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    lifetime = {} if expires_days is None else {
        "key_expiration": timedelta(days=expires_days)}
    primary.add_uid(
        PGPUID.new(name, email=email), primary=True,
        usage={KeyFlags.Certify, KeyFlags.Sign},
        hashes=[HashAlgorithm.SHA512, HashAlgorithm.SHA256],
        ciphers=[SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES128],
        compression=[CompressionAlgorithm.Uncompressed],
        **lifetime,
    )
    primary.add_subkey(
        subkey, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
    _protect(primary, passphrase, stretch)
    return _secret_key(bytes(primary))


def _order_primes(key: Any) -> None:
    """Store an RSA key's primes as RFC 4880 5.5.3 wants them: p < q.

    PGPy keeps the order cryptography returns. GnuPG relies on p < q in its
    CRT step, and with p > q it decrypts wrongly about one time in two
    ("Wrong secret key used").
    """
    material = key._key.keymaterial
    p, q = int(material.p), int(material.q)
    if p > q:
        material.p, material.q = MPI(q), MPI(p)
        material.u = MPI(pow(q, -1, p))  # the inverse of the new p, mod the new q


def load_public(data: str | bytes) -> list[PublicKey]:
    """Every usable public key in armoured or binary data; KeyProblem if none."""
    try:
        binary = dearmor(data)
    except IntegrityError as error:
        raise KeyProblem(f"unreadable key data: {error}") from None
    keys = _load_public_binary(binary)
    if not keys:
        raise KeyProblem("no usable OpenPGP public key in the data")
    return list(keys)


def load_secret(armored: str) -> SecretKey:
    """A passphrase-protected secret key; KeyProblem if unprotected or unusable."""
    try:
        binary = dearmor(armored)
    except IntegrityError as error:
        raise KeyProblem(f"unreadable secret key data: {error}") from None
    certs = _split_certs(binary, secret=True)
    if len(certs) != 1:
        raise KeyProblem("the data must hold exactly one secret key")
    return _secret_key(certs[0])


def relock(key: UnlockedKey, passphrase: str, *, stretch: bool = True) -> SecretKey:
    """The same secret key, locked with a new passphrase (`stretch` as in generate)."""
    key.require_complete("locking with a new passphrase")
    fresh = _parse_key(key._binary)
    for part in _parts_of(fresh):
        source = key._parts[_key_id(part)]._key.keymaterial
        target = part._key.keymaterial
        for name in target.__privfields__:
            setattr(target, name, getattr(source, name))
    # PGPy protects a copy here: protecting wipes the clear fields it encrypts.
    _protect(fresh, passphrase, stretch)
    return _secret_key(bytes(fresh))


def revoke(key: UnlockedKey, reason: str = "") -> PublicKey:
    """A copy of the public key carrying a revocation signature."""
    key.require_complete("revoking")
    public = _parse_key(key.public._cert.binary)
    revocation = _make_signature(
        key._key, SignatureType.KeyRevocation, public,
        reason=(RevocationReason.NotSpecified, reason),
    )
    public |= revocation
    revoked = _load_public_binary(bytes(public))
    if not revoked:
        raise KeyProblem("the revoked key could not be re-read")
    return revoked[0]


def check_encryption_key(key: PublicKey, now: float | None = None) -> None:
    """KeyProblem, with the reason, unless `key` can be encrypted to now."""
    _encryption_component(key, time.time() if now is None else now)


def check_signing_key(key: PublicKey, now: float | None = None) -> None:
    """KeyProblem, with the reason, unless `key` can make valid signatures now."""
    _signing_components(key, time.time() if now is None else now)


def _primary_problem(key: PublicKey, now: float) -> None:
    problem = key._cert.primary.problem(now)
    if problem is not None:
        raise KeyProblem(f"key {key.fingerprint} {problem}")


def _encryption_component(key: PublicKey, now: float) -> _Component:
    _primary_problem(key, now)
    usable = [c for c in key._cert.components if c.can_encrypt(now)]
    if not usable:
        raise KeyProblem(f"key {key.fingerprint} has no valid encryption subkey")
    return max(usable, key=lambda c: c.created)


def _signing_components(key: PublicKey, now: float) -> list[_Component]:
    _primary_problem(key, now)
    usable = [c for c in key._cert.components if c.can_sign(now)]
    if not usable:
        raise KeyProblem(f"key {key.fingerprint} has no valid signing key")
    return sorted(usable, key=lambda c: c.created, reverse=True)


# -- reading keys ----------------------------------------------------------------------


def _split_certs(binary: bytes, *, secret: bool) -> list[bytes]:
    """Normalised transferable keys: one packet stream per primary key.

    Packets PGPy need not see are dropped with the signatures that follow
    them: user attributes (photos), unknown packets, and components whose
    version or algorithm PGPy cannot parse. Trust packets are skipped.
    """
    primary_tag, subkey_tag = (SECRET_KEY, SECRET_SUBKEY) if secret else (
        PUBLIC_KEY, PUBLIC_SUBKEY)
    wrong = {PUBLIC_KEY, PUBLIC_SUBKEY} if secret else {SECRET_KEY, SECRET_SUBKEY}
    certs: list[list[bytes]] = []
    current: list[bytes] | None = None
    keep = False
    try:
        for packet in _packets(binary):
            if packet.tag in wrong:
                raise KeyProblem(
                    "the data holds no secret key" if secret
                    else "a secret key was given where a public key is expected")
            if packet.tag in (TRUST, MARKER):
                continue
            if packet.tag == primary_tag:
                current = [] if _parsable_key(packet) else None
                if current is not None:
                    certs.append(current)
                keep = current is not None
            elif packet.tag == subkey_tag:
                keep = current is not None and _parsable_key(packet)
            elif packet.tag == USER_ID:
                keep = current is not None
            elif packet.tag != SIGNATURE:
                keep = False
            if keep and current is not None:
                current.append(_encode(packet))
    except IntegrityError as error:
        raise KeyProblem(f"malformed key data: {error}") from None
    return [b"".join(cert) for cert in certs]


def _parsable_key(packet: _Packet) -> bool:
    body = packet.body
    return len(body) > 6 and body[0] == 4 and body[5] in _KNOWN_ALGORITHMS


def _parse_key(binary: bytes) -> Any:
    key = PGPKey()
    with _engine(KeyProblem, "unparsable key"):
        key.parse(bytearray(binary))
    if key._key is None:
        raise KeyProblem("unparsable key")
    return key


@lru_cache(maxsize=512)
def _load_public_binary(binary: bytes) -> tuple[PublicKey, ...]:
    """Parsed and checked public keys, cached: callers may load per message."""
    keys = []
    for cert in _split_certs(binary, secret=False):
        try:
            keys.append(_public_key(cert, _parse_key(cert)))
        except KeyProblem:
            continue
    return tuple(keys)


def _secret_key(binary: bytes) -> SecretKey:
    key = _parse_key(binary)
    if key.is_public:
        raise KeyProblem("the data holds no secret key")
    if not all(part._key.protected for part in _parts_of(key)):
        raise KeyProblem("the secret key is not protected by a passphrase")
    public_binary = bytes(key.pubkey)
    public = _public_key(public_binary, _parse_key(public_binary))
    return SecretKey(public, binary)


def _public_key(binary: bytes, key: Any) -> PublicKey:
    now = time.time()
    emails, newest = _user_ids(key)
    revoked = _revoked(key, key, SignatureType.KeyRevocation)
    primary = _component(key, newest, revoked=revoked)
    components = [primary]
    for subkey in key.subkeys.values():
        component = _subkey_component(key, subkey)
        if component is not None:
            components.append(component)
    primary_ok = primary.problem(now) is None
    return PublicKey(
        fingerprint=primary.fingerprint,
        emails=tuple(emails),
        created=primary.created,
        expires=primary.expires,
        revoked=primary.revoked,
        can_encrypt=primary_ok and any(c.can_encrypt(now) for c in components),
        can_sign=primary_ok and any(c.can_sign(now) for c in components),
        armored=armor(binary, "PUBLIC KEY BLOCK").decode("ascii"),
        _cert=_Cert(binary, tuple(components)),
    )


def _user_ids(key: Any) -> tuple[list[str], Any]:
    """Addresses of validly self-signed user IDs, and the newest self-signature."""
    emails: list[str] = []
    newest = None
    for uid in key.userids:
        certifications = [
            sig for sig in uid.__sig__
            if sig.type in _CERTIFICATIONS and _self_signed(key, sig, uid)
        ]
        if not certifications:
            continue
        latest = max(certifications, key=_created)
        if any(sig.type == SignatureType.CertRevocation
               and _created(sig) >= _created(latest) and _self_signed(key, sig, uid)
               for sig in uid.__sig__):
            continue
        if newest is None or _created(latest) > _created(newest):
            newest = latest
        address = _email(uid.userid or "")
        if address and address not in emails:
            emails.append(address)
    if newest is None:
        raise KeyProblem(f"key {_fingerprint(key)} has no validly self-signed user ID")
    return emails, newest


def _email(user_id: str) -> str | None:
    bracketed = re.search(r"<([^<>\s]+@[^<>\s]+)>", user_id)
    if bracketed:
        return bracketed.group(1).lower()
    bare = user_id.strip()
    if re.fullmatch(r"[^<>\s@]+@[^<>\s@]+", bare):
        return bare.lower()
    return None


def _subkey_component(key: Any, subkey: Any) -> _Component | None:
    bindings = [sig for sig in subkey.__sig__
                if sig.type == SignatureType.Subkey_Binding and not sig.embedded
                and _self_signed(key, sig, subkey)]
    if not bindings:
        return None
    binding = max(bindings, key=_created)
    revoked = _revoked(key, subkey, SignatureType.SubkeyRevocation)
    component = _component(subkey, binding, revoked=revoked)
    if KeyFlags.Sign in component.flags and not _back_signed(key, subkey):
        # Without the subkey's own signature over the binding, anyone could
        # claim another person's signing subkey as theirs (RFC 4880 5.2.1).
        component = replace(component, flags=component.flags - {KeyFlags.Sign})
    return component


def _back_signed(key: Any, subkey: Any) -> bool:
    return any(sig.embedded and sig.type == SignatureType.PrimaryKey_Binding
               and _verifies(subkey, sig, key, _SELF_HASHES)
               for sig in subkey.__sig__)


def _revoked(key: Any, subject: Any, kind: SignatureType) -> bool:
    return any(sig.type == kind and _self_signed(key, sig, subject)
               for sig in subject.__sig__)


def _component(part: Any, self_signature: Any, *, revoked: bool) -> _Component:
    created = part.created.timestamp()
    lifetime = _hashed(self_signature, "KeyExpirationTime")
    seconds = lifetime[0].expires.total_seconds() if lifetime else 0
    algorithm = int(part.key_algorithm)
    declared = _hashed(self_signature, "KeyFlags")
    if declared:
        flags = frozenset(int(flag) for flag in declared[0].flags)
    else:
        flags = _implied_flags(algorithm)
    return _Component(part, _key_id(part), _fingerprint(part), algorithm, created,
                      created + seconds if seconds else None, flags, revoked)


def _implied_flags(algorithm: int) -> frozenset[int]:
    """Usage of a key whose self-signature predates key flags: what it can do."""
    flags: set[int] = set()
    if algorithm in _SIGN_ALGORITHMS:
        flags |= {KeyFlags.Certify, KeyFlags.Sign}
    if algorithm in _ENCRYPT_ALGORITHMS:
        flags |= _ENCRYPT_FLAGS
    return frozenset(flags)


def _hashed(sig: Any, name: str) -> list[Any]:
    """Subpackets from the hashed area only: the unhashed one is anyone's to edit."""
    return list(sig._signature.subpackets["h_" + name])


def _created(sig: Any) -> float:
    stamps = _hashed(sig, "CreationTime")
    return float(stamps[-1].created.timestamp()) if stamps else 0.0


def _sig_expired(sig: Any, now: float) -> bool:
    lifetime = _hashed(sig, "SignatureExpirationTime")
    seconds = lifetime[0].expires.total_seconds() if lifetime else 0
    return bool(seconds) and _created(sig) + seconds <= now


def _self_signed(key: Any, sig: Any, subject: Any) -> bool:
    return (_issuer(sig) == _key_id(key) and not _sig_expired(sig, time.time())
            and _verifies(key, sig, subject, _SELF_HASHES))


def _issuer(sig: Any) -> str | None:
    """The key ID that made a signature, from Issuer or Issuer Fingerprint."""
    issuers = sig._signature.subpackets["Issuer"]
    if issuers:
        return str(issuers[-1].issuer).upper()
    fingerprints = sig._signature.subpackets["IssuerFingerprint"]
    if fingerprints:
        return str(fingerprints[-1].issuer_fingerprint).replace(" ", "")[-16:].upper()
    return None


def _verifies(signer: Any, sig: Any, subject: Any,
              accepted: dict[int, type[hashes.HashAlgorithm]]) -> bool:
    """Whether `signer` (a PGPy key) made `sig` over `subject`, cryptographically."""
    digest = accepted.get(int(sig.hash_algorithm))
    if digest is None:
        return False

    def attempt() -> Any:
        return signer._key.verify(sig.hashdata(subject), sig.__sig__, digest())

    # A malformed signature is one that does not verify.
    return _quietly(attempt) is True


# -- signing ---------------------------------------------------------------------------


def _make_signature(signer: Any, kind: SignatureType, subject: Any, *,
                    reason: tuple[RevocationReason, str] | None = None) -> Any:
    """A SHA-512 signature by `signer` (a PGPy secret key or subkey, unlocked).

    PGPy's own sign() picks the hash from the user ID's preferences and
    warns when they differ; a signature here is always SHA-512, with the
    issuer's fingerprint in the hashed area.
    """
    sig = PGPSignature.new(kind, signer.key_algorithm, HashAlgorithm.SHA512,
                           signer.fingerprint.keyid)
    subpackets = sig._signature.subpackets
    subpackets.addnew("IssuerFingerprint", hashed=True, _version=4,
                      _issuer_fpr=signer.fingerprint)
    if reason is not None:
        subpackets.addnew("ReasonForRevocation", hashed=True, code=reason[0],
                          string=reason[1])
    data = sig.hashdata(subject)
    sig._signature.hash2 = bytearray(hashlib.sha512(data).digest()[:2])
    with _engine(KeyProblem, "signing failed"):
        raw = signer._key.sign(data, hashes.SHA512())
    sig._signature.signature.from_signer(raw)
    sig._signature.update_hlen()
    return sig


def _signing_part(signer: UnlockedKey, now: float) -> Any:
    for component in _signing_components(signer.public, now):
        part = signer._parts.get(component.key_id)
        if part is not None:
            return part
    raise KeyProblem(f"key {signer.public.fingerprint} holds no secret signing key")


def sign_detached(data: bytes, signer: UnlockedKey) -> bytes:
    """An armoured detached signature (binary document) over `data`."""
    part = _signing_part(signer, time.time())
    sig = _make_signature(part, SignatureType.BinaryDocument, data)
    return armor(bytes(sig), "SIGNATURE")


def verify_detached(data: bytes, signature: bytes | str,
                    verifiers: Sequence[PublicKey], *,
                    now: float | None = None) -> str | None:
    """Fingerprint of the verifier whose signature over `data` is valid, else None.

    The key checks are those of decrypt(), as of `now` (default: the present):
    a record signed years ago is judged by the key as it was when it signed,
    not by its expiry since. Data that is not OpenPGP signature packets at all
    raises IntegrityError.
    """
    signatures = []
    for packet in _packets(dearmor(signature)):
        if packet.tag != SIGNATURE:
            raise IntegrityError("the data is not a detached OpenPGP signature")
        signatures.append(packet)
    when = time.time() if now is None else now
    verdict, signer = _verdict(signatures, bytes(data), verifiers, when)
    return signer if verdict == "valid" else None


# -- encryption ------------------------------------------------------------------------


def encrypt(data: bytes, recipients: Sequence[PublicKey], *,
            signer: UnlockedKey | None = None, armor: bool = True,
            newline: bytes = b"\n") -> bytes:
    """One OpenPGP message to every recipient: (signed) literal data in SEIPD, AES-256.

    Never compressed. KeyProblem if a recipient fails check_encryption_key
    or the signer check_signing_key. `newline` is the armour's line end.
    """
    now = time.time()
    inner = [_header(LITERAL, len(data) + 6), b"b\x00", int(now).to_bytes(4, "big"), data]
    if signer is not None:
        part = _signing_part(signer, now)
        sig = _make_signature(part, SignatureType.BinaryDocument, data)
        inner = [_one_pass(sig), *inner, bytes(sig)]
    binary = _encrypt_packets(inner, recipients, now)
    return _armor(binary, "MESSAGE", newline=newline) if armor else binary


def _encrypt_packets(inner: Sequence[bytes], recipients: Sequence[PublicKey],
                     now: float) -> bytes:
    """Session key packets for every recipient, then SEIPD around `inner`.

    `inner` is a packet stream in pieces, so that the message is never copied
    into one; the tests wrap streams of their own making.
    """
    if not recipients:
        raise KeyProblem("a message needs at least one recipient")
    targets = {c.key_id: c for c in (_encryption_component(r, now) for r in recipients)}
    session_key = os.urandom(32)
    packets = [_session_packet(target, session_key) for target in targets.values()]
    return b"".join([*packets, *_seal_seipd(session_key, inner)])


def _seal_seipd(session_key: bytes, inner: Sequence[bytes]) -> list[bytes]:
    """A SEIPD packet (RFC 4880 5.13): AES-256 in OpenPGP CFB, with its MDC.

    Returned in pieces for the caller to join once. Written here rather than
    with PGPy's packet class: PGPy looks the cipher up three times per
    message, and each lookup rebuilds its cipher table (0.2 ms each, a third
    of the time of a small message).
    """
    prefix = os.urandom(_BLOCK)
    prefix += prefix[-2:]
    digest = hashlib.sha1(prefix)  # the MDC is SHA-1 by definition (RFC 4880 5.14)
    for piece in inner:
        digest.update(piece)
    digest.update(b"\xd3\x14")
    mdc = b"\xd3\x14" + digest.digest()
    encryptor = Cipher(algorithms.AES(session_key), modes.CFB(bytes(_BLOCK))).encryptor()
    # CFB adds nothing: the body is as long as what it encrypts.
    length = 1 + len(prefix) + sum(len(piece) for piece in inner) + len(mdc)
    body = [b"\x01", encryptor.update(prefix)]
    body.extend(encryptor.update(piece) for piece in inner)
    body += [encryptor.update(mdc), encryptor.finalize()]
    return [_header(SEIPD, length), *body]


def _one_pass(sig: Any) -> bytes:
    """A One-Pass Signature packet announcing `sig` as the last (only) one.

    Written here because PGPy sets the "last" octet to 0 for a single
    signature, the inverse of RFC 4880 5.4.
    """
    body = (bytes([3, int(sig.type), int(sig.hash_algorithm), int(sig.key_algorithm)])
            + bytes.fromhex(str(sig.signer)) + b"\x01")
    return _header(ONE_PASS, len(body)) + body


def _session_packet(target: _Component, session_key: bytes) -> bytes:
    packet = PKESessionKeyV3()
    packet.encrypter = bytearray(bytes.fromhex(target.key_id))
    packet.pkalg = target.algorithm
    with _engine(KeyProblem, f"cannot encrypt to key {target.fingerprint}"):
        packet.encrypt_sk(target.key._key, SymmetricKeyAlgorithm.AES256, session_key)
    return bytes(packet)


# -- decryption ------------------------------------------------------------------------


@dataclass(frozen=True)
class Decrypted:
    plaintext: bytes = field(repr=False)  # a logged result shows no content
    signature: Verdict
    signer: str | None          # fingerprint of the verifier whose signature is valid


def decrypt(data: bytes, keys: Sequence[UnlockedKey], *,
            verifiers: Sequence[PublicKey] = (),
            max_size: int = 64 * 1024 * 1024) -> Decrypted:
    """Decrypt and verify one message, armoured or binary.

    Only SEIPD is decrypted: data without integrity protection (tag 9) is
    refused before any key is used. Decompression stops past `max_size`
    (TooLarge). The signature verdict: "valid" (signer set), "bad", a
    signature by a verifier that is revoked, expired or lacks the sign flag
    "invalid-key", by a key not among verifiers "unknown-key", none "missing".
    """
    session_packets, sealed = _envelope(dearmor(data))
    if len(sealed.body) > max_size + _ENVELOPE_MARGIN:
        raise TooLarge(f"the encrypted message is larger than {max_size} bytes")
    algorithm, session_key = _session_key(session_packets, keys)
    plain = _open_seipd(sealed.body, algorithm, session_key)
    literal, signatures = _contents(_inner_packets(plain, max_size + _ENVELOPE_MARGIN))
    if len(literal) > max_size:
        raise TooLarge(f"the message is larger than {max_size} bytes")
    plaintext = bytes(literal)
    verdict, signer = _verdict(signatures, plaintext, verifiers, time.time())
    return Decrypted(plaintext, verdict, signer)


def _envelope(binary: bytes) -> tuple[list[_Packet], _Packet]:
    """The session key packets and the one SEIPD packet of a message."""
    session_packets: list[_Packet] = []
    sealed = None
    for packet in _packets(binary):
        if sealed is not None:
            raise IntegrityError("the message has data after its encrypted part")
        if packet.tag in (MARKER, SKESK):
            continue  # we hold no passphrase for SKESK packets
        if packet.tag == PKESK:
            session_packets.append(packet)
        elif packet.tag == SEIPD:
            sealed = packet
        elif packet.tag == SED:
            raise IntegrityError(
                "the message is encrypted without integrity protection (no MDC)")
        elif packet.tag == AEAD:
            raise IntegrityError("AEAD-encrypted messages are not supported")
        else:
            raise IntegrityError("the data is not an encrypted OpenPGP message")
    if sealed is None:
        raise IntegrityError("the data is not an encrypted OpenPGP message")
    if len(sealed.body) < 1 or sealed.body[0] != 1:
        raise IntegrityError("unsupported version of integrity-protected data")
    return session_packets, sealed


def _session_key(packets: list[_Packet],
                 keys: Sequence[UnlockedKey]) -> tuple[int, bytes]:
    for packet in packets:
        parsed = _pgpy_packet(packet)
        if not isinstance(parsed, PKESessionKeyV3):
            continue
        recipient = str(parsed.encrypter).upper()
        for key in keys:
            for key_id, part in key._parts.items():
                if recipient not in (key_id, _WILDCARD_KEY_ID):
                    continue
                if part.key_algorithm != parsed.pkalg:
                    continue
                # A session key that does not decrypt is not ours: try the next.
                opened = _quietly(parsed.decrypt_sk, part._key)
                if opened is None:
                    continue
                algorithm, session_key = opened
                if algorithm not in _CIPHERS:
                    raise IntegrityError(
                        f"the message uses the unaccepted cipher {algorithm.name}")
                return int(algorithm), bytes(session_key)
    raise KeyProblem("the message is not encrypted to any key we hold")


def _open_seipd(body: memoryview, algorithm: int, session_key: bytes) -> memoryview:
    """The decrypted packets of a SEIPD body, all or nothing.

    The whole body is decrypted and its MDC checked before anything is
    returned: a failed check yields no plaintext at all.
    """
    cipher, key_size = _CIPHERS[algorithm]
    if len(session_key) != key_size:
        raise IntegrityError("the message's session key has the wrong length")
    decryptor = Cipher(cipher(session_key), modes.CFB(bytes(_BLOCK))).decryptor()
    # cryptography takes any buffer; its annotation says bytes.
    plain = decryptor.update(body[1:]) + decryptor.finalize()  # type: ignore[arg-type]
    if len(plain) < _BLOCK + 2 + 22:
        raise IntegrityError("the message failed its integrity check")
    expected = b"\xd3\x14" + hashlib.sha1(memoryview(plain)[:-20]).digest()
    if not hmac.compare_digest(plain[-22:], expected) or (
            plain[_BLOCK - 2:_BLOCK] != plain[_BLOCK:_BLOCK + 2]):
        raise IntegrityError("the message failed its integrity check")
    return memoryview(plain)[_BLOCK + 2:-22]


def _inner_packets(plain: memoryview, limit: int) -> Iterator[_Packet]:
    """The packets inside SEIPD, inflated first if they are one Compressed Data packet.

    Only this outer level may be compressed: a compressed packet anywhere
    else is refused by _contents().
    """
    packets = _packets(plain)
    first = next(packets, None)
    if first is None or first.tag != COMPRESSED:
        return itertools.chain([] if first is None else [first], packets)
    if next(packets, None) is not None:
        raise IntegrityError("compressed data is mixed with other packets")
    if len(first.body) < 1:
        raise IntegrityError("empty compressed data packet")
    return _packets(_inflate(first.body[0], first.body[1:], limit))


def _inflate(algorithm: int, data: memoryview, limit: int) -> bytearray | memoryview:
    """Decompress in steps of at most 1 MiB, refusing output beyond `limit`."""
    if algorithm == CompressionAlgorithm.Uncompressed:
        if len(data) > limit:
            raise TooLarge(f"the message inflates to more than {limit} bytes")
        return data
    out = bytearray()
    try:
        if algorithm in (CompressionAlgorithm.ZIP, CompressionAlgorithm.ZLIB):
            inflater = zlib.decompressobj(-15 if algorithm == CompressionAlgorithm.ZIP
                                          else 15)
            pending: bytes | memoryview = data
            while True:
                chunk = inflater.decompress(pending, _step(out, limit))
                _grow(out, chunk, limit)
                stalled = not chunk and len(inflater.unconsumed_tail) == len(pending)
                pending = inflater.unconsumed_tail
                if inflater.eof or stalled:
                    break
        elif algorithm == CompressionAlgorithm.BZ2:
            unbzip = bz2.BZ2Decompressor()
            chunk = unbzip.decompress(data, _step(out, limit))
            while True:
                _grow(out, chunk, limit)
                if unbzip.eof or unbzip.needs_input:
                    break
                chunk = unbzip.decompress(b"", _step(out, limit))
        else:
            raise IntegrityError(f"unsupported compression algorithm {algorithm}")
    except (zlib.error, OSError, EOFError, ValueError):
        raise IntegrityError("the compressed data is corrupt") from None
    return out


def _step(out: bytearray, limit: int) -> int:
    return min(_INFLATE_STEP, limit + 1 - len(out))


def _grow(out: bytearray, chunk: bytes, limit: int) -> None:
    out += chunk
    if len(out) > limit:
        raise TooLarge(f"the message inflates to more than {limit} bytes")


def _contents(packets: Iterator[_Packet]) -> tuple[memoryview, list[_Packet]]:
    """The literal data and the signature packets of a decrypted message."""
    literal = None
    one_pass = 0
    before: list[_Packet] = []
    after: list[_Packet] = []
    for packet in packets:
        if packet.tag == MARKER:
            continue
        if packet.tag == ONE_PASS and literal is None:
            one_pass += 1
        elif packet.tag == SIGNATURE:
            (before if literal is None else after).append(packet)
        elif packet.tag == LITERAL and literal is None:
            literal = packet.body
        else:
            raise IntegrityError(
                f"unexpected packet (tag {packet.tag}) inside the encrypted message")
    if literal is None:
        raise IntegrityError("the encrypted message holds no literal data")
    if one_pass != len(after):
        raise IntegrityError("one-pass signature packets do not match the signatures")
    if len(literal) < 6 or len(literal) < 6 + literal[1]:
        raise IntegrityError("malformed literal data packet")
    return literal[6 + literal[1]:], before + after


def _verdict(signatures: list[_Packet], data: bytes, verifiers: Sequence[PublicKey],
             now: float) -> tuple[Verdict, str | None]:
    """The best verdict over all signatures, and the valid signer if any."""
    if not signatures:
        return "missing", None
    verdicts: list[Verdict] = []
    for packet in signatures:
        verdict, signer = _check(packet, data, verifiers, now)
        if verdict == "valid":
            return verdict, signer
        verdicts.append(verdict)
    for verdict in _PRECEDENCE:
        if verdict in verdicts:
            return verdict, None
    return "bad", None


# When no signature is valid, the most alarming verdict is reported.
_PRECEDENCE: tuple[Verdict, ...] = ("bad", "invalid-key", "unknown-key")


def _check(packet: _Packet, data: bytes, verifiers: Sequence[PublicKey],
           now: float) -> tuple[Verdict, str | None]:
    parsed = _pgpy_packet(packet)
    if not isinstance(parsed, SignatureV4):
        return "bad", None
    sig = PGPSignature() | parsed
    issuer = _issuer(sig)
    matches = [(verifier, component) for verifier in verifiers
               for component in verifier._cert.components
               if component.key_id == issuer]
    if not matches:
        return "unknown-key", None
    if sig.type not in (SignatureType.BinaryDocument, SignatureType.CanonicalDocument):
        return "bad", None
    if not _created(sig) or _created(sig) > now + _CLOCK_SKEW or _sig_expired(sig, now):
        return "bad", None
    verdict: Verdict = "bad"
    for verifier, component in matches:
        if not _verifies(component.key, sig, data, _DATA_HASHES):
            continue
        if verifier._cert.primary.problem(now) is None and component.can_sign(now):
            return "valid", verifier.fingerprint
        verdict = "invalid-key"
    return verdict, None

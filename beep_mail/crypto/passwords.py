"""Passwords: one Argon2id run checks a password and yields what locks the user's key.

A stored password is

    $bm-argon2id$v=19$m=65536,t=3,p=1$SALT$VERIFIER

(base64 without padding). Argon2id of the password and SALT at those costs
gives 32 bytes; keyed BLAKE2b turns them into two values that reveal nothing
of each other: the VERIFIER, stored, and the key secret, never stored, which
locks the secret part of the user's OpenPGP key. The key secret is a random
256-bit value, so the key needs no further stretching (S2K at its lowest
count), and a stolen database can only be attacked through Argon2id. The part
before the verifier is the key's *lock*: kept with each key, so that a key
made before a password reset still opens with the password of its time.

Hashes of the earlier form (argon2's own `$argon2id$...`) still verify; the
keys of such users are locked with the password itself (lock None), and
`needs_upgrade` says so.

The costs are settings; each hash and lock records its own, so raising them
later keeps old ones usable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import hash_secret_raw


class PasswordPolicyError(ValueError):
    """A new password is not acceptable; the message says why."""


MIN_LENGTH = 8
MAX_LENGTH = 1024
SCHEME = "$bm-argon2id$"
_SALT_BYTES = 16
_RAW_BYTES = 32
_LOCK = re.compile(r"\$bm-argon2id\$v=19\$m=(\d{1,8}),t=(\d{1,3}),p=(\d{1,3})\$"
                   r"([A-Za-z0-9+/]{16,64})")
# Costs a stored lock may ask for: enough for any setting, not a denial of service.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_TIME = 100
_MAX_LANES = 64


@dataclass(frozen=True)
class KeyLock:
    """What locks a user's key: `lock` as stored with the key, and its passphrase.

    `lock` None is the earlier form: the passphrase is the password itself,
    which OpenPGP's S2K must then stretch.
    """

    lock: str | None
    passphrase: str

    @property
    def stretch(self) -> bool:
        return self.lock is None


@dataclass(frozen=True)
class Checked:
    """A password found right: what it opens."""

    password: str
    key_lock: KeyLock  # the lock this run derived (or the legacy one)

    def passphrase_for(self, lock: str | None) -> str:
        """The passphrase of a key stored with `lock`: derived again only when
        the key was locked under another salt or cost (before a reset)."""
        if lock == self.key_lock.lock:
            return self.key_lock.passphrase
        if lock is None:
            return self.password
        return derive(lock, self.password).passphrase


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536,
                 parallelism: int = 1) -> None:
        self.time_cost = time_cost
        self.memory_kib = memory_kib
        self.parallelism = parallelism
        # Checked against when the account does not exist, at the same cost.
        self.decoy = self.hash("no account has this password")

    def hash(self, password: str) -> str:
        return self.new(password)[0]

    def new(self, password: str, *, policy: bool = True) -> tuple[str, KeyLock]:
        """A new password's stored form, and the lock for a key made with it.

        `policy=False` when moving an existing password to this form: it was
        accepted under the rules of its time.
        """
        if policy:
            check_new_password(password)
        salt = base64.b64encode(os.urandom(_SALT_BYTES)).decode("ascii").rstrip("=")
        lock = (f"{SCHEME}v=19$m={self.memory_kib},t={self.time_cost},"
                f"p={self.parallelism}${salt}")
        verifier, passphrase = _run(lock, password)
        return f"{lock}${verifier}", KeyLock(lock, passphrase)

    def verify(self, stored: str, password: str) -> bool:
        return check(stored, password) is not None


def check(stored: str, password: str) -> Checked | None:
    """What a right password opens; None for a wrong one or a damaged hash."""
    if len(password) > MAX_LENGTH:
        return None
    if not stored.startswith(SCHEME):
        return _check_legacy(stored, password)
    lock, _, verifier = stored.rpartition("$")
    try:
        expected, passphrase = _run(lock, password)
    except ValueError:
        return None
    if not hmac.compare_digest(expected, verifier):
        return None
    return Checked(password, KeyLock(lock, passphrase))


def derive(lock: str, password: str) -> KeyLock:
    """The passphrase of a key stored with `lock` (ValueError if it is no lock)."""
    return KeyLock(lock, _run(lock, password)[1])


def needs_upgrade(stored: str) -> bool:
    """Whether a stored password is of the earlier form (see the module's doc)."""
    return not stored.startswith(SCHEME)


def _run(lock: str, password: str) -> tuple[str, str]:
    """(verifier, key passphrase) of a password under a lock."""
    found = _LOCK.fullmatch(lock)
    if found is None:
        raise ValueError("not a password lock of a known form")
    memory, time_cost, lanes = (int(found.group(n)) for n in (1, 2, 3))
    if not (8 * lanes <= memory <= _MAX_MEMORY_KIB and 1 <= time_cost <= _MAX_TIME
            and 1 <= lanes <= _MAX_LANES):
        raise ValueError("a password lock's costs are out of range")
    salt = base64.b64decode(found.group(4) + "=" * (-len(found.group(4)) % 4))
    raw = hash_secret_raw(password.encode("utf-8"), salt, time_cost, memory, lanes,
                          _RAW_BYTES, Type.ID)
    verifier = hashlib.blake2b(b"beep-mail password verifier", key=raw,
                               digest_size=32).digest()
    passphrase = hashlib.blake2b(b"beep-mail key passphrase", key=raw,
                                 digest_size=32).hexdigest()
    return base64.b64encode(verifier).decode("ascii").rstrip("="), passphrase


def _check_legacy(stored: str, password: str) -> Checked | None:
    try:
        PasswordHasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return Checked(password, KeyLock(None, password))


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"a password may have at most {MAX_LENGTH} characters")
    if any(ord(ch) < 32 for ch in password):
        raise PasswordPolicyError("a password may not contain control characters")

"""Password hashing with Argon2id, a memory-hard function.

The cost parameters are settings; each hash records its own, so raising them
later keeps old hashes verifiable and `needs_rehash` tells when to upgrade.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class PasswordPolicyError(ValueError):
    """A new password is not acceptable; the message says why."""


MIN_LENGTH = 8
MAX_LENGTH = 1024


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536,
                 parallelism: int = 1) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        # Verified against when the account does not exist, at the same cost.
        self.decoy = self._hasher.hash("no account has this password")

    def hash(self, password: str) -> str:
        check_new_password(password)
        return self._hasher.hash(password)

    def verify(self, stored: str, password: str) -> bool:
        if len(password) > MAX_LENGTH:
            return False
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"a password may have at most {MAX_LENGTH} characters")
    if any(ord(ch) < 32 for ch in password):
        raise PasswordPolicyError("a password may not contain control characters")

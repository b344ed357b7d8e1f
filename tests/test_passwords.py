"""Passwords: one Argon2id run checks a password and yields the key's passphrase;
users of the earlier form are moved to it at their next IMAP sign-in."""

from __future__ import annotations

import imaplib
import time

import pytest
from argon2 import PasswordHasher

from beep_mail import keyring, vault
from beep_mail.crypto import openpgp, passwords
from beep_mail.crypto.passwords import SCHEME, KeyLock, Passwords
from beep_mail.store import accounts
from beep_mail.store import keys as key_store
from tests.support import FAST_HASH, PASSWORD, Site, message, submit
from tests.test_imap_clients import fill, gateway

CHEAP = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}


def test_a_new_password_checks_and_yields_a_key_passphrase() -> None:
    stored, lock = Passwords(**CHEAP).new("correct horse battery")
    assert stored.startswith(SCHEME + "v=19$m=64,t=1,p=1$")
    assert "correct horse" not in stored
    assert lock.lock is not None and stored.startswith(lock.lock + "$")
    assert not lock.stretch and len(lock.passphrase) == 64
    # The passphrase is not the verifier, nor anything stored.
    assert lock.passphrase not in stored

    checked = passwords.check(stored, "correct horse battery")
    assert checked is not None and checked.key_lock == lock
    assert passwords.check(stored, "correct horse batterY") is None
    assert Passwords(**CHEAP).verify(stored, "correct horse battery")

    # The same password under another salt (a key from before a reset) opens
    # with its own lock, derived again; the legacy lock is the password.
    _, other = Passwords(**CHEAP).new("correct horse battery")
    assert other.passphrase != lock.passphrase
    assert checked.passphrase_for(other.lock) == other.passphrase
    assert checked.passphrase_for(None) == "correct horse battery"
    assert not passwords.needs_upgrade(stored)


@pytest.mark.parametrize("stored", [
    "", "$bm-argon2id$", "plain text",
    "$bm-argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$",
    "$bm-argon2id$v=19$m=64,t=1,p=1$!!!!!!!!!!!!!!!!$abc",
    # Costs a damaged or hostile row might ask for are refused, not run.
    "$bm-argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$abc",
    "$bm-argon2id$v=19$m=64,t=999,p=1$c2FsdHNhbHRzYWx0c2FsdA$abc",
    "$bm-argon2id$v=19$m=8,t=1,p=4$c2FsdHNhbHRzYWx0c2FsdA$abc",
])
def test_damaged_stored_passwords_never_check(stored: str) -> None:
    started = time.monotonic()
    assert passwords.check(stored, "any password at all") is None
    assert time.monotonic() - started < 1


def test_the_earlier_form_still_checks_and_opens_with_the_password() -> None:
    stored = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("old secret 1")
    checked = passwords.check(stored, "old secret 1")
    assert checked is not None and checked.key_lock == KeyLock(None, "old secret 1")
    assert checked.key_lock.stretch
    assert passwords.check(stored, "old secret 2") is None
    assert passwords.needs_upgrade(stored)


def test_a_key_locked_by_a_derived_passphrase_is_not_stretched_again() -> None:
    _, lock = Passwords(**CHEAP).new("correct horse battery")
    secret = openpgp.generate("A", "a@ministry.gov.example", passphrase=lock.passphrase,
                              stretch=lock.stretch)
    parts = openpgp._parts_of(openpgp._parse_key(secret._binary))
    assert [part._key.keymaterial.s2k.count for part in parts] == [1024, 1024]
    assert secret.unlock(lock.passphrase).public == secret.public
    with pytest.raises(openpgp.KeyProblem):
        secret.unlock("correct horse battery")  # the password itself does not open it


def _s2k_counts(site: Site, address: str) -> list[int]:
    db = site.db()
    try:
        with db.engine.connect() as connection:
            record = key_store.active_key(connection, "user", address)
    finally:
        db.close()
    assert record is not None and record.secret_key is not None
    key = openpgp._parse_key(openpgp.load_secret(record.secret_key)._binary)
    return [part._key.keymaterial.s2k.count for part in openpgp._parts_of(key)]


def _public_key(site: Site, address: str) -> openpgp.PublicKey:
    db = site.db()
    try:
        return vault.open_keys(db.engine, address, PASSWORD).user_key.public
    finally:
        db.close()


def _stored_password(site: Site, address: str) -> str:
    db = site.db()
    try:
        record = accounts.get_user(db.engine, address)
    finally:
        db.close()
    assert record is not None
    return record.password_hash


def _add_legacy_user(site: Site, local: str) -> str:
    """A user as `user add` made them before: argon2's own hash, and a key
    locked with the password itself."""
    address = f"{local}@{site.domain}"
    stored = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)
    secret = vault.make_user_key(site.settings(), address, local, KeyLock(None, PASSWORD))
    db = site.db()
    try:
        with db.engine.begin() as connection:
            vault.create_user(connection, address, local, stored, secret, None)
    finally:
        db.close()
    return address


def test_an_earlier_user_is_moved_to_the_current_form_at_sign_in(site: Site) -> None:
    alice = _add_legacy_user(site, "alice")
    fill(site, alice, [message(alice, alice, subject="Before the move")])
    assert _s2k_counts(site, alice) == [65011712, 65011712]
    public = _public_key(site, alice)

    with gateway(site) as gw:
        for _ in range(2):  # moved at the first sign-in; the second finds it done
            with imaplib.IMAP4_SSL("localhost", gw.service.port("imaps"),
                                   ssl_context=site.ssl_context()) as client:
                client.login(alice, PASSWORD)
                client.select("INBOX")
                status, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                assert status == "OK" and b"Before the move" in data[0][1]  # type: ignore[index]
            assert _stored_password(site, alice).startswith(SCHEME)
            assert _s2k_counts(site, alice) == [1024, 1024]
        # The same key, locked anew; SMTP AUTH takes the password as before.
        assert _public_key(site, alice) == public
        submit(site, gw.submission, alice, [alice], message(alice, alice, subject="After"))


def test_a_retired_key_opens_with_the_password_of_its_time(site: Site) -> None:
    alice = site.add_user("alice")
    db = site.db()
    try:
        with db.engine.connect() as connection:
            old = key_store.active_key(connection, "user", alice)
        stored, lock = FAST_HASH.new("the password after the reset")
        secret = vault.make_user_key(site.settings(), alice, "Alice", lock)
        with db.engine.begin() as connection:
            accounts.set_password_hash(connection, alice, stored)
            vault.replace_user_key(connection, alice, secret, lock.lock)
    finally:
        db.close()
    assert old is not None and old.lock is not None
    retired = keyring.unlock_own(site.settings(), old, PASSWORD)
    assert retired.public.fingerprint == old.fingerprint
    with pytest.raises(openpgp.KeyProblem):
        keyring.unlock_own(site.settings(), old, "the password after the reset")

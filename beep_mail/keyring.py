"""Which key to use, and keeping unlocked keys for as long as they are needed.

Sits between the store (armoured keys as rows) and the OpenPGP engine
(`beep_mail.crypto.openpgp`). Parsed keys are cached by fingerprint, so a
message does not re-parse the same peer key; the domain keys are unlocked once
at start, with the site secret, and kept in memory.

Peer keys: a key imported for an address or a domain is used while it is
active. Pinning makes it the trust anchor: a different key that arrives later
for a pinned owner is stored as pending and not used until an administrator
pins it (`beepmail key pin`).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine

from beep_mail.config import Settings
from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import PublicKey, SecretKey, UnlockedKey
from beep_mail.store import keys as key_store
from beep_mail.store.keys import RECOVERY_OWNER, KeyRecord


class KeyringError(Exception):
    """A key needed for this cannot be found or used; says which and why."""


# -- the site secret that locks the domain keys --------------------------------

def site_secret(settings: Settings, *, create: bool = False) -> str:
    path = settings.path(settings.keys.site_secret)
    if not path.exists():
        if not create:
            raise KeyringError(f"{path}: the site secret is missing")
        _write_secret(path)
    mode = path.stat().st_mode & 0o077
    if mode:
        raise KeyringError(f"{path}: must be readable by its owner only (chmod 600)")
    return path.read_text().strip()


def _write_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(secrets.token_urlsafe(32) + "\n")


# -- parsing with a cache --------------------------------------------------------

_cache_lock = threading.Lock()
_public_cache: dict[tuple[str, str], PublicKey] = {}


def public(record: KeyRecord) -> PublicKey:
    """The parsed public key of a row (cached by fingerprint and text)."""
    cache_key = (record.fingerprint, record.public_key)
    with _cache_lock:
        found = _public_cache.get(cache_key)
    if found is not None:
        return found
    parsed = [key for key in openpgp.load_public(record.public_key)
              if key.fingerprint == record.fingerprint]
    if not parsed:
        raise KeyringError(f"stored key {record.fingerprint} does not parse")
    with _cache_lock:
        if len(_public_cache) > 10_000:
            _public_cache.clear()
        _public_cache[cache_key] = parsed[0]
    return parsed[0]


# -- keys of our own ---------------------------------------------------------------

def ensure_domain_key(connection: Connection, settings: Settings, domain: str) -> KeyRecord:
    """The active domain key, generated on first use."""
    found = key_store.active_key(connection, "domain", domain)
    if found is not None:
        return found
    secret = openpgp.generate(
        f"beep-mail gateway for {domain}", f"postmaster@{domain}",
        passphrase=site_secret(settings, create=True),
        algorithm=settings.keys.algorithm, expires_days=settings.keys.expires_days or None,
    )
    return store_secret(connection, "domain", domain, secret)


def store_secret(connection: Connection, kind: str, owner: str,
                 secret: SecretKey) -> KeyRecord:
    key = secret.public
    return key_store.add_key(
        connection, kind=kind, owner=owner, fingerprint=key.fingerprint,
        public_key=key.armored, secret_key=secret.armored, pinned=True,
        created_at=key.created, expires_at=key.expires,
    )


def unlock_domain_keys(engine: Engine, settings: Settings,
                       domains: Sequence[str]) -> dict[str, UnlockedKey]:
    passphrase = site_secret(settings)
    unlocked: dict[str, UnlockedKey] = {}
    with engine.connect() as connection:
        for domain in domains:
            record = key_store.active_key(connection, "domain", domain)
            if record is None or record.secret_key is None:
                raise KeyringError(f"{domain} has no domain key; run beepmail key generate")
            unlocked[domain] = openpgp.load_secret(record.secret_key).unlock(passphrase)
    return unlocked


def recovery_key(connection: Connection) -> PublicKey:
    record = key_store.active_key(connection, "recovery", RECOVERY_OWNER)
    if record is None:
        raise KeyringError("no recovery key is configured; run "
                           "beepmail key generate --recovery --out FILE")
    return public(record)


def user_public(connection: Connection, address: str) -> PublicKey:
    record = key_store.active_key(connection, "user", address)
    if record is None:
        raise KeyringError(f"{address} has no key")
    return public(record)


def unlock_user(connection: Connection, address: str, password: str) -> UnlockedKey:
    record = key_store.active_key(connection, "user", address)
    if record is None or record.secret_key is None:
        raise KeyringError(f"{address} has no key")
    return openpgp.load_secret(record.secret_key).unlock(password)


# -- keys of correspondents ---------------------------------------------------------

def peer_key(connection: Connection, address: str, domain: str) -> PublicKey | None:
    """The key to encrypt to: the address's own, else its domain's; None if neither."""
    for owner in (address, domain):
        for record in key_store.keys_of(connection, "peer", owner):
            key = public(record)
            try:
                openpgp.check_encryption_key(key)
            except openpgp.KeyProblem:
                continue
            return key
    return None


def verifiers(connection: Connection, address: str, domain: str) -> list[PublicKey]:
    """Keys whose signature proves a message from this sender."""
    found: list[PublicKey] = []
    for owner in (address, domain):
        found.extend(public(r) for r in key_store.keys_of(connection, "peer", owner))
    return found


def import_peer(connection: Connection, key: PublicKey, owner: str, *,
                pin: bool) -> KeyRecord:
    """Store a correspondent's key for an address or domain, respecting pins.

    A key for an owner that already has a pinned key with another fingerprint
    is stored as pending; it is not used until pinned by an administrator.
    """
    current = key_store.keys_of(connection, "peer", owner)
    same = [r for r in current if r.fingerprint == key.fingerprint]
    if same:
        record = same[0]
        if pin and not record.pinned:
            key_store.set_state(connection, record.id, "active", pinned=True)
        # An updated copy (new expiry, revocation) of a known key replaces the old text.
        key_store.set_state(connection, record.id, record.state,
                            public_key=key.armored)
        return key_store.get_key(connection, record.id)
    pinned = [r for r in current if r.pinned]
    state = "pending" if pinned and not pin else "active"
    record = key_store.add_key(
        connection, kind="peer", owner=owner, fingerprint=key.fingerprint,
        public_key=key.armored, state=state, pinned=pin and state == "active",
        created_at=key.created, expires_at=key.expires,
    )
    if pin:
        for old in current:
            key_store.set_state(connection, old.id, "retired", pinned=False)
    return record


def pin(connection: Connection, fingerprint: str, owner: str | None = None) -> KeyRecord:
    """Confirm a key: it becomes the only active, pinned key of its owner."""
    record = key_store.find_fingerprint(connection, fingerprint, kind="peer", owner=owner)
    if record is None:
        raise KeyringError(f"no correspondent key {fingerprint}")
    for old in key_store.keys_of(connection, "peer", record.owner, ("active", "pending")):
        if old.id != record.id:
            key_store.set_state(connection, old.id, "retired", pinned=False)
    key_store.set_state(connection, record.id, "active", pinned=True)
    return key_store.get_key(connection, record.id)

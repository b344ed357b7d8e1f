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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from beep_mail.config import Settings
from beep_mail.crypto import atrest, openpgp, passwords
from beep_mail.crypto.openpgp import PublicKey, SecretKey, UnlockedKey
from beep_mail.policy.address import AddressError, parse_envelope_address
from beep_mail.store import accounts
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
                 secret: SecretKey, lock: str | None = None) -> KeyRecord:
    """`lock`: how a user's password turns into this key's passphrase (passwords)."""
    key = secret.public
    return key_store.add_key(
        connection, kind=kind, owner=owner, fingerprint=key.fingerprint,
        public_key=key.armored, secret_key=secret.armored, pinned=True,
        created_at=key.created, expires_at=key.expires, lock=lock,
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


def unlock_retired_domain_keys(engine: Engine, settings: Settings,
                               domains: Sequence[str]) -> list[UnlockedKey]:
    """Retired domain keys: they sign nothing, but mail a peer encrypted to
    one before it learned our new key must still open."""
    passphrase = site_secret(settings)
    unlocked: list[UnlockedKey] = []
    with engine.connect() as connection:
        for domain in domains:
            for record in key_store.keys_of(connection, "domain", domain, ("retired",)):
                if record.secret_key is not None:
                    unlocked.append(openpgp.load_secret(record.secret_key)
                                    .unlock(passphrase))
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


def unlock_user(connection: Connection, address: str, checked: passwords.Checked, *,
                decrypt_only: bool = False) -> UnlockedKey:
    """A user's key, opened with a password found right; `decrypt_only` for a
    reader who opens mail and signs nothing."""
    record = key_store.active_key(connection, "user", address)
    if record is None or record.secret_key is None:
        raise KeyringError(f"{address} has no key")
    return openpgp.load_secret(record.secret_key).unlock(
        checked.passphrase_for(record.lock), decrypt_only=decrypt_only)


def user_passphrase(record: KeyRecord, password: str) -> str:
    """The passphrase of a user's key, from the password that locked it."""
    if record.lock is None:
        return password
    try:
        return passwords.derive(record.lock, password).passphrase
    except ValueError:
        raise KeyringError(f"key {record.fingerprint} has a lock of unknown form") from None


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


# -- administration: what `beepmail key ...` and `user recover` change --------------
#
# Each function works inside the caller's transaction, so that the change and
# its audit event commit together. Slow work (key generation) happens before.

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Installed:
    """A key that became active, and the keys it replaced (now retired)."""

    record: KeyRecord
    retired: tuple[KeyRecord, ...]
    changed: bool = True


@dataclass(frozen=True)
class PeerImport:
    """What storing a correspondent's key did."""

    record: KeyRecord
    update: bool  # a new copy of a key already stored for this owner


def owners_of(key: PublicKey) -> list[str]:
    """Whom a correspondent's key speaks for, read from its user IDs.

    postmaster@DOMAIN stands for the whole domain; any other address for itself.
    Owners are in the spelling mail is looked up by (see `policy.address`).
    """
    owners: list[str] = []
    for email in key.emails:
        try:
            address = parse_envelope_address(email, smtputf8=True)
        except AddressError as error:
            raise KeyringError(
                f"key {key.fingerprint}: a user ID has an unusable address: {error}"
            ) from None
        assert address is not None  # only the empty sender parses to None
        owner = address.domain if address.local.lower() == "postmaster" else address.key
        if owner not in owners:
            owners.append(owner)
    return owners


def unusable(key: PublicKey, now: float | None = None) -> str | None:
    """Why a key must not become a new trust anchor; None if it may."""
    moment = time.time() if now is None else now
    if key.revoked:
        return "is revoked"
    if key.expires is not None and key.expires <= moment:
        return "has expired"
    if not (key.can_encrypt or key.can_sign):
        return "can neither encrypt nor sign"
    return None


def store_peer_key(connection: Connection, key: PublicKey, owner: str, *,
                   pin: bool) -> PeerImport:
    """A correspondent's key: new (see `import_peer`), or a new copy of a known one.

    A new copy may carry a revocation or a new expiry: it replaces the stored
    text, and a revocation makes the key revoked here too. A revoked key never
    becomes usable again by importing an older copy of it.
    """
    problem = unusable(key)
    known = key_store.find_fingerprint(connection, key.fingerprint, kind="peer",
                                       owner=owner)
    if known is None:
        if problem is not None:
            raise KeyringError(f"key {key.fingerprint} {problem}")
        return PeerImport(import_peer(connection, key, owner, pin=pin), update=False)

    stored_revoked = known.state == "revoked" or public(known).revoked
    if not stored_revoked or key.revoked:
        if known.state == "active":
            import_peer(connection, key, owner, pin=False)  # replaces the text
        else:
            key_store.set_state(connection, known.id, known.state,
                                public_key=key.armored)
    if key.revoked or stored_revoked:
        key_store.set_state(connection, known.id, "revoked", pinned=False)
    elif pin and problem is None:
        pin_owner(connection, key.fingerprint, owner)
    return PeerImport(key_store.get_key(connection, known.id), update=True)


def pin_owner(connection: Connection, fingerprint: str, owner: str) -> Installed:
    """`pin` for one owner's copy of a key; says which keys it retired."""
    before = key_store.keys_of(connection, "peer", owner, ("active", "pending"))
    record = pin(connection, fingerprint, owner)
    retired = tuple(r for r in before if r.id != record.id)
    return Installed(record, retired)


def make_domain_key(settings: Settings, domain: str) -> SecretKey:
    """A new domain key, locked by the site secret. Slow: before the transaction."""
    return openpgp.generate(
        f"beep-mail gateway for {domain}", f"postmaster@{domain}",
        passphrase=site_secret(settings, create=True),
        algorithm=settings.keys.algorithm,
        expires_days=settings.keys.expires_days or None,
    )


def install_domain_key(connection: Connection, domain: str,
                       secret: SecretKey) -> Installed:
    """The new key signs from now on; the old ones stay, retired, to verify."""
    retired = _retire(connection, "domain", domain)
    return Installed(store_secret(connection, "domain", domain, secret), retired)


def rotate_user_key(connection: Connection, address: str, secret: SecretKey,
                    mailbox_key: bytes, lock: str | None = None) -> Installed:
    """A user's new key (same password, `lock`), with the mailbox key wrapped to it."""
    user = accounts.find_user(connection, address)
    if user is None:
        raise KeyringError(f"no user {address}")
    wrapped = atrest.wrap_key(mailbox_key, [secret.public, recovery_key(connection)])
    retired = _retire(connection, "user", user.address)
    record = store_secret(connection, "user", user.address, secret, lock)
    key_store.put_mailbox_key(connection, user.id, wrapped, secret.public.fingerprint)
    return Installed(record, retired)


def install_recovery_key(connection: Connection, key: PublicKey,
                         kind: str = "recovery") -> Installed:
    """The organisation's recovery key (public part only); the previous one retires.

    Mailbox keys wrapped before stay wrapped to the retired key until they are
    wrapped again (a user key rotation or a recovery does it). With
    kind="records" the same for the records office's key, which the archive
    encrypts to.
    """
    owner = RECOVERY_OWNER if kind == "recovery" else key_store.RECORDS_OWNER
    try:
        openpgp.check_encryption_key(key)
    except openpgp.KeyProblem as error:
        raise KeyringError(f"not usable as the {kind} key: {error}") from None
    known = key_store.find_fingerprint(connection, key.fingerprint, kind=kind,
                                       owner=owner)
    if known is not None and known.state == "active":
        return Installed(known, (), changed=False)
    if known is not None and known.state == "revoked":
        raise KeyringError(f"{kind} key {key.fingerprint} was revoked")

    retired = _retire(connection, kind, owner)
    if known is not None:  # a retired key comes back
        key_store.set_state(connection, known.id, "active", pinned=True,
                            public_key=key.armored)
        return Installed(key_store.get_key(connection, known.id), retired)
    record = key_store.add_key(
        connection, kind=kind, owner=owner,
        fingerprint=key.fingerprint, public_key=key.armored, pinned=True,
        created_at=key.created, expires_at=key.expires,
    )
    return Installed(record, retired)


def _retire(connection: Connection, kind: str, owner: str) -> tuple[KeyRecord, ...]:
    old = key_store.keys_of(connection, kind, owner)
    for record in old:
        key_store.set_state(connection, record.id, "retired")
    return tuple(old)


def unlock_own(settings: Settings, record: KeyRecord,
               password: str | None = None) -> UnlockedKey:
    """The secret part of one of our keys: domain keys open with the site secret,
    a user's key with the user's password."""
    if record.secret_key is None:
        raise KeyringError(f"key {record.fingerprint} has no secret part here")
    if record.kind == "domain":
        passphrase = site_secret(settings)
    elif password is None:
        raise KeyringError(f"key {record.fingerprint} needs the user's password")
    else:
        passphrase = user_passphrase(record, password)
    return openpgp.load_secret(record.secret_key).unlock(passphrase)


def revoke_own(connection: Connection, record: KeyRecord, unlocked: UnlockedKey,
               reason: str = "") -> KeyRecord:
    """Revoke one of our keys: the stored public part carries the revocation,
    ready to be exported to peers."""
    if unlocked.public.fingerprint != record.fingerprint:
        raise KeyringError(f"the unlocked key is not {record.fingerprint}")
    revoked = openpgp.revoke(unlocked, reason)
    key_store.set_state(connection, record.id, "revoked", public_key=revoked.armored)
    return key_store.get_key(connection, record.id)


def mark_revoked(connection: Connection, record: KeyRecord) -> KeyRecord:
    """Stop trusting a key whose secret part we do not hold (a peer's)."""
    key_store.set_state(connection, record.id, "revoked", pinned=False)
    return key_store.get_key(connection, record.id)


def key_expiry(record: KeyRecord) -> float | None:
    """When a stored key expires, read from the key itself where it parses."""
    try:
        return public(record).expires
    except (KeyringError, openpgp.OpenPGPError):
        return record.expires_at


def expiring(records: Sequence[KeyRecord], now: float | None = None,
             days: int = EXPIRY_WARNING_DAYS) -> list[tuple[KeyRecord, float]]:
    """Active keys that expire within `days` (or have expired), with the moment."""
    moment = time.time() if now is None else now
    found: list[tuple[KeyRecord, float]] = []
    for record in records:
        if record.state != "active":
            continue
        expires = key_expiry(record)
        if expires is not None and expires - moment <= days * 86400:
            found.append((record, expires))
    return found

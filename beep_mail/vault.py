"""Mail at rest: users' keys, mailbox keys, and reading sealed messages.

Every user has a symmetric mailbox key, wrapped (OpenPGP) to the user's key and
to the organisation's recovery key. Delivery cannot unwrap it without the
user's password, so it seals each new message with a fresh key wrapped to the
user's public key and the recovery key ("sealed for", BMS1). A session that
holds the mailbox key re-seals such messages under it (BMK1, AES-256-GCM, one
symmetric operation per read), so a mailbox of 10,000 messages does not cost
10,000 public-key operations to list.

The secret part of a user's key is locked by the user's password; an
administrator's password reset therefore makes a new key, and the mail stored
before it is reachable again only through `recover`, with the recovery key
whose secret part is kept off the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, update

from beep_mail import keyring
from beep_mail.config import Settings
from beep_mail.crypto import atrest, openpgp, passwords
from beep_mail.crypto.openpgp import PublicKey, UnlockedKey
from beep_mail.store import accounts
from beep_mail.store import keys as key_store
from beep_mail.store.tables import mailbox_entries

MAILBOX_SEALED = b"BMK1"


class VaultError(Exception):
    """Stored mail cannot be opened with what was given; says why."""


def _aad(user_id: int) -> bytes:
    # Binds a sealed entry to its owner: a row copied into another user's
    # mailbox does not open there.
    return f"beep-mail entry of user {user_id}".encode()


# -- users and their keys ------------------------------------------------------

def make_user_key(settings: Settings, address: str, name: str,
                  lock: passwords.KeyLock) -> openpgp.SecretKey:
    """Slow (key generation): call before opening the write transaction."""
    # A user's key does not expire: renewing it would need the password, and an
    # expired key would stop the user's mail. Domain keys carry the expiry.
    return openpgp.generate(name or address, address, passphrase=lock.passphrase,
                            algorithm=settings.keys.algorithm, stretch=lock.stretch)


def create_user(connection: Connection, address: str, name: str, password_hash: str,
                secret: openpgp.SecretKey, lock: str | None) -> accounts.UserRecord:
    """The user, its mailboxes, its key and its wrapped mailbox key, in one transaction.

    `lock` is the key's (passwords.KeyLock.lock), from the same password.
    """
    recovery = keyring.recovery_key(connection)
    user = accounts.add_user(connection, address, name, password_hash)
    keyring.store_secret(connection, "user", user.address, secret, lock)
    wrapped = atrest.wrap_key(atrest.new_key(), [secret.public, recovery])
    key_store.put_mailbox_key(connection, user.id, wrapped, secret.public.fingerprint)
    return user


def replace_user_key(connection: Connection, address: str,
                     secret: openpgp.SecretKey, lock: str | None) -> None:
    """After a password reset: the new key becomes active, the old one retired.

    The mailbox key stays wrapped to the old key and the recovery key until
    `recover` re-wraps it; new mail is sealed to the new key at once.
    """
    for old in key_store.keys_of(connection, "user", address):
        key_store.set_state(connection, old.id, "retired")
    keyring.store_secret(connection, "user", address, secret, lock)


def upgrade_lock(engine: Engine, address: str, checked: passwords.Checked,
                 hasher: passwords.Passwords) -> bool:
    """Move a user of the earlier password form to the current one; whether done.

    The stored password becomes a `$bm-argon2id$` one and the same key is
    locked again with the passphrase it yields, both in one transaction, so
    that the two never disagree. The slow part (Argon2id, S2K, relocking) is
    done before; if the password or key changed meanwhile, nothing is written.
    """
    with engine.connect() as connection:
        user = accounts.find_user(connection, address)
        record = key_store.active_key(connection, "user", address)
    if (user is None or record is None or record.secret_key is None
            or not passwords.needs_upgrade(user.password_hash)):
        return False
    stored, lock = hasher.new(checked.password, policy=False)
    unlocked = openpgp.load_secret(record.secret_key).unlock(
        checked.passphrase_for(record.lock))
    relocked = openpgp.relock(unlocked, lock.passphrase, stretch=lock.stretch)
    with engine.begin() as connection:
        now_user = accounts.find_user(connection, address)
        now_key = key_store.active_key(connection, "user", address)
        if (now_user is None or now_user.password_hash != user.password_hash
                or now_key is None or now_key.secret_key != record.secret_key):
            return False
        key_store.replace_secret(connection, record.id, relocked.armored, lock.lock)
        accounts.set_password_hash(connection, address, stored)
    return True


# -- a session's view of one mailbox owner -------------------------------------------

@dataclass
class Keys:
    """What an authenticated session holds in memory, and nothing more."""

    user_id: int
    address: str
    user_key: UnlockedKey
    mailbox_key: bytes


def open_keys(engine: Engine, address: str, password: str | passwords.Checked) -> Keys:
    """A user's keys, from the password (checked here: one Argon2id run) or
    from a sign-in that checked it already."""
    with engine.connect() as connection:
        user = accounts.find_user(connection, address)
        if user is None:
            raise VaultError(f"no user {address}")
        checked = (passwords.check(user.password_hash, password)
                   if isinstance(password, str) else password)
        if checked is None:
            raise openpgp.KeyProblem("wrong password")
        # A session reads mail and signs nothing: one key part to unlock.
        unlocked = keyring.unlock_user(connection, user.address, checked,
                                       decrypt_only=True)
        stored = key_store.get_mailbox_key(connection, user.id)
    if stored is None:
        raise VaultError(f"{address} has no mailbox key")
    wrapped, wrapped_for = stored
    if wrapped_for != unlocked.public.fingerprint:
        raise VaultError(f"the mailbox key of {address} waits for recovery "
                         "(beepmail user recover) after a password reset")
    return Keys(user.id, user.address, unlocked, atrest.unwrap_key(wrapped, unlocked))


def read(keys: Keys, blob: bytes) -> bytes:
    """The plaintext of a stored entry."""
    if blob.startswith(MAILBOX_SEALED):
        return atrest.unseal(keys.mailbox_key, blob[len(MAILBOX_SEALED):],
                             _aad(keys.user_id))
    if atrest.is_sealed_for(blob):
        return atrest.open_sealed_for(blob, keys.user_key)
    raise VaultError("entry is in no known stored format")


class Opener:
    """`read` for many entries of one mailbox owner: the cipher is set up once."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._aad = _aad(keys.user_id)
        self._cipher = atrest.Cipher(keys.mailbox_key)

    def read(self, blob: bytes) -> bytes:
        if blob.startswith(MAILBOX_SEALED):
            return self._cipher.unseal(blob[len(MAILBOX_SEALED):], self._aad)
        return read(self._keys, blob)

    def read_index(self, mailbox_id: int, chunk: int, blob: bytes) -> bytes:
        """A part of a mailbox's search index; atrest.IntegrityError if not this one."""
        return self._cipher.unseal(blob, _index_aad(self._keys.user_id, mailbox_id, chunk))


def _index_aad(user_id: int, mailbox_id: int, chunk: int) -> bytes:
    # Binds a part of the search index to its place: a part copied to another
    # mailbox or chunk does not open there.
    return f"beep-mail search index of user {user_id} mailbox {mailbox_id} " \
           f"chunk {chunk}".encode()


def seal_index(keys: Keys, mailbox_id: int, chunk: int, plaintext: bytes) -> bytes:
    return atrest.seal(keys.mailbox_key, plaintext,
                       _index_aad(keys.user_id, mailbox_id, chunk))


def seal_for_mailbox(keys: Keys, plaintext: bytes) -> bytes:
    return MAILBOX_SEALED + atrest.seal(keys.mailbox_key, plaintext, _aad(keys.user_id))


def reseal_new_entries(engine: Engine, keys: Keys, limit: int = 500) -> int:
    """Move entries sealed at delivery under the mailbox key; returns how many."""
    query = (select(mailbox_entries.c.id, mailbox_entries.c.content)
             .where(mailbox_entries.c.user_id == keys.user_id))
    moved = 0
    with engine.begin() as connection:
        for entry_id, blob in connection.execute(query).all():
            blob = bytes(blob)
            if not atrest.is_sealed_for(blob):
                continue
            if moved >= limit:
                break
            plaintext = atrest.open_sealed_for(blob, keys.user_key)
            connection.execute(update(mailbox_entries)
                               .where(mailbox_entries.c.id == entry_id)
                               .values(content=seal_for_mailbox(keys, plaintext)))
            moved += 1
    return moved


# -- sealing at delivery ------------------------------------------------------------

def seal_for_users(connection: Connection, addresses: Sequence[str],
                   plaintext: bytes) -> bytes:
    """One blob that each of these users (and the recovery key) can open."""
    recipients: list[PublicKey] = [keyring.user_public(connection, a) for a in addresses]
    recipients.append(keyring.recovery_key(connection))
    return atrest.seal_for(plaintext, recipients)


# -- recovery ------------------------------------------------------------------------

def recover(engine: Engine, address: str, recovery: UnlockedKey) -> int:
    """Give a user back their mail after a password reset.

    Opens the mailbox key and every entry with the recovery key, and re-wraps
    the mailbox key to the user's current key. Returns the entries re-sealed.
    """
    with engine.begin() as connection:
        user = accounts.find_user(connection, address)
        if user is None:
            raise VaultError(f"no user {address}")
        current = keyring.user_public(connection, user.address)
        stored = key_store.get_mailbox_key(connection, user.id)
        if stored is None:
            raise VaultError(f"{address} has no mailbox key")
        mailbox_key = atrest.unwrap_key(stored[0], recovery)
        wrapped = atrest.wrap_key(mailbox_key, [current, keyring.recovery_key(connection)])
        key_store.put_mailbox_key(connection, user.id, wrapped, current.fingerprint)

        moved = 0
        rows = connection.execute(
            select(mailbox_entries.c.id, mailbox_entries.c.content)
            .where(mailbox_entries.c.user_id == user.id)).all()
        for entry_id, blob in rows:
            blob = bytes(blob)
            if not atrest.is_sealed_for(blob):
                continue
            plaintext = atrest.open_sealed_for(blob, recovery)
            sealed = MAILBOX_SEALED + atrest.seal(mailbox_key, plaintext, _aad(user.id))
            connection.execute(update(mailbox_entries)
                               .where(mailbox_entries.c.id == entry_id)
                               .values(content=sealed))
            moved += 1
    return moved

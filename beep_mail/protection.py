"""The OpenPGP stage of the pipeline: encrypt and sign out, decrypt and verify in.

It has a fixed place: after the policy checks and the content checks, before
the durable commit. It rewrites the body, so nothing that inspects the body
runs after it. Its output is what the queue stores, and the queue stores no
plaintext: the copy for next hops is PGP/MIME (RFC 3156, with RFC 9788 header
protection) and the copy for local users is sealed to their keys and the
recovery key (`beep_mail.vault`).

Which copy a recipient gets is its route:

- "local":    a user of this gateway; gets the sealed local copy.
- "remote":   a correspondent whose key is known; gets the PGP/MIME copy.
- "wait-key": a correspondent whose domain says `encryption = "hold"` and whose
              key is not known yet; the row is held, and the message is also
              sealed to our domain key so that, once an administrator has
              imported the key and released the row, delivery can encrypt it.
- "plain":    a domain whose policy is `encryption = "none"`; the copy for next
              hops is the message as written (an administrator's explicit choice).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection

from beep_mail import keyring
from beep_mail.crypto import atrest, openpgp, pgpmime
from beep_mail.crypto.openpgp import PublicKey, UnlockedKey
from beep_mail.policy.routing import DomainTable
from beep_mail.smtp import replies
from beep_mail.smtp.replies import Reply
from beep_mail.store.engine import Database
from beep_mail.store.queue import NewRecipient

T = TypeVar("T")

# An inbound message larger than this once decrypted is refused.
MAX_DECRYPTED = 64 * 1024 * 1024

# White space before the colon is the obsolete syntax of RFC 5322 section 4.5,
# which readers still accept: such a copy is a copy all the same.
_VERIFICATION = re.compile(
    rb"^" + pgpmime.VERIFICATION_HEADER.encode() + rb"[ \t]*:.*(?:\r\n[ \t].*)*\r\n",
    re.IGNORECASE | re.MULTILINE,
)


class Refused(Exception):
    """The message is refused by policy; carries the reply and the audit action."""

    def __init__(self, reply: Reply, action: str) -> None:
        super().__init__(reply.text)
        self.reply = reply
        self.action = action


@dataclass
class Protected:
    content: bytes | None = None          # for next hops
    local_content: bytes | None = None    # sealed for local users
    held_content: bytes | None = None     # sealed to our domain key, for wait-key
    plaintext: bytes = b""                # for the records archive, as written/received
    held: set[str] = field(default_factory=set)  # recipients whose rows wait
    verification: str = ""                # what inbound verification found
    quarantined: str = ""                 # why unverified inbound mail is held


@dataclass(frozen=True)
class KeyState:
    """Can a message to this remote recipient leave now, and how?"""

    route: str            # "remote", "wait-key", "plain", or "refused"
    key: PublicKey | None


def recipient_key_state(connection: Connection, table: DomainTable, address: str,
                        domain: str) -> KeyState:
    rule = table.decide(domain).rule
    policy = rule.encryption if rule is not None else "required"
    key = keyring.peer_key(connection, address, domain)
    if key is not None:
        return KeyState("remote", key)
    if policy == "none":
        return KeyState("plain", None)
    if policy == "hold":
        return KeyState("wait-key", None)
    return KeyState("refused", None)


class Stage:
    def __init__(self, db: Database, signers: dict[str, UnlockedKey],
                 executor: ThreadPoolExecutor,
                 retired: Sequence[UnlockedKey] = ()) -> None:
        self.db = db
        self.signers = signers
        self.executor = executor
        # Inbound mail opens with any of our domain keys, retired ones too.
        self.decryption_keys = [*signers.values(), *retired]

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-bound OpenPGP work, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    # -- outbound -------------------------------------------------------------------

    async def outbound(self, content: bytes, sender_domain: str,
                       recipients: Sequence[NewRecipient],
                       table: DomainTable) -> tuple[Protected, list[NewRecipient]]:
        locals_ = [r.address for r in recipients if r.route == "local"]
        remotes = [r for r in recipients if r.route != "local"]
        states = await self.db.run(self._states, remotes, table)
        routed = [NewRecipient(r.address, r.domain, states[r.address].route)
                  if r.route != "local" else r for r in recipients]
        refused = [a for a, s in states.items() if s.route == "refused"]
        if refused:
            # The key vanished between RCPT and DATA (a revocation, say).
            raise Refused(replies.NO_KEY.format(address=refused[0]), "no-key")

        result = Protected(plaintext=_unstamped(content))
        holds = [r.address for r in routed if r.route == "wait-key"]
        result.held.update(holds)
        keys = [s.key for s in states.values() if s.key is not None]
        plain = [a for a, s in states.items() if s.route == "plain"]
        if keys:
            signer = self._signer(sender_domain)
            result.content = await self._cpu(pgpmime.protect, content, keys, signer)
        elif plain:
            result.content = content
        # An officer's message states no verification result to a colleague:
        # only the gateway writes that field, on inbound mail.
        if locals_:
            result.local_content = await self._seal(locals_, _unstamped(content))
        if holds:
            # The gateway itself must open this copy once the key arrives, so it
            # is sealed to our domain key, and to nothing else.
            domain_key = self._signer(sender_domain).public
            result.held_content = await self._cpu(atrest.seal_for, _unstamped(content),
                                                  [domain_key])
        return result, routed

    def _states(self, engine: object, remotes: Sequence[NewRecipient],
                table: DomainTable) -> dict[str, KeyState]:
        with self.db.engine.connect() as connection:
            return {r.address: recipient_key_state(connection, table, r.address, r.domain)
                    for r in remotes}

    def _signer(self, domain: str) -> UnlockedKey:
        signer = self.signers.get(domain)
        if signer is None:
            raise Refused(replies.LOCAL_ERROR, "no-domain-key")
        return signer

    async def _seal(self, addresses: Sequence[str], plaintext: bytes,
                    extra: Sequence[PublicKey] = ()) -> bytes:
        recipients = await self.db.run(self._local_keys, addresses)
        recipients.extend(extra)
        return await self._cpu(atrest.seal_for, plaintext, recipients)

    def _local_keys(self, engine: object, addresses: Sequence[str]) -> list[PublicKey]:
        with self.db.engine.connect() as connection:
            found = [keyring.user_public(connection, a) for a in addresses]
            found.append(keyring.recovery_key(connection))
        return found

    # -- inbound --------------------------------------------------------------------

    async def inbound(self, content: bytes, sender: str,
                      recipients: Sequence[NewRecipient],
                      table: DomainTable) -> Protected:
        sender_domain = sender.rpartition("@")[2]
        rule = table.decide(sender_domain).rule if sender_domain else None
        policy = rule.encryption if rule is not None else "required"
        locals_ = [r.address for r in recipients]

        if pgpmime.is_encrypted(content):
            verifiers = await self.db.run(self._verifiers, sender, sender_domain)
            try:
                opened = await self._cpu(functools.partial(
                    pgpmime.unprotect, content, self.decryption_keys, verifiers,
                    max_size=MAX_DECRYPTED, sender=sender))
            except (pgpmime.PGPMIMEError, openpgp.OpenPGPError) as error:
                raise Refused(replies.UNDECRYPTABLE.format(reason=_reason(error)),
                              "undecryptable") from None
            assert isinstance(opened, pgpmime.Unprotected)
            signature, plaintext = opened.signature, opened.message
            sender_matches = opened.sender_matches
            verification = f"signature={signature}; encrypted=yes"
        else:
            signature, plaintext = "missing", _stamp(content, "signature=missing; "
                                                     "encrypted=no")
            verification = "signature=missing; encrypted=no"
            sender_matches = None
            if policy != "none":
                return await self._unverified(policy, "plaintext", locals_, plaintext,
                                              verification,
                                              replies.MUST_ENCRYPT.format(
                                                  domain=sender_domain or "(none)"))

        if signature != "valid" and policy != "none":
            return await self._unverified(policy, f"signature-{signature}", locals_,
                                          plaintext, verification,
                                          replies.BAD_SIGNATURE.format(state=signature))
        if policy != "none" and sender_matches is False:
            # A valid signature vouches for the peer whose key made it, not for
            # whatever From the message claims.
            return await self._unverified(policy, "sender-mismatch", locals_,
                                          plaintext, verification,
                                          replies.SIGNER_MISMATCH.format(
                                              domain=sender_domain))
        return Protected(local_content=await self._seal(locals_, plaintext),
                         verification=verification, plaintext=plaintext)

    async def _unverified(self, policy: str, action: str, locals_: Sequence[str],
                          plaintext: bytes, verification: str, reply: Reply) -> Protected:
        if policy == "hold":
            # Quarantine: kept sealed, rows held for an administrator.
            sealed = await self._seal(locals_, plaintext)
            return Protected(local_content=sealed, held=set(locals_),
                             verification=f"{verification}; quarantined={action}",
                             quarantined=action, plaintext=plaintext)
        raise Refused(reply, action)

    def _verifiers(self, engine: object, sender: str, domain: str) -> list[PublicKey]:
        with self.db.engine.connect() as connection:
            return keyring.verifiers(connection, sender, domain)


def _stamp(message: bytes, verification: str) -> bytes:
    """Our verification header on top, every copy from outside removed first."""
    line = f"{pgpmime.VERIFICATION_HEADER}: {verification}\r\n".encode("ascii")
    return line + _unstamped(message)


def _unstamped(message: bytes) -> bytes:
    """The message without any verification header, in any case or folding."""
    head, sep, body = message.partition(b"\r\n\r\n")
    head = _VERIFICATION.sub(b"", head + b"\r\n").rstrip(b"\r\n")
    return head + sep + body


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:200]


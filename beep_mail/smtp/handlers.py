"""Policy at the door: aiosmtpd hooks for the submission and inbound roles.

Submission (RFC 6409): only signed-in officers, only as their own address, to
local users or approved correspondent domains. Inbound (the MX role): only
from approved correspondent domains, only to existing local users; never a
relay. Every decision rests on the envelope, parsed strictly by
`beep_mail.policy.address`, never on header parsing.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from base64 import b64decode
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, LoginPassword, Session

from beep_mail import logs
from beep_mail.archive.journal import ArchiveError
from beep_mail.config import Settings
from beep_mail.crypto.openpgp import OpenPGPError
from beep_mail.crypto.passwords import Passwords
from beep_mail.crypto.pgpmime import PGPMIMEError
from beep_mail.keyring import KeyringError
from beep_mail.pipeline import Incoming, Pipeline
from beep_mail.policy.address import Address, AddressError, parse_envelope_address
from beep_mail.policy.routing import DomainTable, Route
from beep_mail.protection import Refused, recipient_key_state
from beep_mail.smtp import replies
from beep_mail.smtp.content import ContentError
from beep_mail.smtp.replies import Reply
from beep_mail.smtp.throttle import Throttle
from beep_mail.store import accounts, audit
from beep_mail.store.engine import Database, StoreError, StoreFull
from beep_mail.store.queue import NewRecipient

log = logging.getLogger("beepmail.smtp")

# How long a snapshot of the domain table is trusted before it is read again.
DOMAIN_CACHE_SECONDS = 2.0
# How aiosmtpd spells the null reverse-path of a bounce in envelope.mail_from.
NULL_PATH = "<>"


class _Shared:
    """State both roles read: the domain table, cached briefly."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._table: DomainTable | None = None
        self._loaded = 0.0

    async def domains(self) -> DomainTable:
        if self._table is None or time.monotonic() - self._loaded > DOMAIN_CACHE_SECONDS:
            rows = await self.db.run(accounts.list_domains)
            self._table = DomainTable(rows)
            self._loaded = time.monotonic()
        return self._table

    async def user(self, address: str) -> accounts.UserRecord | None:
        return await self.db.run(accounts.get_user, address)


class BaseHandler:
    role = "base"

    def __init__(self, db: Database, settings: Settings, pipeline: Pipeline) -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipeline
        self.shared = _Shared(db)

    # -- helpers ----------------------------------------------------------

    def _refuse(self, server: Any, reply: Reply, action: str, **detail: object) -> str:
        """Log and audit a policy refusal; return the reply to send."""
        client = getattr(server, "client_address", None)
        fields: dict[str, Any] = {k: v for k, v in detail.items() if k != "user"}
        logs.event(log, "refused", role=self.role, dsn=reply.status, reason=action,
                   **fields)
        # The client address goes in its own field, which expires; the actor is
        # chained into the audit trail for good, so it never holds an address.
        actor = str(detail.get("user") or "smtp")
        asyncio.get_running_loop().create_task(self._audit(actor, action, detail, client))
        return str(reply)

    async def _audit(self, actor: str, action: str, detail: dict[str, object],
                     client: str | None) -> None:
        target = str(detail.get("rcpt") or detail.get("sender") or "")
        try:
            await self.db.run(audit.record_now, actor, f"smtp.{action}", target,
                              {**detail, "role": self.role}, client)
        except StoreError as error:
            logs.event(log, "audit-failed", logging.WARNING, reason=str(error))

    def _parse(self, address: str, *, allow_empty: bool) -> Address | None:
        return parse_envelope_address(address, allow_empty=allow_empty)

    async def handle_EHLO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd offers "AUTH" even with every mechanism excluded (inbound).
        responses = [line for line in responses if line.rstrip() != "250-AUTH"]
        responses.insert(-1, "250-ENHANCEDSTATUSCODES")
        return responses

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        try:
            rcpt = self._parse(address, allow_empty=False)
        except AddressError as error:
            return self._refuse(server, replies.BAD_RECIPIENT.format(reason=error),
                                "bad-recipient")
        assert rcpt is not None
        accepted: list[NewRecipient] = envelope.beep_rcpts  # type: ignore[attr-defined]
        if len(accepted) >= self.settings.smtp.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)

        decision = (await self.shared.domains()).recipient(rcpt)
        reply = await self._check_recipient(server, session, rcpt, decision.route)
        if reply is not None:
            return reply
        if all(existing.address != rcpt.key for existing in accepted):
            accepted.append(NewRecipient(rcpt.key, rcpt.domain, decision.route.value))
        envelope.rcpt_tos.append(str(rcpt))
        logs.event(log, "rcpt", logging.DEBUG, route=decision.route.value)
        return str(replies.RECIPIENT_OK)

    async def _check_recipient(self, server: Any, session: Session, rcpt: Address,
                               route: Route) -> str | None:
        raise NotImplementedError

    async def _local_recipient(self, server: Any, rcpt: Address,
                               user: str | None) -> str | None:
        found = await self.shared.user(rcpt.key)
        if found is None or found.disabled:
            return self._refuse(server, replies.UNKNOWN_USER.format(address=rcpt.key),
                                "unknown-user", rcpt=rcpt.key, user=user)
        return None

    async def handle_DATA(self, server: Any, session: Session,
                          envelope: Envelope) -> str:
        rcpts: list[NewRecipient] = envelope.beep_rcpts  # type: ignore[attr-defined]
        if not rcpts:
            return str(replies.NEED_RECIPIENT)
        content = envelope.original_content or b""
        envelope.original_content = envelope.content = None  # one copy is enough
        ssl_object = (session.ssl or {}).get("ssl_object")
        incoming = Incoming(
            role=self.role, mail_from=_reverse_path(envelope), recipients=rcpts,
            content=content, helo=session.host_name or "",
            client_addr=getattr(server, "client_address", None),
            auth_user=getattr(session, "beep_user", None),
            tls=ssl_object.version() if ssl_object else None,
            queue_id=envelope.beep_queue_id,  # type: ignore[attr-defined]
        )
        try:
            queue_id = await self.pipeline.accept(incoming)
        except ContentError as error:
            return self._refuse(server, replies.BAD_CONTENT.format(reason=error.reason),
                                "bad-content")
        except Refused as refusal:
            return self._refuse(server, refusal.reply, refusal.action,
                                sender=incoming.mail_from,
                                user=incoming.auth_user)
        except PGPMIMEError as error:
            return self._refuse(server, replies.CANNOT_PROTECT.format(reason=error),
                                "cannot-protect", sender=incoming.mail_from,
                                user=incoming.auth_user)
        except (KeyringError, OpenPGPError, ArchiveError) as error:
            # A key of ours is missing or unusable: the site needs its
            # administrator, the sender only needs to try again later.
            logs.event(log, "key-error", logging.ERROR, reason=str(error))
            return str(replies.LOCAL_ERROR)
        except StoreFull as error:
            logs.event(log, "store-full", logging.ERROR, reason=str(error))
            return str(replies.STORE_FULL)
        except StoreError as error:
            logs.event(log, "store-error", logging.ERROR, reason=str(error))
            return str(replies.STORE_BUSY)
        return str(replies.QUEUED.format(queue_id=queue_id))

    def _start_message(self, envelope: Envelope, sender: str) -> None:
        from beep_mail.store.queue import new_message_id

        # aiosmtpd wants a true mail_from before RCPT; "<>" is its null path.
        envelope.mail_from = sender or NULL_PATH
        envelope.beep_rcpts = []  # type: ignore[attr-defined]
        envelope.beep_queue_id = new_message_id()  # type: ignore[attr-defined]
        logs.message_id.set(envelope.beep_queue_id)  # type: ignore[attr-defined]


class SubmissionHandler(BaseHandler):
    """Officers' clients: STARTTLS, AUTH, then MAIL as their own address."""

    role = "submission"

    def __init__(self, db: Database, settings: Settings, pipeline: Pipeline,
                 passwords: Passwords, throttle: Throttle) -> None:
        super().__init__(db, settings, pipeline)
        self.passwords = passwords
        self.throttle = throttle

    # -- AUTH (RFC 4954, RFC 4616) ----------------------------------------

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
        if blob is None or blob.count(b"\x00") != 2:
            await server.push(str(replies.AUTH_MALFORMED))
            return AuthResult(success=False, handled=True)
        _authz, login, password = blob.split(b"\x00")
        return await self._authenticate(server, login, password)

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
        else:
            login = _b64(args[1])
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        if login is None:
            await server.push(str(replies.AUTH_MALFORMED))
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: Any, login_raw: bytes,
                            password_raw: bytes) -> AuthResult:
        client = getattr(server, "client_address", "?")
        try:
            login = login_raw.decode("utf-8").strip().lower()
            password = password_raw.decode("utf-8")
        except UnicodeDecodeError:
            await server.push(str(replies.AUTH_MALFORMED))
            return AuthResult(success=False, handled=True)
        account_key, client_key = f"user:{login}", f"addr:{client}"
        if self.throttle.blocked(account_key, client_key):
            known = await self.shared.user(login)
            self._refuse(server, replies.AUTH_THROTTLED, "auth-throttled",
                         user=known.address if known is not None else None)
            # handled=False: aiosmtpd then sends `message`; by default it sends
            # nothing and the client waits for a reply that never comes.
            return AuthResult(success=False, handled=False,
                              message=str(replies.AUTH_THROTTLED))

        user = await self.shared.user(login)
        # Unknown and disabled accounts cost the same hash as real ones, so the
        # reply time does not tell which accounts exist.
        stored = user.password_hash if user is not None else self.passwords.decoy
        ok = await asyncio.to_thread(self.passwords.verify, stored, password)
        ok = ok and user is not None and not user.disabled
        if not ok:
            self.throttle.fail(account_key, client_key)
            # What was typed as a user name may be a password typed in the
            # wrong field: only a known account is named in the log and audit.
            self._refuse(server, replies.AUTH_FAILED, "auth-failed",
                         user=user.address if user is not None else None)
            await asyncio.sleep(self.settings.smtp.auth_failure_delay)
            return AuthResult(success=False, handled=False,
                              message=str(replies.AUTH_FAILED))

        assert user is not None
        self.throttle.succeed(account_key)
        server.session.beep_user = user.address
        logs.event(log, "auth", user=user.address)
        asyncio.get_running_loop().create_task(
            self._audit(user.address, "auth-ok", {}, client))
        return AuthResult(success=True, auth_data=LoginPassword(login_raw, b""),
                          message=str(replies.AUTH_OK))

    # -- envelope -----------------------------------------------------------

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        user: str | None = getattr(session, "beep_user", None)
        if not session.authenticated or user is None:
            return str(replies.AUTH_FIRST)
        try:
            sender = self._parse(address, allow_empty=True)
        except AddressError as error:
            return self._refuse(server, replies.BAD_SENDER.format(reason=error),
                                "bad-sender", user=user)
        if sender is None:
            return self._refuse(server, replies.NULL_SENDER_REFUSED, "null-sender",
                                user=user)
        if sender.key != user:
            reply = replies.NOT_YOUR_ADDRESS.format(allowed=user, address=sender.key)
            return self._refuse(server, reply, "not-your-address", user=user,
                                sender=sender.key)
        self._start_message(envelope, sender.key)
        session.beep_plain = None  # type: ignore[attr-defined]  # the first remote rcpt decides
        envelope.mail_options.extend(options)
        logs.event(log, "mail", role=self.role, user=user)
        return str(replies.SENDER_OK)

    async def _check_recipient(self, server: Any, session: Session, rcpt: Address,
                               route: Route) -> str | None:
        user = getattr(session, "beep_user", None)
        if route is Route.REFUSED:
            reply = replies.DOMAIN_NOT_APPROVED.format(domain=rcpt.domain,
                                                       address=rcpt.key)
            return self._refuse(server, reply, "domain-not-approved", rcpt=rcpt.key,
                                user=user)
        if route is Route.LOCAL:
            return await self._local_recipient(server, rcpt, user)
        return await self._peer_recipient(server, session, rcpt, user)

    async def _peer_recipient(self, server: Any, session: Session, rcpt: Address,
                              user: str | None) -> str | None:
        """Refuse now, not after DATA, a recipient we could not encrypt to."""
        table = await self.shared.domains()

        def state(engine: Any) -> str:
            with engine.connect() as connection:
                return recipient_key_state(connection, table, rcpt.key,
                                           rcpt.domain).route

        route = await self.db.run(state)
        if route == "refused":
            return self._refuse(server, replies.NO_KEY.format(address=rcpt.key),
                                "no-key", rcpt=rcpt.key, user=user)
        plain = route == "plain"
        envelope_plain = getattr(session, "beep_plain", None)
        if envelope_plain is not None and envelope_plain != plain:
            # One copy leaves for next hops: encrypted, or (for domains an
            # administrator marked encryption = none) in clear; not both.
            return self._refuse(server, replies.MIXED_PLAIN.format(address=rcpt.key),
                                "mixed-plain", rcpt=rcpt.key, user=user)
        session.beep_plain = plain  # type: ignore[attr-defined]
        return None


class InboundHandler(BaseHandler):
    """Peer gateways: mail from approved domains to our own users, nothing else."""

    role = "inbound"

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.settings.smtp.inbound.require_tls and not session.ssl:
            return str(replies.TLS_REQUIRED_INBOUND)
        try:
            sender = self._parse(address, allow_empty=True)
        except AddressError as error:
            return self._refuse(server, replies.BAD_SENDER.format(reason=error),
                                "bad-sender")
        if sender is not None:
            table = await self.shared.domains()
            if not table.is_peer(sender.domain):
                # Our own domains too: they never arrive from outside.
                reply = replies.SENDER_DOMAIN_NOT_APPROVED.format(domain=sender.domain)
                return self._refuse(server, reply, "sender-domain-not-approved",
                                    sender=sender.key)
        self._start_message(envelope, sender.key if sender else "")
        envelope.mail_options.extend(options)
        logs.event(log, "mail", role=self.role, client=server.client_address)
        return str(replies.SENDER_OK)

    async def _check_recipient(self, server: Any, session: Session, rcpt: Address,
                               route: Route) -> str | None:
        if route is not Route.LOCAL:
            reply = replies.RELAY_DENIED.format(domain=rcpt.domain)
            return self._refuse(server, reply, "relay-denied", rcpt=rcpt.key)
        return await self._local_recipient(server, rcpt, None)


def _reverse_path(envelope: Envelope) -> str:
    """MAIL FROM as stored: the empty string for the null path."""
    sender = envelope.mail_from or ""
    return "" if sender == NULL_PATH else sender


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None

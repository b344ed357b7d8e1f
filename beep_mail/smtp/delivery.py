"""Delivery workers: claim due queue rows, deliver, settle each row once.

Every delivery attempt ends, per recipient, in one of three outcomes:
delivered, temporary failure (retried with exponential backoff until the
message's lifetime runs out), or permanent failure (a DSN, RFC 3464, goes to
the sender's INBOX when the sender is one of our users; never to an outside
address, so the gateway cannot be used to send back-scatter). An error we do
not recognise is temporary.

Remote delivery (RFC 5321) uses aiosmtplib. Where the domain's policy says
`tls = "required"`, a next hop without STARTTLS or with a certificate that does
not verify is a temporary failure, never a reason to send in clear.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib

from beep_mail import keyring, logs, vault
from beep_mail.config import Settings
from beep_mail.crypto import atrest, pgpmime
from beep_mail.crypto.openpgp import OpenPGPError
from beep_mail.crypto.tls import client_context
from beep_mail.pipeline import TRANSFER_HEADER
from beep_mail.policy.routing import DomainTable
from beep_mail.smtp.dsn import FailedRecipient, build_dsn
from beep_mail.smtp.nexthop import NextHop, NextHopError, resolve
from beep_mail.smtp.reuse import Session, SessionCache, close
from beep_mail.store import accounts
from beep_mail.store import queue as queue_store
from beep_mail.store.engine import Database, StoreError
from beep_mail.store.queue import Claimed

log = logging.getLogger("beepmail.delivery")


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient in one delivery attempt."""

    kind: str  # "delivered", "temporary", "permanent"
    status: str
    reply: str
    relay: str = ""

    @classmethod
    def from_smtp(cls, code: int, message: str, relay: str) -> Outcome:
        text = " ".join(message.split())[:500]
        if 200 <= code < 300:
            return cls("delivered", "2.0.0", f"{code} {text}", relay)
        status = _enhanced(text) or ("5.0.0" if code >= 500 else "4.0.0")
        kind = "permanent" if code >= 500 else "temporary"
        return cls(kind, status, f"{code} {text}", relay)


def _enhanced(text: str) -> str | None:
    head = text.split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] in "245":
        return head
    return None


def worker_name() -> str:
    """Lease owner: host and process, so a restarted host can spot its dead ones."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


def _dead_local_owner(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # an earlier life of this pid; the caller skips our own name
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class DeliveryAgent:
    def __init__(self, db: Database, settings: Settings,
                 signers: dict[str, Any] | None = None,
                 retired: Sequence[Any] = ()) -> None:
        self.db = db
        self.settings = settings
        self.signers = signers or {}
        self.retired = list(retired)
        self.owner = worker_name()
        self.wake = asyncio.Event()
        self._stopping = False
        self._slots = asyncio.Semaphore(settings.delivery.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._domains: DomainTable | None = None
        self._sessions = SessionCache(settings.delivery.reuse_idle_time,
                                      settings.delivery.reuse_limit)
        # Told the recipient after each local delivery: IMAP IDLE wakes on it.
        self.on_local_delivery: Callable[[str], None] = lambda address: None

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        await self._recover_dead_leases()
        while not self._stopping:
            self.wake.clear()
            claimed = await self._claim()
            for group in _groups(claimed):
                await self._slots.acquire()
                task = asyncio.create_task(self._attempt(group))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) >= self.settings.delivery.concurrency:
                continue
            try:
                await asyncio.wait_for(self.wake.wait(),
                                       self.settings.delivery.poll_interval)
            except TimeoutError:
                pass

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("event=delivery-crash owner=%s error=%s", self.owner,
                      type(task.exception()).__name__, exc_info=task.exception())

    async def stop(self, grace: float) -> None:
        """Stop claiming; let attempts in flight finish within `grace` seconds."""
        self._stopping = True
        self.wake.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await self._sessions.close_all()

    async def _recover_dead_leases(self) -> None:
        try:
            owners = await self.db.run(queue_store.lease_owners)
            dead = [owner for owner in owners if owner != self.owner
                    and _dead_local_owner(owner)]
            released = await self.db.run(queue_store.release_leases_of, dead)
        except StoreError as error:
            logs.event(log, "recover-failed", logging.WARNING, reason=str(error))
            return
        if released:
            logs.event(log, "leases-recovered", rows=released, owners=len(dead))

    async def _claim(self) -> list[Claimed]:
        limit = max(1, self.settings.delivery.concurrency * 4)
        try:
            return await self.db.run(queue_store.claim, self.owner,
                                     self.settings.delivery.lease, limit)
        except StoreError as error:
            logs.event(log, "claim-failed", logging.WARNING, reason=str(error))
            return []

    # -- one attempt --------------------------------------------------------

    async def _attempt(self, rows: list[Claimed]) -> None:
        first = rows[0]
        token = logs.message_id.set(first.message_id)
        remote_copy: bytes | None = None
        try:
            remote_copy, local_copy = await self.db.run(queue_store.load_copies,
                                                        first.message_id)
            held_copy = (await self.db.run(queue_store.load_held, first.message_id)
                         if first.route == "wait-key" else None)
            if first.route == "local" and local_copy is not None:
                size = await self.db.run(queue_store.message_size, first.message_id)
                await self._deliver_local(rows, local_copy, size)
                return
            if first.route == "wait-key" and held_copy is not None:
                # Held until a key came; encrypt to it now (see protection.py).
                outcomes = await self._deliver_held(rows, held_copy)
            elif first.route in ("remote", "plain") and remote_copy is not None:
                outcomes = await self._deliver_remote(rows, remote_copy)
            else:
                outcomes = _all(rows, Outcome("permanent", "5.3.0",
                                              "message content is missing"))
            await self._settle(rows, outcomes, remote_copy or b"")
        except StoreError as error:
            # The lease runs out and the rows come back; nothing to settle now.
            logs.event(log, "attempt-failed", logging.WARNING, reason=str(error))
        except Exception as error:  # an unclassified error is temporary
            log.error("event=attempt-crash conn=- msg=%s error=%s", first.message_id,
                      type(error).__name__, exc_info=error)
            outcome = Outcome("temporary", "4.3.0",
                              f"local error: {type(error).__name__}")
            try:
                await self._settle(rows, _all(rows, outcome), remote_copy or b"")
            except Exception:  # the lease will bring the rows back
                log.exception("event=settle-failed msg=%s", first.message_id)
        finally:
            logs.message_id.reset(token)

    async def _deliver_held(self, rows: list[Claimed],
                            sealed: bytes) -> dict[int, Outcome]:
        """Encrypt a message that waited for its recipient's key, then send it."""
        domain = rows[0].mail_from.rpartition("@")[2]
        signer = self.signers.get(domain)
        if signer is None:
            return _all(rows, Outcome("temporary", "4.3.0",
                                      f"no domain key for {domain} in this process"))

        def keys(engine: Any) -> list[Any]:
            with engine.connect() as connection:
                return [keyring.peer_key(connection, row.recipient, row.domain)
                        for row in rows]

        found = await self.db.run(keys)
        if any(key is None for key in found):
            return _all(rows, Outcome("temporary", "4.7.1",
                                      "still no encryption key for this recipient"))
        try:
            plaintext = await asyncio.to_thread(self._open_held, sealed)
            wire = await asyncio.to_thread(pgpmime.protect, plaintext, found, signer)
        except (OpenPGPError, pgpmime.PGPMIMEError) as error:
            return _all(rows, Outcome("temporary", "4.7.0",
                                      f"cannot encrypt the held message: {error}"))
        return await self._deliver_remote(rows, wire)

    def _open_held(self, sealed: bytes) -> bytes:
        """Open with the domain key it was sealed to, a retired one included."""
        last: Exception | None = None
        for key in [*self.signers.values(), *self.retired]:
            try:
                return atrest.open_sealed_for(sealed, key)
            except OpenPGPError as error:
                last = error
        raise last or OpenPGPError("no domain key to open the held message")

    async def _deliver_local(self, rows: list[Claimed], content: bytes,
                             size: int | None = None) -> None:
        for row in rows:
            key = f"t:{row.transfer_id}" if row.transfer_id else f"q:{row.id}"
            try:
                done = await self.db.run(queue_store.deliver_local, row, self.owner,
                                         content, key, size)
            except queue_store.QueueError:
                outcome = Outcome("permanent", "5.1.1", "550 5.1.1 mailbox no longer exists")
                await self._settle([row], {row.id: outcome}, content)
                continue
            except StoreError as error:
                outcome = Outcome("temporary", "4.3.0", f"local store: {error}")
                await self._settle([row], {row.id: outcome}, content)
                continue
            if done:
                self.on_local_delivery(row.recipient)
                logs.event(log, "delivered", rcpt=row.recipient, relay="local",
                           dsn="2.0.0", delay=f"{time.time() - row.created_at:.3f}")

    async def _deliver_remote(self, rows: list[Claimed],
                              content: bytes) -> dict[int, Outcome]:
        domain = rows[0].domain
        table = await self._table()
        decision = table.decide(domain)
        rule = decision.rule
        if decision.route.value != "remote" or rule is None or not rule.allowed:
            # The domain was denied after the message was accepted.
            outcome = Outcome("permanent", "5.7.1",
                              f"{domain} is no longer an approved correspondent domain")
            return {row.id: outcome for row in rows}
        try:
            hops = await resolve(domain, rule.next_hop)
        except NextHopError as error:
            outcome = Outcome(error.kind, error.status, str(error))
            return {row.id: outcome for row in rows}

        last: dict[int, Outcome] = {}
        for hop in hops:
            last = await self._send(hop, rule.tls, rows, content)
            if not all(o.kind == "temporary" and o.status.startswith(("4.4.", "4.7.5"))
                       for o in last.values()):
                break  # connection and TLS failures move on to the next MX
        return last

    async def _send(self, hop: NextHop, tls_policy: str, rows: list[Claimed],
                    content: bytes) -> dict[int, Outcome]:
        relay = f"{hop.host}:{hop.port}"
        key = (hop.host, hop.port, tls_policy)
        session = await self._sessions.take(key)
        if session is None:
            opened = await self._open(hop, tls_policy, relay)
            if isinstance(opened, Outcome):
                return _all(rows, opened)
            session = Session(opened)
        kept = False
        try:
            outcomes = await self._transaction(session.client, rows, content, relay)
            kept = self._sessions.keep(key, session)
            return outcomes
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as error:
            return _all(rows, _failed(error, relay))
        finally:
            if not kept:
                await close(session.client)

    async def _open(self, hop: NextHop, tls_policy: str,
                    relay: str) -> aiosmtplib.SMTP | Outcome:
        """A new session, greeted, secured as the policy says; or why not."""
        settings = self.settings.delivery
        client = aiosmtplib.SMTP(
            hostname=hop.host, port=hop.port, timeout=settings.timeout,
            local_hostname=self.settings.site.hostname, start_tls=False,
        )
        try:
            await asyncio.wait_for(client.connect(), settings.connect_timeout)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            return Outcome("temporary", "4.4.1",
                           f"cannot connect to {relay}: {_why(error)}", relay)
        try:
            failure = await self._secure(client, hop, tls_policy, relay)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as error:
            failure = _failed(error, relay)
        if failure is None:
            return client
        await close(client)
        return failure

    async def _secure(self, client: aiosmtplib.SMTP, hop: NextHop, tls_policy: str,
                      relay: str) -> Outcome | None:
        await client.ehlo()
        offered = client.supports_extension("starttls")
        if tls_policy == "required":
            if not offered:
                return Outcome("temporary", "4.7.5",
                               f"{relay} does not offer STARTTLS, which is required",
                               relay)
            context = client_context(verify=True, ca_file=self._ca_file())
        elif offered:
            context = client_context(verify=False)
        else:
            return None
        try:
            await client.starttls(tls_context=context, server_hostname=hop.host)
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as error:
            return Outcome("temporary", "4.7.5",
                           f"TLS with {relay} failed: {_why(error)}", relay)
        return None

    def _ca_file(self) -> Path | None:
        ca = self.settings.delivery.ca_file
        return self.settings.path(ca) if ca else None

    async def _transaction(self, client: aiosmtplib.SMTP, rows: list[Claimed],
                           content: bytes, relay: str) -> dict[int, Outcome]:
        first = rows[0]
        await client.mail(first.mail_from)
        outcomes: dict[int, Outcome] = {}
        accepted: list[Claimed] = []
        for row in rows:
            try:
                await client.rcpt(row.recipient)
                accepted.append(row)
            except aiosmtplib.SMTPRecipientRefused as error:
                outcomes[row.id] = Outcome.from_smtp(error.code, error.message, relay)
        if not accepted:
            await client.rset()
            return outcomes
        stamp = f"{TRANSFER_HEADER}: {first.message_id}@{self.settings.site.hostname}\r\n"
        response = await client.data(stamp.encode("ascii") + content)
        delivered = Outcome.from_smtp(response.code, response.message, relay)
        for row in accepted:
            outcomes[row.id] = delivered
        return outcomes

    # -- settling -----------------------------------------------------------

    async def _settle(self, rows: Sequence[Claimed], outcomes: dict[int, Outcome],
                      content: bytes) -> None:
        for row in rows:
            outcome = outcomes[row.id]
            if outcome.kind == "delivered":
                await self.db.run(queue_store.mark_delivered, row, self.owner,
                                  outcome.reply)
                logs.event(log, "delivered", rcpt=row.recipient, relay=outcome.relay,
                           dsn=outcome.status, delay=f"{time.time() - row.created_at:.3f}")
                continue
            retry_at = time.time() + self._backoff(row.attempts)
            if outcome.kind == "temporary" and retry_at < row.expires_at:
                await self.db.run(queue_store.mark_deferred, row, self.owner,
                                  outcome.status, outcome.reply, retry_at)
                logs.event(log, "deferred", rcpt=row.recipient, relay=outcome.relay,
                           dsn=outcome.status, reason=outcome.reply,
                           retry_in=f"{retry_at - time.time():.0f}")
                continue
            if outcome.kind == "temporary":
                outcome = Outcome("permanent", "4.4.7",
                                  f"gave up after {row.attempts} attempts: {outcome.reply}",
                                  outcome.relay)
            await self._bounce(row, outcome, content)

    def _backoff(self, attempts: int) -> float:
        settings = self.settings.delivery
        delay: float = settings.retry_initial * (2 ** max(0, attempts - 1))
        return float(min(delay, settings.retry_max))

    async def _bounce(self, row: Claimed, outcome: Outcome, content: bytes) -> None:
        dsn = await self._dsn_for(row, outcome, content)
        await self.db.run(queue_store.mark_failed, row, self.owner, outcome.status,
                          outcome.reply, dsn)
        logs.event(log, "bounced", rcpt=row.recipient, relay=outcome.relay,
                   dsn=outcome.status, reason=outcome.reply,
                   notice="inbox" if dsn else "none")

    async def _dsn_for(self, row: Claimed, outcome: Outcome,
                       content: bytes) -> tuple[str, bytes] | None:
        """A DSN for the sender's INBOX, only if the sender is one of our users."""
        sender = row.mail_from
        if not sender or "@" not in sender:
            return None
        table = await self._table()
        if not table.is_local(sender.rpartition("@")[2]):
            return None
        user = await self.db.run(accounts.get_user, sender)
        if user is None:
            return None
        headers = content.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        site = self.settings.site
        report = build_dsn(
            reporting_mta=site.hostname, postmaster=f"postmaster@{site.domain}",
            original_sender=sender, original_message_id=_message_id(headers),
            queue_id=row.message_id,
            arrival_date=datetime.fromtimestamp(row.received_at, UTC),
            recipients=[FailedRecipient(
                address=row.recipient, status=outcome.status,
                diagnostic=f"smtp; {outcome.reply}",
                remote_mta=outcome.relay.rpartition(":")[0] or None,
            )],
            original_headers=headers,
        )
        sealed = await self.db.run(_seal_report, user.address, report)
        return user.address, sealed

    async def _table(self) -> DomainTable:
        rows = await self.db.run(accounts.list_domains)
        self._domains = DomainTable(rows)
        return self._domains


def _groups(rows: list[Claimed]) -> list[list[Claimed]]:
    """One delivery attempt per message and next-hop domain; local rows alone."""
    groups: defaultdict[tuple[str, str, str], list[Claimed]] = defaultdict(list)
    for row in rows:
        groups[(row.message_id, row.route, row.domain)].append(row)
    return list(groups.values())


def _failed(error: BaseException, relay: str) -> Outcome:
    """The outcome of a session that broke off with `error`."""
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return Outcome("temporary", "4.4.2", f"{relay} did not answer in time", relay)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return Outcome.from_smtp(error.code, error.message, relay)
    return Outcome("temporary", "4.4.2", f"connection to {relay} failed: {_why(error)}",
                   relay)


def _all(rows: Sequence[Claimed], outcome: Outcome) -> dict[int, Outcome]:
    return {row.id: outcome for row in rows}


def _why(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:200]


def _message_id(headers: bytes) -> str | None:
    for line in headers.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def _seal_report(engine: Any, address: str, report: bytes) -> bytes:
    """A DSN is stored like any other mail: sealed to its owner."""
    with engine.connect() as connection:
        return vault.seal_for_users(connection, [address], report)

"""`beepmail serve`: every listener and worker of one gateway process.

Start order: database (migrated), pipeline, delivery workers, then the
listeners, so nothing is accepted before it can be stored and delivered.
SIGTERM or SIGINT stops accepting at once, lets open sessions and delivery
attempts finish within a grace period, and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from beep_mail import keyring, logs
from beep_mail.archive import checkpoint, journal
from beep_mail.archive.journal import ArchiveError
from beep_mail.config import Settings, parse_listen
from beep_mail.crypto.openpgp import UnlockedKey
from beep_mail.crypto.passwords import Passwords
from beep_mail.crypto.tls import server_context
from beep_mail.imap.commands import Services as IMAPServices
from beep_mail.imap.hub import Hub
from beep_mail.imap.server import Limits as IMAPLimits
from beep_mail.imap.server import Listener as IMAPListener
from beep_mail.pipeline import Pipeline
from beep_mail.protection import Stage
from beep_mail.smtp.delivery import DeliveryAgent
from beep_mail.smtp.handlers import InboundHandler, SubmissionHandler
from beep_mail.smtp.server import Listener, SessionLimits
from beep_mail.smtp.throttle import Throttle
from beep_mail.store import accounts, audit
from beep_mail.store.engine import Database, StoreError
from beep_mail.store.notify import ChangeChannel, notice_key

log = logging.getLogger("beepmail.service")

STOP_GRACE = 30.0
NOTICES_READY = 5.0  # seconds start waits for the change notices to be heard


@dataclass
class Service:
    settings: Settings
    listeners: dict[str, Listener | IMAPListener] = field(default_factory=dict)
    hub: Hub = field(default_factory=Hub)
    db: Database | None = None
    delivery: DeliveryAgent | None = None
    _delivery_task: asyncio.Task[None] | None = None
    _crypto: ThreadPoolExecutor | None = None
    _checkpoint_task: asyncio.Task[None] | None = None
    _notices: ChangeChannel | None = None

    async def start(self) -> None:
        settings = self.settings
        self.db = Database(settings.database_url, settings.database.max_size_mb)
        await asyncio.to_thread(self.db.migrate)
        signers, retired = await asyncio.to_thread(self._domain_keys, self.db)
        if not self.db.sqlite:
            await self._join_peers(self.db)

        # OpenPGP work gets threads of its own, so that a large message being
        # encrypted never waits behind database calls, nor they behind it.
        self._crypto = ThreadPoolExecutor(2, thread_name_prefix="openpgp")
        stage = Stage(self.db, signers, self._crypto, retired)
        self.delivery = DeliveryAgent(self.db, settings, signers, retired)
        pipeline = Pipeline(self.db, settings, stage, on_queued=self.delivery.notify)
        if settings.delivery.enabled:
            self._delivery_task = asyncio.create_task(self.delivery.run())
        if signers:
            signer = signers[sorted(signers)[0]]
            self._checkpoint_task = asyncio.create_task(self._checkpoints(signer))

        tls = server_context(settings.path(settings.tls.cert),
                             settings.path(settings.tls.key))
        smtp = settings.smtp
        passwords = Passwords(settings.auth.argon2_time_cost,
                              settings.auth.argon2_memory_kib,
                              settings.auth.argon2_parallelism)
        throttle = Throttle(smtp.auth_max_failures, smtp.auth_failure_window)
        options = dict(
            hostname=settings.site.hostname, ident="beep-mail",
            data_size_limit=smtp.max_message_size, timeout=smtp.timeout,
            max_line_length=smtp.max_line_length, wire_trace=settings.logging.wire_trace,
            enable_SMTPUTF8=False, decode_data=False,
        )
        submission = SubmissionHandler(self.db, settings, pipeline, passwords, throttle)
        inbound = InboundHandler(self.db, settings, pipeline)
        roles = (
            ("submission", submission, smtp.submission.listen,
             dict(require_starttls=True, auth_required=True, auth_require_tls=True)),
            ("inbound", inbound, smtp.inbound.listen,
             dict(require_starttls=False, auth_required=False, auth_require_tls=True,
                  auth_exclude_mechanism=["LOGIN", "PLAIN"])),
        )
        for role, handler, listen, extra in roles:
            host, port = parse_listen(listen)
            limits = SessionLimits(smtp.max_sessions, smtp.max_sessions_per_client)
            listener = Listener(role, handler, host, port, tls_context=tls,
                                limits=limits, smtp_options={**options, **extra})
            await listener.start()
            self.listeners[role] = listener
        await self._start_imap(tls, passwords)

    async def _start_imap(self, tls: ssl.SSLContext, passwords: Passwords) -> None:
        """The IMAP listeners: STARTTLS (`imap`) and implicit TLS (`imaps`)."""
        assert self.db is not None and self.delivery is not None
        imap = self.settings.imap
        # Delivery wakes IDLE sessions of the recipient; see beep_mail.imap.hub.
        self.delivery.on_local_delivery = self.hub.notify
        throttle = Throttle(imap.auth_max_failures, imap.auth_failure_window)
        services = IMAPServices(self.db, self.settings, self.hub, passwords, throttle)
        limits = IMAPLimits(imap.max_sessions, imap.max_sessions_per_client)
        for role, listen, implicit in (("imap", imap.listen, False),
                                       ("imaps", imap.listen_tls, True)):
            host, port = parse_listen(listen)
            listener = IMAPListener(role, host, port, services=services, limits=limits,
                                    tls_context=tls, implicit_tls=implicit)
            await listener.start()
            self.listeners[role] = listener

    async def _join_peers(self, db: Database) -> None:
        """On PostgreSQL, the hub hears other gateway processes on the same
        database through LISTEN/NOTIFY, and they hear it (beep_mail.store.notify)."""
        secret = await asyncio.to_thread(keyring.site_secret, self.settings, create=True)
        notices = ChangeChannel(db.engine, notice_key(secret), on_change=self.hub.heard,
                                on_gap=self.hub.heard_all)
        self.hub.join(notices)
        notices.start()
        self._notices = notices
        # Listening before the listeners open, so that no change of another
        # process goes unheard by a session; if the database says nothing,
        # start anyway: the channel keeps trying, and logs it.
        if not await notices.ready(NOTICES_READY):
            logs.event(log, "notices-late", logging.WARNING)

    def _domain_keys(
        self, db: Database
    ) -> tuple[dict[str, UnlockedKey], list[UnlockedKey]]:
        """Unlock the key of every local domain, making one where none exists;
        and the retired ones, which still decrypt."""
        with db.engine.begin() as connection:
            local = [d.name for d in accounts.load_domains(connection)
                     if d.role == "local"]
            for domain in local:
                keyring.ensure_domain_key(connection, self.settings, domain)
        return (keyring.unlock_domain_keys(db.engine, self.settings, local),
                keyring.unlock_retired_domain_keys(db.engine, self.settings, local))

    async def _checkpoints(self, signer: UnlockedKey) -> None:
        """At intervals: sign the archive's head when it has moved, and let
        client addresses older than the privacy setting expire."""
        assert self.db is not None
        db = self.db
        # A first round soon after start, so a gateway restarted more often
        # than the interval still checkpoints and forgets old addresses.
        await asyncio.sleep(min(5.0, self.settings.archive.checkpoint_interval))
        while True:
            try:
                await db.run(_checkpoint_if_moved, signer)
            except (StoreError, ArchiveError) as error:
                logs.event(log, "checkpoint-failed", logging.WARNING, reason=str(error))
            try:
                days = self.settings.privacy.client_address_days
                await db.run(audit.expire_client_addresses, time.time() - days * 86400)
            except StoreError as error:
                logs.event(log, "expiry-failed", logging.WARNING, reason=str(error))
            await asyncio.sleep(self.settings.archive.checkpoint_interval)

    def port(self, role: str) -> int:
        return self.listeners[role].port

    async def stop(self, grace: float = STOP_GRACE) -> None:
        for listener in self.listeners.values():
            listener.stop_accepting()
        await asyncio.gather(*(listener.drain(grace)
                               for listener in self.listeners.values()))
        if self.delivery is not None:
            await self.delivery.stop(grace)
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        if self._delivery_task is not None:
            self._delivery_task.cancel()
            try:
                await self._delivery_task
            except asyncio.CancelledError:
                pass
        if self._notices is not None:
            await self._notices.stop()
        if self._crypto is not None:
            self._crypto.shutdown(wait=True)
        if self.db is not None:
            await asyncio.to_thread(self.db.close)


def _checkpoint_if_moved(engine: Engine, signer: UnlockedKey) -> None:
    last = checkpoint.latest(engine)
    with engine.connect() as connection:
        entries, head_hash = journal.head(connection)
    if last is not None and (last.entries, last.head_hash) == (entries, head_hash):
        return
    made = checkpoint.make_checkpoint(engine, signer)
    logs.event(log, "checkpoint", entries=made.entries, head=made.head_hash[:16])


async def serve(settings: Settings) -> int:
    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    _settle_heap()
    for role, listener in service.listeners.items():
        print(f"beepmail: {role} listening on {listener.host}:{listener.port}",
              flush=True)
    logs.event(log, "started", delivery=settings.delivery.enabled)
    await stop.wait()
    logs.event(log, "stopping")
    await service.stop()
    logs.event(log, "stopped")
    return 0


def _settle_heap() -> None:
    """Keep what start-up made (modules, tables, keys) out of every later
    full garbage collection.

    The process holds some 140,000 objects once started, nearly all of them
    for its whole life; a full collection walked them all, 60 to 80 ms with
    every session waiting, several times a second under load. Frozen, a full
    collection walks only what sessions made since.
    """
    gc.collect()
    gc.freeze()


def run(settings: Settings) -> int:
    logs.setup(settings.logging.level)
    return asyncio.run(serve(settings))

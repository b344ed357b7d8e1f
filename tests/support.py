"""Helpers for tests: sites, gateways in a thread or a process, scripted next hops."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP as AioSMTP
from sqlalchemy import select

from beep_mail import config, keyring, vault
from beep_mail.crypto import openpgp
from beep_mail.crypto.passwords import Passwords
from beep_mail.crypto.tls import write_self_signed
from beep_mail.service import Service
from beep_mail.store import accounts
from beep_mail.store import keys as key_store
from beep_mail.store.engine import Database
from beep_mail.store.tables import mailbox_entries

LOCAL = "ministry.gov.example"
PEER = "peer.gov.example"
PASSWORD = "correct horse battery"
FAST_HASH = Passwords(time_cost=1, memory_kib=64, parallelism=1)
RECOVERY_PASSPHRASE = "recovery passphrase kept by the records office"

_peer_keys: dict[str, openpgp.SecretKey] = {}


def peer_secret(domain: str = PEER) -> openpgp.SecretKey:
    """A correspondent's domain key, made once per test run."""
    if domain not in _peer_keys:
        _peer_keys[domain] = openpgp.generate(f"gateway of {domain}",
                                              f"postmaster@{domain}", passphrase="peer")
    return _peer_keys[domain]

_CA = trustme.CA()


def next_hop_ca(folder: Path) -> Path:
    """The CA that signed every scripted next hop's certificate."""
    path = folder / "nexthop-ca.pem"
    if not path.exists():
        _CA.cert_pem.write_to_path(str(path))
    return path


CONFIG = """\
[site]
domain = "{domain}"
hostname = "localhost"
[database]
url = "{url}"
[tls]
cert = "var/tls/cert.pem"
key = "var/tls/key.pem"
[smtp]
auth_failure_delay = 0.0
max_recipients = 5
max_message_size = 200000
max_sessions_per_client = 20
[smtp.submission]
listen = "127.0.0.1:0"
[smtp.inbound]
listen = "127.0.0.1:0"
[imap]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
auth_failure_delay = 0.0
[delivery]
poll_interval = 0.2
retry_initial = 0.2
retry_max = 0.5
lease = 30
connect_timeout = 2
timeout = 3
ca_file = "{ca}"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 64
[logging]
level = "DEBUG"
"""


@dataclass
class Site:
    root: Path
    domain: str
    config_file: Path
    url: str
    recovery: openpgp.SecretKey
    records: openpgp.SecretKey
    environ: dict[str, str] = field(default_factory=dict)

    def settings(self, **overrides: str) -> config.Settings:
        env = {**self.environ, **overrides}
        return config.load(self.config_file, env)

    def db(self) -> Database:
        return Database(self.settings().database_url)

    def add_user(self, local: str, password: str = PASSWORD) -> str:
        address = f"{local}@{self.domain}"
        stored, lock = FAST_HASH.new(password)
        secret = vault.make_user_key(self.settings(), address, local.title(), lock)
        db = self.db()
        with db.engine.begin() as connection:
            vault.create_user(connection, address, local.title(), stored, secret,
                              lock.lock)
        db.close()
        return address

    def trust(self, owner: str, key: openpgp.PublicKey) -> None:
        """Import and pin a correspondent's key, as `beepmail key import --pin` does."""
        db = self.db()
        with db.engine.begin() as connection:
            keyring.import_peer(connection, key, owner, pin=True)
        db.close()

    def domain_key(self) -> openpgp.PublicKey:
        db = self.db()
        with db.engine.connect() as connection:
            record = key_store.active_key(connection, "domain", self.domain)
        db.close()
        assert record is not None
        return keyring.public(record)

    def raw_entries(self, address: str) -> list[bytes]:
        """Mailbox entries as stored: sealed."""
        db = self.db()
        try:
            with db.engine.connect() as connection:
                user = accounts.find_user(connection, address)
                assert user is not None
                query = select(mailbox_entries.c.content).where(
                    mailbox_entries.c.user_id == user.id).order_by(mailbox_entries.c.id)
                return [bytes(row) for row in connection.execute(query).scalars()]
        finally:
            db.close()

    def inbox(self, address: str, password: str = PASSWORD) -> list[bytes]:
        """Mailbox entries as their owner reads them, opened with the password."""
        entries = self.raw_entries(address)
        if not entries:
            return []
        db = self.db()
        try:
            keys = vault.open_keys(db.engine, address, password)
        finally:
            db.close()
        return [vault.read(keys, blob) for blob in entries]

    def allow(self, domain: str, **options: Any) -> None:
        db = self.db()
        with db.engine.begin() as connection:
            accounts.put_domain(connection, domain, **options)
        db.close()

    def ssl_context(self) -> ssl.SSLContext:
        """What an officer's client trusts: this site's development certificate."""
        return ssl.create_default_context(cafile=str(self.root / "var/tls/cert.pem"))


def make_site(root: Path, url: str, domain: str = LOCAL) -> Site:
    (root / "conf").mkdir(parents=True)
    (root / "var" / "tls").mkdir(parents=True)
    ca = next_hop_ca(root)
    config_file = root / "conf" / "beepmail.toml"
    config_file.write_text(CONFIG.format(domain=domain, url=url, ca=ca))
    write_self_signed(root / "var/tls/cert.pem", root / "var/tls/key.pem", ["localhost"])
    recovery = openpgp.generate("Records office recovery key", f"recovery@{domain}",
                                passphrase=RECOVERY_PASSPHRASE)
    records = openpgp.generate("Records office key", f"records@{domain}",
                               passphrase=RECOVERY_PASSPHRASE)
    site = Site(root, domain, config_file, url, recovery, records)
    settings = site.settings()
    db = site.db()
    db.migrate()
    with db.engine.begin() as connection:
        accounts.put_domain(connection, domain, role="local", tls="opportunistic",
                            encryption="none")
        keyring.ensure_domain_key(connection, settings, domain)
        key_store.add_key(connection, kind="recovery", owner=key_store.RECOVERY_OWNER,
                          fingerprint=recovery.public.fingerprint,
                          public_key=recovery.public.armored)
        key_store.add_key(connection, kind="records", owner=key_store.RECORDS_OWNER,
                          fingerprint=records.public.fingerprint,
                          public_key=records.public.armored)
    db.close()
    return site


class GatewayThread:
    """A whole gateway (Service) on its own event loop in a thread."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        self.call(self.service.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.service.stop(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def submission(self) -> int:
        return self.service.port("submission")

    @property
    def inbound(self) -> int:
        return self.service.port("inbound")


def submit(site: Site, port: int, sender: str, rcpts: list[str], message: bytes,
           password: str = PASSWORD) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=site.ssl_context())
        client.login(sender, password)
        return client.sendmail(sender, rcpts, message)


def message(sender: str, rcpt: str, subject: str = "Hello", body: str = "Body text",
            extra: str = "") -> bytes:
    text = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test>\r\n{extra}\r\n{body}\r\n")
    return text.encode()


def wait_for(check: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    """Poll a condition that has no event to wait on (a database row)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


# -- scripted next hops -------------------------------------------------------

class ScriptedHandler:
    """Answers DATA from a script: each entry is a reply line or "hang"."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.received: list[tuple[str, list[str], bytes]] = []
        self.attempts = 0
        self.event = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if reply == "hang":
            await asyncio.sleep(3600)
        if reply.startswith("250"):
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
        self.event.set()
        return reply


class _CountedSMTP(AioSMTP):
    """aiosmtpd's server, telling its next hop when a connection comes and goes."""

    def __init__(self, hop: NextHop, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hop = hop

    def connection_made(self, transport: Any) -> None:
        if self not in self.hop.open:  # STARTTLS makes it again, over TLS
            self.hop.connections += 1
            self.hop.open.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.hop.open.discard(self)
        super().connection_lost(error)


class NextHop:
    """An SMTP server on port 0 with a certificate from the test CA.

    `connections` counts the connections it was given, `open` holds the ones
    still open, and `drop()` cuts them all, as a server that times out idle
    clients would.
    """

    def __init__(self, script: list[str], tls: bool = True) -> None:
        self.handler = ScriptedHandler(script)
        cert = _CA.issue_cert("localhost", "127.0.0.1")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.tls = tls
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.connections = 0
        self.open: set[_CountedSMTP] = set()

    def __enter__(self) -> NextHop:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> int:
        def factory() -> AioSMTP:
            return _CountedSMTP(self, self.handler, hostname="localhost",
                                tls_context=self.context if self.tls else None)
        self.server = await self.loop.create_server(factory, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def drop(self) -> None:
        """Cut every open connection without a word."""
        def cut() -> None:
            for server in list(self.open):
                if server.transport is not None:
                    server.transport.abort()
        self.loop.call_soon_threadsafe(cut)


class SilentHop:
    """Accepts TCP connections and never says a word."""

    def __init__(self) -> None:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> SilentHop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


# -- gateway processes ---------------------------------------------------------

LISTENING = re.compile(r"beepmail: (\w+) listening on ([\d.]+):(\d+)")


class GatewayProcess:
    """`beepmail serve` as a child process, for kill -9 and SIGTERM tests."""

    def __init__(self, site: Site, **env: str) -> None:
        self.site = site
        self.env = {**os.environ, **site.environ, **env}
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> GatewayProcess:
        self.log = open(self.site.root / "serve.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beep_mail", "serve", "--config",
             str(self.site.config_file)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=self.env,
        )
        assert self.proc.stdout is not None
        while len(self.ports) < 2:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("gateway exited: " + self.logs()[-2000:])
            found = LISTENING.search(line)
            if found:
                self.ports[found.group(1)] = int(found.group(3))
        return self

    def logs(self) -> str:
        return (self.site.root / "serve.log").read_text()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

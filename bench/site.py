"""Gateway sites for the bench, and `beepmail serve` as a child process.

A site is a folder with `conf/beepmail.toml`, a self-signed certificate, a
SQLite store, one local domain with its domain key, a recovery key and one
officer. Peers are added by domain, with a pinned key, so that each message
to them is policy-checked, encrypted and signed before it is queued.

Password hashing is set to its lowest cost here: each client signs in once,
before the clock starts, and ten sign-ins at once at the production cost
(64 MiB each) would otherwise be counted in the memory figure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher

from beep_mail import config, keyring, vault
from beep_mail.crypto import openpgp
from beep_mail.crypto.passwords import Passwords
from beep_mail.crypto.tls import write_self_signed
from beep_mail.store import accounts
from beep_mail.store import keys as key_store
from beep_mail.store.engine import Database

PASSWORD = "bench password 1"
RECOVERY_PASSPHRASE = "bench recovery passphrase"
LISTENING = re.compile(r"beepmail: (\w+) listening on ([\d.]+):(\d+)")
_CHEAP_HASH = Passwords(time_cost=1, memory_kib=64, parallelism=1)

CONFIG = """\
# Written by the bench (bench/site.py) for one run; removed with its folder.
[site]
domain = "{domain}"
hostname = "localhost"
[database]
url = "sqlite:///var/beepmail.db"
[tls]
cert = "var/tls/cert.pem"
key = "var/tls/key.pem"
[smtp]
# 32 clients come from one address, 127.0.0.1.
max_sessions_per_client = 100
[smtp.submission]
listen = "127.0.0.1:0"
[smtp.inbound]
listen = "127.0.0.1:0"
[delivery]
retry_initial = 1.0
retry_max = 5.0
connect_timeout = 5
timeout = 60
[auth]
argon2_time_cost = 1
argon2_memory_kib = 64
[logging]
level = "INFO"
"""

# Written only where the gateway has an IMAP server: every listener of every
# gateway the bench starts takes a free port.
IMAP_CONFIG = """\
[imap]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
"""


@dataclass
class Site:
    root: Path
    domain: str
    config_file: Path

    @property
    def cert(self) -> Path:
        return self.root / "var/tls/cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "var/tls/key.pem"

    @property
    def database(self) -> Path:
        return self.root / "var/beepmail.db"

    def settings(self) -> config.Settings:
        return config.load(self.config_file, {})

    def _db(self) -> Database:
        return Database(self.settings().database_url)

    def add_user(self, local: str) -> str:
        address = f"{local}@{self.domain}"
        stored, lock = _CHEAP_HASH.new(PASSWORD)
        secret = vault.make_user_key(self.settings(), address, local, lock)
        db = self._db()
        try:
            with db.engine.begin() as connection:
                vault.create_user(connection, address, local, stored, secret, lock.lock)
        finally:
            db.close()
        return address

    def add_peer(self, domain: str, key: openpgp.PublicKey, next_hop: str) -> None:
        """Allow a correspondent domain, encryption required, its key pinned."""
        db = self._db()
        try:
            with db.engine.begin() as connection:
                accounts.put_domain(connection, domain, next_hop=next_hop,
                                    tls="required", encryption="required")
                keyring.import_peer(connection, key, domain, pin=True)
        finally:
            db.close()

    def set_next_hop(self, domain: str, next_hop: str) -> None:
        db = self._db()
        try:
            with db.engine.begin() as connection:
                accounts.put_domain(connection, domain, next_hop=next_hop,
                                    tls="required", encryption="required")
        finally:
            db.close()

    def domain_key(self) -> openpgp.PublicKey:
        db = self._db()
        try:
            with db.engine.connect() as connection:
                record = key_store.active_key(connection, "domain", self.domain)
        finally:
            db.close()
        assert record is not None
        return keyring.public(record)


def password_hash() -> str:
    """A hash of PASSWORD at the cost the bench's users have, in the PHC form
    Dovecot reads (its ARGON2ID scheme)."""
    return PasswordHasher(time_cost=_CHEAP_HASH.time_cost,
                          memory_cost=_CHEAP_HASH.memory_kib,
                          parallelism=_CHEAP_HASH.parallelism).hash(PASSWORD)


def make_site(root: Path, domain: str) -> Site:
    (root / "conf").mkdir(parents=True)
    (root / "var" / "tls").mkdir(parents=True)
    config_file = root / "conf" / "beepmail.toml"
    text = CONFIG.format(domain=domain)
    if "imap" in config.Settings.model_fields:
        text += IMAP_CONFIG
    config_file.write_text(text)
    site = Site(root, domain, config_file)
    write_self_signed(site.cert, site.key, ["localhost"])

    recovery = openpgp.generate("Records office recovery key", f"recovery@{domain}",
                                passphrase=RECOVERY_PASSPHRASE)
    records = openpgp.generate("Records office key", f"records@{domain}",
                               passphrase=RECOVERY_PASSPHRASE)
    settings = site.settings()
    db = Database(settings.database_url)
    try:
        db.migrate()
        with db.engine.begin() as connection:
            accounts.put_domain(connection, domain, role="local",
                                tls="opportunistic", encryption="none")
            keyring.ensure_domain_key(connection, settings, domain)
            key_store.add_key(connection, kind="recovery",
                              owner=key_store.RECOVERY_OWNER,
                              fingerprint=recovery.public.fingerprint,
                              public_key=recovery.public.armored)
            if "records" in key_store.KINDS:
                # The records archive seals every accepted message to this key.
                key_store.add_key(connection, kind="records",
                                  owner=getattr(key_store, "RECORDS_OWNER", "records"),
                                  fingerprint=records.public.fingerprint,
                                  public_key=records.public.armored)
    finally:
        db.close()
    return site


@dataclass
class Gateway:
    """`python -m beep_mail serve` for a site, as a child process."""

    site: Site
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60) -> Gateway:
        with open(self.site.root / "serve.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "beep_mail", "serve", "--config",
                 str(self.site.config_file)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, **self.env},
            )
        timer = threading.Timer(timeout, self._give_up)
        timer.start()
        try:
            self._read_ports()
        finally:
            timer.cancel()
        return self

    def _read_ports(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        wanted = {"submission", "inbound"}
        if "imap" in config.Settings.model_fields:
            wanted |= {"imap", "imaps"}
        while not wanted <= self.ports.keys():
            line = self.proc.stdout.readline()
            if not line:
                tail = (self.site.root / "serve.log").read_text()[-2000:]
                raise RuntimeError(f"the gateway exited while starting:\n{tail}")
            found = LISTENING.search(line)
            if found:
                self.ports[found.group(1)] = int(found.group(3))

    def _give_up(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to our child, by its pid; SIGKILL if it does not stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process has had (VmHWM), in MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(value) for value in fields[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


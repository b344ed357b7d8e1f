"""A private Postfix instance: the relay baseline.

Nothing of the system's mail set-up is used or changed: the instance has its
own configuration folder, queue folder and data folder under the bench's
temporary folder, listens on a loopback port of its own, and relays every
message to a sink on another loopback port. It is started in the foreground
(`master -d`, after `postfix check` has made the queue folders), so the
bench knows the master's pid and stops it by that pid; the folder goes with
the rest of the bench's files.

Clients get what the gateway offers them: STARTTLS with the same
certificate, then AUTH PLAIN or LOGIN, checked by Cyrus SASL against a
sasldb file of the instance's own. The queue is Postfix's usual one: each
message is written and fsynced before the 250 reply, as the gateway's commit
is. What Postfix does not do is encryption, signing or journaling.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import children, free_port, stop_master

MAIN_CF = """\
# A private instance for the bench (bench/postfix.py); removed with its folder.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-postfix.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {root}/data/maillog
maillog_file_prefixes = {root}/data
message_size_limit = {size_limit}
# Relay every message to the sink; the same destination for all.
relay_domains = {relay_domains}
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = none
smtp_dns_support_level = disabled
default_destination_concurrency_limit = 20
# The client side: what the gateway's submission port offers.
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_auth_only = yes
{sasl}
smtpd_relay_restrictions = {restrictions}
smtpd_recipient_restrictions = {restrictions}
"""

SASL = """\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {root}/conf/sasl"""

SMTPD_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: {root}/conf/sasldb2
"""

# Only the services a relay needs; nothing is chrooted, since the instance's
# files live outside any chroot.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixUnavailable(Exception):
    """Postfix cannot run here; the message says why."""


@dataclass
class Postfix:
    root: Path
    sink_port: int
    cert: Path
    key: Path
    user: str                        # full address, as the gateway's officers sign in
    password: str
    relay_domain: str
    size_limit: int = 64 * 1024 * 1024
    auth: bool = True
    port: int = 0
    notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Postfix:
        if shutil.which("postfix") is None:
            raise PostfixUnavailable("Postfix is not installed (scripts/bench-deps.sh "
                                     "installs it when run as root)")
        if os.geteuid() != 0:
            raise PostfixUnavailable("a private Postfix instance needs root")
        self._layout()
        self.auth = self.auth and self._sasl()
        self._write_config()

        check = subprocess.run(["postfix", "-c", str(self.root / "conf"), "check"],
                               capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise PostfixUnavailable(f"postfix check failed: {self._log_tail()}")
        # The master itself, not detached (-d): its pid is our child's pid.
        master = Path(_postconf("daemon_directory")) / "master"
        self.proc = subprocess.Popen(
            [str(master), "-c", str(self.root / "conf"), "-d"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: on SIGTERM the master signals that group.
            start_new_session=True,
        )
        if not _wait_port(self.port, timeout, self.proc):
            self.stop()
            raise PostfixUnavailable(f"Postfix did not start: {self._log_tail()}")
        return self

    def _log_tail(self) -> str:
        """Postfix logs to its own file, not to its stderr."""
        log = self.root / "data/maillog"
        return log.read_text()[-600:].strip() if log.exists() else "(no log)"

    def _layout(self) -> None:
        # The daemons run as the postfix user and must reach their folders:
        # the root is a folder of its own, searchable but not listable.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        for name in ("conf", "conf/sasl", "queue", "data"):
            (self.root / name).mkdir(exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.root / "data", owner.pw_uid, owner.pw_gid)
        self.port = free_port()

    def _sasl(self) -> bool:
        """A sasldb with the officer's account; False (no AUTH) when it cannot be made."""
        if shutil.which("saslpasswd2") is None:
            self.notes.append("Postfix without AUTH: saslpasswd2 (sasl2-bin) is missing")
            return False
        local, _, realm = self.user.partition("@")
        db = self.root / "conf/sasldb2"
        made = subprocess.run(
            ["saslpasswd2", "-p", "-c", "-f", str(db), "-u", realm, local],
            input=self.password, capture_output=True, text=True, timeout=30,
            check=False,
        )
        if made.returncode != 0:
            self.notes.append(f"Postfix without AUTH: saslpasswd2 failed "
                              f"({made.stderr.strip()[:200]})")
            return False
        os.chown(db, 0, grp.getgrnam("postfix").gr_gid)
        db.chmod(0o640)
        (self.root / "conf/sasl/smtpd.conf").write_text(SMTPD_CONF.format(root=self.root))
        return True

    def _write_config(self) -> None:
        if self.auth:
            sasl = SASL.format(root=self.root)
            restrictions = "permit_sasl_authenticated, reject"
        else:
            sasl = "smtpd_sasl_auth_enable = no"
            restrictions = "permit_mynetworks, reject"
        (self.root / "conf/main.cf").write_text(MAIN_CF.format(
            root=self.root, size_limit=self.size_limit, sink_port=self.sink_port,
            relay_domains=self.relay_domain, cert=self.cert, key=self.key,
            sasl=sasl, restrictions=restrictions))
        (self.root / "conf/master.cf").write_text(MASTER_CF.format(port=self.port))

    def queued(self) -> int:
        """Messages accepted and not yet relayed (files in the queue folders)."""
        total = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.root / "queue" / name):
                total += len(files)
        return total

    def drain(self, timeout: float) -> float:
        """Wait until the relay has caught up, so that it does not slow the
        next measure; the seconds it took."""
        start = time.monotonic()
        while self.queued() and time.monotonic() - start < timeout:
            time.sleep(0.2)
        return round(time.monotonic() - start, 1)

    def pids(self) -> list[int]:
        """The master and the daemons it started, for CPU accounting."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        """SIGTERM to the master we started, by its pid: it stops its daemons."""
        stop_master(self.proc)

    def version(self) -> str | None:
        return postfix_version()


def postfix_version() -> str | None:
    if shutil.which("postconf") is None:
        return None
    return _postconf("mail_version") or None


def _postconf(name: str) -> str:
    """A built-in default of Postfix, as `postconf -d` reports it."""
    found = subprocess.run(["postconf", "-d", "-h", name],
                           capture_output=True, text=True, timeout=30, check=False)
    return found.stdout.strip()


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.settimeout(5)
                return conn.recv(100).startswith(b"220")
        except OSError:
            time.sleep(0.1)
    return False

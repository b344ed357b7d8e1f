"""A private Dovecot instance: the IMAP baseline.

Nothing of the system's mail set-up is used or changed: the instance reads
its own `dovecot.conf` (given with `-c`), keeps its sockets, state and log
under the bench's temporary folder, listens on one loopback port of its own
and serves one user from one Maildir in that folder. The master runs in the
foreground (`dovecot -F`), so the bench knows its pid and stops it by that
pid; the folder goes with the rest of the bench's files.

Clients get what the gateway's IMAPS port offers them: TLS from the first
byte with the same certificate, then LOGIN, checked against a passwd-file.
The password hash is Argon2id with the cost the bench's gateway users have
(bench/site.py), so a sign-in costs both servers the same hashing work; a
Dovecot built without Argon2id gets the strongest scheme it has, named in
the notes. Dovecot refuses to read mail as root, so its mail processes run
as `nobody`, and the Maildir belongs to that user; the other processes run
as the users the Debian package made (`dovecot`, `dovenull`).

Everything else is Dovecot's default: a login process and an imap process
per connection, its own index and cache files beside the Maildir, built on
first use.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# The same process helpers as the Postfix baseline's.
from bench.procs import children, free_port, stop_master

CONF = """\
# A private instance for the bench (bench/dovecot.py); removed with its folder.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{root}/Maildir
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {root}/conf/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/home
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
"""

# Debian's Diffie-Hellman parameters, read where the package keeps them.
DH_FILE = Path("/usr/share/dovecot/dh.pem")
MAIL_USER = "nobody"
# The schemes to fall back on, strongest first, when Argon2id is missing.
FALLBACK_SCHEMES = ("ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SSHA512")


class DovecotUnavailable(Exception):
    """Dovecot cannot run here; the message says why."""


@dataclass
class Dovecot:
    root: Path
    cert: Path
    key: Path
    user: str                        # full address, as the gateway's officers sign in
    password: str
    argon2id_hash: str               # the gateway user's hash, `$argon2id$...`
    port: int = 0
    scheme: str = "ARGON2ID"
    notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        return self.root / "Maildir"

    def prepare(self) -> Dovecot:
        """The folders, the configuration and the password file; nothing runs yet."""
        if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
            raise DovecotUnavailable("Dovecot is not installed (scripts/bench-deps.sh "
                                     "installs dovecot-imapd when run as root)")
        if os.geteuid() != 0:
            raise DovecotUnavailable("a private Dovecot instance needs root here")
        for name in ("dovecot", "dovenull", MAIL_USER):
            try:
                pwd.getpwnam(name)
            except KeyError:
                raise DovecotUnavailable(f"there is no user {name}") from None
        self._layout()
        self._passwd()
        self._write_config()
        return self

    def start(self, timeout: float = 30) -> Dovecot:
        """Start the master; call after the Maildir is filled."""
        self._own_mail()
        with open(self.root / "log/stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.root / "conf/dovecot.conf")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )
        if not _wait_greeting(self.port, timeout, self.proc, self.cert):
            self.stop()
            raise DovecotUnavailable(f"Dovecot did not start: {self._log_tail()}")
        return self

    def _layout(self) -> None:
        # The login and mail processes, not root, must reach their folders.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        closed = [str(p) for p in self.root.parents if not p.stat().st_mode & 0o001]
        if closed:
            raise DovecotUnavailable(f"{closed[0]} is closed to other users, and "
                                     "Dovecot's processes must pass through it")
        for name in ("run", "state", "log", "conf", "home",
                     "Maildir/cur", "Maildir/new", "Maildir/tmp"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    def _passwd(self) -> None:
        """One line, `user:{SCHEME}hash`, readable by the auth process only."""
        schemes = _schemes()
        if "ARGON2ID" in schemes:
            hashed = "{ARGON2ID}" + self.argon2id_hash
        else:
            self.scheme = next((s for s in FALLBACK_SCHEMES if s in schemes), "SSHA512")
            hashed = _doveadm_pw(self.scheme, self.password)
            self.notes.append(f"Dovecot: this build has no ARGON2ID; its password is "
                              f"hashed with {self.scheme}, so its sign-in costs "
                              "differ from the gateway's")
        passwd = self.root / "conf/passwd"
        passwd.write_text(f"{self.user}:{hashed}\n")
        passwd.chmod(0o600)
        # Dovecot's auth process runs as its internal user, not as root.
        internal = pwd.getpwnam("dovecot")
        os.chown(passwd, internal.pw_uid, internal.pw_gid)

    def _write_config(self) -> None:
        ssl_dh = f"ssl_dh = <{DH_FILE}" if DH_FILE.exists() else ""
        mail_group = _group_name(pwd.getpwnam(MAIL_USER).pw_gid)
        (self.root / "conf/dovecot.conf").write_text(CONF.format(
            root=self.root, cert=self.cert, key=self.key, ssl_dh=ssl_dh,
            mail_user=MAIL_USER, mail_group=mail_group, port=self.port))

    def _own_mail(self) -> None:
        owner = pwd.getpwnam(MAIL_USER)
        for name in ("home", "Maildir"):
            for folder, _, files in os.walk(self.root / name):
                os.chown(folder, owner.pw_uid, owner.pw_gid)
                for file in files:
                    os.chown(os.path.join(folder, file), owner.pw_uid, owner.pw_gid)

    def _log_tail(self) -> str:
        parts = []
        for name in ("log/dovecot.log", "log/stderr"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-600:].strip())
        return " | ".join(part for part in parts if part) or "(no log)"

    def pids(self) -> list[int]:
        """The master and the processes it started, for CPU accounting."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        """SIGTERM to the master we started, by its pid: it stops its children."""
        stop_master(self.proc)

    def version(self) -> str | None:
        return dovecot_version()


def dovecot_version() -> str | None:
    if shutil.which("dovecot") is None:
        return None
    found = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                           timeout=30, check=False)
    return found.stdout.strip() or None


def _schemes() -> set[str]:
    found = subprocess.run(["doveadm", "pw", "-l"], capture_output=True, text=True,
                           timeout=30, check=False)
    return set(found.stdout.split())


def _doveadm_pw(scheme: str, password: str) -> str:
    # The password goes on stdin (twice: doveadm asks to retype it), not argv.
    found = subprocess.run(["doveadm", "pw", "-s", scheme], input=f"{password}\n" * 2,
                           capture_output=True, text=True, timeout=60, check=False)
    if found.returncode != 0 or not found.stdout.startswith("{"):
        raise DovecotUnavailable(f"doveadm pw -s {scheme} failed: "
                                 f"{found.stderr.strip()[:200]}")
    return found.stdout.strip()


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def _wait_greeting(port: int, timeout: float, proc: subprocess.Popen[bytes],
                   cafile: Path) -> bool:
    """True once the IMAPS port greets over TLS with our certificate."""
    context = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with (socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                  context.wrap_socket(raw, server_hostname="localhost") as conn):
                conn.settimeout(5)
                return conn.recv(100).startswith(b"* OK")
        except OSError:
            time.sleep(0.1)
    return False

"""OpenPGP cost per message: beep-mail's crypto module, GnuPG, pysequoia.

The same two keys serve all three: a signer and a recipient, made by
`beep_mail.crypto.openpgp.generate` (Ed25519 with a Curve25519 subkey, the
gateway's default), imported into a temporary GNUPGHOME for gpg and parsed
by pysequoia. Each side does the same work per message: encrypt to the
recipient and sign (one binary literal packet, SEIPD, AES-256, ASCII
armour, no compression: the keys' preferences say so), then decrypt and
verify. Each output is checked once by another implementation, so that no
side is timed doing less than the others.

GnuPG is spawned once per message, as mail filters built on it do (Zeyple,
GPG-Lacre), with the keys kept without a passphrase in its keyring, as such
filters keep them; its agent stays up between messages, as it would on a
server, and is stopped at the end through its own socket (`gpgconf --kill`).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beep_mail.crypto import openpgp, pgpmime

PASSPHRASE = "bench key passphrase"


@dataclass
class Keys:
    signer: openpgp.SecretKey
    recipient: openpgp.SecretKey
    signer_unlocked: openpgp.UnlockedKey
    recipient_unlocked: openpgp.UnlockedKey


def make_keys() -> Keys:
    signer = openpgp.generate("beep-mail gateway for ministry.gov.example",
                              "postmaster@ministry.gov.example", passphrase=PASSPHRASE)
    recipient = openpgp.generate("beep-mail gateway for peer.gov.example",
                                 "postmaster@peer.gov.example", passphrase=PASSPHRASE)
    return Keys(signer, recipient, signer.unlock(PASSPHRASE),
                recipient.unlock(PASSPHRASE))


def medians_ms(steps: dict[str, tuple[Callable[[], object], int]],
               warmup: int = 3) -> dict[str, float]:
    """Median ms of each step, the steps taken in turn (one run of each, then
    the next round), so that a slow spell of the machine falls on all alike."""
    for fn, _ in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(max(runs for _, runs in steps.values())):
        for name, (fn, runs) in steps.items():
            if round_ < runs:
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(found), 3) for name, found in times.items()}


# -- beep-mail ---------------------------------------------------------------------

class Ours:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def encrypt(self, data: bytes) -> bytes:
        return openpgp.encrypt(data, [self.keys.recipient.public],
                               signer=self.keys.signer_unlocked)

    def decrypt(self, message: bytes) -> bytes:
        opened = openpgp.decrypt(message, [self.keys.recipient_unlocked],
                                 verifiers=[self.keys.signer.public])
        if opened.signature != "valid":
            raise RuntimeError(f"beep-mail: signature {opened.signature}")
        return opened.plaintext

    def protect(self, message: bytes) -> bytes:
        """The whole per-message step of the gateway: PGP/MIME around encrypt."""
        return pgpmime.protect(message, [self.keys.recipient.public],
                               self.keys.signer_unlocked)


# -- GnuPG, one process per message ------------------------------------------------------

class GnuPG:
    def __init__(self, keys: Keys) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="beepbench-gnupg-"))
        self.keys = keys
        self.base = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--quiet",
                     "--no-tty", "--pinentry-mode", "loopback", "--trust-model", "always"]
        for secret in (keys.signer, keys.recipient):
            self._gpg(["--passphrase", PASSPHRASE, "--import"],
                      secret.armored.encode())
            self._unlock(secret.public.fingerprint)

    def _unlock(self, fingerprint: str) -> None:
        """Keep the key without a passphrase, as a mail filter's keyring does.

        Locked, each spawn would derive the passphrase key again (the agent
        caches passphrases, not keys): hundreds of ms that say nothing about
        the per-message work. Answers: the old passphrase, then an empty new
        one twice.
        """
        self._gpg(["--command-fd", "0", "--passwd", fingerprint],
                  f"{PASSPHRASE}\n\n\n".encode())

    def _gpg(self, args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run([*self.base, *args], input=data, capture_output=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"gpg {args[-1]}: {done.stderr.decode()[-300:]}")
        return done

    def encrypt(self, data: bytes) -> bytes:
        return self._gpg(["--armor", "--encrypt", "--sign",
                          "-r", self.keys.recipient.public.fingerprint,
                          "-u", self.keys.signer.public.fingerprint,
                          "--output", "-"], data).stdout

    def decrypt(self, message: bytes) -> bytes:
        # gpg verifies the signature while it decrypts; --status-fd says it did.
        done = self._gpg(["--status-fd", "2", "--output", "-", "--decrypt"], message)
        if b"[GNUPG:] GOODSIG" not in done.stderr:
            raise RuntimeError("gpg --decrypt: no good signature")
        return done.stdout

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def gnupg_version() -> str | None:
    if shutil.which("gpg") is None:
        return None
    done = subprocess.run(["gpg", "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    first = done.stdout.splitlines()[0] if done.stdout else ""
    return first.rpartition(" ")[2] or None


# -- pysequoia, in process ---------------------------------------------------------------

class Sequoia:
    def __init__(self, keys: Keys, module: Any) -> None:
        self.pgp = module
        signer = module.Cert.from_bytes(keys.signer.armored.encode())
        recipient = module.Cert.from_bytes(keys.recipient.armored.encode())
        self.signer_cert = module.Cert.from_bytes(keys.signer.public.armored.encode())
        self.recipient_cert = module.Cert.from_bytes(
            keys.recipient.public.armored.encode())
        self.sign_with = signer.secrets.signer(PASSPHRASE)
        self.decrypt_with = recipient.secrets.decryptor(PASSPHRASE)

    def encrypt(self, data: bytes) -> bytes:
        return bytes(self.pgp.encrypt(data, [self.recipient_cert],
                                      signer=self.sign_with, armor=True))

    def decrypt(self, message: bytes) -> bytes:
        opened = self.pgp.decrypt(message, self.decrypt_with,
                                  store=lambda ids: [self.signer_cert])
        if not opened.valid_sigs:
            raise RuntimeError("pysequoia: no valid signature")
        return bytes(opened.bytes)


def sequoia_module() -> Any | None:
    try:
        import pysequoia
    except ImportError:
        return None
    return pysequoia


# -- the measure -----------------------------------------------------------------------

def measure(sizes: list[int], runs: int, gpg_runs: int,
            body: Callable[[int], bytes], wrap: Callable[[bytes], bytes]) -> tuple[
                list[dict[str, Any]], list[str]]:
    """One row per size: median ms of encrypt+sign, decrypt+verify, per side."""
    keys = make_keys()
    ours = Ours(keys)
    notes: list[str] = []
    gpg: GnuPG | None = None
    if shutil.which("gpg") is not None:
        gpg = GnuPG(keys)
    else:
        notes.append("GnuPG is not installed: gpg_spawn_ms is null")
    module = sequoia_module()
    sequoia = Sequoia(keys, module) if module is not None else None
    if sequoia is None:
        notes.append("pysequoia is not importable: pysequoia_ms is null")

    rows = []
    try:
        for size in sizes:
            data = body(size)
            rows.append(_row(size, data, wrap(data), runs, gpg_runs, ours, gpg,
                             sequoia))
    finally:
        if gpg is not None:
            gpg.close()
    return rows, notes


def _row(size: int, data: bytes, message: bytes, runs: int, gpg_runs: int, ours: Ours,
         gpg: GnuPG | None, sequoia: Sequoia | None) -> dict[str, Any]:
    sealed = ours.encrypt(data)
    steps: dict[str, tuple[Callable[[], object], int]] = {
        "gateway_ms": (lambda: ours.encrypt(data), runs),
        "gateway_decrypt_ms": (lambda: ours.decrypt(sealed), runs),
        "gateway_pgpmime_ms": (lambda: ours.protect(message), runs),
    }
    if gpg is not None:
        from_gpg = gpg.encrypt(data)
        _same(ours.decrypt(from_gpg), data, "gpg's message")
        _same(gpg.decrypt(sealed), data, "beep-mail's message opened by gpg")
        steps["gpg_spawn_ms"] = (lambda: gpg.encrypt(data), gpg_runs)
        steps["gpg_spawn_decrypt_ms"] = (lambda: gpg.decrypt(from_gpg), gpg_runs)
    if sequoia is not None:
        from_sequoia = sequoia.encrypt(data)
        _same(ours.decrypt(from_sequoia), data, "pysequoia's message")
        _same(sequoia.decrypt(sealed), data, "beep-mail's message opened by pysequoia")
        steps["pysequoia_ms"] = (lambda: sequoia.encrypt(data), runs)
        steps["pysequoia_decrypt_ms"] = (lambda: sequoia.decrypt(from_sequoia), runs)

    row: dict[str, Any] = {
        "size": size, "gpg_spawn_ms": None, "gpg_spawn_decrypt_ms": None,
        "pysequoia_ms": None, "pysequoia_decrypt_ms": None,
    }
    row.update(medians_ms(steps))
    row.update(runs=runs, gpg_runs=gpg_runs if gpg is not None else 0)
    return row


def _same(got: bytes, expected: bytes, what: str) -> None:
    if got != expected:
        raise RuntimeError(f"{what} did not round-trip")

"""GnuPG as the other side in interoperability tests.

`GPG(home)` runs the system's `gpg` in its own GNUPGHOME, always with
`--batch --pinentry-mode loopback` and an empty passphrase, and reads the
machine-readable status lines (`--status-fd`) that gpg writes for every
operation. Test modules create one per module (for example in a fixture built
on `tmp_path_factory`) and call `close()` at the end, which stops the gpg-agent
that gpg started for that home.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GPG_BINARY = "/usr/bin/gpg"
TIMEOUT = 120


class GPGFailed(AssertionError):
    """gpg exited with an error; the message carries its stderr and status lines."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str
    status: tuple[str, ...]  # status lines without the "[GNUPG:] " prefix

    def has(self, keyword: str) -> bool:
        return any(line.split(" ", 1)[0] == keyword for line in self.status)

    def lines(self, keyword: str) -> list[str]:
        return [line for line in self.status if line.split(" ", 1)[0] == keyword]


class GPG:
    def __init__(self, home: Path) -> None:
        self.home = home
        # gpg-agent's socket lives in the home when /run/user is absent, and a
        # Unix socket path is limited to about 100 bytes.
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)

    # -- running gpg --------------------------------------------------------

    def run(self, *args: str, input: bytes | None = None,
            stdin: IO[bytes] | None = None, check: bool = True,
            faked_time: str | None = None) -> Result:
        """Run gpg with `args`; `faked_time` is gpg's `--faked-system-time` value."""
        with tempfile.TemporaryFile() as status:
            command = [
                GPG_BINARY, "--homedir", str(self.home), "--batch", "--no-tty",
                "--pinentry-mode", "loopback", "--passphrase", "",
                "--trust-model", "always", "--status-fd", str(status.fileno()),
            ]
            if faked_time is not None:
                command += ["--faked-system-time", faked_time]
            process = subprocess.run(
                [*command, *args], input=input, stdin=stdin, capture_output=True,
                pass_fds=(status.fileno(),), timeout=TIMEOUT, check=False,
                env={**os.environ, "GNUPGHOME": str(self.home), "LC_ALL": "C"},
            )
            status.seek(0)
            lines = tuple(
                line[len("[GNUPG:] "):]
                for line in status.read().decode("utf-8", "replace").splitlines()
                if line.startswith("[GNUPG:] ")
            )
        result = Result(process.returncode, process.stdout,
                        process.stderr.decode("utf-8", "replace"), lines)
        if check and process.returncode != 0:
            raise GPGFailed(f"gpg {' '.join(args)} exited {process.returncode}:\n"
                            f"{result.stderr}\n" + "\n".join(lines))
        return result

    def close(self) -> None:
        """Stop the agent gpg started for this home."""
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, timeout=TIMEOUT, check=False)

    # -- keys ---------------------------------------------------------------

    def import_key(self, armored: str | bytes, passphrase: str = "") -> list[str]:
        """Import keys; return the fingerprints gpg reports as imported.

        `passphrase` unlocks a secret key on import.
        """
        data = armored.encode() if isinstance(armored, str) else armored
        result = self.run(f"--passphrase={passphrase}", "--import", input=data)
        return [line.split()[2] for line in result.lines("IMPORT_OK")]

    def generate(self, email: str, algo: str = "ed25519", usage: str = "default",
                 expire: str = "never", encryption: str | None = None,
                 faked_time: str | None = None) -> str:
        """Create a key with `--quick-gen-key`; return its fingerprint.

        `algo`, `usage` and `expire` are gpg's own words ("rsa3072", "sign",
        "cert", "1d", "seconds=N"...); `encryption` ("cv25519", "rsa3072")
        adds an encryption subkey.
        """
        result = self.run("--quick-gen-key", f"Test <{email}>", algo, usage, expire,
                          faked_time=faked_time)
        created = result.lines("KEY_CREATED")
        assert created, result.stderr
        fingerprint = created[-1].split()[2]
        if encryption is not None:
            self.run("--quick-add-key", fingerprint, encryption, "encr", expire,
                     faked_time=faked_time)
        return fingerprint

    def add_subkey(self, fingerprint: str, algo: str, usage: str,
                   expire: str = "never") -> None:
        self.run("--quick-add-key", fingerprint, algo, usage, expire)

    def revoke(self, fingerprint: str) -> None:
        """Import the revocation certificate gpg stored when it made the key."""
        stored = self.home / "openpgp-revocs.d" / f"{fingerprint}.rev"
        # gpg guards the stored certificate against accidental import by
        # prefixing its armour header line with a colon.
        text = re.sub(r"^:-----BEGIN", "-----BEGIN", stored.read_text(),
                      flags=re.MULTILINE)
        self.import_key(text)

    def export_public(self, fingerprint: str) -> str:
        return self.run("--armor", "--export", fingerprint).stdout.decode()

    def export_secret(self, fingerprint: str, passphrase: str = "") -> str:
        result = self.run("--armor", f"--passphrase={passphrase}",
                          "--export-secret-keys", fingerprint)
        return result.stdout.decode()

    def fingerprints(self) -> list[str]:
        listing = self.run("--with-colons", "--list-keys").stdout.decode()
        return [line.split(":")[9] for line in listing.splitlines()
                if line.startswith("fpr:")]

    # -- messages -----------------------------------------------------------

    def encrypt(self, data: bytes, recipients: Iterable[str],
                sign_with: str | None = None, armor: bool = True,
                options: Sequence[str] = (), faked_time: str | None = None) -> bytes:
        """Encrypt (and sign with `sign_with`) to `recipients`; `options` go to gpg."""
        args = ["--encrypt", *options]
        for recipient in recipients:
            args += ["--recipient", recipient]
        if sign_with is not None:
            args += ["--sign", "--local-user", sign_with]
        if armor:
            args.append("--armor")
        return self.run(*args, input=data, faked_time=faked_time).stdout

    def sign(self, data: bytes, signer: str, detached: bool = True,
             armor: bool = True, options: Sequence[str] = (),
             faked_time: str | None = None) -> bytes:
        args = ["--detach-sign" if detached else "--sign", "--local-user", signer,
                *options]
        if armor:
            args.append("--armor")
        return self.run(*args, input=data, faked_time=faked_time).stdout

    def decrypt(self, data: bytes) -> tuple[bytes, list[str]]:
        """Decrypt (and verify); return the plaintext and the status lines.

        gpg's exit code is not checked: a caller asserts on the status lines.
        """
        result = self.run("--decrypt", input=data, check=False)
        return result.stdout, list(result.status)

    def verify_detached(self, data: bytes, signature: bytes) -> list[str]:
        with tempfile.TemporaryDirectory() as folder:
            data_file, sig_file = Path(folder) / "data", Path(folder) / "data.sig"
            data_file.write_bytes(data)
            sig_file.write_bytes(signature)
            result = self.run("--verify", str(sig_file), str(data_file), check=False)
        return list(result.status)

    def list_packets(self, data: bytes) -> str:
        """gpg's description of the packets, decrypting what it can."""
        result = self.run("--list-packets", input=data, check=False)
        return result.stdout.decode("utf-8", "replace")

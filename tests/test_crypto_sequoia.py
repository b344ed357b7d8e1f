"""Interoperability with Sequoia (`sq`), a second OpenPGP implementation.

Sequoia is strict where GnuPG is lenient, so what it accepts from us, and what
we accept from it, says more than a round trip through our own code.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from beep_mail.crypto import openpgp, pgpmime

SQ = shutil.which("sq")
pytestmark = pytest.mark.skipif(SQ is None, reason="sq is not installed "
                                "(make system-deps installs it from Debian)")

URDU = "سلام، یہ ایک خفیہ پیغام ہے".encode()


def sq(*args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    assert SQ is not None
    return subprocess.run([SQ, *args], input=data, capture_output=True, timeout=60,
                          check=False)


@pytest.fixture(scope="module")
def sequoia_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A key Sequoia made itself: (secret key file, certificate file)."""
    folder = tmp_path_factory.mktemp("sq")
    secret, cert = folder / "bob.pgp", folder / "bob.cert"
    made = sq("key", "generate", "--userid", "<bob@peer.gov.example>",
              "--export", str(secret))
    assert made.returncode == 0, made.stderr
    extracted = sq("key", "extract-cert", str(secret))
    assert extracted.returncode == 0, extracted.stderr
    cert.write_bytes(extracted.stdout)
    yield secret, cert


@pytest.fixture(scope="module", params=["curve25519", "rsa3072"])
def ours(request: pytest.FixtureRequest) -> openpgp.UnlockedKey:
    secret = openpgp.generate("Gateway", "postmaster@ministry.gov.example",
                              passphrase="pass", algorithm=request.param)
    return secret.unlock("pass")


def test_sequoia_decrypts_and_verifies_ours(sequoia_key: tuple[Path, Path],
                                            ours: openpgp.UnlockedKey,
                                            tmp_path: Path) -> None:
    secret, cert = sequoia_key
    bob = openpgp.load_public(cert.read_bytes())[0]
    our_cert = tmp_path / "ours.cert"
    our_cert.write_text(ours.public.armored)

    sealed = openpgp.encrypt(URDU * 50, [bob], signer=ours)
    done = sq("decrypt", "--recipient-key", str(secret), "--signer-cert",
              str(our_cert), data=sealed)
    assert done.returncode == 0, done.stderr
    assert done.stdout == URDU * 50
    assert b"1 good signature" in done.stderr


def test_we_decrypt_and_verify_sequoias(sequoia_key: tuple[Path, Path],
                                        ours: openpgp.UnlockedKey,
                                        tmp_path: Path) -> None:
    secret, cert = sequoia_key
    bob = openpgp.load_public(cert.read_bytes())[0]
    our_cert = tmp_path / "ours.cert"
    our_cert.write_text(ours.public.armored)

    done = sq("encrypt", "--recipient-cert", str(our_cert), "--signer-key",
              str(secret), data=URDU)
    assert done.returncode == 0, done.stderr
    opened = openpgp.decrypt(done.stdout, [ours], verifiers=[bob])
    assert (opened.plaintext, opened.signature, opened.signer) == (
        URDU, "valid", bob.fingerprint)


def test_sequoia_opens_our_pgp_mime(sequoia_key: tuple[Path, Path],
                                    ours: openpgp.UnlockedKey, tmp_path: Path) -> None:
    """The wire copy a peer receives: its encrypted part opens in Sequoia."""
    import email
    from email import policy

    secret, cert = sequoia_key
    bob = openpgp.load_public(cert.read_bytes())[0]
    message = (b"From: alice@ministry.gov.example\r\nTo: bob@peer.gov.example\r\n"
               b"Subject: Budget 2027\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\n" + URDU + b"\r\n")
    wire = pgpmime.protect(message, [bob], ours)
    parsed = email.message_from_bytes(wire, policy=policy.compat32)
    armoured = parsed.get_payload()[1].get_payload(decode=True)
    our_cert = tmp_path / "ours.cert"
    our_cert.write_text(ours.public.armored)

    done = sq("decrypt", "--recipient-key", str(secret), "--signer-cert",
              str(our_cert), data=armoured)
    assert done.returncode == 0, done.stderr
    assert b"Subject: Budget 2027" in done.stdout and URDU in done.stdout
    assert b'hp="cipher"' in done.stdout

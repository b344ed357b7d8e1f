"""TLS material and contexts, exercised over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from beep_mail.crypto.tls import (
    TLSMaterialError,
    client_context,
    server_context,
    write_self_signed,
)


@pytest.fixture
def material(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, ["gw.gov.example"])
    return cert, key


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _exchange(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bytes:
    """Start an echo server on port 0, send one line through TLS, return the echo."""
    listener = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=name
        )
        writer.write(b"ping\r\n")
        echoed = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return echoed
    finally:
        listener.close()
        await listener.wait_closed()


def exchange(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bytes:
    return asyncio.run(_exchange(server, client, name))


@pytest.mark.parametrize("name", ["localhost", "gw.gov.example", "127.0.0.1"])
def test_client_trusting_the_cert_connects(
    material: tuple[Path, Path], name: str
) -> None:
    cert, key = material
    echoed = exchange(server_context(cert, key), client_context(ca_file=cert), name)
    assert echoed == b"ping\r\n"


def test_client_without_the_cert_refuses(material: tuple[Path, Path]) -> None:
    cert, key = material
    with pytest.raises(ssl.SSLCertVerificationError):
        exchange(server_context(cert, key), client_context(), "localhost")


def test_client_checks_the_host_name(material: tuple[Path, Path]) -> None:
    cert, key = material
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        exchange(
            server_context(cert, key), client_context(ca_file=cert), "other.example"
        )


def test_opportunistic_client_encrypts_without_verifying(
    material: tuple[Path, Path],
) -> None:
    cert, key = material
    client = client_context(verify=False)
    assert (
        exchange(server_context(cert, key), client, "anything.example") == b"ping\r\n"
    )


def test_certificate_passes_strict_verification(material: tuple[Path, Path]) -> None:
    # Python 3.13 turns X509_STRICT on by default; our certificates must pass it.
    cert, key = material
    client = client_context(ca_file=cert)
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    assert exchange(server_context(cert, key), client, "localhost") == b"ping\r\n"


def test_server_context_accepts_trustme_material(tmp_path: Path) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("mx.peer.gov.example")
    cert, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    client = client_context(ca_file=ca_file)
    assert exchange(server_context(cert, key), client, "mx.peer.gov.example") == (
        b"ping\r\n"
    )


def test_contexts_require_tls_1_2(material: tuple[Path, Path]) -> None:
    cert, key = material
    for context in (
        server_context(cert, key),
        client_context(),
        client_context(verify=False),
    ):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
    server = server_context(cert, key)
    assert server.options & ssl.OP_NO_RENEGOTIATION


def test_client_verifies_by_default() -> None:
    context = client_context()
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    lax = client_context(verify=False)
    assert not lax.check_hostname
    assert lax.verify_mode == ssl.CERT_NONE


def test_verify_off_with_ca_file_is_a_mistake(material: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        client_context(verify=False, ca_file=material[0])


def test_key_file_is_private(material: tuple[Path, Path]) -> None:
    cert, key = material
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in key.read_bytes()
    assert b"PRIVATE KEY" not in cert.read_bytes()


def test_key_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        write_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["h.example"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_names_in_the_certificate(tmp_path: Path) -> None:
    cert_path = tmp_path / "c.pem"
    write_self_signed(
        cert_path,
        tmp_path / "k.pem",
        ["GW.gov.example.", "10.1.2.3", "b\u00fccher.example"],
    )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "gw.gov.example",
        "xn--bcher-kva.example",
        "localhost",
    ]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
    ]


def test_validity_follows_days(tmp_path: Path) -> None:
    cert_path = tmp_path / "c.pem"
    write_self_signed(cert_path, tmp_path / "k.pem", [], days=30)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    with pytest.raises(ValueError):
        write_self_signed(tmp_path / "c2.pem", tmp_path / "k2.pem", [], days=0)


@pytest.mark.parametrize("existing", ["cert", "key"])
def test_overwrite_is_refused(tmp_path: Path, existing: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    target = cert if existing == "cert" else key
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        write_self_signed(cert, key, ["h.example"])
    assert target.read_bytes() == b"keep me"
    assert not (key if existing == "cert" else cert).exists()


def test_symlink_at_key_path_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    key = tmp_path / "key.pem"
    key.symlink_to(elsewhere)  # dangling: following it would create the file
    with pytest.raises(FileExistsError):
        write_self_signed(tmp_path / "cert.pem", key, ["h.example"])
    assert not elsewhere.exists()


def test_unusable_material_names_the_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, ["a.example"])
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other-key.pem"
    write_self_signed(other_cert, other_key, ["b.example"])
    with pytest.raises(TLSMaterialError, match=r"cert\.pem"):
        server_context(cert, other_key)
    with pytest.raises(TLSMaterialError, match=r"missing\.pem"):
        server_context(tmp_path / "missing.pem", key)
    with pytest.raises(TLSMaterialError, match=r"missing\.pem"):
        client_context(ca_file=tmp_path / "missing.pem")

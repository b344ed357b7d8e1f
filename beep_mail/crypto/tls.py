"""TLS for the listeners and for delivery to the next hop.

Contexts follow the recommendations of RFC 9325 (BCP 195): TLS 1.2 (RFC 5246)
or 1.3 (RFC 8446) only, no TLS-level compression, no client-initiated
renegotiation, and the cipher suites Python and OpenSSL choose by default.
Clients check the server's name against its certificate as RFC 9525 describes.
The same contexts serve SMTP STARTTLS (RFC 3207), implicit TLS for submission
and IMAP (RFC 8314), and IMAP STARTTLS (RFC 9051).

Delivery may also run without verification: RFC 7435 calls this opportunistic
security, where an encrypted connection to an unauthenticated peer still beats
plaintext. It is a policy the caller chooses per domain, never a fallback
taken after a verification error.

`write_self_signed` makes development certificates (X.509, RFC 5280); a real
deployment installs certificates from its own authority.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CLOCK_SKEW = datetime.timedelta(minutes=5)
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_ALWAYS = ("localhost", "127.0.0.1")

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class TLSMaterialError(Exception):
    """A certificate or key file cannot be used; the message names the files."""


def write_self_signed(
    cert_path: Path, key_path: Path, hostnames: Sequence[str], *, days: int = 825
) -> None:
    """Write a self-signed ECDSA P-256 certificate and its private key as PEM.

    The certificate names every host in `hostnames` (a host that is an IP
    address becomes an IP entry) plus localhost and 127.0.0.1, so a gateway
    in development answers to its own name and to the loopback address.

    The key file is created with mode 0600 in the same call that creates it,
    so it is never readable by others, not even for an instant. Existing files
    are never overwritten (FileExistsError): a key replaced by mistake would
    cut off every peer that pinned the old certificate.
    """
    if days < 1:
        raise ValueError("a certificate must be valid for at least one day")
    for path in (cert_path, key_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; it is not overwritten")

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, _names(hostnames), days)

    _create(key_path, _KEY_MODE, _key_pem(key))
    try:
        _create(cert_path, _CERT_MODE, cert.public_bytes(serialization.Encoding.PEM))
    except BaseException:
        key_path.unlink()  # a key without its certificate would block a retry
        raise


def _names(hostnames: Sequence[str]) -> list[str]:
    """Return the certificate's names, in order, without duplicates."""
    names: list[str] = []
    for name in [*hostnames, *_ALWAYS]:
        name = name.strip().rstrip(".").lower()
        if not name:
            raise ValueError("a host name must not be empty")
        if name not in names:
            names.append(name)
    return names


def _alt_name(name: str) -> x509.GeneralName:
    """Make a subject alternative name: an IP entry for an address, else DNS."""
    try:
        address: _IP = ipaddress.ip_address(name)
    except ValueError:
        # Certificates carry A-labels (RFC 5891): "xn--..." for non-ASCII names.
        return x509.DNSName(name.encode("idna").decode("ascii"))
    return x509.IPAddress(address)


def _certificate(
    key: ec.EllipticCurvePrivateKey, names: Sequence[str], days: int
) -> x509.Certificate:
    """Build and sign the certificate with its own key."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in _extensions(names, public):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def _extensions(
    names: Sequence[str], public: ec.EllipticCurvePublicKey
) -> list[tuple[x509.ExtensionType, bool]]:
    """List the extensions that strict verifiers (OpenSSL's X509_STRICT) expect."""
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return [
        (x509.SubjectAlternativeName([_alt_name(name) for name in names]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (x509.ExtendedKeyUsage(purposes), False),
        (x509.SubjectKeyIdentifier.from_public_key(public), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False),
    ]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialize the key as unencrypted PKCS #8: the file mode protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create(path: Path, mode: int, content: bytes) -> None:
    """Create a new file with its final mode; fail if anything is at the path.

    O_EXCL also refuses a symbolic link planted at the path, so the key cannot
    be written through it to a place an attacker chose.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)  # the umask may only have narrowed it
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Return the context for the SMTP and IMAP listeners.

    Raises TLSMaterialError when the files are missing or do not belong
    together, so `beepmail serve` can say which file to fix.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME: compression leaks secrets
    context.options |= ssl.OP_NO_RENEGOTIATION  # renegotiation is a cheap DoS
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certfile=cert_path, keyfile=key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(
            f"cannot use certificate {cert_path} with key {key_path}: {exc}"
        ) from exc
    return context


def client_context(
    *, verify: bool = True, ca_file: Path | None = None
) -> ssl.SSLContext:
    """Return the context for delivery to the next hop.

    With `verify` (the default) the next hop must present a certificate that a
    trusted authority issued for the name we connect to: the system's
    authorities, plus those in `ca_file` when given. `verify=False` is the
    opportunistic policy; combining it with `ca_file` is refused as a mistake,
    since the authorities would silently be ignored.
    """
    if not verify and ca_file is not None:
        raise ValueError("ca_file has no effect when verification is off")

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if ca_file is not None:
        _trust(context, ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _trust(context: ssl.SSLContext, ca_file: Path) -> None:
    """Add the authorities of a PEM file to the context's trust store."""
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(
            f"cannot read authorities from {ca_file}: {exc}"
        ) from exc

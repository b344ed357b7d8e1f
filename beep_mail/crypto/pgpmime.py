"""PGP/MIME: build what leaves the gateway, open what arrives.

Standards followed: RFC 3156 (MIME security with OpenPGP), RFC 9788 (header
protection), RFC 2045 and 2046 (MIME), RFC 5322 (the message format).

Outbound, `protect` uses the combined form of RFC 3156 section 6.2: one OpenPGP
message both signs and encrypts the Cryptographic Payload. The payload is the
original message's body entity, byte for byte, under a copy of the original
header fields; its Content-Type gains hp="cipher" and, as RFC 9788 asks, one
HP-Outer field records each non-trace field of the outer header. Our Header
Confidentiality Policy is stricter than RFC 9788's default, hcp_baseline (which
leaves every field but Subject, Comments and Keywords outside):

- outside, as written: From, To, Cc, Date, Message-ID, In-Reply-To, References
  (what routing, threading and a reader without our key need);
- outside, and never copied in: Received and Return-Path, the trace fields that
  MTAs add anyway and that say nothing the envelope does not;
- outside, replaced: Subject, always "[...]", also when there was none, so the
  wire copy does not tell a message without a subject from one with;
- nowhere: Bcc (one encrypted copy goes to every recipient, so an inner Bcc
  would show the blind copies to all of them), HP-Outer fields arriving from
  the client, and the gateway's verification field;
- inside only: everything else.

A field that cannot leave in 7-bit form as written (UTF-8 display names) is
rewritten with encoded words (RFC 2047); an address that is not ASCII cannot
be, and the message is refused.

Inbound, `unprotect` accepts the combined form and the nested form of RFC 3156
section 6.1 (multipart/signed inside the encryption; the detached signature
covers the first part's exact bytes). The result is built from the decrypted
entity alone plus a few outer fields, so no unencrypted part from outside can
sit next to decrypted content (the "direct exfiltration" attacks of EFAIL,
2018). Where the payload carries an hp parameter, its header fields are the
message's and the outer ones are ignored but for trace fields, and Date and
Message-ID when missing inside, as RFC 9788 has it. Without hp (legacy
PGP/MIME, what GnuPG users and older clients send), outer header fields are
taken unless the payload has a field of the same name, the outer Content-*
fields never, and an outer Subject that is only a placeholder ("[...]", "...")
is dropped. A Legacy Display Element (RFC 9788) is left as it arrives: the
officer's client shows it as a short text part.

A nested-form signature that does not verify is reported as "bad" whatever
the reason: openpgp.verify_detached says only which verifier signed, so an
unknown or unusable signing key cannot be told apart there.

Only the gateway writes VERIFICATION_HEADER: every copy, in any case and any
folding, is removed from the outer and the inner header before ours is added.
Errors name what is wrong in fixed sentences, never with message content.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from email.message import Message
from email.policy import SMTP
from email.utils import getaddresses

from beep_mail.crypto import openpgp
from beep_mail.crypto.openpgp import PublicKey, UnlockedKey
from beep_mail.policy.address import AddressError, normalise_domain
from beep_mail.smtp.content import ContentError, check_structure

PROTECTED_SUBJECT = "[...]"
VERIFICATION_HEADER = "X-Beepmail-Verification"  # written by the gateway only

_ENCRYPTED_TYPE = "multipart/encrypted"
_PGP_ENCRYPTED = "application/pgp-encrypted"
_PGP_SIGNATURE = "application/pgp-signature"

# Header Confidentiality Policy, by lower-case field name (see the docstring).
_OUTER_KEPT = frozenset(
    {"from", "to", "cc", "date", "message-id", "in-reply-to", "references"}
)
_TRACE = frozenset({"received", "return-path"})
_NEVER_KEPT = frozenset({"hp-outer", VERIFICATION_HEADER.lower()})
_NOWHERE = _NEVER_KEPT | {"bcc"}
# Outer fields an hp-protected payload takes when it lacks them.
_OUTER_IF_MISSING = ("date", "message-id")
# Placeholders that clients put in the outer Subject of legacy PGP/MIME.
_PLACEHOLDERS = frozenset({PROTECTED_SUBJECT, "...", "\u2026", "encrypted message"})

_MAX_LINE = 998  # octets before CRLF, RFC 5322 section 2.1.1
_FIELD_START = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_HP_PARAMETER = re.compile(
    rb";[ \t\r\n]*hp[ \t\r\n]*=[ \t\r\n]*(?:\"[^\"]*\"|[^;\s]*)", re.IGNORECASE
)
_LINE_END = re.compile(rb"\r?\n")
# What may follow a boundary on its delimiter line (RFC 2046 section 5.1.1).
_DELIMITER_END = re.compile(rb"(--)?[ \t]*(?:\r?\n|\r?\Z)")
_VERSION_LINE = re.compile(rb"^[ \t]*Version[ \t]*:[ \t]*1[ \t]*\r?$", re.MULTILINE)

_PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 3156 and RFC 9788).\r\n"


class PGPMIMEError(Exception):
    """A message cannot be protected or opened; str() is safe to log and show."""


class NotEncrypted(PGPMIMEError):
    """The message is not PGP/MIME encrypted at its top level."""


@dataclass(frozen=True)
class Unprotected:
    """An inbound message after decryption and verification."""

    message: bytes  # what the officer sees: our verification field on top, CRLF
    signature: str  # valid / missing / bad / unknown-key / invalid-key
    signer: str | None  # fingerprint of the valid signer
    header_protected: bool  # the payload carried hp (RFC 9788): its fields won
    sender_matches: bool | None = None  # From's domain is the sender's; None: unchecked


# --- header fields, read without reformatting -----------------------------------


@dataclass(frozen=True)
class _Field:
    """One header field as written: its name and every line, each ending CRLF."""

    name: str
    raw: bytes

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> bytes:
        """The value as written, folding included, without the final CRLF."""
        return self.raw[len(self.name) + 1 :].removesuffix(b"\r\n")

    def text(self) -> str:
        """The unfolded value as text; bytes that are not UTF-8 are replaced."""
        unfolded = _LINE_END.sub(b"", self.value).strip()
        return unfolded.decode("utf-8", "replace")


def _split_entity(data: bytes) -> tuple[list[_Field], bytes]:
    """Split an entity into its header fields and its body (see `_split_at`)."""
    fields, start = _split_at(data)
    return fields, data[start:]


def _split_at(data: bytes) -> tuple[list[_Field], int]:
    """Split an entity into its header fields and where its body starts.

    The header ends at the first empty line, or, as the stdlib parser reads it,
    at the first line that is neither a field nor a continuation; that line then
    starts the body. A field name followed by white space before its colon (the
    obsolete syntax of RFC 5322 section 4.5) is a field, written back without
    the space, so that no reader can see a field that we did not. A leading mbox
    "From " line is dropped.
    """
    fields: list[tuple[str, list[bytes]]] = []  # lines joined once, at the end
    position = _next_line(data, 0) if data.startswith(b"From ") else 0
    start = len(data)
    while position < len(data):
        end = _next_line(data, position)
        line = data[position:end]
        if line in (b"\r\n", b"\n"):
            start = end
            break
        if line[:1] in (b" ", b"\t"):
            if fields:  # a continuation before any field is skipped, as stdlib does
                fields[-1][1].append(line)
            position = end
            continue
        match = _FIELD_START.match(line)
        if match is None:
            start = position
            break
        name = match.group(1)
        fields.append((name.decode("ascii"), [name + b":" + line[match.end() :]]))
        position = end
    return [_Field(name, b"".join(lines)) for name, lines in fields], start


def _next_line(data: bytes, position: int) -> int:
    """Return where the line after the one holding `position` starts."""
    end = data.find(b"\n", position)
    return len(data) if end < 0 else end + 1


def _ending(raw: bytes) -> bytes:
    """Make sure a field's last line ends with CRLF."""
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def _canonical(data: bytes) -> bytes:
    """Turn bare LF line ends into CRLF, the canonical form of RFC 3156 section 3.

    Mail from the SMTP layer is already CRLF and passes unchanged, byte for byte.
    """
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _LINE_END.sub(b"\r\n", data)


def _first(fields: Iterable[_Field], key: str) -> _Field | None:
    return next((field for field in fields if field.key == key), None)


def _content_type(fields: Sequence[_Field]) -> Message:
    """Read the Content-Type field with the stdlib, for its type and parameters.

    Only our own reading of the header decides which field that is, so the
    stdlib and this module cannot disagree about it.
    """
    fields_of_type = [field for field in fields if field.key == "content-type"]
    if len(fields_of_type) > 1:
        raise PGPMIMEError("A MIME entity of the message has two Content-Type fields.")
    holder = Message()
    if fields_of_type:
        holder["Content-Type"] = fields_of_type[0].text()
    return holder


def _parameter(holder: Message, name: str) -> str:
    """Return a Content-Type parameter in lower case, or "" when absent."""
    value = holder.get_param(name, header="content-type")
    return value.strip().lower() if isinstance(value, str) else ""


def _boundary(holder: Message) -> bytes:
    boundary = holder.get_boundary()
    if not boundary or not boundary.isascii() or "\r" in boundary or "\n" in boundary:
        raise PGPMIMEError("A multipart of the message has no usable boundary.")
    return boundary.encode("ascii")


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """Cut a multipart body into its parts, exactly as written (RFC 2046 5.1.1).

    The CRLF before a delimiter line belongs to the delimiter, so each part ends
    where its own last line ends: for multipart/signed this is exactly the data
    the signature covers. Preamble and epilogue are dropped.
    """
    parts: list[bytes] = []
    start: int | None = None
    for line, closing, after in _delimiter_lines(body, b"--" + boundary):
        if start is not None:
            end = line
            if end - start >= 2 and body[end - 2 : end] == b"\r\n":
                end -= 2
            parts.append(body[start:end])
        if closing:
            return parts
        start = after
    raise PGPMIMEError("A multipart of the message is not closed by its boundary.")


def _delimiter_lines(body: bytes, marker: bytes) -> Iterator[tuple[int, bool, int]]:
    """Yield each delimiter line: where it starts, whether it closes, what follows.

    bytes.find looks for the literal, in C: a 20 MB armour costs no Python loop.
    """
    search = 0
    while True:
        if search == 0 and body.startswith(marker):
            line = 0
        else:
            found = body.find(b"\n" + marker, search)
            if found < 0:
                return
            line = found + 1
        match = _DELIMITER_END.match(body, line + len(marker))
        if match is not None:
            yield line, bool(match.group(1)), match.end()
        search = line + len(marker)


def _decoded_body(fields: Sequence[_Field], body: bytes) -> bytes:
    """Undo a part's Content-Transfer-Encoding."""
    encoding = _first(fields, "content-transfer-encoding")
    name = encoding.text().lower() if encoding else "7bit"
    try:
        if name == "base64":
            return base64.b64decode(b"".join(body.split()))
        if name == "quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError) as error:
        raise PGPMIMEError("A part of the message has a broken encoding.") from error
    if name in ("7bit", "8bit", "binary"):
        return body
    raise PGPMIMEError("A part of the message has an unknown transfer encoding.")


# --- outbound --------------------------------------------------------------------


def protect(
    message: bytes, recipients: Sequence[PublicKey], signer: UnlockedKey
) -> bytes:
    """Sign and encrypt `message` as PGP/MIME with RFC 9788 header protection.

    Returns the message to send: CRLF line ends, 7-bit, no line over 998 octets.
    Raises PGPMIMEError when the message cannot be protected (a recipient key is
    unusable, an address cannot be written in ASCII).
    """
    if not recipients:
        raise PGPMIMEError("A protected message needs at least one recipient key.")
    canonical = _canonical(message)
    fields, start = _split_at(canonical)
    _content_type(fields)  # refuses two Content-Type fields

    trace = [field.raw for field in fields if field.key in _TRACE]
    outer = _outer_fields(fields)
    # A large message is copied as few times as it can be: the body goes into
    # the payload straight from the message, the armour comes with CRLF.
    payload = _payload(fields, memoryview(canonical)[start:], outer)
    del canonical

    try:
        armored = openpgp.encrypt(payload, recipients, signer=signer, armor=True,
                                  newline=b"\r\n")
    except openpgp.OpenPGPError as error:
        raise PGPMIMEError(str(error)) from error
    del payload
    return _render_encrypted(trace + outer, armored)


def _outer_fields(fields: Sequence[_Field]) -> list[bytes]:
    """The non-trace fields of the outer header, Subject replaced (see the module)."""
    subject = b"Subject: " + PROTECTED_SUBJECT.encode("ascii") + b"\r\n"
    outer: list[bytes] = []
    for field in fields:
        if field.key == "subject" and subject not in outer:
            outer.append(subject)
        elif field.key in _OUTER_KEPT:
            outer.append(_seven_bit(field))
    if subject not in outer:
        outer.append(subject)
    return outer


def _seven_bit(field: _Field) -> bytes:
    """Return a field as it may appear outside: ASCII, no line over 998 octets."""
    raw = _ending(field.raw)
    lines = raw.split(b"\r\n")
    if raw.isascii() and all(len(line) <= _MAX_LINE for line in lines):
        return raw

    try:
        text = _LINE_END.sub(b"", field.value).strip().decode("utf-8")
        header = SMTP.header_factory(field.name, text)
    except (UnicodeDecodeError, ValueError) as error:
        raise _unwritable(field) from error
    if isinstance(header, AddressHeader) and not all(
        address.addr_spec.isascii() for address in header.addresses
    ):
        raise _unwritable(field)

    folded = str(header.fold(policy=SMTP)).encode("utf-8")
    if not folded.isascii() or any(
        len(line) > _MAX_LINE for line in folded.split(b"\r\n")
    ):
        raise _unwritable(field)
    return folded


def _unwritable(field: _Field) -> PGPMIMEError:
    # The field name comes from our own parse: printable ASCII, safe to show.
    return PGPMIMEError(
        f"The {field.name} field of the message cannot be written in ASCII for the "
        "unencrypted header; addresses outside ASCII are not supported."
    )


def _payload(fields: Sequence[_Field], body: bytes | memoryview,
             outer: Sequence[bytes]) -> bytes:
    """Build the Cryptographic Payload: original fields, hp="cipher", HP-Outer."""
    header: list[bytes] = []
    for field in fields:
        if field.key in _TRACE or field.key in _NOWHERE:
            continue
        if field.key == "content-type":
            header.append(_with_hp(field))
        else:
            header.append(_ending(field.raw))
    if _first(fields, "content-type") is None:
        # The RFC 2045 default, said out loud so that it can carry hp.
        header.append(b'Content-Type: text/plain; charset="us-ascii"; hp="cipher"\r\n')

    header.extend(b"HP-Outer: " + raw for raw in outer)
    return b"".join([*header, b"\r\n", body])


def _with_hp(field: _Field) -> bytes:
    """Add hp="cipher" to a Content-Type field, replacing any hp already there."""
    value = _HP_PARAMETER.sub(b"", field.value).rstrip()
    value = value.removesuffix(b";").rstrip()
    return field.name.encode("ascii") + b":" + value + b';\r\n hp="cipher"\r\n'


def _render_encrypted(header: Sequence[bytes], armored: bytes) -> bytes:
    """Write the multipart/encrypted message of RFC 3156 section 4.

    `armored` ends its lines, the last one included, with CRLF.
    """
    # "=_" never occurs in base64, so no armour line can look like a delimiter.
    boundary = b"=_beepmail_" + secrets.token_hex(16).encode("ascii")
    delimiter = b"--" + boundary + b"\r\n"
    return b"".join(
        [
            *header,
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
            b'\r\n boundary="' + boundary + b'"\r\n',
            b"\r\n",
            _PREAMBLE,
            delimiter,
            b"Content-Type: application/pgp-encrypted\r\n",
            b"Content-Description: PGP/MIME version identification\r\n",
            b"\r\n",
            b"Version: 1\r\n",
            b"\r\n",
            delimiter,
            b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n',
            b"Content-Description: OpenPGP encrypted message\r\n",
            b'Content-Disposition: inline; filename="encrypted.asc"\r\n',
            b"\r\n",
            armored,
            b"--" + boundary + b"--\r\n",
        ]
    )


# --- inbound ---------------------------------------------------------------------


def is_encrypted(message: bytes) -> bool:
    """Tell whether the top level is multipart/encrypted for OpenPGP (RFC 3156)."""
    fields, _ = _split_entity(message)
    try:
        holder = _content_type(fields)
    except PGPMIMEError:
        return False
    return (
        holder.get_content_type() == _ENCRYPTED_TYPE
        and _parameter(holder, "protocol") == _PGP_ENCRYPTED
    )


def unprotect(
    message: bytes,
    keys: Sequence[UnlockedKey],
    verifiers: Sequence[PublicKey],
    *,
    max_size: int = 64 * 1024 * 1024,
    sender: str = "",
) -> Unprotected:
    """Decrypt and verify a PGP/MIME message, and rebuild it for the officer.

    `keys` may decrypt it; `verifiers` are the keys pinned for the sender.
    `sender` (the envelope sender, optional) is compared by domain with the
    resulting From field: a valid signature by a peer's key vouches for that
    peer's domain only. Raises NotEncrypted when the top level is not PGP/MIME
    encrypted, PGPMIMEError when it cannot be opened.
    """
    outer, body = _split_entity(_canonical(message))
    armored = _encrypted_data(outer, body)
    decrypted = _decrypt(armored, keys, verifiers, max_size)

    plaintext = _canonical(decrypted.plaintext)
    try:
        check_structure(plaintext)
    except ContentError as error:
        raise PGPMIMEError(error.reason) from error
    payload, signature, signer = _open_signed(plaintext, decrypted, verifiers)

    fields, content = _split_entity(payload)
    protected = _parameter(_content_type(fields), "hp") in ("cipher", "clear")
    header = _headers(outer, fields) if protected else _legacy_headers(outer, fields)
    matches = _sender_matches(header, sender)

    verification = _verification(signature, signer, protected, matches)
    return Unprotected(
        message=verification + b"".join(header) + b"\r\n" + content,
        signature=signature,
        signer=signer,
        header_protected=protected,
        sender_matches=matches,
    )


def _encrypted_data(fields: Sequence[_Field], body: bytes) -> bytes:
    """Return the OpenPGP message of a well-formed multipart/encrypted, or refuse."""
    holder = _content_type(fields)
    if holder.get_content_type() != _ENCRYPTED_TYPE:
        raise NotEncrypted("The message is not PGP/MIME encrypted.")
    if _parameter(holder, "protocol") != _PGP_ENCRYPTED:
        raise NotEncrypted("The message is encrypted, but not with OpenPGP.")

    parts = _split_multipart(body, _boundary(holder))
    if len(parts) != 2:
        raise PGPMIMEError("A PGP/MIME encrypted message must have exactly two parts.")
    control_fields, control = _split_entity(parts[0])
    data_fields, data = _split_entity(parts[1])

    if _content_type(control_fields).get_content_type() != _PGP_ENCRYPTED:
        raise PGPMIMEError(
            "The first part of the message is not application/pgp-encrypted."
        )
    if not _VERSION_LINE.search(_decoded_body(control_fields, control)):
        raise PGPMIMEError("The message uses an unsupported PGP/MIME version.")
    if _content_type(data_fields).get_content_type() != "application/octet-stream":
        raise PGPMIMEError(
            "The second part of the message is not application/octet-stream."
        )
    return _decoded_body(data_fields, data)


def _decrypt(
    data: bytes,
    keys: Sequence[UnlockedKey],
    verifiers: Sequence[PublicKey],
    max_size: int,
) -> openpgp.Decrypted:
    try:
        return openpgp.decrypt(data, keys, verifiers=verifiers, max_size=max_size)
    except openpgp.OpenPGPError as error:
        raise PGPMIMEError(str(error)) from error


def _open_signed(
    plaintext: bytes, decrypted: openpgp.Decrypted, verifiers: Sequence[PublicKey]
) -> tuple[bytes, str, str | None]:
    """Unwrap a multipart/signed inside the encryption (RFC 3156 section 6.1).

    Returns the payload and the combined signature result: a bad signature on
    either layer makes the result bad; otherwise a valid one on either makes it
    valid; otherwise the detached signature's result stands.
    """
    fields, body = _split_entity(plaintext)
    holder = _content_type(fields)
    if (
        holder.get_content_type() != "multipart/signed"
        or _parameter(holder, "protocol") != _PGP_SIGNATURE
    ):
        return plaintext, decrypted.signature, decrypted.signer

    parts = _split_multipart(body, _boundary(holder))
    if len(parts) != 2:
        raise PGPMIMEError("A PGP/MIME signed part must have exactly two parts.")
    signature_fields, signature_body = _split_entity(parts[1])
    if _content_type(signature_fields).get_content_type() != _PGP_SIGNATURE:
        raise PGPMIMEError("The second part of a signed part is not a signature.")
    signature_data = _decoded_body(signature_fields, signature_body)

    detached, signer = _verify_detached(parts[0], signature_data, verifiers)
    if "bad" in (decrypted.signature, detached):
        return parts[0], "bad", None
    if detached == "valid":
        return parts[0], detached, signer
    if decrypted.signature == "valid":
        return parts[0], decrypted.signature, decrypted.signer
    return parts[0], detached, None


def _verify_detached(
    data: bytes, signature: bytes, verifiers: Sequence[PublicKey]
) -> tuple[str, str | None]:
    """Check a detached signature; return its result and the valid signer."""
    try:
        signer = openpgp.verify_detached(data, signature, verifiers)
    except openpgp.OpenPGPError:
        return "bad", None
    if signer is not None:
        return "valid", signer
    return "bad", None


def _headers(outer: Sequence[_Field], inner: Sequence[_Field]) -> list[bytes]:
    """Header of a header-protected payload: inner fields, outer trace fields."""
    kept = _without_ours(inner)
    names = {field.key for field in kept}
    header = [_ending(field.raw) for field in outer if field.key in _TRACE]
    for key in _OUTER_IF_MISSING:
        field = _first(outer, key)
        if field is not None and key not in names:
            header.append(_ending(field.raw))
    header.extend(_ending(field.raw) for field in kept)
    return _with_mime_version(header, names)


def _legacy_headers(outer: Sequence[_Field], inner: Sequence[_Field]) -> list[bytes]:
    """Header of a payload without hp: outer fields, unless the payload has them.

    Outer Content-* fields and MIME-Version describe the encryption, not the
    content, and a placeholder Subject is no subject at all.
    """
    kept = _without_ours(inner)
    names = {field.key for field in kept}
    header: list[bytes] = []
    for field in _without_ours(outer):
        if field.key in names or _structural(field):
            continue
        if field.key == "subject" and field.text().lower() in _PLACEHOLDERS:
            continue
        header.append(_ending(field.raw))
    header.extend(_ending(field.raw) for field in kept)
    return _with_mime_version(header, names)


def _without_ours(fields: Iterable[_Field]) -> list[_Field]:
    """Drop the verification field (a forgery) and HP-Outer (ours to read only)."""
    return [field for field in fields if field.key not in _NEVER_KEPT]


def _structural(field: _Field) -> bool:
    return field.key.startswith("content-") or field.key == "mime-version"


def _with_mime_version(header: list[bytes], names: set[str]) -> list[bytes]:
    if "mime-version" not in names:
        header.append(b"MIME-Version: 1.0\r\n")
    return header


def _sender_matches(header: Sequence[bytes], sender: str) -> bool | None:
    """Compare the domain of the From address with the sender's; None: no sender."""
    if not sender:
        return None
    fields, _ = _split_entity(b"".join(header) + b"\r\n")
    from_fields = [field for field in fields if field.key == "from"]
    if len(from_fields) != 1:
        return False
    addresses = getaddresses([from_fields[0].text()])
    if len(addresses) != 1:
        return False
    domain = _domain(addresses[0][1])
    return domain is not None and domain == _domain(sender)


def _domain(address: str) -> str | None:
    _, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return None
    try:
        return normalise_domain(domain)
    except AddressError:
        return None


def _verification(
    signature: str, signer: str | None, protected: bool, matches: bool | None
) -> bytes:
    """Our one verification field: stable key=value pairs, never content."""
    sender = {None: "unchecked", True: "match", False: "mismatch"}[matches]
    value = (
        f"signature={signature}; signer={signer or 'none'}; encrypted=yes; "
        f"headers={'protected' if protected else 'unprotected'}; sender={sender}"
    )
    return f"{VERIFICATION_HEADER}: {value}\r\n".encode("ascii")

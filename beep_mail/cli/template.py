"""The settings file that `beepmail init` writes, rendered from the settings model.

Each key is written with its default and the description declared beside it in
`beep_mail.config`, so the file cannot drift from the code. Keys declared
without a description get theirs from FIELD_NOTES below; a test checks that no
key is left without one. `conf/beepmail.example.toml` is this template rendered
for ministry.gov.example; regenerate it with `python -m beep_mail.cli.template`.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from beep_mail.config import Settings

EXAMPLE_DOMAIN = "ministry.gov.example"
EXAMPLE_HOSTNAME = "localhost"

# Fields of Settings that record where the file was; they are not settings.
NOT_SETTINGS = frozenset({"source", "base_dir"})

_WIDTH = 80

_HEADER = """\
beep-mail settings for {domain}.

Every setting is listed with what it does. Any of them can be overridden from
the environment as BEEPMAIL_<SECTION>__<KEY>, for example
BEEPMAIL_SMTP__SUBMISSION__LISTEN=0.0.0.0:587. Relative paths are read against
the site folder: the folder that holds conf/.
"""

SECTION_NOTES: dict[str, str] = {
    "site": "Who this gateway is.",
    "database": "Where users, mailboxes, the queue and the audit trail are kept.",
    "tls": (
        "The certificate every SMTP and IMAP listener offers. `beepmail init` "
        "writes a self-signed one for testing; install one from your authority "
        "before use."
    ),
    "smtp": "Limits shared by both SMTP listeners.",
    "smtp.submission": "Where officers' mail clients send from.",
    "smtp.inbound": "Where peer gateways deliver to.",
    "imap": (
        "Where officers' mail clients read their mail: IMAP with STARTTLS on "
        "`listen`, implicit TLS on `listen_tls`. Sign-in works only once the "
        "connection is encrypted."
    ),
    "delivery": "The workers that hand queued mail to next hops and mailboxes.",
    "auth": (
        "Password hashing with Argon2id. Each hash records its own costs, so "
        "raising them later keeps existing passwords valid."
    ),
    "keys": (
        "OpenPGP keys the gateway makes: a domain key per local domain (signs "
        "outbound mail, decrypts inbound) and a key per user (mail at rest)."
    ),
    "archive": (
        "The records archive: every accepted message, encrypted to the records "
        "key, chained and checkpointed; kept for its retention period."
    ),
    "privacy": "How long personal data that delivery no longer needs is kept.",
    "logging": "What the gateway logs. Message content and passwords never are.",
}

# Descriptions for settings declared without one in beep_mail.config.
FIELD_NOTES: dict[str, str] = {
    "auth.argon2_time_cost": "Passes over memory per hash.",
    "auth.argon2_memory_kib": "Memory per hash, KiB (65536 = 64 MiB).",
    "auth.argon2_parallelism": "Lanes per hash.",
    "logging.level": "DEBUG, INFO, WARNING or ERROR.",
}

# A second sentence that helps with filling the value in.
EXTRA_NOTES: dict[str, str] = {
    "smtp.max_message_size": "The largest message accepted; 26214400 is 25 MiB.",
    "smtp.submission.listen": "HOST:PORT; 0.0.0.0:587 serves every interface.",
    "smtp.inbound.listen": "HOST:PORT; 0.0.0.0:25 serves every interface.",
    "imap.listen": "HOST:PORT; 0.0.0.0:143 serves every interface.",
    "imap.listen_tls": "HOST:PORT; 0.0.0.0:993 serves every interface.",
    "delivery.ca_file": "Unset: only the system's authorities are trusted.",
}

# Settings without a default value are written commented out, with an example.
EXAMPLES: dict[str, str] = {
    "delivery.ca_file": '"conf/peers-ca.pem"',
}


def render(domain: str, hostname: str) -> str:
    """The whole settings file for one site."""
    values: dict[str, Any] = {"site.domain": domain, "site.hostname": hostname}
    lines = [_comment(_HEADER.format(domain=domain))]
    for name, section in _sections(Settings):
        lines.append("")
        lines.append(_comment(SECTION_NOTES[name]))
        lines.append(f"[{name}]")
        for key, note, value in _keys(section, name, values):
            lines.append(_comment(note))
            if value is None:
                lines.append(f"# {key} = {EXAMPLES[f'{name}.{key}']}")
            else:
                lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _sections(
    model: type[BaseModel], prefix: str = ""
) -> list[tuple[str, type[BaseModel]]]:
    """Every table of the file, a parent before its children."""
    found: list[tuple[str, type[BaseModel]]] = []
    for key, field in model.model_fields.items():
        if key in NOT_SETTINGS or not isinstance(field.default, BaseModel):
            continue
        name = f"{prefix}{key}"
        section = type(field.default)
        found.append((name, section))
        found.extend(_sections(section, name + "."))
    return found


def _keys(
    section: type[BaseModel], name: str, values: dict[str, Any]
) -> list[tuple[str, str, str | None]]:
    """(key, note, TOML value or None when unset) for the section's own keys."""
    keys: list[tuple[str, str, str | None]] = []
    for key, field in section.model_fields.items():
        if isinstance(field.default, BaseModel):
            continue
        path = f"{name}.{key}"
        note = field.description or FIELD_NOTES[path]
        if path in EXTRA_NOTES:
            note = f"{note} {EXTRA_NOTES[path]}"
        value = values.get(path, field.get_default(call_default_factory=True))
        keys.append((key, note, None if value is None else toml_value(value)))
    return keys


def toml_value(value: object) -> str:
    """One value in TOML syntax: booleans, numbers, and strings (paths too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | PurePath):
        # A JSON string is a valid TOML basic string: same quotes and escapes.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, dict):
        # An inline table; keys are quoted since they hold ':' and '*'.
        items = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                          for k, v in value.items())
        return "{" + (f" {items} " if items else "") + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _comment(text: str) -> str:
    """Text as comment lines, wrapped, keeping its paragraphs."""
    lines: list[str] = []
    for paragraph in text.strip().split("\n\n"):
        if lines:
            lines.append("#")
        wrapped = textwrap.wrap(
            " ".join(paragraph.split()), _WIDTH - 2, break_on_hyphens=False
        )
        lines.extend(f"# {line}" for line in wrapped)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render(EXAMPLE_DOMAIN, EXAMPLE_HOSTNAME))

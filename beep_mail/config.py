"""Settings of a beep-mail site, from `conf/beepmail.toml` and the environment.

Each setting is declared once below, with its default and its meaning. The file
is TOML; any key can be overridden from the environment as
`BEEPMAIL_<SECTION>__<KEY>` (upper case, nested sections joined by `__`), for
example `BEEPMAIL_SMTP__SUBMISSION__LISTEN=0.0.0.0:587`.

Relative paths are read against the site folder: the folder that holds `conf/`
when the file lives in a folder named `conf`, otherwise the file's own folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "BEEPMAIL_"
ENV_CONFIG = "BEEPMAIL_CONFIG"
# Variables of ours that are not settings.
_NOT_SETTINGS = {ENV_CONFIG}
_NOT_SETTINGS_PREFIXES = ("BEEPMAIL_TEST_",)


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, for example 127.0.0.1:2587")
    return value


class SiteSettings(_Section):
    domain: str = Field("localhost", description="The mail domain this gateway serves.")
    hostname: str = Field(
        "localhost", description="Name announced in greetings and Received lines."
    )


class DatabaseSettings(_Section):
    url: str = Field(
        "sqlite:///var/beepmail.db",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://...",
    )
    max_size_mb: int = Field(
        0, ge=0, description="SQLite only: refuse new mail (452 4.3.1) when the "
        "database file would grow past this many MiB; 0 means no limit.",
    )


class TLSSettings(_Section):
    cert: Path = Field(Path("var/tls/cert.pem"), description="PEM certificate chain.")
    key: Path = Field(Path("var/tls/key.pem"), description="PEM private key (mode 0600).")


class ListenerSettings(_Section):
    listen: str = "127.0.0.1:0"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)


class SubmissionSettings(ListenerSettings):
    listen: str = Field("127.0.0.1:2587", description="STARTTLS, then AUTH.")


class InboundSettings(ListenerSettings):
    listen: str = Field("127.0.0.1:2525", description="The MX role, for peer gateways.")
    require_tls: bool = Field(
        False, description="Refuse MAIL FROM from peers that did not STARTTLS."
    )


class SMTPSettings(_Section):
    submission: SubmissionSettings = SubmissionSettings()
    inbound: InboundSettings = InboundSettings()
    max_message_size: int = Field(25 * 1024 * 1024, gt=0, description="Bytes (SIZE).")
    max_recipients: int = Field(100, gt=0, description="RCPT commands per message.")
    max_line_length: int = Field(
        1000, ge=100, description="Octets per line including CRLF (RFC 5321: 1000)."
    )
    max_sessions: int = Field(
        500, gt=0, description="Sessions at once on each listener, all clients."
    )
    max_sessions_per_client: int = Field(
        20, gt=0, description="Sessions at once from one client address."
    )
    max_mime_depth: int = Field(50, gt=0, description="Nesting levels of multiparts.")
    accepting_bytes: int = Field(
        32 * 1024 * 1024, gt=0,
        description="Octets of messages checked, encrypted and committed at once; "
        "others wait their turn (one larger message goes alone).",
    )
    timeout: float = Field(300.0, gt=0, description="Seconds of client silence.")
    auth_max_failures: int = Field(
        5, gt=0, description="Failed AUTHs before an account or address is throttled."
    )
    auth_failure_window: float = Field(
        900.0, gt=0, description="Seconds over which AUTH failures are counted."
    )
    auth_failure_delay: float = Field(
        1.0, ge=0, description="Seconds every failed AUTH waits before its reply."
    )


class IMAPSettings(_Section):
    listen: str = Field(
        "127.0.0.1:1143", description="STARTTLS, then LOGIN or AUTHENTICATE PLAIN."
    )
    listen_tls: str = Field("127.0.0.1:1993", description="Implicit TLS (IMAPS).")
    max_sessions: int = Field(
        500, gt=0, description="Sessions at once over both IMAP listeners, all clients."
    )
    max_sessions_per_client: int = Field(
        20, gt=0, description="Sessions at once from one client address."
    )
    max_sessions_per_user: int = Field(
        10, gt=0, description="Signed-in sessions at once of one user, IDLE included."
    )
    idle_timeout: float = Field(
        1800.0, gt=0, description="Seconds of client silence, IDLE included, before "
        "the server says BYE (RFC 3501 asks for at least 30 minutes).",
    )
    max_literal: int = Field(
        0, ge=0, description="Bytes: the largest message APPEND takes; 0 means "
        "smtp.max_message_size.",
    )
    auth_max_failures: int = Field(
        5, gt=0, description="Failed sign-ins before an account or address is throttled."
    )
    auth_failure_window: float = Field(
        900.0, gt=0, description="Seconds over which sign-in failures are counted."
    )
    auth_failure_delay: float = Field(
        1.0, ge=0, description="Seconds every failed sign-in waits before its reply."
    )

    @field_validator("listen", "listen_tls")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)


class DeliverySettings(_Section):
    enabled: bool = Field(True, description="Run delivery workers in this process.")
    concurrency: int = Field(8, gt=0, description="Delivery attempts at once.")
    poll_interval: float = Field(
        5.0, gt=0, description="Seconds between queue scans when nothing wakes us."
    )
    lease: float = Field(
        300.0, gt=0, description="Seconds a claimed queue row stays ours."
    )
    retry_initial: float = Field(60.0, ge=0, description="First retry delay, seconds.")
    retry_max: float = Field(3600.0, ge=0, description="Longest retry delay, seconds.")
    lifetime: float = Field(
        5 * 24 * 3600.0, gt=0, description="Seconds before an undelivered message bounces."
    )
    connect_timeout: float = Field(30.0, gt=0, description="Seconds to connect.")
    reuse_idle_time: float = Field(
        2.0, ge=0, description="Seconds a session to a next hop waits, idle, for the "
        "next message to it (0: one session per delivery)."
    )
    reuse_limit: int = Field(
        100, gt=0, description="Messages one session to a next hop carries at most."
    )
    timeout: float = Field(120.0, gt=0, description="Seconds per SMTP command.")
    ca_file: Path | None = Field(
        None, description="Extra CA certificates trusted for next hops (private PKI)."
    )


class AuthSettings(_Section):
    argon2_time_cost: int = Field(3, gt=0)
    argon2_memory_kib: int = Field(64 * 1024, ge=8)
    argon2_parallelism: int = Field(1, gt=0)


class KeysSettings(_Section):
    algorithm: Literal["curve25519", "rsa3072"] = Field(
        "curve25519", description="Algorithm of new domain and user keys."
    )
    expires_days: int = Field(
        730, ge=0, description="Days new domain keys are valid; 0 for no expiry. "
        "User keys do not expire: renewing one would need its owner's password.",
    )
    site_secret: Path = Field(
        Path("var/keys/site.secret"),
        description="File (mode 0600) whose secret locks the domain keys in the store.",
    )


_DIRECTIONS = ("inbound", "outbound", "local", "*")


class ArchiveSettings(_Section):
    retention_days: int = Field(
        3650, gt=0, description="Days an archive entry is kept when no rule matches."
    )
    retention: dict[str, int] = Field(
        default_factory=dict,
        description='Days by "DOMAIN:DIRECTION" ("*" for any part), for example '
        '{"peer.gov.example:inbound" = 7300}; the most specific rule wins.',
    )
    checkpoint_interval: float = Field(
        3600.0, gt=0, description="Seconds between signed checkpoints of the archive."
    )

    @field_validator("retention")
    @classmethod
    def _retention(cls, rules: dict[str, int]) -> dict[str, int]:
        normalised: dict[str, int] = {}
        for key, days in rules.items():
            domain, sep, direction = key.strip().lower().rpartition(":")
            if not sep or not domain or direction not in _DIRECTIONS:
                raise ValueError(f'"{key}": a rule is "DOMAIN:DIRECTION", the '
                                 "direction one of inbound, outbound, local or *")
            if domain != "*" and "*" in domain:
                raise ValueError(f'"{key}": the domain is "*" or one exact name')
            if days <= 0:
                raise ValueError(f'"{key}": days must be more than 0')
            normalised[f"{domain}:{direction}"] = days
        return normalised


class PrivacySettings(_Section):
    client_address_days: int = Field(
        30, ge=0, description="Days client IP addresses are kept in the queue and "
        "audit records, counted from when they were written; checked every "
        "archive.checkpoint_interval while the gateway runs.",
    )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    wire_trace: bool = Field(
        False, description="Log every SMTP reply at DEBUG (never message content)."
    )


class Settings(_Section):
    site: SiteSettings = SiteSettings()
    database: DatabaseSettings = DatabaseSettings()
    tls: TLSSettings = TLSSettings()
    smtp: SMTPSettings = SMTPSettings()
    imap: IMAPSettings = IMAPSettings()
    delivery: DeliverySettings = DeliverySettings()
    auth: AuthSettings = AuthSettings()
    keys: KeysSettings = KeysSettings()
    archive: ArchiveSettings = ArchiveSettings()
    privacy: PrivacySettings = PrivacySettings()
    logging: LoggingSettings = LoggingSettings()

    # Not settings: where the file was, to resolve relative paths.
    source: Path | None = None
    base_dir: Path = Path(".")

    def path(self, value: Path) -> Path:
        """An absolute path for a path setting."""
        return value if value.is_absolute() else self.base_dir / value

    @property
    def imap_max_literal(self) -> int:
        """The APPEND limit in bytes, imap.max_literal resolved."""
        return self.imap.max_literal or self.smtp.max_message_size

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute."""
        prefix = "sqlite:///"
        url = self.database.url
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.path(Path(rest)))
        return url


def base_dir_for(config_file: Path) -> Path:
    folder = config_file.resolve().parent
    return folder.parent if folder.name == "conf" else folder


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        if name.startswith(_NOT_SETTINGS_PREFIXES):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        node = overrides
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    return f"{origin}: {key}: {message}"


def config_path(explicit: Path | None, environ: dict[str, str] | None = None) -> Path:
    """The file named by --config, else by BEEPMAIL_CONFIG, else ./conf/beepmail.toml."""
    environ = dict(os.environ) if environ is None else environ
    if explicit is not None:
        return explicit
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return Path("conf/beepmail.toml")


def load(path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge with the environment, and validate; ConfigError names the key."""
    environ = dict(os.environ) if environ is None else environ
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    for reserved in ("source", "base_dir"):
        if reserved in data:
            raise ConfigError(f"{path}: {reserved}: unknown setting")

    overrides = _env_overrides(environ)
    try:
        Settings.model_validate(overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error, "environment BEEPMAIL_*")) from None

    merged = _merge(data, overrides)
    merged["source"] = path.resolve()
    merged["base_dir"] = base_dir_for(path)
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, str(path))) from None


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)

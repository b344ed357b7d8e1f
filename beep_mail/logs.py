"""Log lines as events with stable keys, each naming its connection and message.

A short connection id is set at accept and a message id at MAIL FROM, both in
ContextVars, so every line written while serving that client carries them
without passing them around. Values are quoted when they contain spaces; no
line ever carries a message body, a subject or a password.
"""

from __future__ import annotations

import logging
import secrets
import sys
from contextvars import ContextVar

connection_id: ContextVar[str] = ContextVar("connection_id", default="-")
message_id: ContextVar[str] = ContextVar("message_id", default="-")


def new_connection_id() -> str:
    return secrets.token_hex(4)


def _value(value: object) -> str:
    text = str(value)
    # Keep one event on one line whatever a peer put in its reply.
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if not text or any(ch in text for ch in ' "='):
        text = '"' + text.replace('"', '\\"') + '"'
    return text


def event(logger: logging.Logger, name: str, level: int = logging.INFO,
          **fields: object) -> None:
    """Log `event=name conn=... msg=... key=value ...` at the given level."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}", f"conn={connection_id.get()}"]
    msg = fields.pop("msg", None) or message_id.get()
    parts.append(f"msg={msg}")
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
    logger.log(level, " ".join(parts))


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs peers and, at DEBUG, raw lines: ours say it better.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)

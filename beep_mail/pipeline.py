"""The path every accepted message takes: check, decide, protect, commit durably.

    check -> stamp (Received) -> OpenPGP stage -> one transaction: message + rows

The OpenPGP stage (`beep_mail.protection`) has this fixed place: it rewrites
the body, so nothing that inspects the body runs after it. When `accept`
returns, the message and its queue rows are committed; only then may the
caller answer 250.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from sqlalchemy import Engine

from beep_mail import logs
from beep_mail.archive import journal
from beep_mail.budget import ByteBudget
from beep_mail.config import Settings
from beep_mail.crypto.openpgp import PublicKey
from beep_mail.policy.routing import DomainTable
from beep_mail.protection import Protected, Stage
from beep_mail.smtp.content import check_line_endings, check_structure
from beep_mail.store import accounts, audit
from beep_mail.store import queue as queue_store
from beep_mail.store.engine import Database

log = logging.getLogger("beepmail.pipeline")

TRANSFER_HEADER = "X-Beepmail-Transfer-Id"
_TRANSFER = re.compile(
    rb"^" + TRANSFER_HEADER.encode() + rb":[ \t]*([A-Za-z0-9.@_-]{1,200})[ \t]*\r?$",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class Incoming:
    """A message as the SMTP side received it, envelope already decided."""

    role: str                      # "submission" or "inbound"
    mail_from: str
    recipients: Sequence[queue_store.NewRecipient]
    content: bytes
    helo: str = ""
    client_addr: str | None = None
    auth_user: str | None = None
    tls: str | None = None         # the TLS version, when the session had TLS
    queue_id: str = field(default_factory=queue_store.new_message_id)

    @property
    def direction(self) -> str:
        if self.role == "inbound":
            return "inbound"
        if all(rcpt.route == "local" for rcpt in self.recipients):
            return "local"
        return "outbound"


class Pipeline:
    def __init__(self, db: Database, settings: Settings, stage: Stage,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.stage = stage
        self.on_queued = on_queued or (lambda: None)
        self.budget = ByteBudget(settings.smtp.accepting_bytes)

    async def accept(self, incoming: Incoming) -> str:
        """Check and durably queue the message; return its queue id.

        Raises ContentError for a malformed message, protection.Refused when
        the OpenPGP policy refuses it, and StoreError when the store cannot
        take it; in every case nothing was committed. Waits first while
        other messages hold the budget of octets being accepted.
        """
        async with self.budget.hold(len(incoming.content)):
            return await self._accept(incoming)

    async def _accept(self, incoming: Incoming) -> str:
        check_line_endings(incoming.content)
        info = check_structure(incoming.content,
                               max_depth=self.settings.smtp.max_mime_depth)
        transfer_id = self._transfer_id(incoming)
        content = self._received(incoming) + incoming.content
        table = DomainTable(await self.db.run(accounts.list_domains))

        if incoming.role == "inbound":
            protected = await self.stage.inbound(content, incoming.mail_from,
                                                 incoming.recipients, table)
            recipients = list(incoming.recipients)
        else:
            sender_domain = incoming.mail_from.rpartition("@")[2]
            protected, recipients = await self.stage.outbound(
                content, sender_domain, incoming.recipients, table)

        # The records archive gets the message as written or as received after
        # decryption, sealed to the records key before the transaction.
        records_key = await self.db.run(_records_key)
        sealed = await self.stage._cpu(journal.seal, protected.plaintext, records_key)
        await self.db.run(self._commit, incoming, recipients, protected, len(content),
                          info.message_id, transfer_id, sealed)
        logs.event(log, "queued", msg=incoming.queue_id, direction=incoming.direction,
                   size=len(content), nrcpt=len(recipients),
                   held=len(protected.held), verification=protected.verification or "-")
        self.on_queued()
        return incoming.queue_id

    def _commit(self, engine: object, incoming: Incoming,
                recipients: Sequence[queue_store.NewRecipient], protected: Protected,
                size: int, message_id_header: str | None,
                transfer_id: str | None, sealed: journal.Sealed) -> None:
        at = time.time()
        # Retention follows the correspondents: where the mail went, or for
        # inbound mail where it came from.
        if incoming.role == "inbound":
            domains = [incoming.mail_from.rpartition("@")[2] or "*"]
        else:
            domains = sorted({r.domain for r in recipients})
        with self.db.engine.begin() as connection:
            journal.append(
                connection, sealed, direction=incoming.direction,
                queue_id=incoming.queue_id, mail_from=incoming.mail_from,
                recipients=[r.address for r in recipients],
                message_id_header=message_id_header, decision=_decision(protected,
                                                                       recipients),
                retain_until=journal.retain_until(self.settings, incoming.direction,
                                                  domains, at),
                at=at,
            )
            queue_store.accept(
                connection, message_id=incoming.queue_id,
                direction=incoming.direction, mail_from=incoming.mail_from,
                content=protected.content, local_content=protected.local_content,
                held_content=protected.held_content,
                recipients=recipients, held=protected.held, size=size,
                lifetime=self.settings.delivery.lifetime,
                message_id_header=(message_id_header or "")[:998] or None,
                transfer_id=transfer_id, auth_user=incoming.auth_user,
                client_addr=incoming.client_addr,
            )
            if protected.quarantined:
                # A policy decision like a refusal, audited with the message
                # it kept, in the same transaction.
                audit.record(connection, "smtp",
                             "smtp.quarantined", incoming.mail_from,
                             {"reason": protected.quarantined,
                              "sender": incoming.mail_from, "role": incoming.role,
                              "queue_id": incoming.queue_id,
                              "rcpts": [r.address for r in recipients]},
                             incoming.client_addr)

    def _transfer_id(self, incoming: Incoming) -> str | None:
        """The sending gateway's id for this transfer, to drop a repeated one.

        Honoured only on the inbound role: a peer that delivered, crashed
        before recording it, and delivered again sends the same id twice.
        """
        if incoming.role != "inbound":
            return None
        head = incoming.content.split(b"\r\n\r\n", 1)[0]
        found = _TRANSFER.search(head)
        return found.group(1).decode("ascii") if found else None

    def _received(self, incoming: Incoming) -> bytes:
        """Our trace line (RFC 5321 4.4).

        For submissions it names neither the officer's address nor the
        client's IP: peers need the path between gateways, not who sat where.
        """
        when = format_datetime(datetime.now(UTC))
        host = self.settings.site.hostname
        helo = _printable(incoming.helo)[:100] or "unknown"
        if incoming.role == "submission":
            via = "ESMTPSA" if incoming.tls else "ESMTPA"
            line = f"Received: by {host} with {via} id {incoming.queue_id}; {when}"
        else:
            via = "ESMTPS" if incoming.tls else "ESMTP"
            line = (f"Received: from {helo} ([{incoming.client_addr}])\r\n"
                    f"\tby {host} with {via} id {incoming.queue_id}; {when}")
        return line.encode("ascii", "replace") + b"\r\n"


def _records_key(engine: object) -> PublicKey:
    assert isinstance(engine, Engine)
    with engine.connect() as connection:
        return journal.records_key(connection)


def _decision(protected: Protected, recipients: Sequence[queue_store.NewRecipient]) -> str:
    """The policy decision, in words a records clerk can search for."""
    routes = sorted({r.route for r in recipients})
    parts = [f"routes={','.join(routes)}"]
    if protected.verification:
        parts.append(protected.verification)
    if protected.held:
        parts.append(f"held={len(protected.held)}")
    return "; ".join(parts)


def _printable(text: str) -> str:
    return "".join(ch for ch in text if 33 <= ord(ch) < 127)

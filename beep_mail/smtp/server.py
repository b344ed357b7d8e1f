"""The SMTP protocol object and its listener (RFC 5321, RFC 3207, RFC 4954, RFC 2034).

aiosmtpd does the protocol; this subclass adds what a gateway needs around it:
a connection id on every log line, limits on sessions overall and per client
address (421 4.7.0), enhanced status codes on every reply (one exit: `push`),
and a graceful stop that lets sessions finish.

aiosmtpd ends DATA only at CRLF.CRLF and discards what a client pipelined
behind STARTTLS, which closes the SMTP-smuggling and CVE-2011-0411 classes at
the protocol layer; the content checks in `beep_mail.smtp.content` refuse what
remains (bare CR, bare LF, NUL).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from beep_mail import logs
from beep_mail.limits import Refusal, SessionCounter
from beep_mail.smtp import replies

log = logging.getLogger("beepmail.smtp")


class SessionLimits(SessionCounter):
    """The sessions of one SMTP listener, and the reply for one too many."""

    def __init__(self, total: int, per_client: int) -> None:
        super().__init__(total, per_client)
        self.sessions: set[GatewaySMTP] = set()

    def admit(self, address: str) -> replies.Reply | None:
        refusal = self.enter(address)
        if refusal is Refusal.OVERALL:
            return replies.TOO_MANY_CONNECTIONS
        if refusal is Refusal.FROM_CLIENT:
            return replies.TOO_MANY_FROM_YOU
        return None


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with our limits, log context and reply rewriting."""

    def __init__(self, handler: Any, *, limits: SessionLimits, role: str,
                 max_line_length: int, wire_trace: bool = False,
                 **kwargs: Any) -> None:
        # aiosmtpd sizes its line buffer from this attribute in __init__.
        self.line_length_limit = max_line_length + 1
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.role = role
        self.wire_trace = wire_trace
        self.client_address = "?"
        self.connection_id = logs.new_connection_id()
        self._admitted = False
        self._in_ehlo = False
        self.closing = False

    # -- connection life --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted or self.transport is not None:
            # The second call comes after STARTTLS, on the TLS transport.
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.client_address = str(peer[0])
        logs.connection_id.set(self.connection_id)
        refusal = self.limits.admit(self.client_address)
        if refusal is not None:
            logs.event(log, "refused", role=self.role, client=self.client_address,
                       dsn=refusal.status, reason=refusal.text)
            transport.write(f"{refusal}\r\n".encode("ascii"))  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        self.limits.sessions.add(self)
        logs.event(log, "connect", role=self.role, client=self.client_address)
        # The session task copies the context now, connection id included.
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.limits.sessions.discard(self)
        self.limits.leave(self.client_address)
        logs.connection_id.set(self.connection_id)
        logs.event(log, "disconnect", role=self.role, client=self.client_address)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return False
        return super().eof_received()

    # -- replies ----------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        line = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if not (self._in_ehlo and line.startswith("250")):
            line = replies.rewrite(line, limit=self.data_size_limit,
                                   line_limit=self.line_length_limit - 3)
        if self.wire_trace and not line.startswith("334"):
            logs.event(log, "reply", logging.DEBUG, line=line)
        await super().push(line)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path exactly as the client wrote it, for our strict parser.

        aiosmtpd's own parser quietly drops source routes, comments and quotes;
        a policy decision must see what was sent, so we hand the raw text on.
        """
        text = arg.lstrip()
        if not text:
            return "", ""
        if not text.startswith("<"):
            path, _, rest = text.partition(" ")
            return path, rest
        quoted = False
        for index, char in enumerate(text):
            if char == '"':
                quoted = not quoted
            elif char == ">" and not quoted:
                # aiosmtpd answers an empty path with 501; "<>" is the null
                # reverse-path (RFC 5321 4.5.5), which the handlers decide on.
                return text[1:index] or "<>", text[index + 1 :]
        return None, None

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def handle_exception(self, error: Exception) -> str:
        # Internals never reach the wire: the client gets a generic 451 and
        # the log gets the reason.
        log.error("event=session-error conn=%s msg=%s error=%s",
                  self.connection_id, logs.message_id.get(), type(error).__name__,
                  exc_info=error)
        return str(replies.LOCAL_ERROR)

    async def say_goodbye(self) -> None:
        """Tell an idle client we are stopping, then close."""
        if self.transport is None or self.transport.is_closing():
            return  # e.g. after QUIT, waiting for the client's TLS close
        try:
            await self.push(str(replies.SHUTTING_DOWN))
        except (ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()


class Listener:
    """One listening socket serving one role (submission or inbound)."""

    def __init__(self, role: str, handler: Any, host: str, port: int, *,
                 tls_context: ssl.SSLContext, limits: SessionLimits,
                 smtp_options: dict[str, Any]) -> None:
        self.role = role
        self.handler = handler
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.limits = limits
        self.smtp_options = smtp_options
        self.server: asyncio.base_events.Server | None = None

    def _protocol(self) -> GatewaySMTP:
        return GatewaySMTP(self.handler, limits=self.limits, role=self.role,
                           tls_context=self.tls_context, **self.smtp_options)

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port,
                                               reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        self.port = int(sock[1])
        logs.event(log, "listening", role=self.role, addr=f"{self.host}:{self.port}")
        return self.host, self.port

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """Wait for open sessions to end, up to `grace` seconds, then close the rest."""
        try:
            await asyncio.wait_for(self.limits.idle.wait(), grace)
        except TimeoutError:
            for session in list(self.limits.sessions):
                await session.say_goodbye()
        if self.server is not None:
            await self.server.wait_closed()

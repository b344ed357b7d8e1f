"""The IMAP listeners and the connection loop, on asyncio streams (RFC 3501, RFC 8314).

One `Listener` per socket: `imap` offers STARTTLS (RFC 3501 6.2.1) and
announces LOGINDISABLED until TLS is on; `imaps` is TLS from the first byte
(RFC 8314). Both share one `Limits`, which counts sessions overall and per
client address; sessions per signed-in user are counted by the handlers.

The loop reads one command at a time: a line, and for each literal it
announces (`{n}` waits for our "+" continuation, `{n+}` of LITERAL+ does not)
that many octets and the line after them. Nothing grows without bound: a line
holds at most MAX_LINE octets, a command's literals at most
`imap.max_literal` for APPEND and MAX_COMMAND otherwise; a client silent for
`imap.idle_timeout` seconds, or leaving our responses unread that long, is
disconnected. Anything a client sent after STARTTLS in the same packet is
thrown away before TLS starts, never read as if it had come encrypted (the
CVE-2011-0411 class).

Every log line carries the connection's id. The wire trace (`logging.
wire_trace`) logs command names and response conditions at DEBUG, never
arguments: a LOGIN line holds a password.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from beep_mail import logs
from beep_mail.imap import commands, parser
from beep_mail.imap.commands import Context, Services
from beep_mail.imap.errors import Bad, Bye, ImapError, ParseError, ServerBug, TooBig
from beep_mail.imap.session import State
from beep_mail.limits import Refusal, SessionCounter

log = logging.getLogger("beepmail.imap")

MAX_LINE = 64 * 1024  # octets in one line of a command
MAX_COMMAND = 256 * 1024  # octets of literals in a command other than APPEND
MAX_DISCARD = 1024 * 1024  # octets of an over-long line read past before closing
PREAUTH_TIMEOUT = 60.0  # seconds a client may take to sign in, at most
READ_SIZE = 64 * 1024
TLS_HANDSHAKE_TIMEOUT = 30.0
GOODBYE_TIMEOUT = 2.0
SHUTDOWN_ABORT = 0.5  # seconds a client has to close TLS after our BYE at shutdown


class ConnectionClosed(Exception):
    """The client went away, or we gave up on it."""


class _LineTooLong(Exception):
    def __init__(self, head: bytes) -> None:
        super().__init__("line too long")
        self.head = head


class Limits(SessionCounter):
    """Open sessions of the IMAP listeners, and the BYE for one too many."""

    def admit(self, address: str) -> str | None:
        """None when admitted, else the reason for the BYE."""
        refusal = self.enter(address)
        if refusal is Refusal.OVERALL:
            return "Too many connections; try again later"
        if refusal is Refusal.FROM_CLIENT:
            return "Too many connections from your address; try again later"
        return None


class Connection:
    """One client: reads commands, runs them, writes responses (`commands.Channel`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 listener: Listener, client_address: str) -> None:
        self.reader = reader
        self.writer = writer
        self.listener = listener
        self.client_address = client_address
        self.connection_id = logs.new_connection_id()
        self.ctx = Context(listener.services, self)
        # True between commands and in IDLE: at shutdown, such a client is
        # told BYE at once instead of being waited for.
        self.waiting = False
        self._tls = listener.implicit_tls
        self._buffer = bytearray()
        settings = listener.services.settings
        self.idle_timeout = settings.imap.idle_timeout
        self.max_literal = settings.imap_max_literal
        self.trace = settings.logging.wire_trace

    @property
    def tls(self) -> bool:
        return self._tls

    # -- writing ---------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionClosed()
        self.writer.write(data)
        try:
            # Bounded output: a client that leaves our responses unread makes
            # drain wait; past the timeout we stop writing to it.
            await asyncio.wait_for(self.writer.drain(), self.idle_timeout)
        except TimeoutError:
            logs.event(log, "slow-client", logging.WARNING)
            self.abort()  # what it left unread is dropped, not kept for it
            raise ConnectionClosed() from None
        except (ConnectionError, RuntimeError):
            raise ConnectionClosed() from None

    # -- reading ---------------------------------------------------------------------

    def _timeout(self) -> float:
        if self.ctx.session.state is State.NOT_AUTHENTICATED:
            return min(self.idle_timeout, PREAUTH_TIMEOUT)
        return self.idle_timeout

    async def _fill(self) -> None:
        try:
            chunk = await asyncio.wait_for(self.reader.read(READ_SIZE), self._timeout())
        except TimeoutError:
            raise Bye("Idle for too long; signing off") from None
        except (ConnectionError, ssl.SSLError):
            raise ConnectionClosed() from None
        if not chunk:
            raise ConnectionClosed()
        self._buffer += chunk

    async def read_line(self) -> bytes:
        """One line without its line ending; _LineTooLong past MAX_LINE."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end > MAX_LINE:
                head = bytes(self._buffer[:200])
                del self._buffer[: end + 1]
                raise _LineTooLong(head)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_LINE:
                head = bytes(self._buffer[:200])
                await self._skip_line()
                raise _LineTooLong(head)
            start = len(self._buffer)
            await self._fill()

    async def _skip_line(self) -> None:
        skipped = 0
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                del self._buffer[: end + 1]
                return
            skipped += len(self._buffer)
            self._buffer.clear()
            if skipped > MAX_DISCARD:
                raise Bye("Line too long; signing off")
            await self._fill()

    async def _read_exactly(self, size: int, keep: bool = True) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            if not self._buffer:
                await self._fill()
            taken = bytes(self._buffer[:remaining])
            del self._buffer[: len(taken)]
            remaining -= len(taken)
            if keep:
                chunks.append(taken)
        return b"".join(chunks)

    def _shutdown_check(self) -> None:
        # Checked right before `waiting` is set, with no await between: a
        # stop either finds this client waiting (and interrupts it) or this
        # check finds the stop.
        if self.listener.stopping:
            raise Bye("The gateway is shutting down; try again in a minute")

    def idle_read(self) -> asyncio.Task[bytes]:
        """Read a line where the client may take its time (IDLE's DONE)."""
        self._shutdown_check()
        self.waiting = True
        task = asyncio.ensure_future(self.read_line())
        task.add_done_callback(self._done_waiting)
        return task

    def _done_waiting(self, task: asyncio.Task[bytes]) -> None:
        self.waiting = False

    async def read_command(self) -> bytes:
        """One command: its lines and literals as they came, CRLF between."""
        self._shutdown_check()
        self.waiting = True
        try:
            line = await self.read_line()
        finally:
            self.waiting = False
        tag, name = parser.command_head(line)
        limit = self.max_literal if name == "APPEND" else MAX_COMMAND
        parts = [line]
        total = 0
        while (literal := parser.literal_at_end(line)) is not None:
            size, nonsync = literal
            total += size + len(line)
            if total > limit:
                await self._refuse_literal(tag, name, size, nonsync, limit)
            if not nonsync:
                await self.send(b"+ Ready for literal data\r\n")
            parts.append(b"\r\n" + await self._read_exactly(size))
            line = await self.read_line()
            parts.append(line)
        return b"".join(parts)

    async def _refuse_literal(self, tag: bytes | None, name: str, size: int,
                              nonsync: bool, limit: int) -> None:
        logs.event(log, "literal-refused", command=name, size=size, limit=limit)
        refusal: ImapError = (TooBig(f"Messages are limited to {limit} octets")
                              if name == "APPEND"
                              else Bad("Literal too large for this command"))
        if nonsync:
            # The octets are on their way: read past them if that is bounded,
            # otherwise the stream cannot be followed any more.
            if size > 4 * self.max_literal:
                raise Bye("Literal too large; signing off")
            await self._read_exactly(size, keep=False)
            await self._skip_line()
        raise _Refused(refusal.response(tag))

    # -- STARTTLS ----------------------------------------------------------------------

    async def start_tls(self, reply: bytes) -> None:
        """Send the OK to STARTTLS, then start TLS on this connection.

        Reading stops before the OK leaves: what the client pipelined behind
        STARTTLS arrived in clear and is thrown away, while its TLS
        handshake, sent after reading our OK, waits in the socket for TLS.
        """
        transport = self.writer.transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        stale = len(self._buffer)
        self._buffer.clear()
        pending = getattr(self.reader, "_buffer", None)
        if isinstance(pending, bytearray):
            stale += len(pending)
            pending.clear()
        if stale:
            logs.event(log, "starttls-discarded", logging.WARNING, octets=stale)
        await self.send(reply)
        try:
            await self.writer.start_tls(self.listener.tls_context,
                                        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as error:
            logs.event(log, "tls-failed", reason=type(error).__name__)
            raise ConnectionClosed() from None
        self._tls = True
        logs.event(log, "starttls")

    # -- the loop ---------------------------------------------------------------

    async def serve(self) -> None:
        ctx = self.ctx
        try:
            await self.send(f"* OK [CAPABILITY {commands.capabilities(ctx)}] "
                            "beep-mail IMAP ready\r\n".encode())
            while ctx.session.state is not State.LOGOUT:
                await self._one_command()
        except Bye as bye:
            await self._goodbye(bye.response(None))
        except ConnectionClosed:
            pass
        finally:
            ctx.close()

    async def _one_command(self) -> None:
        try:
            data = await self.read_command()
        except _LineTooLong as error:
            tag, _ = parser.command_head(error.head)
            await self.send(Bad("Line too long").response(tag))
            return
        except _Refused as refused:
            await self.send(refused.response)
            return
        try:
            command = parser.parse_command(data)
        except ParseError as error:
            if self.trace:
                logs.event(log, "command", logging.DEBUG, command="-", result="BAD")
            await self.send(error.response(error.tag))
            return
        response = await self._execute(command)
        if response is not None:
            if self.trace:
                logs.event(log, "command", logging.DEBUG, command=command.name,
                           result=response.split(b" ", 2)[1].decode("ascii", "replace"))
            await self.send(response)

    async def _execute(self, command: parser.Command) -> bytes | None:
        try:
            return await commands.execute(self.ctx, command)
        except (Bye, ConnectionClosed):
            raise
        except ImapError as error:
            return error.response(command.tag)
        except Exception as error:  # internals never reach the wire
            log.error("event=command-crash conn=%s msg=- command=%s error=%s",
                      self.connection_id, command.name, type(error).__name__,
                      exc_info=error)
            return ServerBug("Internal error; your administrator can find it in "
                             f"the log under connection {self.connection_id}"
                             ).response(command.tag)

    async def _goodbye(self, line: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(line)
        try:
            await asyncio.wait_for(self.writer.drain(), GOODBYE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass

    def interrupt(self) -> None:
        """At shutdown: a client waiting to send its next command is told now."""
        if self.waiting and not self.writer.is_closing():
            self.writer.write(b"* BYE The gateway is shutting down; try again in "
                              b"a minute\r\n")
            self.writer.close()
            # A TLS client that never answers our close would keep the
            # connection (and its read) open until the TLS layer gives up.
            asyncio.get_running_loop().call_later(SHUTDOWN_ABORT, self.abort)

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), GOODBYE_TIMEOUT)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            self.abort()


class _Refused(Exception):
    def __init__(self, response: bytes) -> None:
        super().__init__("refused")
        self.response = response


class Listener:
    """One listening socket: `imap` (STARTTLS) or `imaps` (implicit TLS)."""

    def __init__(self, role: str, host: str, port: int, *, services: Services,
                 limits: Limits, tls_context: ssl.SSLContext,
                 implicit_tls: bool) -> None:
        self.role = role
        self.host = host
        self.port = port
        self.services = services
        self.limits = limits
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.stopping = False
        self.server: asyncio.Server | None = None
        self._mine: set[Connection] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True,
            ssl=self.tls_context if self.implicit_tls else None,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self.implicit_tls else None)
        self.port = int(self.server.sockets[0].getsockname()[1])
        logs.event(log, "listening", role=self.role, addr=f"{self.host}:{self.port}")
        return self.host, self.port

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        address = str(peer[0])
        refusal = self.limits.admit(address)
        if refusal is not None:
            logs.event(log, "refused", role=self.role, client=address, reason=refusal)
            writer.write(f"* BYE {refusal}\r\n".encode())
            writer.close()
            return
        connection = Connection(reader, writer, self, address)
        logs.connection_id.set(connection.connection_id)
        logs.event(log, "connect", role=self.role, client=address)
        self._mine.add(connection)
        self._empty.clear()
        try:
            await connection.serve()
        finally:
            await connection.close()
            self._mine.discard(connection)
            if not self._mine:
                self._empty.set()
            self.limits.leave(address)
            logs.event(log, "disconnect", role=self.role, client=address)

    def stop_accepting(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for connection in list(self._mine):
            connection.interrupt()

    async def drain(self, grace: float) -> None:
        """Let commands in progress finish, up to `grace` seconds, then close."""
        try:
            await asyncio.wait_for(self._empty.wait(), grace)
        except TimeoutError:
            for connection in list(self._mine):
                connection.abort()
            await self._empty.wait()
        if self.server is not None:
            await self.server.wait_closed()

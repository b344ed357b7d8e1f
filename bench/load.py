"""SMTP clients for the bench: asyncio and aiosmtplib, in a child process.

The clients live apart from the bench's own process so that their CPU time
can be measured (and compared with one core: a client side near 1.0 would
be the bottleneck, not the server), and so that the load can be split over
several processes. The parent drives one child through its standard streams:

    python -m bench.load SPEC_JSON
    child:  ready            every client connected, STARTTLS done, AUTH done
    parent: go               start the clock
    child:  {...}            one JSON line with the results, then exit

Each client keeps one session for the whole run, as a mail client with a
queue of outgoing mail does: connection, TLS handshake and AUTH happen
before the clock starts. Per message it sends MAIL, RCPT and DATA, and
times the DATA step, from the DATA command to the reply after the final
dot. Two ways to stop: by time (no new message once `duration` is over,
messages under way finish) or by count (`per_client` messages each). With
`rate` set, submissions follow a fixed schedule across all clients (for the
end-to-end measure) and each record keeps its scheduled start.

Every load goes to 127.0.0.1 and is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import resource
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate

import aiosmtplib

HOST = "127.0.0.1"
# Bounds that hold whatever a spec says.
MAX_MESSAGES = 200_000
COMMAND_TIMEOUT = 300.0
HEADER_OCTETS = 290


@dataclass
class Spec:
    port: int
    size: int
    clients: int
    sender: str
    rcpt: str
    tls: bool = True
    auth: bool = True
    cafile: str | None = None
    password: str = ""
    warmup: float = 0.0
    duration: float = 5.0
    per_client: int = 0               # > 0: send this many each, ignore duration
    rate: float = 0.0                 # > 0: messages/s across all clients
    first: int = 0                    # index of this process's first client
    record: bool = False              # keep (scheduled, start, end, reply) per message


@dataclass
class Outcome:
    window_start: float = 0.0         # monotonic; the end of the warm-up
    last_end: float = 0.0             # monotonic; the last DATA reply in the window
    counted: int = 0                  # messages started after the warm-up
    octets: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    records: list[tuple[float, float, float, str]] = field(default_factory=list)
    client_cpu_s: float = 0.0
    wall_s: float = 0.0


def body_of(size: int) -> bytes:
    """Text lines of 76 characters, hard to compress, about `size` octets."""
    raw = random.Random(size).randbytes(size * 3 // 4 + 64)
    text = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return text[:text.rfind(b"\r\n", 0, size) + 2]


def message(spec: Spec, client: int, n: int, body: bytes) -> bytes:
    head = (f"From: <{spec.sender}>\r\nTo: <{spec.rcpt}>\r\n"
            f"Subject: bench {spec.size} octets, client {client}, message {n}\r\n"
            f"Date: {formatdate(localtime=False)}\r\n"
            f"Message-ID: <bench.{client}.{n}.{time.time_ns()}@bench.invalid>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    return head.encode("ascii") + body


def tls_context(spec: Spec) -> ssl.SSLContext:
    """Verify the server as a mail client does; its certificate names 127.0.0.1."""
    return ssl.create_default_context(cafile=spec.cafile)


class Run:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.outcome = Outcome()
        # The header takes about this much; the whole message is `size` octets.
        self.body = body_of(max(spec.size - HEADER_OCTETS, 100))
        self.started = asyncio.Event()
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.deadline = 0.0
        self.next_index = 0
        self.t0 = 0.0
        self.tls = tls_context(spec) if spec.tls else None

    async def session(self) -> aiosmtplib.SMTP:
        spec = self.spec
        smtp = aiosmtplib.SMTP(hostname=HOST, port=spec.port, start_tls=False,
                               timeout=COMMAND_TIMEOUT)
        await smtp.connect()
        if self.tls is not None:
            await smtp.starttls(tls_context=self.tls)
        if spec.auth:
            await smtp.login(spec.sender, spec.password)
        return smtp

    async def client(self, client: int) -> None:
        spec = self.spec
        try:
            smtp = await self.session()
        except (aiosmtplib.SMTPException, OSError) as error:
            self._error(f"session: {error}")
            self._arrive()
            return
        self._arrive()
        await self.started.wait()

        n = 0
        while self._more(n):
            scheduled = await self._turn()
            if scheduled is None:
                break
            data = message(spec, client, n, self.body)
            n += 1
            start = time.monotonic()
            try:
                await smtp.mail(spec.sender)
                await smtp.rcpt(spec.rcpt)
                data_start = time.monotonic()
                reply = await smtp.data(data)
            except aiosmtplib.SMTPResponseException as error:
                self._error(f"{error.code} {error.message}")
                if not await self._reset(smtp):
                    return
                continue
            except (aiosmtplib.SMTPException, OSError) as error:
                self._error(f"connection: {error}")
                return
            end = time.monotonic()
            self._count(scheduled or start, start, data_start, end, reply.message,
                        len(data))
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass

    def _more(self, sent: int) -> bool:
        spec = self.spec
        if spec.per_client:
            return sent < spec.per_client
        return time.monotonic() < self.deadline and self.next_index < MAX_MESSAGES

    async def _turn(self) -> float | None:
        """Wait for this message's slot on the schedule, when there is one."""
        index = self.next_index
        self.next_index += 1
        if index >= MAX_MESSAGES:
            return None
        if not self.spec.rate:
            return 0.0
        scheduled = self.t0 + index / self.spec.rate
        if scheduled >= self.deadline:
            return None
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return scheduled

    async def _reset(self, smtp: aiosmtplib.SMTP) -> bool:
        try:
            await smtp.rset()
            return True
        except (aiosmtplib.SMTPException, OSError):
            return False

    def _count(self, scheduled: float, start: float, data_start: float, end: float,
               reply: str, octets: int) -> None:
        outcome = self.outcome
        if start < outcome.window_start:
            return
        outcome.counted += 1
        outcome.octets += octets
        outcome.last_end = max(outcome.last_end, end)
        outcome.latencies_ms.append((end - data_start) * 1000)
        if self.spec.record:
            outcome.records.append((scheduled, start, end, reply))

    def _error(self, text: str) -> None:
        self.outcome.errors += 1
        if len(self.outcome.error_samples) < 5:
            self.outcome.error_samples.append(text[:300])

    def _arrive(self) -> None:
        self.ready += 1
        if self.ready == self.spec.clients:
            self.all_ready.set()

    async def main(self) -> Outcome:
        spec = self.spec
        tasks = [asyncio.create_task(self.client(spec.first + i))
                 for i in range(spec.clients)]
        await self.all_ready.wait()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        before = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.monotonic()
        self.outcome.window_start = self.t0 + spec.warmup
        self.deadline = self.outcome.window_start + spec.duration
        self.started.set()
        await asyncio.gather(*tasks)
        after = resource.getrusage(resource.RUSAGE_SELF)

        self.outcome.wall_s = time.monotonic() - self.t0
        self.outcome.client_cpu_s = ((after.ru_utime - before.ru_utime)
                                     + (after.ru_stime - before.ru_stime))
        return self.outcome


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    outcome = asyncio.run(Run(spec).main())
    print(json.dumps(asdict(outcome)), flush=True)


if __name__ == "__main__":
    main()

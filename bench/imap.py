"""IMAP on one large INBOX: beep-mail beside Dovecot, the same messages in both.

The messages look like an office's correspondence: names from several
countries (non-ASCII ones as RFC 2047 encoded words), To and Cc lists,
replies that carry In-Reply-To and References, subjects in three languages,
text of 2 to 20 KB (UTF-8 text partly quoted-printable), and one message in
five multipart/mixed with a small attachment. They are made from a fixed
seed, so every run has the same ones. One sender signs 1% of them and one
word is in the text of another 1%: the two searches find those, and the
bench knows beforehand how many.

The gateway gets them the way a client would put them there: APPEND over its
IMAPS port, pipelined with LITERAL+, so each one is sealed at rest on the
real path. Dovecot gets them as files in the `cur/` folder of its Maildir,
as its delivery agent would leave them (LF line ends, sizes in the names,
flags in the info part, the date as the file time).

Each step is timed on a fresh connection, so that nothing an earlier run
left in a session helps: for "login+SELECT" from the TCP connect to the
SELECT's tagged OK; for the others from sending the command to reading its
tagged OK, every response octet read, with LOGIN and SELECT done before the
clock starts. One warm-up run per step and server first (Dovecot builds its
index and cache then), then the median of several runs, the two servers
taken in turn. Both must answer alike (the same number of FETCH responses,
the same octets of message, the same number of search hits): a difference is
reported as a bench error.
"""

from __future__ import annotations

import asyncio
import gc
import os
import quopri
import random
import re
import socket
import ssl
import statistics
import time
from base64 import encodebytes
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

from bench import report

HOST = "127.0.0.1"
SEED = 20240
SEARCH_NAME = "Okonkwo"
SEARCH_WORD = "reconciliation"
BODIES = 100
READ_SIZE = 256 * 1024
TIMEOUT = 300.0
# APPENDs one connection sends ahead of the replies it has read.
APPEND_WINDOW = 64
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
          "Dec")

STEPS = ("login+SELECT", "FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
         "UID FETCH 100 bodies", "SEARCH FROM", "SEARCH BODY")


class BenchError(Exception):
    """A server did not answer as IMAP says it must; the message says how."""


# -- the messages ------------------------------------------------------------------------

PEOPLE = (
    ("Margaret Ellison", "m.ellison"), ("Thomas Brandt", "t.brandt"),
    ("Jürgen Weiß", "j.weiss"), ("Élodie Marchand", "e.marchand"),
    ("Søren Ødegaard", "s.odegaard"), ("Priya Raghunathan", "p.raghunathan"),
    ("Łukasz Wójcik", "l.wojcik"), ("Ana María Núñez", "a.nunez"),
    ("Chen Wei", "chen.wei"), ("Fatima Al-Sayed", "f.alsayed"),
    ("Zoë Lindqvist", "z.lindqvist"), ("Daniel O'Connor", "d.oconnor"),
    ("Çağla Yıldız", "c.yildiz"), ("Henrik Johansson", "h.johansson"),
    ("Isabelle Fournier", "i.fournier"), ("Kwame Mensah", "k.mensah"),
    ("Laura Bianchi", "l.bianchi"), ("Mikko Virtanen", "m.virtanen"),
    ("Nadia Haddad", "n.haddad"), ("Olga Petrova", "o.petrova"),
    ("Pedro Alves", "p.alves"), ("Rachel Goldberg", "r.goldberg"),
    ("Sebastian Kovač", "s.kovac"), ("Yuki Tanaka", "y.tanaka"),
    ("Records Office", "records"), ("Legal Service", "legal"),
)
# The sender SEARCH FROM looks for: the sender of 1% of the messages, and a
# recipient of many others, where FROM must not find her.
SEARCHED = ("Adaeze Okonkwo", "a.okonkwo")
DOMAINS = ("ministry.gov.example", "peer.gov.example", "finance.gov.example",
           "interior.gov.example", "embassy.gov.example")
TOPICS = (
    "Budget review Q{n}", "Draft agreement on data exchange, version {n}",
    "Meeting of the steering committee", "Procurement of secure laptops (lot {n})",
    "Staff rotation {n}", "Annual report: comments by {day}",
    "Überprüfung des Haushaltsplans {n}", "Réunion interministérielle du {day}",
    "Visa requests, batch {n}", "Audit findings and follow-up",
    "Travel authorisation for the delegation", "Contrat de maintenance n° {n}",
    "Protokoll der Sitzung vom {day}", "Press line on the trade talks",
    "Request for comments: retention schedule", "Security incident report {n}",
)
WORDS = ("the", "of", "and", "to", "in", "a", "for", "on", "with", "as", "by", "at",
         "from", "that", "this", "be", "are", "is", "was", "it", "ministry",
         "committee", "draft", "report", "budget", "agreement", "meeting",
         "delegation", "minister", "department", "proposal", "annex", "paragraph",
         "article", "review", "decision", "deadline", "partner", "embassy", "council",
         "secretariat", "procedure", "position", "comments", "request", "approval",
         "schedule", "version", "section", "amendment", "provision", "measure",
         "contract", "supplier", "tender", "evaluation", "procurement", "security",
         "classified", "distribution", "officer", "staff", "travel", "authorisation",
         "mission", "visit", "programme", "agenda", "minutes", "follow-up", "action",
         "responsible", "colleague", "office", "director", "unit", "policy",
         "framework", "implementation", "please", "find", "attached", "regards",
         "best", "thanks", "kindly", "confirm", "receipt", "before", "Monday",
         "Tuesday", "Wednesday", "Thursday", "Friday", "next", "week", "month",
         "quarter", "year", "financial", "legal", "technical", "political", "economic",
         "regional", "national", "international", "cooperation", "negotiation",
         "consultation", "coordination", "assessment", "analysis", "figures", "table",
         "chart", "summary", "conclusion", "recommendation", "priority", "urgent")
GREETINGS = ("Dear {first},", "Hello {first},", "Bonjour {first},",
             "Liebe Kolleginnen und Kollegen,", "Dear colleagues,", "Hej {first},")
ATTACHMENTS = (("application/pdf", "report-{n}.pdf"), ("image/png", "chart-{n}.png"),
               ("application/vnd.oasis.opendocument.text", "minutes-{n}.odt"))
EPOCH = datetime(2024, 1, 2, 8, 0, tzinfo=UTC)
ZONES = (UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=2)),
         timezone(timedelta(hours=-5)))


@dataclass(frozen=True)
class Message:
    data: bytes                      # CRLF line ends, as IMAP carries it
    when: datetime                   # the Date header, and the INTERNALDATE
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Corpus:
    messages: list[Message]
    from_hits: int                   # messages SEARCH FROM SEARCH_NAME finds
    body_hits: int                   # messages SEARCH BODY SEARCH_WORD finds

    @property
    def octets(self) -> int:
        return sum(len(m.data) for m in self.messages)


def corpus(count: int, seed: int = SEED) -> Corpus:
    """`count` messages, the same ones for the same count and seed."""
    rng = random.Random(seed)
    gap = 365 * 86400 / count
    when = EPOCH
    messages: list[Message] = []
    ids: list[tuple[str, str]] = []       # (message id, subject) of earlier messages
    for n in range(count):
        when += timedelta(seconds=gap * rng.uniform(0.2, 1.8))
        message, message_id, subject = _message(rng, n, when, ids)
        ids.append((message_id, subject))
        messages.append(message)
    # Counted in the messages as made, not from the rule that placed them.
    from_hits = sum(1 for m in messages if _header(m.data, b"From").find(
        SEARCH_NAME.encode()) >= 0)
    body_hits = sum(1 for m in messages
                    if SEARCH_WORD.encode() in m.data.partition(b"\r\n\r\n")[2])
    return Corpus(messages, from_hits, body_hits)


def _header(data: bytes, name: bytes) -> bytes:
    head = data.partition(b"\r\n\r\n")[0]
    found = re.search(rb"(?im)^" + name + rb":(.*(?:\r\n[ \t].*)*)", head)
    return found.group(1) if found else b""


def _searched_sender(n: int) -> bool:
    return n % 100 == 37


def _has_word(n: int) -> bool:
    return n % 100 == 61


def _message(rng: random.Random, n: int, when: datetime,
             earlier: list[tuple[str, str]]) -> tuple[Message, str, str]:
    sender = SEARCHED if _searched_sender(n) else rng.choice(PEOPLE)
    domain = rng.choice(DOMAINS)
    others = [p for p in (*PEOPLE, SEARCHED) if p != sender]
    to = rng.sample(others, rng.choice((1, 1, 1, 2, 3)))
    cc = rng.sample(others, rng.randint(1, 4)) if rng.random() < 0.4 else []
    date = when.astimezone(rng.choice(ZONES))
    message_id = f"{date:%Y%m%d%H%M%S}.{n:05d}.{rng.getrandbits(32):08x}@{domain}"

    reply = bool(earlier) and rng.random() < 0.3
    if reply:
        parent_id, parent_subject = earlier[-rng.randint(1, min(40, len(earlier)))]
        subject = parent_subject if parent_subject.startswith("Re: ") else (
            "Re: " + parent_subject)
    else:
        topic = rng.choice(TOPICS)
        subject = topic.format(n=rng.randint(1, 40), day=f"{date:%d.%m.%Y}")

    headers = [
        ("Received", (f"from gw.{domain} (gw.{domain} [192.0.2.{rng.randint(1, 254)}]) "
                      "by mx.ministry.gov.example with ESMTPS id "
                      f"{rng.getrandbits(40):x}; {format_datetime(date)}")),
        ("Date", format_datetime(date)),
        ("From", _address(sender, domain)),
        ("To", ", ".join(_address(p, rng.choice(DOMAINS)) for p in to)),
    ]
    if cc:
        headers.append(("Cc", ", ".join(_address(p, rng.choice(DOMAINS)) for p in cc)))
    headers += [("Subject", _encoded(subject)), ("Message-ID", f"<{message_id}>")]
    if reply:
        headers += [("In-Reply-To", f"<{parent_id}>"), ("References", f"<{parent_id}>")]
    headers.append(("MIME-Version", "1.0"))

    size = int(2048 * 10 ** rng.uniform(0, 1))          # 2 to 20 KB, most small
    attachment = _attachment(rng, n) if rng.random() < 0.2 else None
    text = _text(rng, n, to[0][0], sender[0], size - (len(attachment[1])
                                                       if attachment else 0))
    body_headers, body = _text_part(rng, text)
    if attachment is None:
        headers += body_headers
    else:
        boundary = f"=_part_{rng.getrandbits(48):012x}"
        headers.append(("Content-Type", f'multipart/mixed; boundary="{boundary}"'))
        inner = "".join(f"{k}: {v}\r\n" for k, v in body_headers).encode()
        body = (b"This is a multi-part message in MIME format.\r\n\r\n"
                + f"--{boundary}\r\n".encode() + inner + b"\r\n" + body + b"\r\n"
                + f"--{boundary}\r\n".encode() + attachment[0] + b"\r\n"
                + attachment[1] + f"--{boundary}--\r\n".encode())

    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("ascii")
    flags = _flags(rng, bool(reply))
    return Message(head + b"\r\n" + body, date, flags), message_id, subject


def _address(person: tuple[str, str], domain: str) -> str:
    name, local = person
    # formataddr quotes where needed and encodes a non-ASCII name (RFC 2047).
    return formataddr((name, f"{local}@{domain}"), charset="utf-8")


def _encoded(text: str) -> str:
    if text.isascii():
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def _text(rng: random.Random, n: int, reader: str, writer: str, size: int) -> str:
    first = reader.split()[0]
    lines = [rng.choice(GREETINGS).format(first=first), ""]
    length = 0
    while length < max(size, 400):
        words: list[str] = []
        for _ in range(rng.randint(2, 6)):
            sentence = rng.choices(WORDS, k=rng.randint(6, 18))
            sentence[0] = sentence[0].capitalize()
            sentence[-1] += "."
            words += sentence
        paragraph = _wrap(words, 72)
        if _has_word(n) and length == 0:
            # After the first paragraph, on a line of its own, so that no
            # quoted-printable soft break splits it.
            paragraph += ["", SEARCH_WORD]
        lines += [*paragraph, ""]
        length += sum(len(line) + 2 for line in paragraph) + 2
    lines += ["Kind regards,", writer, ""]
    return "\r\n".join(lines)


def _wrap(words: list[str], width: int) -> list[str]:
    lines: list[str] = []
    line: list[str] = []
    used = 0
    for word in words:
        if line and used + 1 + len(word) > width:
            lines.append(" ".join(line))
            line, used = [], 0
        used += len(word) + (1 if line else 0)
        line.append(word)
    if line:
        lines.append(" ".join(line))
    return lines


def _text_part(rng: random.Random, text: str) -> tuple[list[tuple[str, str]], bytes]:
    if text.isascii():
        return ([("Content-Type", "text/plain; charset=us-ascii"),
                 ("Content-Transfer-Encoding", "7bit")], text.encode())
    if rng.random() < 0.5:
        return ([("Content-Type", "text/plain; charset=utf-8"),
                 ("Content-Transfer-Encoding", "8bit")], text.encode())
    encoded = quopri.encodestring(text.replace("\r\n", "\n").encode()).replace(
        b"\n", b"\r\n")
    return ([("Content-Type", "text/plain; charset=utf-8"),
             ("Content-Transfer-Encoding", "quoted-printable")], encoded)


def _attachment(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    kind, name = rng.choice(ATTACHMENTS)
    name = name.format(n=n)
    data = encodebytes(rng.randbytes(rng.randint(1024, 8192))).replace(b"\n", b"\r\n")
    head = (f"Content-Type: {kind}; name=\"{name}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
            "Content-Transfer-Encoding: base64\r\n").encode()
    return head, data


def _flags(rng: random.Random, reply: bool) -> tuple[str, ...]:
    flags = []
    if rng.random() < 0.1 or (reply and rng.random() < 0.3):
        flags.append("\\Answered")
    if rng.random() < 0.05:
        flags.append("\\Flagged")
    if rng.random() < 0.75:
        flags.append("\\Seen")
    return tuple(flags)


# -- filling the two servers -------------------------------------------------------------

MAILDIR_FLAGS = {"\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}


def write_maildir(folder: Path, messages: list[Message]) -> None:
    """The messages as files in `cur/`, named so that they sort in their order."""
    for n, message in enumerate(messages):
        data = message.data.replace(b"\r\n", b"\n")
        stamp = int(message.when.timestamp())
        info = "".join(sorted(MAILDIR_FLAGS[flag] for flag in message.flags))
        name = (f"{stamp}.M{n:06d}P1.beepbench,S={len(data)},W={len(message.data)}"
                f":2,{info}")
        path = folder / "cur" / name
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))


def append_all(port: int, context: ssl.SSLContext, user: str, password: str,
               messages: list[Message], connections: int = 1) -> list[int]:
    """APPEND every message to INBOX; the UID each one got, in their order.

    Connection k of n takes every n-th message from the k-th on, and
    pipelines its APPENDs (LITERAL+), APPEND_WINDOW of them ahead of the
    replies.
    """
    shares = [range(len(messages))[k::connections] for k in range(connections)]
    uids = [0] * len(messages)

    async def fill() -> None:
        await asyncio.gather(*(_append_share(port, context, user, password, messages,
                                             list(share), uids) for share in shares))

    asyncio.run(fill())
    return uids


async def _append_share(port: int, context: ssl.SSLContext, user: str, password: str,
                        messages: list[Message], share: list[int], uids: list[int]
                        ) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=context,
                                                   server_hostname="localhost")
    try:
        greeting = await reader.readline()
        if b"LITERAL+" not in greeting:
            raise BenchError("the server does not announce LITERAL+ in its greeting")
        writer.write(b"L LOGIN " + _quoted(user) + b" " + _quoted(password) + b"\r\n")
        await _tagged(reader, b"L")
        window = asyncio.Semaphore(APPEND_WINDOW)

        async def send() -> None:
            for n in share:
                await window.acquire()
                message = messages[n]
                writer.write(b"A%d APPEND INBOX (%s) \"%s\" {%d+}\r\n" % (
                    n, " ".join(message.flags).encode(), _imap_date(message.when),
                    len(message.data)) + message.data + b"\r\n")
                await writer.drain()

        async def receive() -> None:
            for n in share:
                line = await _tagged(reader, b"A%d" % n)
                found = re.search(rb"\[APPENDUID \d+ (\d+)\]", line)
                if found is None:
                    raise BenchError(f"APPEND answered without APPENDUID: {line[:200]!r}")
                uids[n] = int(found.group(1))
                window.release()

        await asyncio.wait_for(asyncio.gather(send(), receive()), TIMEOUT * 4)
        writer.write(b"Z LOGOUT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def _tagged(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    """Read up to the line tagged `tag`, which must say OK."""
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not line:
            raise BenchError(f"the server closed the connection before {tag!r}")
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise BenchError(f"{line[:300]!r}")
            return line


def _imap_date(when: datetime) -> bytes:
    """RFC 3501 date-time: `dd-Mon-yyyy hh:mm:ss +zzzz`, in English."""
    offset = when.utcoffset() or timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return (f"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year} "
            f"{when:%H:%M:%S} {zone}").encode()


def _quoted(text: str) -> bytes:
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# -- a client that times one command -------------------------------------------------------

@dataclass
class Reply:
    """What one command brought back: enough to check two servers agree."""

    status: bytes = b""
    tagged: bytes = b""
    fetches: int = 0
    hits: int = 0                    # numbers in * SEARCH responses
    exists: int | None = None
    octets: int = 0                  # every octet of the response
    literals: list[int] = field(default_factory=list)   # sizes of message literals
    sizes: int = 0                   # RFC822.SIZE, added up


class Client:
    """A blocking IMAP client over implicit TLS that reads every response octet."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = bytearray()
        self.pos = 0
        self.count = 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise BenchError(f"greeting {greeting[:200]!r}")

    def login_select(self, user: str, password: str) -> Reply:
        self.run(b"LOGIN " + _quoted(user) + b" " + _quoted(password))
        return self.run(b"SELECT INBOX")

    def run(self, command: bytes) -> Reply:
        self.count += 1
        tag = b"T%d" % self.count
        self.sock.sendall(tag + b" " + command + b"\r\n")
        reply = self._read(tag)
        if reply.status != b"OK":
            raise BenchError(f"{command[:60]!r} answered {reply.tagged[:300]!r}")
        return reply

    def close(self) -> None:
        try:
            self.run(b"LOGOUT")
        except (BenchError, OSError):
            pass
        finally:
            self.sock.close()

    def _read(self, tag: bytes) -> Reply:
        reply = Reply()
        prefix = tag + b" "
        while True:
            line = self._line()
            reply.octets += len(line) + 2
            if line.startswith(prefix):
                reply.tagged = line
                reply.status = line[len(prefix):].split(b" ", 1)[0]
                return reply
            parts = [line]
            # A response goes on after each literal it announces.
            while (found := re.search(rb"\{(\d+)\+?\}$", line)) is not None:
                size = int(found.group(1))
                self._skip(size)
                reply.octets += size
                if line.endswith((b"BODY[] {%d}" % size, b"RFC822 {%d}" % size)):
                    reply.literals.append(size)
                line = self._line()
                reply.octets += len(line) + 2
                parts.append(line)
            self._note(reply, b"".join(parts))

    @staticmethod
    def _note(reply: Reply, response: bytes) -> None:
        if not response.startswith(b"* "):
            return
        words = response.split(b" ", 3)
        if len(words) > 2 and words[2] == b"FETCH":
            reply.fetches += 1
            size = re.search(rb"RFC822\.SIZE (\d+)", response)
            if size is not None:
                reply.sizes += int(size.group(1))
        elif words[1] == b"SEARCH":
            reply.hits += len(response.split()) - 2
        elif len(words) > 2 and words[2].startswith(b"EXISTS"):
            reply.exists = int(words[1])

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buffer[self.pos:end])
                self.pos = end + 2
                return line
            self._fill()

    def _skip(self, size: int) -> None:
        while len(self.buffer) - self.pos < size:
            self._fill()
        self.pos += size

    def _fill(self) -> None:
        if self.pos > READ_SIZE:
            del self.buffer[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(READ_SIZE)
        if not chunk:
            raise BenchError("the server closed the connection")
        self.buffer += chunk


# -- the steps ------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    port: int
    uids: list[int]                  # the UID of each message, in corpus order
    user: str
    password: str
    context: ssl.SSLContext

    def connect(self) -> Client:
        return Client(self.port, self.context)


def commands(corpus: Corpus, server: Server) -> dict[str, bytes]:
    """Each step's command for this server (the UIDs differ between servers)."""
    uid_set = b",".join(b"%d" % server.uids[n] for n in _picks(corpus))
    return {
        STEPS[1]: b"FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
        STEPS[2]: b"UID FETCH " + uid_set + b" (BODY.PEEK[])",
        STEPS[3]: b"SEARCH FROM " + _quoted(SEARCH_NAME),
        STEPS[4]: b"SEARCH BODY " + _quoted(SEARCH_WORD),
    }


def _picks(corpus: Corpus) -> list[int]:
    """BODIES messages spread evenly over the mailbox, first and last included."""
    count = len(corpus.messages)
    return sorted({round(k * (count - 1) / (BODIES - 1)) for k in range(BODIES)})


@dataclass
class Run:
    ms: float
    reply: Reply
    # login+SELECT only: where its time went (connect+TLS, LOGIN, SELECT).
    parts: dict[str, float] = field(default_factory=dict)


def time_step(server: Server, command: bytes | None) -> Run:
    """One run of a step on a fresh connection; `None` is login+SELECT itself."""
    if command is None:
        start = time.perf_counter()
        client = server.connect()
        try:
            connected = time.perf_counter()
            client.run(b"LOGIN " + _quoted(server.user) + b" " + _quoted(server.password))
            signed_in = time.perf_counter()
            reply = client.run(b"SELECT INBOX")
            end = time.perf_counter()
        finally:
            client.close()
        return Run((end - start) * 1000, reply, {
            "connect+TLS": (connected - start) * 1000,
            "LOGIN": (signed_in - connected) * 1000,
            "SELECT": (end - signed_in) * 1000})

    client = server.connect()
    try:
        client.login_select(server.user, server.password)
        start = time.perf_counter()
        reply = client.run(command)
        end = time.perf_counter()
    finally:
        client.close()
    return Run((end - start) * 1000, reply)


def measure(corpus: Corpus, servers: list[Server], runs: int,
            say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every step on every server: a warm-up, then `runs` runs taken in turn.

    A server that fails a step (a NO or BAD, a closed connection, a time-out)
    is not asked again for that step; the row says what happened.
    """
    per_server = {server.name: commands(corpus, server) for server in servers}
    # The corpus stays in this process: out of the collector's full passes,
    # so that none of them lands in a timed step (each took 20-65 ms).
    gc.collect()
    gc.freeze()
    rows = []
    for step in STEPS:
        done: dict[str, list[Run]] = {server.name: [] for server in servers}
        errors: dict[str, str] = {}
        for run in range(runs + 1):               # run 0 is the warm-up
            # Turn about, so that a slow moment of the machine falls on both.
            for server in servers if run % 2 == 0 else servers[::-1]:
                if server.name in errors:
                    continue
                try:
                    result = time_step(server, per_server[server.name].get(step))
                except (BenchError, OSError) as error:
                    errors[server.name] = f"{type(error).__name__}: {error}"
                    continue
                if run:
                    done[server.name].append(result)
        row = _row(step, corpus, done, errors)
        say(_line(row))
        rows.append(row)
    return rows


def _row(step: str, corpus: Corpus, done: dict[str, list[Run]],
         errors: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step, "messages": len(corpus.messages)}
    for key in ("gateway", "dovecot"):
        runs = done.get(key)
        row[f"{key}_ms"] = round(statistics.median(r.ms for r in runs), 1) if runs else None
        row[f"{key}_runs_ms"] = [round(r.ms, 1) for r in runs] if runs else None
        row[f"{key}_answer"] = _answer(step, runs[-1].reply) if runs else None
        if runs and runs[0].parts:
            row[f"{key}_parts_ms"] = {
                part: round(statistics.median(r.parts[part] for r in runs), 1)
                for part in runs[0].parts}
    expected = _expected(step, corpus)
    answers = [row[f"{k}_answer"] for k in ("gateway", "dovecot")
               if row[f"{k}_answer"] is not None]
    row["expected"] = expected
    row["counts_match"] = all(_agrees(a, expected) for a in answers) and (
        len(answers) < 2 or answers[0] == answers[1])
    if errors:
        row["errors"] = errors
    return row


def _answer(step: str, reply: Reply) -> dict[str, Any]:
    if step == STEPS[0]:
        return {"exists": reply.exists}
    if step == STEPS[1]:
        return {"fetches": reply.fetches, "rfc822_size_total": reply.sizes}
    if step == STEPS[2]:
        return {"fetches": reply.fetches, "bodies": len(reply.literals),
                "body_octets": sum(reply.literals)}
    return {"hits": reply.hits}


def _expected(step: str, corpus: Corpus) -> dict[str, Any]:
    count = len(corpus.messages)
    if step == STEPS[0]:
        return {"exists": count}
    if step == STEPS[1]:
        return {"fetches": count, "rfc822_size_total": corpus.octets}
    if step == STEPS[2]:
        picks = _picks(corpus)
        return {"fetches": len(picks), "bodies": len(picks),
                "body_octets": sum(len(corpus.messages[n].data) for n in picks)}
    return {"hits": corpus.from_hits if step == STEPS[3] else corpus.body_hits}


def _agrees(answer: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(answer.get(key) == value for key, value in expected.items())


def _line(row: dict[str, Any]) -> str:
    ours, theirs = row["gateway_ms"], row["dovecot_ms"]
    times = report.ratio(ours, theirs)
    ratio = f"{times:.2f}x" if times is not None else "-"
    check = "" if row["counts_match"] else (
        f"  ANSWERS DIFFER: beep-mail {row['gateway_answer']}, Dovecot "
        f"{row['dovecot_answer']}, expected {row['expected']}")
    for name, error in row.get("errors", {}).items():
        check += f"  FAILED on {name}: {error[:200]}"
    return (f"{row['step']:<44} beep-mail {ours} ms, Dovecot {theirs} ms, "
            f"ratio {ratio}{check}")


def tls_of(server: Server) -> str:
    """The TLS version and cipher a client of this server gets."""
    client = server.connect()
    try:
        cipher = client.sock.cipher()
        return f"{client.sock.version()} {cipher[0] if cipher else '?'}"
    finally:
        client.close()

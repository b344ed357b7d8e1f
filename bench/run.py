"""`make bench` and `make bench-quick`: measure, print a table, write JSON and a plot.

    python -m bench.run [--quick] [--out bench/results] [--no-profile] [--keep]

Phases, each with its baselines measured in the same run:

1. SMTP acceptance: the gateway, a bare aiosmtpd server and Postfix, taking
   messages from the same clients over the same TLS.
2. OpenPGP cost per message: beep-mail, GnuPG spawned per message, pysequoia.
3. End to end: two gateways, from submission at one to the mailbox entry at
   the other, at half the measured capacity.
4. IMAP: one INBOX of 10,000 messages (2,000 in the quick run) in the
   gateway, filled by APPEND over IMAPS, and the same messages in a private
   Dovecot's Maildir; login + SELECT, a FETCH of every message's envelope,
   a UID FETCH of 100 whole messages and two SEARCHes, over the same TLS
   (bench/imap.py, bench/dovecot.py).
5. Memory: peak RSS of the gateway with many large messages in flight.

`--only PHASE` (repeatable: smtp, openpgp, e2e, imap, memory) runs those
phases alone and writes `partial.json` beside `latest.json`, which it leaves
as it is.

Everything runs under one temporary folder, on 127.0.0.1 only, and every
process the bench starts is stopped by its pid when the bench ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beep_mail.crypto import openpgp
from bench import cost, imap, machine, profile, report
from bench.dovecot import Dovecot, DovecotUnavailable, dovecot_version
from bench.load import Spec, body_of, message
from bench.postfix import Postfix, PostfixUnavailable
from bench.report import size_name
from bench.site import (
    PASSWORD,
    Gateway,
    Site,
    cpu_seconds,
    make_site,
    password_hash,
    peak_rss_mb,
    rss_mb,
)

KB = 1024
MB = 1024 * 1024
LOCAL = "ministry.gov.example"
PEER = "peer.gov.example"
PHASES = ("smtp", "openpgp", "e2e", "imap", "memory")
# A load child that has not reported this long after its run should have
# ended is killed: the bench stops by itself whatever the server does.
LOAD_GRACE = 180.0
# The longest wait for Postfix to relay what it accepted before the next run.
DRAIN_LIMIT = 120.0
# Messages/s for the end-to-end floor: far below what the pair carries.
LOW_RATE = 2.0


@dataclass(frozen=True)
class Plan:
    name: str
    sizes: tuple[int, ...] = (2 * KB, 100 * KB, 5 * MB)
    clients: tuple[int, ...] = (1, 8, 32)
    large_clients: tuple[int, ...] = (1, 8, 32)   # for sizes of 1 MB and more
    # Large messages are counted, not timed: a run is this many messages, at
    # least one per client, all of them from the start of the clock.
    large_messages: int = 4
    warmup: float = 1.0
    duration: float = 6.0
    openpgp_sizes: tuple[int, ...] = (2 * KB, 100 * KB)
    openpgp_runs: int = 100
    gpg_runs: int = 40
    e2e_duration: float = 20.0
    e2e_low_duration: float = 8.0
    e2e_wait: float = 60.0
    memory_clients: int = 10
    memory_size: int = 25 * MB
    imap_messages: int = 10_000
    imap_runs: int = 5
    # Connections that APPEND the INBOX at the same time.
    imap_fill_connections: int = 1
    profile: bool = True


FULL = Plan("full")
QUICK = Plan("quick", clients=(1, 8), large_clients=(1,), large_messages=2, warmup=0.3,
             duration=1.5, openpgp_runs=30, gpg_runs=10, e2e_duration=3.0,
             e2e_low_duration=2.0, e2e_wait=30.0, memory_clients=3, imap_messages=2_000,
             imap_runs=3, profile=False)


@dataclass
class Bench:
    plan: Plan
    root: Path
    stack: ExitStack
    notes: list[str] = field(default_factory=list)
    # How the Postfix baseline ran, or why it did not.
    postfix: dict[str, Any] = field(default_factory=lambda: {"ran": False})
    # The same for Dovecot, and how the IMAP phase's mailboxes were filled.
    dovecot: dict[str, Any] = field(default_factory=lambda: {"ran": False})
    imap_setup: dict[str, Any] = field(default_factory=dict)

    # -- 1. SMTP acceptance ------------------------------------------------------------

    def smtp(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        with self.phase():
            return self._smtp()

    def _smtp(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        site, peer = self._site("smtp")
        alice = site.add_user("alice")
        site.add_peer(PEER, peer, next_hop="localhost:9")
        gateway = self._gateway(site, {"BEEPMAIL_DELIVERY__ENABLED": "false"})
        sink = self._sink(site, plain=False)
        postfix = self._postfix(site, alice)

        targets: dict[str, Target] = {
            "sink": Target(sink.port, lambda: [sink.pid]),
            "gateway": Target(gateway.ports["submission"], lambda: [gateway.pid]),
        }
        if postfix is not None:
            targets["postfix"] = Target(postfix.port, postfix.pids, postfix.auth)

        rows = []
        for size in self.plan.sizes:
            counts = self.plan.large_clients if size >= MB else self.plan.clients
            for clients in counts:
                row: dict[str, Any] = {"size": size, "clients": clients}
                for system in ("sink", "gateway", "postfix"):
                    target = targets.get(system)
                    result = (self.load(site, alice, target, size, clients)
                              if target is not None else None)
                    row.update(_flat(system, result))
                    if system == "postfix" and postfix is not None:
                        # Postfix relays after its 250: let it finish first.
                        row["postfix_drain_s"] = postfix.drain(DRAIN_LIMIT)
                _say(report.smtp_line(row))
                rows.append(row)

        found = None
        if self.plan.profile:
            found = self.profile(site, alice, targets["gateway"], gateway.pid)
        return rows, found

    def load(self, site: Site, user: str, target: Target, size: int, clients: int,
             **extra: Any) -> dict[str, Any]:
        spec = {"port": target.port, "size": size, "clients": clients, "sender": user,
                "rcpt": f"bob@{PEER}", "cafile": str(site.cert), "password": PASSWORD,
                "auth": target.auth, "warmup": self.plan.warmup,
                "duration": self.plan.duration, **extra}
        if size >= MB:
            # A few seconds per message: a warm-up would swallow the whole run.
            spec.update(warmup=0.0, duration=0.0,
                        per_client=max(1, self.plan.large_messages // clients))
        return run_load(spec, target.pids, client_processes(size, clients))

    def profile(self, site: Site, user: str, target: Target,
                pid: int) -> dict[str, Any] | None:
        """The 2 KB, 8-client run once more, with py-spy attached."""
        output = self.root / "profile.txt"
        spy: list[subprocess.Popen[bytes] | None] = []

        def attach() -> None:
            spy.append(profile.start(pid, self.plan.duration, output))

        result = self.load(site, user, target, 2 * KB, 8, on_go=attach)
        if not spy or spy[0] is None:
            self.notes.append("py-spy is not installed: no profile")
            return None
        found = profile.finish(spy[0], output)
        found["run"] = {"size": 2 * KB, "clients": 8,
                        "msgs_per_s": result["msgs_per_s"],
                        "note": "measured with py-spy attached; not used in the figures"}
        return found

    # -- 2. OpenPGP ------------------------------------------------------------------

    def openpgp_cost(self) -> list[dict[str, Any]]:
        spec = Spec(port=0, size=0, clients=1, sender=f"alice@{LOCAL}",
                    rcpt=f"bob@{PEER}")
        rows, notes = cost.measure(list(self.plan.openpgp_sizes),
                                   self.plan.openpgp_runs, self.plan.gpg_runs,
                                   body_of, lambda body: message(spec, 0, 0, body))
        self.notes.extend(notes)
        for row in rows:
            _say(report.openpgp_line(row))
        return rows

    # -- 3. End to end ----------------------------------------------------------------

    def e2e(self, capacity: float | None) -> dict[str, Any]:
        with self.phase():
            return self._e2e(capacity)

    def _e2e(self, capacity: float | None) -> dict[str, Any]:
        if not capacity:
            return {"p50_ms": None, "p99_ms": None,
                    "note": "no gateway capacity was measured to set the rate"}
        ours = self._bare_site("e2e-ours", LOCAL)
        theirs = self._bare_site("e2e-theirs", PEER)
        alice = ours.add_user("alice")
        bob = theirs.add_user("bob")
        ours.add_peer(PEER, theirs.domain_key(), next_hop="localhost:9")
        theirs.add_peer(LOCAL, ours.domain_key(), next_hop="localhost:9")
        a = self._gateway(ours, {"BEEPMAIL_DELIVERY__CA_FILE": str(theirs.cert)})
        b = self._gateway(theirs, {"BEEPMAIL_DELIVERY__CA_FILE": str(ours.cert)})
        ours.set_next_hop(PEER, f"localhost:{b.ports['inbound']}")
        theirs.set_next_hop(LOCAL, f"localhost:{a.ports['inbound']}")
        # The SMTP handlers keep the domain table for 2 s.
        time.sleep(2.5)

        pair = Pair(a, b, alice, bob, ours.cert, theirs.database)
        found = self._e2e_at(pair, capacity / 2, self.plan.e2e_duration)
        found["note"] = ("from the scheduled start of a submission at gateway A "
                         "(MAIL FROM) to the first sight of its mailbox entry row in "
                         "gateway B's database, polled every 5 ms; seeing it over "
                         "IMAP is not measured yet")
        _say(report.e2e_line(found))
        # The same path with one message at a time: the floor under the figure.
        low = self._e2e_at(pair, LOW_RATE, self.plan.e2e_low_duration)
        found["low_rate"] = {key: low[key] for key in (
            "rate_msgs_per_s", "p50_ms", "p99_ms", "submitted", "delivered")}
        _say("at a low rate: " + report.e2e_line(low))
        return found

    def _e2e_at(self, pair: Pair, rate: float, duration: float) -> dict[str, Any]:
        watcher = MailboxWatcher(pair.database)
        watcher.start()
        try:
            result = run_load({
                "port": pair.a.ports["submission"], "size": 2 * KB, "clients": 8,
                "sender": pair.sender, "rcpt": pair.rcpt, "cafile": str(pair.cafile),
                "password": PASSWORD, "duration": duration, "rate": rate,
                "record": True}, [pair.a.pid, pair.b.pid])
            records = sorted(result["records"])
            queued = [(scheduled, _queue_id(reply))
                      for scheduled, _start, _end, reply in records]
            seen = watcher.wait_for({qid for _, qid in queued if qid},
                                    self.plan.e2e_wait)
        finally:
            watcher.stop()

        timed = sorted((scheduled, (seen[qid] - scheduled) * 1000)
                       for scheduled, qid in queued if qid in seen)
        latencies = sorted(ms for _, ms in timed)
        missing = sum(1 for _, qid in queued if qid not in seen)
        tenth = max(1, len(timed) // 10)
        found: dict[str, Any] = {
            "p50_ms": report.percentile(latencies, 50),
            "p99_ms": report.percentile(latencies, 99) if not missing else None,
            "rate_msgs_per_s": round(rate, 2), "submitted": len(queued),
            "delivered": len(latencies), "not_delivered": missing,
            "delivered_msgs_per_s": _arrival_rate(sorted(seen[q] for _, q in queued
                                                         if q in seen)),
            "submission_errors": result["errors"],
            # Submissions start late when gateway A accepts more slowly than the
            # schedule asks; the latencies above count from the schedule.
            "submitted_msgs_per_s": _arrival_rate([r[1] for r in records]),
            "start_lag_p50_ms": report.percentile(
                sorted((r[1] - r[0]) * 1000 for r in records), 50),
            "start_lag_max_ms": round(max((r[1] - r[0]) * 1000 for r in records), 1)
            if records else None,
            # A p50 that grows from the first tenth to the last: a queue that
            # grows, that is a rate above what the pair can carry.
            "first_tenth_p50_ms": report.percentile(
                sorted(ms for _, ms in timed[:tenth]), 50),
            "last_tenth_p50_ms": report.percentile(
                sorted(ms for _, ms in timed[-tenth:]), 50),
            "max_ms": round(latencies[-1], 1) if latencies else None,
        }
        if missing:
            self.notes.append(
                f"End to end at {rate:.1f} msg/s: {missing} messages were not in the "
                f"mailbox {self.plan.e2e_wait:.0f} s after the last submission, so "
                "p99 is not known (null)")
        return found

    # -- 4. IMAP -----------------------------------------------------------------------

    def imap_steps(self) -> list[dict[str, Any]]:
        with self.phase():
            return self._imap_steps()

    def _imap_steps(self) -> list[dict[str, Any]]:
        count = self.plan.imap_messages
        made = imap.corpus(count)
        site = self._bare_site("imap", LOCAL)
        alice = site.add_user("alice")
        gateway = self._gateway(site, {"BEEPMAIL_DELIVERY__ENABLED": "false"})
        if "imaps" not in gateway.ports:
            self.notes.append("IMAP: the gateway has no IMAPS listener; not measured")
            return _no_imap()
        context = ssl.create_default_context(cafile=str(site.cert))

        start = time.monotonic()
        try:
            uids = imap.append_all(gateway.ports["imaps"], context, alice, PASSWORD,
                                   made.messages, self.plan.imap_fill_connections)
        except (imap.BenchError, OSError) as error:
            self.notes.append(f"IMAP bench error: filling the gateway's INBOX by APPEND "
                              f"failed ({type(error).__name__}: {error}); not measured")
            return _no_imap()
        fill_s = time.monotonic() - start
        self.imap_setup = {
            "messages": count, "octets": made.octets,
            "from_hits": made.from_hits, "body_hits": made.body_hits,
            "gateway_fill_s": round(fill_s, 1),
            "gateway_fill_msgs_per_s": round(count / fill_s, 1),
            "gateway_fill_connections": self.plan.imap_fill_connections,
            "gateway_fill": ("APPEND over IMAPS, pipelined with LITERAL+, "
                             f"{imap.APPEND_WINDOW} ahead per connection"),
            "gateway_rss_mb_after_fill": round(gateway.rss_mb(), 1),
        }
        _say(f"gateway INBOX filled: {count} messages, {made.octets / MB:.1f} MiB by "
             f"APPEND in {fill_s:.1f} s ({count / fill_s:.0f} msg/s)")

        servers = [imap.Server("gateway", gateway.ports["imaps"], uids, alice, PASSWORD,
                               context)]
        dovecot = self._dovecot(site, alice, made)
        if dovecot is not None:
            # Dovecot numbers new Maildir files in the order of their names,
            # which is the messages' order; the octets of the 100 bodies
            # fetched by UID check that on every run.
            servers.append(imap.Server("dovecot", dovecot.port,
                                       list(range(1, count + 1)), alice, PASSWORD,
                                       context))
        self.imap_setup["tls"] = {server.name: imap.tls_of(server) for server in servers}
        rows = imap.measure(made, servers, self.plan.imap_runs, _say)
        self.imap_setup["gateway_rss_mb_after_steps"] = round(gateway.rss_mb(), 1)
        self._imap_notes(rows, site, dovecot)
        return rows

    def _imap_notes(self, rows: list[dict[str, Any]], site: Site,
                    dovecot: Dovecot | None) -> None:
        """What went wrong, said where people read: a difference in the answers,
        a failed step, an error either server logged."""
        for row in rows:
            if not row["counts_match"]:
                self.notes.append(
                    f"IMAP bench error: {row['step']}: the answers differ "
                    f"(beep-mail {row['gateway_answer']}, Dovecot "
                    f"{row['dovecot_answer']}, expected {row['expected']}); its "
                    "ratio is left out of the aims")
            for name, error in row.get("errors", {}).items():
                self.notes.append(f"IMAP bench error: {row['step']} failed on {name}: "
                                  f"{error[:300]}")
        crashes = _lines_with(site.root / "serve.log", ("command-crash", "Traceback"))
        if crashes:
            self.notes.append(f"IMAP: the gateway logged {len(crashes)} crash line(s) "
                              f"during the phase, the first: {crashes[0][:300]}")
        if dovecot is not None:
            errors = _lines_with(dovecot.root / "log/dovecot.log",
                                 (": Error:", ": Panic:", ": Fatal:"))
            if errors:
                self.notes.append(f"IMAP: Dovecot logged {len(errors)} error(s), the "
                                  f"first: {errors[0][:300]}")

    def _dovecot(self, site: Site, user: str, made: imap.Corpus) -> Dovecot | None:
        root = Path(tempfile.mkdtemp(prefix="beepbench-dovecot-"))
        self.stack.callback(shutil.rmtree, root, True)
        dovecot = Dovecot(root, site.cert, site.key, user, PASSWORD, password_hash())
        try:
            dovecot.prepare()
            start = time.monotonic()
            imap.write_maildir(dovecot.maildir, made.messages)
            fill_s = time.monotonic() - start
            dovecot.start()
        except DovecotUnavailable as error:
            self.notes.append(f"Dovecot could not run: {error}")
            self.dovecot = {"ran": False, "reason": str(error)}
            return None
        self.stack.callback(dovecot.stop)
        self.notes.extend(dovecot.notes)
        self.notes.append(f"Dovecot: a private instance, IMAPS with the gateway's "
                          f"certificate, the user in a passwd-file ({dovecot.scheme}), "
                          "the same messages as files in a Maildir; its index and "
                          "cache are built in the warm-up runs")
        self.imap_setup["dovecot_fill_s"] = round(fill_s, 1)
        self.imap_setup["dovecot_fill"] = "files written into its Maildir's cur/"
        self.dovecot = {
            "ran": True, "version": dovecot.version(), "tls": "implicit (IMAPS)",
            "password_scheme": dovecot.scheme,
            "mail": "Maildir, its default index and cache beside it, built in the "
                    "warm-up runs",
        }
        return dovecot

    # -- 5. Memory ---------------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        with self.phase():
            return self._memory()

    def _memory(self) -> dict[str, Any]:
        site, peer = self._site("memory")
        alice = site.add_user("alice")
        site.add_peer(PEER, peer, next_hop="localhost:9")
        size, clients = self.plan.memory_size, self.plan.memory_clients
        gateway = self._gateway(site, {
            "BEEPMAIL_DELIVERY__ENABLED": "false",
            "BEEPMAIL_SMTP__MAX_MESSAGE_SIZE": str(size + 8 * MB),
        })
        idle = gateway.rss_mb()
        spec = {"port": gateway.ports["submission"], "size": size, "clients": clients,
                "sender": alice, "rcpt": f"bob@{PEER}", "cafile": str(site.cert),
                "password": PASSWORD, "per_client": 1}
        result = run_load(dict(spec), [gateway.pid], client_processes(size, clients))
        peak = gateway.peak_rss_mb()
        gateway.stop()

        # The same messages into the bare aiosmtpd server: what aiosmtpd and
        # Python hold before any work of ours.
        sink = self._sink(site, plain=False)
        sink_idle = rss_mb(sink.pid)
        run_load({**spec, "port": sink.port}, [sink.pid], client_processes(size, clients))
        sink_peak = peak_rss_mb(sink.pid)

        in_flight = clients * size / MB
        found = {
            "peak_rss_mb": round(peak, 1),
            "in_flight_mb": round(in_flight, 1),
            "clients": clients, "message_mb": round(size / MB, 1),
            "idle_rss_mb": round(idle, 1), "accepted": result["messages"],
            "errors": result["errors"], "error_samples": result["error_samples"],
            "sink_peak_rss_mb": round(sink_peak, 1),
            "sink_idle_rss_mb": round(sink_idle, 1),
            # Resident MiB above idle per MiB in flight: the copies, roughly.
            "rss_per_mb_in_flight": round((peak - idle) / in_flight, 2),
            "sink_rss_per_mb_in_flight": round((sink_peak - sink_idle) / in_flight, 2),
            "note": ("VmHWM of the gateway process (every thread) over its whole "
                     "life, beside the bare aiosmtpd server's under the same load; "
                     "MB here means MiB"),
        }
        _say(report.memory_line(found))
        return found

    # -- parts -------------------------------------------------------------------------

    @contextmanager
    def phase(self) -> Iterator[None]:
        """What a phase starts is stopped when it ends: nothing of it runs on
        while the next phase measures."""
        outer = self.stack
        with ExitStack() as inner:
            self.stack = inner
            try:
                yield
            finally:
                self.stack = outer

    def _site(self, name: str) -> tuple[Site, openpgp.PublicKey]:
        """A site, and the key of a correspondent whose secret stays elsewhere."""
        site = self._bare_site(name, LOCAL)
        peer = openpgp.generate(f"gateway of {PEER}", f"postmaster@{PEER}",
                                passphrase="not used")
        return site, peer.public

    def _bare_site(self, name: str, domain: str) -> Site:
        return make_site(self.root / name, domain)

    def _gateway(self, site: Site, env: dict[str, str]) -> Gateway:
        gateway = Gateway(site, env).start()
        self.stack.callback(gateway.stop)
        return gateway

    def _sink(self, site: Site, *, plain: bool) -> Child:
        args = ["--plain"] if plain else ["--cert", str(site.cert), "--key",
                                          str(site.key)]
        sink = Child([sys.executable, "-m", "bench.sink", *args]).start()
        self.stack.callback(sink.stop)
        return sink

    def _postfix(self, site: Site, user: str) -> Postfix | None:
        relay_sink = self._sink(site, plain=True)
        root = Path(tempfile.mkdtemp(prefix="beepbench-postfix-"))
        self.stack.callback(shutil.rmtree, root, True)
        postfix = Postfix(root, relay_sink.port, site.cert, site.key, user, PASSWORD,
                          PEER)
        try:
            postfix.start()
        except PostfixUnavailable as error:
            self.notes.append(f"Postfix could not run: {error}")
            self.postfix = {"ran": False, "reason": str(error)}
            return None
        self.stack.callback(postfix.stop)
        self.notes.extend(postfix.notes)
        self.postfix = {
            "ran": True, "version": postfix.version(), "starttls": True,
            "auth": postfix.auth, "queue": "its own, fsynced before 250",
            "relay": "to a bare aiosmtpd server on another loopback port, no TLS",
        }
        if postfix.auth:
            self.notes.append("Postfix: a private instance with STARTTLS and AUTH "
                              "(Cyrus SASL, sasldb), relaying to a bare aiosmtpd sink "
                              "on another loopback port")
        return postfix


@dataclass
class Pair:
    """Two gateways that exchange mail, and who writes to whom."""

    a: Gateway
    b: Gateway
    sender: str
    rcpt: str
    cafile: Path
    database: Path


@dataclass
class Target:
    port: int
    pids: Callable[[], list[int]]
    auth: bool = True                 # False: Postfix without SASL (said in notes)


class Child:
    """A bench child process (the sink) that prints its port, stopped by pid."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> Child:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": _here()})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"{self.argv[2]} did not start")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def run_load(spec: dict[str, Any], server_pids: Callable[[], list[int]] | list[int],
             procs: int = 1) -> dict[str, Any]:
    """Load children: wait until all are ready, start them together, collect."""
    on_go = spec.pop("on_go", None)
    pids = server_pids if callable(server_pids) else (lambda: list(server_pids))
    shares = [spec["clients"] // procs + (i < spec["clients"] % procs)
              for i in range(procs)]
    children = [subprocess.Popen(
        [sys.executable, "-m", "bench.load",
         json.dumps({**spec, "clients": n, "first": sum(shares[:i])})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": _here()}) for i, n in enumerate(shares) if n]
    limit = (spec.get("warmup", 0) + spec.get("duration", 0) + LOAD_GRACE
             + (spec["size"] / MB) * 4 * spec["clients"])
    timers = [threading.Timer(limit, child.kill) for child in children]
    for timer in timers:
        timer.start()
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the load clients did not get ready")
        before = _cpu(pids())
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        if on_go is not None:
            on_go()
        lines = [child.stdout.readline() for child in children if child.stdout]
        after = _cpu(pids())
        for child in children:
            child.wait(30)
    finally:
        for timer in timers:
            timer.cancel()
    if not all(lines):
        raise RuntimeError(f"a load child ended without results (port {spec['port']})")
    return _summary([json.loads(line) for line in lines], before, after)


def client_processes(size: int, clients: int) -> int:
    """Two client processes where one would come near a core of its own
    (measured: 32 small messages' sessions, or several large messages)."""
    return 2 if clients >= 32 or (clients >= 8 and size >= MB) else 1


def _summary(raws: list[dict[str, Any]], before: float, after: float
             ) -> dict[str, Any]:
    start = min(raw["window_start"] for raw in raws)
    window = max(raw["last_end"] for raw in raws) - start
    count = sum(raw["counted"] for raw in raws)
    octets = sum(raw["octets"] for raw in raws)
    wall = max(raw["wall_s"] for raw in raws)
    latencies = sorted(ms for raw in raws for ms in raw["latencies_ms"])
    ok = count > 0 and window > 0
    return {
        "messages": count,
        "msgs_per_s": round(count / window, 2) if ok else 0.0,
        "mb_per_s": round(octets / MB / window, 3) if ok else 0.0,
        "p50_ms": report.percentile(latencies, 50),
        "p99_ms": report.percentile(latencies, 99),
        "errors": sum(raw["errors"] for raw in raws),
        "error_samples": [text for raw in raws for text in raw["error_samples"]][:5],
        # The busiest client process's share of one core.
        "client_cpu": round(max(raw["client_cpu_s"] / raw["wall_s"] for raw in raws),
                            2) if wall else None,
        "client_processes": len(raws),
        "server_cpu": round((after - before) / wall, 2) if wall else None,
        "records": [record for raw in raws for record in raw["records"]],
    }


def _flat(system: str, result: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("msgs_per_s", "mb_per_s", "p50_ms", "p99_ms", "messages", "errors",
            "client_cpu", "client_processes", "server_cpu")
    if result is None:
        return {f"{system}_{key}": None for key in keys}
    flat = {f"{system}_{key}": result[key] for key in keys}
    if result["error_samples"]:
        flat[f"{system}_error_samples"] = result["error_samples"]
    return flat


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError):
            pass
    return total


class MailboxWatcher:
    """Sees mailbox entries appear in a gateway's SQLite store, by delivery key.

    Delivery of mail that came from a peer gateway files it under
    `t:<the sender's queue id>@<its host name>`, which is how a submission at
    one gateway is recognised in the other's store.
    """

    INTERVAL = 0.005

    def __init__(self, database: Path) -> None:
        self.database = database
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def _poll(self) -> None:
        connection = sqlite3.connect(self.database, timeout=5)
        last = 0
        try:
            while not self._stop.is_set():
                rows = connection.execute(
                    "SELECT id, delivery_key FROM mailbox_entries WHERE id > ? "
                    "ORDER BY id", (last,)).fetchall()
                now = time.monotonic()
                with self._lock:
                    for row_id, key in rows:
                        last = max(last, row_id)
                        found = re.match(r"t:([^@]+)@", key or "")
                        if found:
                            self.seen.setdefault(found.group(1), now)
                connection.rollback()
                time.sleep(self.INTERVAL)
        finally:
            connection.close()

    def wait_for(self, wanted: set[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if wanted <= self.seen.keys():
                    break
            time.sleep(0.05)
        with self._lock:
            return dict(self.seen)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _no_imap() -> list[dict[str, Any]]:
    return [{"step": step, "gateway_ms": None, "dovecot_ms": None}
            for step in imap.STEPS]


def _lines_with(path: Path, marks: tuple[str, ...]) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines()
            if any(mark in line for mark in marks)]


def _client_note(rows: list[dict[str, Any]]) -> str:
    """Whether the clients, not the servers, could have set the pace."""
    shares = [row[f"{system}_client_cpu"] for row in rows
              for system in ("gateway", "sink", "postfix")
              if row.get(f"{system}_client_cpu") is not None]
    busiest = max(shares, default=0.0)
    text = (f"SMTP clients: asyncio + aiosmtplib in one child process, two for 32 "
            f"clients or 8 large messages (`*_client_processes`); the busiest used "
            f"{busiest:.2f} of a core (`*_client_cpu`)")
    if busiest > 0.85:
        text += ", near a core of its own: that run's figure may be the clients'"
    return text + ("; `*_server_cpu` is the server's share of a core over the same "
                   "run (for Postfix, its daemons that lived through the run)")


def _arrival_rate(times: list[float]) -> float | None:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 2)


def _queue_id(reply: str) -> str | None:
    found = re.search(r"queued as (\S+)", reply)
    return found.group(1) if found else None


def _here() -> str:
    """The repository root, so that children find `bench` and `beep_mail`."""
    return str(Path(__file__).resolve().parent.parent)


def _say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="the short run")
    parser.add_argument("--out", type=Path, default=Path(_here()) / "bench/results")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs, databases)")
    parser.add_argument("--only", action="append", choices=PHASES, metavar="PHASE",
                        help="run only this phase (repeatable: %(choices)s); writes "
                             "partial.json and leaves latest.json as it is")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.no_profile:
        plan = Plan(**{**plan.__dict__, "profile": False})
    wanted = set(args.only or PHASES)

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="beepbench-"))
    results: dict[str, Any] = {"plan": plan.name, "machine": machine.describe()}
    results["machine"]["versions"]["dovecot"] = dovecot_version()
    if args.only:
        results["only"] = sorted(wanted, key=PHASES.index)
    _say(report.machine_line(results["machine"]))
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, root, True)
        else:
            _say(f"keeping {root}")
        bench = Bench(plan, root, stack)
        notes: list[str] = []

        def phase(title: str) -> None:
            _say(f"\n== {title}  [{time.monotonic() - started:.0f} s]")

        if "smtp" in wanted:
            phase("SMTP acceptance (STARTTLS + AUTH, one session per client)")
            smtp, found = bench.smtp()
            results["smtp"] = smtp
            results["profile"] = found
            results["postfix"] = bench.postfix
            notes.append(_client_note(smtp))
        if "openpgp" in wanted:
            phase("OpenPGP per message (median ms)")
            results["openpgp"] = bench.openpgp_cost()
        if "e2e" in wanted:
            phase("End to end (two gateways, half the 2 KB 8-client capacity)")
            capacity = next((r["gateway_msgs_per_s"] for r in results.get("smtp", [])
                             if r["size"] == 2 * KB and r["clients"] == 8), None)
            results["e2e"] = bench.e2e(capacity)
        if "imap" in wanted:
            phase(f"IMAP ({plan.imap_messages} messages in INBOX; median of "
                  f"{plan.imap_runs} runs, ms)")
            results["imap"] = bench.imap_steps()
            results["imap_setup"] = bench.imap_setup
            results["dovecot"] = bench.dovecot
        if "memory" in wanted:
            phase(f"Memory ({plan.memory_clients} x {size_name(plan.memory_size)} "
                  "at once)")
            results["memory"] = bench.memory()
        results["notes"] = bench.notes + notes

    results["aims"] = report.aims(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    name = "partial" if args.only else "latest"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    drawn = not args.only and report.plot(results, args.out / "latest.png")
    _say("")
    _say(report.table(results))
    wrote = f"\nwrote {args.out / f'{name}.json'}"
    if drawn:
        wrote += f" and {args.out / 'latest.png'}"
    elif not args.only:
        wrote += " (no plot: matplotlib is missing)"
    _say(wrote)
    return 0


if __name__ == "__main__":
    sys.exit(main())

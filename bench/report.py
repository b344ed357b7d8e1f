"""The bench's results as people read them: progress lines, the table, the aims, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SYSTEMS = (("gateway", "beep-mail"), ("sink", "bare aiosmtpd"), ("postfix", "Postfix"))


def percentile(ordered: list[float], p: float) -> float | None:
    """Linear interpolation between the two nearest ranks; None for no data."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * p / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 2)


def size_name(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size // (1024 * 1024)} MB"
    return f"{size // 1024} KB"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _num(value: float | None, width: int = 8, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _times(value: float | None, width: int = 8) -> str:
    return f"{value:{width - 1}.2f}x" if value is not None else f"{'-':>{width}}"


# -- progress lines, printed as each measure ends ---------------------------------------------

def machine_line(machine: dict[str, Any]) -> str:
    versions = machine["versions"]
    return (f"{machine['cores']} cores, {machine['memory_mb']} MiB, {machine['cpu']}; "
            f"Python {machine['python']}, aiosmtpd {versions['aiosmtpd']}, PGPy "
            f"{versions['PGPy']}, GnuPG {versions['gnupg']}, Postfix "
            f"{versions['postfix']}, Dovecot {versions.get('dovecot')}; load average "
            f"{machine['load_average_at_start']}")


def smtp_line(row: dict[str, Any]) -> str:
    parts = [f"{size_name(row['size']):>6} x{row['clients']:<3}"]
    for key, name in SYSTEMS:
        rate = row.get(f"{key}_msgs_per_s")
        parts.append(f"{name} {rate if rate is not None else '-'} msg/s")
    return "  ".join(parts)


def openpgp_line(row: dict[str, Any]) -> str:
    return (f"{size_name(row['size']):>6}  encrypt+sign: beep-mail {row['gateway_ms']} ms, "
            f"gpg {row['gpg_spawn_ms']} ms, pysequoia {row['pysequoia_ms']} ms; "
            f"decrypt+verify: {row['gateway_decrypt_ms']} / "
            f"{row['gpg_spawn_decrypt_ms']} / {row['pysequoia_decrypt_ms']} ms")


def e2e_line(e2e: dict[str, Any]) -> str:
    return (f"p50 {e2e['p50_ms']} ms, p99 {e2e['p99_ms']} ms at "
            f"{e2e.get('rate_msgs_per_s')} msg/s asked, "
            f"{e2e.get('submitted_msgs_per_s')} msg/s submitted (start lag p50 "
            f"{e2e.get('start_lag_p50_ms')} ms); delivered "
            f"{e2e.get('delivered')} of {e2e.get('submitted')} at "
            f"{e2e.get('delivered_msgs_per_s')} msg/s; p50 of the first tenth "
            f"{e2e.get('first_tenth_p50_ms')} ms, of the last "
            f"{e2e.get('last_tenth_p50_ms')} ms")


def memory_line(memory: dict[str, Any]) -> str:
    return (f"peak RSS {memory['peak_rss_mb']} MiB with {memory['clients']} x "
            f"{memory['message_mb']} MiB in flight ({memory['accepted']} accepted, "
            f"{memory['errors']} errors; idle {memory['idle_rss_mb']} MiB, "
            f"{memory.get('rss_per_mb_in_flight')} MiB above idle per MiB in flight); "
            "bare aiosmtpd "
            f"{memory.get('sink_peak_rss_mb')} MiB (idle {memory.get('sink_idle_rss_mb')}"
            f" MiB, {memory.get('sink_rss_per_mb_in_flight')} per MiB)")


# -- the table -----------------------------------------------------------------------------

def table(results: dict[str, Any]) -> str:
    """Every phase that ran, then the aims and the notes."""
    sections = [(key, part) for key, part in (
        ("smtp", _smtp_table), ("openpgp", _openpgp_table), ("e2e", _e2e_table),
        ("imap", _imap_table), ("memory", _memory_table)) if key in results]
    lines: list[str] = []
    for _, part in sections:
        lines += [*part(results), ""]

    lines.append("Aims")
    for aim in results["aims"]:
        state = {True: "met", False: "MISSED", None: "not measured"}[aim["met"]]
        measured = aim["measured"]
        detail = "" if measured is None else f" (measured {measured}, target " \
            f"{aim['comparison']} {aim['target']}"
        if aim.get("factor_to_go"):
            detail += f"; {aim['factor_to_go']}x to go"
        if detail:
            detail += ")"
        lines.append(f"  {state:<13} {aim['aim']}{detail}")

    if results.get("notes"):
        lines += ["", "Notes"] + [f"  - {note}" for note in results["notes"]]
    return "\n".join(lines)


def _smtp_table(results: dict[str, Any]) -> list[str]:
    lines = [("SMTP acceptance: messages/s; DATA-to-250 p50/p99 in ms; ratio of "
              "beep-mail to each baseline"),
             (f"{'size':>6} {'clients':>7} | {'beep-mail':>9} {'MB/s':>7} {'p50':>7} "
              f"{'p99':>8} | {'aiosmtpd':>8} {'p50':>6} | {'Postfix':>8} {'p50':>6} | "
              f"{'/aiosmtpd':>9} {'/Postfix':>8}")]
    for row in results["smtp"]:
        lines.append(
            f"{size_name(row['size']):>6} {row['clients']:>7} | "
            f"{_num(row['gateway_msgs_per_s'], 9)} {_num(row['gateway_mb_per_s'], 7, 2)} "
            f"{_num(row['gateway_p50_ms'], 7)} {_num(row['gateway_p99_ms'], 8)} | "
            f"{_num(row['sink_msgs_per_s'])} {_num(row['sink_p50_ms'], 6)} | "
            f"{_num(row['postfix_msgs_per_s'])} {_num(row['postfix_p50_ms'], 6)} | "
            f"{_times(ratio(row['gateway_msgs_per_s'], row['sink_msgs_per_s']), 9)} "
            f"{_times(ratio(row['gateway_msgs_per_s'], row['postfix_msgs_per_s']))}")
    return lines


def _openpgp_table(results: dict[str, Any]) -> list[str]:
    lines = [("OpenPGP per message: median ms (gpg spawned per message; "
              "pysequoia in process)"),
             (f"{'size':>6} {'step':<15} | {'beep-mail':>9} {'gpg':>8} "
              f"{'pysequoia':>9} | {'gpg/ours':>8} {'ours/pysequoia':>14}")]
    for row in results["openpgp"]:
        for step, suffix in (("encrypt+sign", ""), ("decrypt+verify", "_decrypt")):
            ours = row[f"gateway{suffix}_ms"]
            gpg = row[f"gpg_spawn{suffix}_ms"]
            pysequoia = row[f"pysequoia{suffix}_ms"]
            lines.append(
                f"{size_name(row['size']):>6} {step:<15} | {_num(ours, 9, 2)} "
                f"{_num(gpg, 8, 2)} {_num(pysequoia, 9, 2)} | {_times(ratio(gpg, ours))} "
                f"{_times(ratio(ours, pysequoia), 14)}")
        lines.append(f"{'':>6} {'PGP/MIME whole':<15} | "
                     f"{_num(row['gateway_pgpmime_ms'], 9, 2)}")
    return lines


def _e2e_table(results: dict[str, Any]) -> list[str]:
    e2e = results["e2e"]
    lines = [("End to end (submission at A to the mailbox entry row at B, not "
              "yet over IMAP)"),
             e2e_line(e2e) if "submitted" in e2e else str(e2e.get("note"))]
    if e2e.get("low_rate"):
        low = e2e["low_rate"]
        lines.append(f"at {low['rate_msgs_per_s']} msg/s (the floor): p50 "
                     f"{low['p50_ms']} ms, p99 {low['p99_ms']} ms, delivered "
                     f"{low['delivered']} of {low['submitted']}")
    return lines


def _imap_table(results: dict[str, Any]) -> list[str]:
    setup = results.get("imap_setup") or {}
    runs = len(next((row["gateway_runs_ms"] for row in results["imap"]
                     if row.get("gateway_runs_ms")), []))
    lines = [(f"IMAP over TLS, {setup.get('messages', '?')} messages in INBOX: median "
              f"ms of {runs} runs, each on a fresh connection; ratio of beep-mail to "
              "Dovecot"),
             f"{'step':<44} | {'beep-mail':>9} {'Dovecot':>9} | {'ratio':>8}  answers"]
    for row in results["imap"]:
        agree = {True: "agree", False: "DIFFER", None: "-"}[row.get("counts_match")]
        if row.get("errors"):
            agree = "FAILED on " + ", ".join(row["errors"])
        lines.append(f"{row['step']:<44} | {_num(row['gateway_ms'], 9)} "
                     f"{_num(row['dovecot_ms'], 9)} | "
                     f"{_times(ratio(row['gateway_ms'], row['dovecot_ms']))}  {agree}")
        if row.get("gateway_parts_ms"):
            lines.append(f"{'':<4}{' / '.join(row['gateway_parts_ms'])}: "
                         f"beep-mail {_parts(row.get('gateway_parts_ms'))} ms, "
                         f"Dovecot {_parts(row.get('dovecot_parts_ms'))} ms")
    if setup.get("gateway_fill_s") is not None:
        lines.append(f"beep-mail's INBOX filled by APPEND in {setup['gateway_fill_s']} s "
                     f"({setup['gateway_fill_msgs_per_s']} msg/s, "
                     f"{setup['gateway_fill_connections']} connection(s))")
    return lines


def _parts(parts: dict[str, float] | None) -> str:
    return " / ".join(f"{ms}" for ms in parts.values()) if parts else "-"


def _memory_table(results: dict[str, Any]) -> list[str]:
    return ["Memory", memory_line(results["memory"])]


# -- the aims of the issue -----------------------------------------------------------------

def aims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The aims of the phases that ran."""
    found = []

    def smtp(size: int, clients: int) -> dict[str, Any]:
        return next((r for r in results.get("smtp", [])
                     if r["size"] == size and r["clients"] == clients), {})

    for size in (2 * 1024, 100 * 1024) if "smtp" in results else ():
        row = smtp(size, 8)
        found.append(_aim(
            f"SMTP {size_name(size)}, 8 clients: at least 0.6 of bare aiosmtpd",
            ratio(row.get("gateway_msgs_per_s"), row.get("sink_msgs_per_s")),
            ">=", 0.6))
    for size in (2 * 1024, 100 * 1024) if "smtp" in results else ():
        row = smtp(size, 8)
        found.append(_aim(
            f"stretch: SMTP {size_name(size)}, 8 clients: Postfix's relay figure",
            ratio(row.get("gateway_msgs_per_s"), row.get("postfix_msgs_per_s")),
            ">=", 1.0))

    for row in results.get("openpgp", []):
        for step, suffix in (("encrypt+sign", ""), ("decrypt+verify", "_decrypt")):
            ours = row[f"gateway{suffix}_ms"]
            found.append(_aim(
                f"OpenPGP {size_name(row['size'])} {step}: at least 10x faster than "
                "gpg spawned per message",
                ratio(row[f"gpg_spawn{suffix}_ms"], ours), ">=", 10.0))
            found.append(_aim(
                f"OpenPGP {size_name(row['size'])} {step}: within 2x of pysequoia",
                ratio(ours, row[f"pysequoia{suffix}_ms"]), "<=", 2.0))

    for step in results.get("imap", []):
        # Answers that differ make the times incomparable: no ratio then.
        comparable = step.get("counts_match") is not False
        found.append(_aim(f"IMAP {step['step']}: within 2x of Dovecot",
                          ratio(step["gateway_ms"], step["dovecot_ms"])
                          if comparable else None, "<=", 2.0))

    if "memory" in results:
        memory = results["memory"]
        clients = memory.get("clients")
        found.append(_aim(
            f"Memory: peak RSS under 1 GiB with {clients} x 25 MB in flight"
            + (" (the aim is for 10)" if clients != 10 else ""),
            ratio(memory.get("peak_rss_mb"), 1024), "<", 1.0))

    if "e2e" in results:
        found.append(_aim("End to end: p99 under one second at half capacity",
                          ratio(results["e2e"].get("p99_ms"), 1000), "<", 1.0))
    return found


def _aim(text: str, measured: float | None, comparison: str,
         target: float) -> dict[str, Any]:
    """`measured` is a ratio; `factor_to_go` is how far it is from the target."""
    if measured is None:
        return {"aim": text, "measured": None, "comparison": comparison,
                "target": target, "met": None, "factor_to_go": None}
    if comparison.startswith(">"):
        met = measured >= target
        to_go = target / measured if measured else None
    else:
        met = measured < target if comparison == "<" else measured <= target
        to_go = measured / target
    return {"aim": text, "measured": measured, "comparison": comparison,
            "target": target, "met": met,
            "factor_to_go": None if met or to_go is None else round(to_go, 2)}


# -- the plot ------------------------------------------------------------------------------

def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against clients: a panel per size, a line per system; then,
    when IMAP was measured, its steps' times beside Dovecot's."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = sorted({row["size"] for row in results["smtp"]})
    imap = [row for row in results.get("imap", []) if row.get("gateway_ms") is not None]
    panels = len(sizes) + (1 if imap else 0)
    figure, axes = pyplot.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    if imap:
        _imap_panel(axes[0][-1], imap)
    styles = {"gateway": ("tab:blue", "o", "-"), "sink": ("tab:gray", "s", "--"),
              "postfix": ("tab:orange", "^", ":")}
    for axis, size in zip(axes[0], sizes, strict=False):
        rows = sorted((r for r in results["smtp"] if r["size"] == size),
                      key=lambda r: r["clients"])
        for key, name in SYSTEMS:
            points = [(r["clients"], r[f"{key}_msgs_per_s"]) for r in rows
                      if r.get(f"{key}_msgs_per_s") is not None]
            if not points:
                continue
            color, marker, line = styles[key]
            axis.plot([p[0] for p in points], [p[1] for p in points], color=color,
                      marker=marker, linestyle=line, label=f"{name}, {size_name(size)}")
        axis.set_xscale("log", base=2)
        clients = [r["clients"] for r in rows]
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_ylim(bottom=0)
        axis.set_title(f"{size_name(size)} messages")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("messages/s accepted")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    machine = results["machine"]
    figure.suptitle(f"SMTP acceptance over STARTTLS + AUTH"
                    f"{', IMAP beside Dovecot' if imap else ''} ({results['plan']} run, "
                    f"{machine['cores']} cores, Python {machine['python']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True


def _imap_panel(axis: Any, rows: list[dict[str, Any]]) -> None:
    """Median ms per step, beep-mail beside Dovecot, on a log scale."""
    names = {"FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)": "FETCH 1:*\nENVELOPE",
             "UID FETCH 100 bodies": "UID FETCH\n100 bodies",
             "login+SELECT": "login\n+SELECT"}
    places = range(len(rows))
    for offset, key, name, color in ((-0.2, "gateway", "beep-mail", "tab:blue"),
                                     (0.2, "dovecot", "Dovecot", "tab:green")):
        values = [row.get(f"{key}_ms") or 0 for row in rows]
        axis.bar([x + offset for x in places], values, width=0.4, color=color,
                 label=name)
    axis.set_xticks(list(places), [names.get(r["step"], r["step"].replace(" ", "\n", 1))
                                   for r in rows], fontsize="small")
    axis.set_yscale("log")
    axis.set_ylabel("ms, median")
    axis.set_title(f"IMAP, {rows[0].get('messages')} messages in INBOX")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize="small")

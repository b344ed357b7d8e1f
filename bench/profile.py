"""Where the gateway's submission path spends its time: py-spy, summarised.

py-spy samples the gateway process from outside (every thread, native
frames left out, idle threads not counted) while the bench's clients
submit, and writes collapsed stacks. This module turns them into the few
lines `docs/performance.md` needs: the functions with the most samples of
their own, the ones with the most samples beneath them, and the share of
each thread (the event loop, the database thread, the OpenPGP threads).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 250  # samples per second
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start(pid: int, duration: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on `pid` for `duration` seconds; None when py-spy is missing."""
    tool = py_spy()
    if tool is None:
        return None
    return subprocess.Popen(
        [tool, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
         "--rate", str(RATE), "--format", "raw", "--threads", "--nonblocking",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], output: Path) -> dict[str, Any]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not output.exists():
        return {"tool": "py-spy", "error": err.decode(errors="replace")[-300:]}
    return summarise(output.read_text())


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Shares of all samples: per thread; per function alone; per function of
    ours with everything it calls (entry points and the CLI left out); per
    piece of work handed to a thread pool (database calls, OpenPGP)."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    work: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        first, *frames = stack.split(";")
        if not frames:
            continue
        total += count
        threads[_thread_name(first)] += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames if _ours(f)}:
            ours[name] += count
        item = _work_item(frames)
        if item is not None:
            work[item] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "share": round(n / total, 3)}
                for name, n in counter.most_common(top)]

    return {"tool": "py-spy", "rate_hz": RATE, "samples": total,
            "threads": [{"thread": t["function"], "share": t["share"]}
                        for t in shares(threads)],
            "self": shares(own), "inclusive_ours": shares(ours),
            "work_items": shares(work)}


def _work_item(frames: list[str]) -> str | None:
    """The function a thread pool runs (through Database.run, the one it wraps)."""
    for i, frame in enumerate(frames[:-1]):
        if frame.startswith("_WorkItem.run "):
            item = frames[i + 1]
            if item.startswith("Database._call ") and i + 2 < len(frames):
                item = frames[i + 2]
            return _short(item)
    return None


def _thread_name(frame: str) -> str:
    """`thread (123): db_0` becomes `db`: one name for each pool."""
    if not frame.startswith("thread ("):
        return "other"
    name = frame.partition(": ")[2] or frame
    return re.sub(r"_\d+$", "", name)


def _ours(frame: str) -> bool:
    return "beep_mail/" in frame and not any(
        part in frame for part in _ENTRY_POINTS)


_ENTRY_POINTS = ("beep_mail/__main__.py", "beep_mail/cli/", "beep_mail/service.py")


def _short(frame: str) -> str:
    """`Class.function (path/to/module.py:123)` becomes `module.Class.function`."""
    found = _FRAME.match(frame)
    if found is None:
        return frame
    path = found.group("file")
    module = re.sub(r"^.*?(site-packages/|lib/python3\.\d+/|(?=beep_mail/))", "",
                    path)
    module = module.removesuffix(".py").replace("/", ".")
    return f"{module}.{found.group('name')}"

"""What the figures were measured on: the machine, the load on it, the versions."""

from __future__ import annotations

import os
import platform
import sqlite3
import ssl
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cost import gnupg_version
from bench.postfix import postfix_version

PACKAGES = ("beep-mail", "aiosmtpd", "aiosmtplib", "PGPy", "cryptography",
            "SQLAlchemy", "pysequoia", "matplotlib", "py-spy")


def describe() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # Other work on the machine during the run shifts every figure; the
        # ratios, measured side by side, shift much less.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            **{name: _version(name) for name in PACKAGES},
            "gnupg": gnupg_version(),
            "postfix": postfix_version(),
            "sqlite": sqlite3.sqlite_version,
            "openssl": ssl.OPENSSL_VERSION,
        },
        "source": _source(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _memory_mb() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return None


def _source() -> dict[str, Any]:
    """The commit measured, and whether the package had changes not committed."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                                capture_output=True, text=True, timeout=30,
                                check=False)
        changes = subprocess.run(["git", "status", "--porcelain", "--", "beep_mail"],
                                 cwd=here, capture_output=True, text=True, timeout=30,
                                 check=False)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit.stdout.strip() or None,
            "uncommitted_changes": bool(changes.stdout.strip())}

"""What ran a benchmark: the CPU, how many, and which Python build.

Why the Python build: the same code on the same box ran the shop's orders ~7 % cheaper in
CPU (side by side, `bench side-by-side --b-python`; 12-18 % in sequential pairs) under
Debian's `/usr/bin/python3.11` (a static interpreter built with PGO and LTO) than under a
pyenv build with its defaults (`--enable-shared`, no `--enable-optimizations`:
the interpreter in a position-independent `libpython3.11.so`, without profile-guided
layout); see the README's "Which Python runs it". A figure without its interpreter cannot
be compared with another box's. Whether the build used PGO is not recorded by every
distribution (Debian's `sysconfig` describes its shared build), so what is reported is
what can be read for certain: the version, the executable and whether the process maps
a shared `libpython` (Linux only; `None` elsewhere).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _libpython_shared() -> bool | None:
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    except OSError:
        return None
    return "libpython" in maps


def describe() -> dict[str, Any]:
    """The host as a JSON-ready dict: cpu, cpus, python, executable, libpython_shared."""
    return {
        "cpu": _cpu_model() or platform.processor() or None,
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": os.path.realpath(sys.executable),
        "libpython_shared": _libpython_shared(),
    }


def python_line(host: dict[str, Any]) -> str:
    """The interpreter part of `line`: 'CPython 3.11.2 (/usr/bin/python3.11, static
    interpreter)'."""
    shared = host.get("libpython_shared")
    build = {True: "shared libpython", False: "static interpreter", None: "build unknown"}[shared]
    return f"{host.get('python')} ({host.get('executable')}, {build})"


def line(host: dict[str, Any]) -> str:
    """One line for the tables: 'AMD EPYC, 2 CPUs, CPython 3.11.2 (/usr/bin/python3.11,
    static interpreter)'."""
    return f"{host.get('cpu')}, {host.get('cpus')} CPUs, {python_line(host)}"

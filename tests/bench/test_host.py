"""bench/host.py: what a benchmark's figures were measured on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench import host


def test_describes_this_process() -> None:
    h = host.describe()
    assert h["cpus"] == os.cpu_count()
    assert h["executable"] == os.path.realpath(sys.executable)
    assert h["python"].split()[-1] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only")
def test_a_shared_libpython_is_told_from_the_executable_itself() -> None:
    # Independent of /proc/self/maps: an interpreter that loads a shared libpython names it
    # among its ELF's needed libraries; a static one carries the interpreter in itself.
    needs_libpython = b"libpython3" in Path(os.path.realpath(sys.executable)).read_bytes()
    assert host.describe()["libpython_shared"] is needs_libpython


def test_one_line_names_the_build() -> None:
    line = host.line(
        {"cpu": "AMD EPYC", "cpus": 2, "python": "CPython 3.11.2",
         "executable": "/usr/bin/python3.11", "libpython_shared": False}
    )  # fmt: skip
    assert line == "AMD EPYC, 2 CPUs, CPython 3.11.2 (/usr/bin/python3.11, static interpreter)"
    shared = host.line({"cpu": "x", "cpus": 1, "python": "CPython 3.11.7",
                        "executable": "/p/python3.11", "libpython_shared": True})  # fmt: skip
    assert shared.endswith("(/p/python3.11, shared libpython)")

"""`make test`'s two workers keep a module's tests together, as `tests/conftest.py` asks.

The grouping is what keeps a module-scoped stack (every e2e module starts a whole
`meshctl up` stack) from starting once per worker. It failed silently twice: the
groups were added after xdist's worker had read them (the hook ran too late), and
pytest 9.2 made xdist 3.8 ignore them (pytest-xdist#1386). Either way every test
still passed and the suite ran a third longer. This runs a small module under the
Makefile's options and asserts what a working grouping shows: each test's id carries
its group, and one worker ran them all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests/unit/base/test_backoff.py"


def make_tests_options() -> list[str]:
    """The Makefile's `PYTEST_WORKERS`, with its default two workers."""
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(r"^PYTEST_WORKERS = (.+)$", makefile, re.M)
    assert line, "the Makefile names no PYTEST_WORKERS"
    return line[1].replace("$(TEST_WORKERS)", "2").split()


def test_a_modules_tests_run_on_one_worker_under_make_tests_options() -> None:
    args = [*make_tests_options(), "-v", "-p", "no:cacheprovider", "-o", "addopts=", MODULE]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = re.findall(r"^\[(gw\d+)\] .*PASSED (\S+)", run.stdout, re.M)
    assert len(ran) >= 3, run.stdout[-3000:]
    assert all(test.endswith(f"@{ROOT / MODULE}") for _, test in ran), ran
    assert len({worker for worker, _ in ran}) == 1, ran

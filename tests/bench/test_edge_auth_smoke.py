"""`python -m bench edge-auth` end to end with tiny durations: two real Envoys, a table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench_smoke
def test_edge_auth_bench_prints_both_edges_and_the_ratio() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench", "edge-auth", "--seconds", "0.5", "--rounds", "1",
         "--concurrency", "1", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines()]
    for mode in ("no-auth", "jwt", "ratio"):
        levels = sorted(int(r[1]) for r in rows if r and r[0] == mode)
        assert levels == [1, 4], res.stdout
    for row in rows:
        if row and row[0] in ("no-auth", "jwt"):
            assert float(row[2]) > 0, res.stdout  # requests went through that edge

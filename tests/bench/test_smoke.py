"""One short run of each benchmark: they keep working (figures are not checked).

Benchmarks are not timed tests; this runs each one as `python -m bench ...` with
tiny durations and checks it finished and printed its tables; `bench summary
--smoke` (bench.rpc's server side, bench.whole with the Envoy pair) must end with one
JSON object holding every headline key. Most of the time is process start-up (ping
servers, Envoys, the users service for bench.tokens).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bench.summary import KEYS

pytestmark = pytest.mark.bench_smoke

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float = 90) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_summary_prints_every_headline_key_as_json_on_its_last_line() -> None:
    out = _bench("summary", "--smoke", "--only", "server,whole")
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(KEYS) <= set(summary)
    assert summary["errors"] == {}
    for key in (
        "server_ratio",
        "server_ratio_sampled",
        "both_ratio",
        "both_floor_ratio",
        "sidecar_speedup",
    ):
        assert set(summary[key]) == {"2"}, key
        assert all(v > 0 for v in summary[key].values()), key
    # What ran it, so a figure can be told apart from another box's or interpreter's.
    assert summary["host"]["python"] == f"CPython {platform.python_version()}"
    assert summary["host"]["executable"] == os.path.realpath(sys.executable)
    assert summary["host"]["cpus"] == os.cpu_count()
    assert f"{os.cpu_count()} CPUs" in out


def test_growth() -> None:
    out = _bench(
        "growth", "--seconds", "0.1", "--rounds", "1", "--inflight", "2", "--instances", "3"
    )
    assert "stream of 1000" in out and "embedded registry" in out and "Consul" in out


@pytest.mark.parametrize(
    "args",
    [
        ("fastpath", "--number", "2000", "--calls", "500"),
        ("traces", "--seconds", "0.2", "--rounds", "1", "--levels", "1"),
        ("tokens", "--seconds", "0.3", "--concurrency", "2"),
        ("events", "--events", "300", "--producers", "1", "--per-tx", "10", "--lag-stop-s", "1"),
        ("policy", "--calls", "50", "--rounds", "1", "--channels", "2", "--in-flight", "2"),
        ("db", "--rounds", "1", "--transactions", "20"),
    ],
    ids=lambda args: args[0],
)
def test_the_other_benchmarks(args: tuple[str, ...]) -> None:
    assert _bench(*args).strip()

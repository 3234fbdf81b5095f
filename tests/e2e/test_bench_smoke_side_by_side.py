"""One short run of `bench side-by-side`, to keep it working (figures are not asserted).

What is asserted is what the benchmark promises: both stacks take orders at the same
time with none failing, and each side's settings and instance counts reach its own
processes only: B logs every CreateOrder (`MESH_ACCESS_LOG_EVERY=1`), runs one orders
instance and runs its services on the interpreter it was given (a script in front of
this one that marks their environment), while A, set to log one call in a million and
none for being slow, logs none, keeps mesh.toml's two and runs on this interpreter.
B's services and trace sink also run from another source tree (what `--b-ref` checks
a commit out to): a copy of the project's packages whose `mesh` package notes the
process that imported it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bench.side_by_side import Side, measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CREATE_ORDER = "method=/shop.orders.v2.OrderService/CreateOrder"


def _access_lines(stack_log: Path) -> int:
    return sum(CREATE_ORDER in line for line in stack_log.read_text(errors="replace").splitlines())


def _python_marking(path: Path) -> str:
    """An interpreter for stack B: this one, behind a script that marks the processes
    it starts (`SIDE_BY_SIDE_PYTHON=b` in their environment)."""
    path.write_text(f'#!/bin/sh\nSIDE_BY_SIDE_PYTHON=b exec "{sys.executable}" "$@"\n')
    path.chmod(0o755)
    return str(path)


ROOT = Path(__file__).resolve().parents[2]


def _source_noting_its_importers(tree: Path) -> Path:
    """A copy of the project's code whose `mesh` package writes `tree/ran/<pid>` when a
    process imports it."""
    for package in ("base", "interceptors", "mesh", "services"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (tree / "ran").mkdir()
    init = tree / "mesh" / "__init__.py"
    init.write_text(
        init.read_text() + "\nimport os as _os, pathlib as _pathlib\n"
        "(_pathlib.Path(__file__).parents[1] / 'ran' / str(_os.getpid())).touch()\n"
    )
    return tree


def _marked(pid: int) -> bool:
    return b"SIDE_BY_SIDE_PYTHON=b" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


async def test_two_stacks_one_setting_apart(tmp_path: Path) -> None:
    a = Side("a", {"MESH_ACCESS_LOG_EVERY": "1000000", "MESH_ACCESS_LOG_SLOW_MS": "600000"})
    b = Side("b", {"MESH_ACCESS_LOG_EVERY": "1"}, {"orders": 1},
             python=_python_marking(tmp_path / "python-b"),
             source=_source_noting_its_importers(tmp_path / "tree-b"))  # fmt: skip
    seen: dict[str, list[bool]] = {}
    python_pids: dict[str, set[int]] = {}

    def look(side: Side, pids: dict[str, int]) -> None:
        # The services and the trace sink, not the edge and nats-server (not Python).
        python_pids[side.label] = {p for n, p in pids.items() if n not in ("edge", "nats")}
        seen[side.label] = [_marked(pid) for pid in python_pids[side.label]]

    r = await measure(a, b, rounds=1, seconds=2.0, clients=4, api="rest", base=tmp_path,
                      report=False, on_start=look)  # fmt: skip
    assert r["errors"] == {"a": 0, "b": 0}
    ra, rb = r["rounds"][0]["a"], r["rounds"][0]["b"]
    assert ra["clients"] == rb["clients"] == 2
    assert ra["orders_per_s"] > 0 and rb["orders_per_s"] > 0
    assert r["cpu_ratio"] > 0 and r["orders_ratio"] > 0
    # B's topology: one orders instance; A keeps mesh.toml's two.
    assert {"orders-1", "orders-2"} <= set(ra["cpu_ms_per_order"])
    assert "orders-1" in rb["cpu_ms_per_order"] and "orders-2" not in rb["cpu_ms_per_order"]
    assert set(ra["cpu_ms_per_service"]) == set(rb["cpu_ms_per_service"])
    assert "load_cpu_ms_per_order" not in ra  # the load generator serves both sides
    # B's services and trace sink ran on B's interpreter, A's on this one.
    assert seen["b"] and all(seen["b"]), seen
    assert seen["a"] and not any(seen["a"]), seen
    assert r["b_setup"]["python"] == r["a_setup"]["python"]  # the script runs this one
    # B's ran the copy's code, in the copy; A's this checkout's, here.
    noted = {int(p.name) for p in (tmp_path / "tree-b" / "ran").iterdir()}
    assert python_pids["b"] and python_pids["b"] <= noted, (python_pids, noted)
    assert not python_pids["a"] & noted
    assert r["b_setup"]["code"] == str(tmp_path / "tree-b")
    assert r["a_setup"]["code"] == "the current tree"
    # Each side's settings reached its own services (B's warm-up orders are logged too).
    placed_b = round(rb["orders_per_s"] * r["seconds"])
    assert _access_lines(tmp_path / "b" / "stack.log") >= placed_b > 0
    assert _access_lines(tmp_path / "a" / "stack.log") == 0

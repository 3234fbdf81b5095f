"""The supervisor on real child processes: restarts, crash loops, ordered stop, state file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.local.supervisor import Child, RestartPolicy, Supervisor
from mesh.local.topology import ProcessSpec, load_topology, service_processes
from tests.support.poll import eventually

pytestmark = pytest.mark.asyncio(loop_scope="function")

# Appends its instance id to a file, answers SIGTERM by appending "<name> stopped", then idles.
_SERVE = """
import os, signal, sys, time
out = open(sys.argv[1] if len(sys.argv) > 1 else os.environ["SERVE_LOG"], "a", buffering=1)
out.write("start " + os.environ["MESH_INSTANCE_ID"] + "\\n")
def bye(*_):
    out.write("stopped " + os.environ["MESH_INSTANCE_ID"] + "\\n"); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("serving", flush=True)
while True:
    time.sleep(1)  # poll: the child idles until SIGTERM
"""
_FAST = RestartPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


def _spec(name: str, code: str, *args: str, service: str = "svc") -> ProcessSpec:
    env = {**os.environ, "MESH_INSTANCE_ID": name}
    return ProcessSpec(name, (sys.executable, "-c", code, *args), env, service=service)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _holds(path: Path, lines: list[str]) -> Callable[[], bool]:
    return lambda: _lines(path) == lines


async def test_a_killed_child_comes_back_with_its_instance_id(tmp_path: Path) -> None:
    log = tmp_path / "log"
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False, state_file=tmp_path / "processes.json")
    child = await sup.start(_spec("orders-1", _SERVE, str(log)), policy=_FAST)
    try:
        await eventually(lambda: _lines(log) == ["start orders-1"], 10, "first start")
        first = child.proc.pid
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: len(_lines(log)) == 2, 10, "a restart")
        assert _lines(log) == ["start orders-1", "start orders-1"]
        assert child.proc.pid != first and child.restarts == 1 and child.state == "running"
        assert "killed by SIGKILL; restarting" in out.getvalue()
        state = json.loads((tmp_path / "processes.json").read_text())
        assert state["processes"][0] | {"pid": 0} == {
            "name": "orders-1", "service": "svc", "pid": 0, "state": "running",
            "restarts": 1, "last_exit": -9,
        }  # fmt: skip
        assert not sup.exited.is_set()
    finally:
        await sup.stop_all(5)
    assert not (tmp_path / "processes.json").exists()


async def test_a_crash_loop_gives_up_on_that_child_only(tmp_path: Path) -> None:
    log = tmp_path / "log"
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False, state_file=tmp_path / "processes.json")
    policy = RestartPolicy(max_failures=3, window_s=60, initial_backoff_s=0.01, max_backoff_s=0.05)
    healthy = await sup.start(_spec("users-1", _SERVE, str(log)), policy=policy)
    broken = await sup.start(
        _spec("orders-1", "import sys; print('bad config'); sys.exit(3)"), policy=policy
    )
    try:
        await asyncio.wait_for(sup.exited.wait(), 20)
        assert broken.state == "gave up" and broken.restarts == 2 and broken.last_exit == 3
        assert "GIVING UP on orders-1" in out.getvalue()
        assert "bad config" in broken.tail()
        state = json.loads((tmp_path / "processes.json").read_text())
        assert {p["name"]: p["state"] for p in state["processes"]} == {
            "users-1": "running",
            "orders-1": "gave up",
        }
        assert healthy.running and healthy.restarts == 0
    finally:
        await sup.stop_all(5)


async def test_a_clean_exit_is_not_restarted(tmp_path: Path) -> None:
    sup = Supervisor(out=io.StringIO(), colour=False)
    child = await sup.start(_spec("job", "print('done')"), policy=_FAST)
    try:
        await asyncio.wait_for(sup.exited.wait(), 10)
        assert child.state == "exited" and child.restarts == 0 and child.last_exit == 0
    finally:
        await sup.stop_all(5)


async def test_stop_does_not_wait_for_a_pending_restart(tmp_path: Path) -> None:
    sup = Supervisor(out=io.StringIO(), colour=False)
    slow = RestartPolicy(initial_backoff_s=60, max_backoff_s=60)
    child = await sup.start(_spec("orders-1", _SERVE, str(tmp_path / "log")), policy=slow)
    await eventually(lambda: _lines(tmp_path / "log"), 10, "a start")
    child.proc.kill()
    await eventually(lambda: child.state == "restarting", 10, "the restart to be pending")
    t0 = time.monotonic()
    await sup.stop_all(5)
    assert time.monotonic() - t0 < 5
    assert child.state == "stopped" and child.restarts == 0


async def test_stop_goes_in_order_and_leaves_no_process(tmp_path: Path) -> None:
    log = tmp_path / "log"
    sup = Supervisor(out=io.StringIO(), colour=False)
    children: list[Child] = []
    for name, service in (("nats", ""), ("orders-1", "orders"), ("envoy", ""), ("users-1", "u")):
        children.append(await sup.start(_spec(name, _SERVE, str(log), service=service)))
    await eventually(lambda: len(_lines(log)) == 4, 15, "four starts")
    await sup.stop_all(5, order=(lambda c: bool(c.spec.service), lambda c: c.spec.name == "envoy"))
    stops = [line.split()[1] for line in _lines(log) if line.startswith("stopped")]
    assert sorted(stops[:2]) == ["orders-1", "users-1"] and stops[2:] == ["envoy", "nats"]
    for c in children:
        assert c.proc.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(c.proc.pid, 0)


async def test_a_restart_takes_the_warm_spare_and_keeps_the_instance(tmp_path: Path) -> None:
    log = tmp_path / "log"
    env = {**os.environ, "MESH_INSTANCE_ID": "orders-2", "IDLE_SERVICE_LOG": str(log)}
    argv = (sys.executable, "-m", "tests.support.idle_service")
    sup = Supervisor(out=io.StringIO(), colour=False)
    child = await sup.start(ProcessSpec("orders-2", argv, env, service="orders"), policy=_FAST)
    try:
        await eventually(lambda: len(_lines(log)) == 1, 10, "the first start")
        await sup.warm_spares()
        spare = sup.spares["tests.support.idle_service"]
        child.proc.kill()
        await eventually(lambda: len(_lines(log)) == 2, 10, "a restart")
        assert _lines(log)[1] == f"start orders-2 {spare}"  # the spare became orders-2
        assert child.proc.pid == spare and child.restarts == 1
        new = await eventually(
            lambda: sup.spares.get("tests.support.idle_service"), 10, "a new spare"
        )
        assert new != spare
    finally:
        await sup.stop_all(5)
    assert sup.spares == {}
    with pytest.raises(ProcessLookupError):
        os.kill(new, 0)


async def test_a_service_runs_in_its_projects_directory_wherever_up_was_started(
    tmp_path: Path,
) -> None:
    """`meshctl up --topology other/mesh.toml` from anywhere: the services run in the
    project's directory, where `python -m` finds its modules (until 6 Dec 2026 they ran
    in the directory `up` was started from, and a project not installed in the venv
    crash-looped on ModuleNotFoundError)."""
    project = tmp_path / "project"
    (project / "notesx").mkdir(parents=True)
    (project / "notesx" / "__init__.py").write_text("")
    (project / "notesx" / "server.py").write_text(_SERVE)
    (project / "mesh.toml").write_text(
        '[services.notes]\nmodule = "notesx.server"\ngrpc_port = 0\nadmin_port = 0\n'
    )
    topology = load_topology(project / "mesh.toml")
    assert Path.cwd() != project
    for project_dir in (topology.root, None):
        log = tmp_path / f"log-{project_dir is None}"
        env = {**os.environ, "SERVE_LOG": str(log)}
        (spec,) = service_processes(
            tmp_path / "run", env, nats_url="nats://n", services=topology.services,
            python=sys.executable, source=None, project_dir=project_dir,
        )  # fmt: skip
        out = io.StringIO()
        sup = Supervisor(out=out, colour=False)
        policy = RestartPolicy(max_failures=1, initial_backoff_s=0.01, max_backoff_s=0.05)
        await sup.start(spec, policy=policy)
        try:
            if project_dir is not None:
                await eventually(_holds(log, ["start notes-1"]), 10, "a start")
            else:  # the control: the supervisor's directory has no such module
                await asyncio.wait_for(sup.exited.wait(), 20)
                assert "No module named 'notesx'" in out.getvalue()
        finally:
            await sup.stop_all(5)

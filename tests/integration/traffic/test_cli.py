"""`meshctl traffic` as a process against a live fleet: set, refuse (exit 2, old policy
kept), show."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.traffic.file_store import FilePolicyStore
from tests.support.poll import eventually

Fleet = Callable[..., Awaitable[Any]]
ROOT = Path(__file__).resolve().parents[3]


async def meshctl_process(registry_dir: Path, *args: str) -> tuple[int, str, str]:
    """`python -m mesh.cli traffic ...` as its own process (slow on a busy box: once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env.update(MESH_REGISTRY="embedded", MESH_REGISTRY_DIR=str(registry_dir))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        "traffic",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def meshctl(registry_dir: Path, *args: str) -> tuple[int, str, str]:
    """The same command through `mesh.cli.main` in a thread (its own event loop)."""
    from mesh.cli import main

    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["traffic", *args])

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_set_show_and_refusals(
    fleet: Fleet, registry_dir: Path, store: FilePolicyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_REGISTRY", "embedded")
    monkeypatch.setenv("MESH_REGISTRY_DIR", str(registry_dir))
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    await fleet("blue")
    green = await fleet("green")

    code, out, err = await meshctl_process(registry_dir, "set", "ping", "blue=90", "green=10")
    assert code == 0, err
    assert "blue=90 green=10 (revision 1)" in out
    kept = await store.get("ping")
    assert kept is not None and dict(kept.weights) == {"blue": 90, "green": 10}

    refusals = [
        (("blue=80", "green=10"), "weights must sum to 100, got 90"),
        (
            ("blue=90", "gren=10"),
            "unknown subset 'gren' of 'ping' (registered tracks: blue, green)",
        ),
        (("blue=90", "green=10", "--fault", "subset=green,abort_percent=120"), "between 0 and 100"),
    ]
    for args, message in refusals:
        code, _, err = await meshctl(registry_dir, "set", "ping", *args)
        assert code == 2, err
        assert message in err
        assert "the old policy stays: blue=90 green=10 (revision 1)" in err
        assert await store.get("ping") == kept

    # Green registered but not healthy (draining): refused, old policy kept.
    await green.service._health_servicer.enter_graceful_shutdown()
    registry = EmbeddedRegistry(registry_dir)
    try:
        await eventually(lambda: _tracks(registry), 15, "green to leave the healthy instances")
    finally:
        await registry.close()
    code, _, err = await meshctl(registry_dir, "set", "ping", "blue=50", "green=50")
    assert code == 2
    assert "subset 'green' of 'ping' has no healthy instance" in err
    assert await store.get("ping") == kept

    # A rollback to blue only is accepted, and `show` prints it with the tracks.
    code, out, err = await meshctl(
        registry_dir,
        "set",
        "ping",
        "blue=100",
        "green=0",
        "--fault",
        "subset=blue,delay_percent=1,delay_ms=5",
    )
    assert code == 0, err
    code, out, _ = await meshctl(registry_dir, "show", "ping")
    assert code == 0
    assert "ping: blue=100 green=0; faults: blue * delay 1% 5ms (revision 2)" in out
    assert f"; stored in file {registry_dir}/traffic/ping.json" in out, out  # not <service>
    assert any(line.split()[:3] == ["blue", "1", "100%"] for line in out.splitlines())


async def _tracks(registry: EmbeddedRegistry) -> bool:
    return {i.meta.get("track") for i in await registry.healthy("ping")} == {"blue"}

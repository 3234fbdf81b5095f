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
from typing import Any, cast

import pytest

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.release.controller import ReleaseController
from mesh.release.state import save
from mesh.traffic.file_store import FilePolicyStore
from tests.support.poll import eventually
from tests.support.releases import record_release

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


@pytest.fixture
def this_registry(registry_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`meshctl traffic` in this process uses the fleet's registry (its run dir: the parent)."""
    monkeypatch.setenv("MESH_REGISTRY", "embedded")
    monkeypatch.setenv("MESH_REGISTRY_DIR", str(registry_dir))
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    return registry_dir


async def test_set_without_weights_keeps_the_weights(
    fleet: Fleet, this_registry: Path, store: FilePolicyStore
) -> None:
    """`set --no-faults` (or `--fault` alone) dropped the weights until 7 Dec 2026: one
    pool, 62 % of calls on an untested green during a release's 0 % step."""
    await fleet("blue")
    await fleet("green")
    assert (await meshctl(this_registry, "set", "ping", "blue=100", "green=0"))[0] == 0
    code, out, err = await meshctl(this_registry, "set", "ping", "--fault", "abort_percent=20")
    assert code == 0, err
    assert "blue=100 green=0; faults: * * abort 20% UNAVAILABLE (revision 2)" in out, out
    code, out, err = await meshctl(this_registry, "set", "ping", "--no-faults")
    assert code == 0, err
    assert "ping: blue=100 green=0 (revision 3)" in out, out
    kept = await store.get("ping")
    assert kept is not None and dict(kept.weights) == {"blue": 100, "green": 0}
    # Removing them takes saying so; weights and --one-pool together are refused.
    code, _, err = await meshctl(this_registry, "set", "ping", "blue=100", "--one-pool")
    assert code == 2 and "give no weights with it" in err, err
    code, out, err = await meshctl(this_registry, "set", "ping", "--one-pool")
    assert code == 0 and "ping: one pool (revision 4)" in out, out + err


async def test_a_release_owns_the_weights_not_the_faults(
    fleet: Fleet, this_registry: Path, store: FilePolicyStore
) -> None:
    """New weights during a release were stored with exit 0 until 7 Dec 2026; a fault in
    its 0 % step (the README's walkthrough) keeps working and keeps the release's weights."""
    await fleet("blue")
    await fleet("green")
    assert (await meshctl(this_registry, "set", "ping", "blue=100", "green=0"))[0] == 0
    release = record_release(this_registry.parent, "ping")
    code, _, err = await meshctl(this_registry, "set", "ping", "blue=90", "green=10")
    assert code == 2, err
    assert "refused: the release of ping to 2.0.0" in err and "meshctl release promote" in err
    code, out, err = await meshctl(
        this_registry, "set", "ping", "--fault", "subset=green,abort_percent=20"
    )
    assert code == 0, err
    assert "ping: blue=100 green=0; faults: green * abort 20% UNAVAILABLE (revision 2)" in out
    # The controller's own steps do not go through the CLI: not refused, faults kept.
    registry = EmbeddedRegistry(this_registry)
    try:
        controller = ReleaseController(this_registry.parent, registry, cast(Any, None), store)
        await controller._set_weights(release, {"blue": 90, "green": 10})
    finally:
        await registry.close()
    stepped = await store.get("ping")
    assert stepped is not None and dict(stepped.weights) == {"blue": 90, "green": 10}
    assert len(stepped.faults) == 1
    release.phase = "rolled back"
    save(this_registry.parent, release)
    code, out, err = await meshctl(this_registry, "set", "ping", "blue=80", "green=20")
    assert code == 0, err  # the control: no release, the user's weights again
    stored = await store.get("ping")
    assert stored is not None and dict(stored.weights) == {"blue": 80, "green": 20}

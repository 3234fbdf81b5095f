"""Another account on the machine against the stack `meshctl up` runs (the shared e2e
stack: `LocalMesh`, `up`'s own NATS). It reaches 127.0.0.1 like the user, so each
local surface must refuse it on its own: the dashboard (403, before anything is
read or done), the trace sink (PERMISSION_DENIED) and Envoy's admin (a socket it may
not connect to). Each refusal stands beside the same request from the mesh's account,
which is served. The attacker is `nobody`, through `setpriv`."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import pytest

from mesh.edge.admin import EnvoyAdmin
from mesh.local.traces.store import DB_NAME, connect, recent_traces
from tests.support.local_mesh import Stack
from tests.support.other_account import as_nobody, needs_other_account
from tests.support.poll import eventually
from tests.support.span_export import span_export

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_other_account]


def _curl(*args: str) -> tuple[str, ...]:
    return ("curl", "-sS", "--max-time", "10", "-w", " HTTP %{http_code}", *args)


async def _run(argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=30, check=False
    )


async def test_the_dashboard_serves_its_account_only(stack: Stack) -> None:
    board = stack.mesh.observe.dashboard
    assert board is not None
    page = await asyncio.to_thread(as_nobody, *_curl(f"{board.url}/"))
    assert page.stdout.endswith(" HTTP 403"), page
    assert "the account that runs the mesh only" in page.stdout
    assert "orders-1" not in page.stdout  # nothing of the mesh shown
    retry = _curl("-d", f"csrf={board.csrf}", "-d", "service=orders", "-d", "saga_id=x",
                  f"{board.url}/sagas/retry")  # fmt: skip
    assert (await asyncio.to_thread(as_nobody, *retry)).stdout.endswith(" HTTP 403")

    ours = await _run(_curl(f"{board.url}/"))
    assert ours.stdout.endswith(" HTTP 200") and "orders-1" in ours.stdout, ours.stdout[-500:]


async def test_the_trace_sink_stores_its_account_s_spans_only(stack: Stack) -> None:
    port = stack.mesh.observe.sink_port
    with span_export() as export:
        forged = await asyncio.to_thread(as_nobody, *export.argv(port, "forged-by-nobody"))
        assert forged.returncode != 0 and "PermissionDenied" in forged.stderr, forged
        ours = await _run(export.argv(port, "exported-by-the-mesh-s-account"))
        assert ours.returncode == 0, ours.stderr
    db = connect(stack.base / DB_NAME, readonly=True)

    def roots() -> set[str] | None:
        found = {t.root for t in recent_traces(db, limit=500)}
        return found if "exported-by-the-mesh-s-account" in found else None

    assert "forged-by-nobody" not in await eventually(roots, 10, "the control's span stored")


async def test_envoy_s_admin_is_its_account_s_only(stack: Stack) -> None:
    socket_path = Path(stack.mesh.o.edge_admin.socket_path)

    def attempt() -> tuple[int, int, subprocess.CompletedProcess[str]]:
        modes = socket_path.stat().st_mode, socket_path.parent.stat().st_mode
        quit_ = as_nobody(
            "curl", "-sSv", "-X", "POST", "--max-time", "5",
            "--unix-socket", str(socket_path), "http://edge/quitquitquit",
        )  # fmt: skip
        return stat.S_IMODE(modes[0]), stat.S_IMODE(modes[1]), quit_

    socket_mode, dir_mode, quit_ = await asyncio.to_thread(attempt)
    assert (socket_mode, dir_mode) == (0o600, 0o700)
    assert quit_.returncode == 7, quit_  # could not connect: refused before any request
    assert "Permission denied" in quit_.stderr, quit_.stderr
    assert (await EnvoyAdmin(socket_path).get("/ready")).strip() == "LIVE"
    assert stack.child("envoy").restarts == 0

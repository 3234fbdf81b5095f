"""Starting the mesh again and again: no start-up aborts, and a restart right after a stop
on the same fixed ports.

A reduced topology (users + the Envoy edge) keeps these lean; what matters is present: the
edge meta server (a grpc.aio server with its threads) runs in this process when Envoy and
the services are spawned — the case that aborted children with `preexec_fn`.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from mesh.local.topology import ServiceSpec
from tests.support.local_mesh import Stack, local_mesh
from tests.support.nats import nats_server
from tests.support.ports import free_port, in_time_wait

pytestmark = pytest.mark.asyncio(loop_scope="function")

_A_USER = "/api/v1/users/00000000-0000-4000-8000-000000000000"  # any answer but 503 is routed
_ABORT_SIGNS = ("skipping fork() handlers", "epoll_wait error", "Bad file descriptor")


@pytest.mark.timeout(300)  # ~25 s on 2 idle cores; a shared machine can be 5x slower
async def test_twenty_consecutive_starts_without_an_abort(tmp_path: Path) -> None:
    async with nats_server(tmp_path / "nats") as nats:
        for n in range(20):
            base = tmp_path / f"run{n}"
            users = (ServiceSpec("users", 0, 0, module="services.users"),)
            async with local_mesh(base, users, nats=nats, warm_spares=False) as stack:
                for child in stack.supervisor.children:
                    assert child.running and child.restarts == 0, (
                        f"start {n}: {child.spec.name} {child.state} {child.last_exit}"
                    )
                status, _ = await stack.http("GET", _A_USER)
                assert status != 503, f"start {n}: the edge does not route to users"
            log = (base / "stack.log").read_text()
            assert not any(s in log for s in _ABORT_SIGNS), f"start {n}:\n{log[-3000:]}"
            assert "killed by" not in log and "restarting" not in log, log[-3000:]


async def test_start_right_after_stop_on_the_same_fixed_ports(tmp_path: Path) -> None:
    services = (ServiceSpec("users", free_port(), free_port(), module="services.users"),)
    edge = free_port()
    used = [edge, services[0].grpc_port, services[0].admin_port]
    async with nats_server(tmp_path / "nats") as nats:

        def start(name: str) -> AbstractAsyncContextManager[Stack]:
            return local_mesh(tmp_path / name, services, nats=nats, edge_port=edge)

        async with start("a") as stack:
            # Calls that reach users through the edge (a public login with a wrong
            # password; a user read would end at the edge's 401): closed connections
            # leave TIME_WAIT.
            login = json.dumps({"email": "nobody@example.com", "password": "x" * 12}).encode()
            for _ in range(5):
                status, _ = await stack.http("POST", "/api/v1/sessions", login)
                assert status not in (404, 503), status
        assert any(in_time_wait(p) for p in used), "no TIME_WAIT left: the test proves nothing"
        async with start("b") as stack:
            assert stack.instances["users"][0].port == services[0].grpc_port
            status, _ = await stack.http("GET", _A_USER)
            assert status != 503

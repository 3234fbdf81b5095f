"""`meshctl up` running a project of its own, as the README's "Using the mesh for your
own services" tells a user to: its own `mesh.toml` and modules, not installed, started
with `--topology` from another directory. Two services: `ping` (two instances,
implementing one method of the testing ping service) and `caller`, which calls ping
through the mesh (discovery, mTLS, the chains) every 0.2 s and logs the answer.

What a user sees is asserted: both come up from the project's directory, the calls
succeed, `up` names the services the edge does not route and why, and nothing warns
about the methods ping leaves unimplemented; Ctrl-C stops it all.

Then a project with an edge of its own: its contracts compiled by `meshctl contracts
build`, named in its mesh.toml's `[edge]` with its own token issuer (`[edge.auth]`, an
`accounts` service publishing an ES256 key). Through the real Envoy: the public method
answers anyone, the method needing a login refuses the anonymous caller and tokens the
project did not issue (another key, an expired one, the shop's issuer and audience) and
answers its own token with the user it names, over REST and over gRPC (grpcurl), whose
reflection lists the project's contracts and none of the shop's.

Then a project with events of its own (`event_types`, `event_identities`), the one in
examples/notes_project: `notes` writes notes and their `note.created` events in one
transaction (the outbox), and two `search` instances index them through a durable
consumer and their inbox, on `up`'s own nats-server with the credentials and
permissions the project's identities give: every note indexed once, `meshctl events
tail` decodes the project's payloads, and `search`'s credentials may not publish a
note."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.local.nats import local_client_env
from tests.support.edge import EdgeClient
from tests.support.poll import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(180)]

PING = """
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.server import ServiceDefinition, run_service


class Ping(ping_pb2_grpc.PingServiceServicer):  # Ping only: the others are grpc's
    async def Ping(self, request, context):
        return ping_pb2.PingResponse(value=request.value, server="own-project")


async def build(settings, runtime):
    return ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, Ping())],
        service_names=["shop.testing.v1.PingService"],
    )


if __name__ == "__main__":
    run_service("ping", build, grpc_port=0, admin_port=0)
"""

CALLER = """
import asyncio, logging

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.server import ServiceDefinition, run_service

log = logging.getLogger("caller")


async def build(settings, runtime):
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    tasks = []

    async def calls():
        while True:
            try:
                reply = await stub.Ping(ping_pb2.PingRequest(value="hi"), timeout=2)
                log.info("ping answered %s from %s", reply.value, reply.server)
            except Exception as exc:
                log.info("ping failed: %s", exc)
            await asyncio.sleep(0.2)  # poll: the pace of the calls

    async def start():
        tasks.append(asyncio.create_task(calls()))

    async def stop():
        tasks[0].cancel()

    return ServiceDefinition(
        name="caller", servicers=[], service_names=[], on_start=[start], on_stop=[stop]
    )


if __name__ == "__main__":
    run_service("caller", build, grpc_port=0, admin_port=0)
"""

TOPOLOGY = """
[services.ping]
module = "pingproj.server"
instances = 2

[services.caller]
module = "callerproj.server"
"""


def _write_project(root: Path, servers: dict[str, str], topology: str) -> Path:
    """A project as a user lays it out: a package per service (`<name>/server.py`) and
    its mesh.toml at the root, whose path is returned."""
    for package, code in servers.items():
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "server.py").write_text(code)
    (root / "mesh.toml").write_text(topology)
    return root / "mesh.toml"


def _project(root: Path) -> Path:
    return _write_project(root, {"pingproj": PING, "callerproj": CALLER}, TOPOLOGY)


class Up:
    """A `meshctl up` the test started: its output so far, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def until(self, text: str, count: int = 1) -> None:
        assert self.proc.stdout is not None
        while sum(text in line for line in self.lines) < count:
            raw = await self.proc.stdout.readline()
            assert raw, f"meshctl up ended before {text!r}:\n" + "\n".join(self.lines[-40:])
            self.lines.append(raw.decode().rstrip())

    def edge_url(self) -> str:
        line = next(x for x in self.lines if x.startswith("edge (gRPC + REST): "))
        return line.removeprefix("edge (gRPC + REST): ").split()[0]


@contextlib.asynccontextmanager
async def meshctl_up(
    topology: Path, tmp_path: Path, *, identities: bool = False
) -> AsyncIterator[Up]:
    """`meshctl up --free-ports --topology` started from another directory, with no
    NATS_URL (`up` runs its own server; it gives no service credentials unless the
    project names `identities`, which is asserted); on exit Ctrl-C, and the whole output
    is in `lines` (asserted to end with "mesh stopped" and code 0)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "NATS_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "--run-dir", str(tmp_path / "run"),
        "up", "--free-ports", "--topology", str(topology),
        cwd=elsewhere, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    up = Up(proc)
    try:
        async with asyncio.timeout(90):
            await up.until("mesh is up")
        yield up
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        async with asyncio.timeout(60):
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
        up.lines.extend(rest.splitlines())
    text = "\n".join(up.lines)
    assert code == 0, text[-3000:]
    assert "mesh stopped" in rest
    assert ("no service gets NATS credentials" in text) is not identities


async def test_a_project_of_its_own_runs_from_its_directory(tmp_path: Path) -> None:
    topology = _project(tmp_path / "project")
    async with meshctl_up(topology, tmp_path) as up:
        async with asyncio.timeout(60):
            await up.until("ping answered hi from own-project", 5)
    text = "\n".join(up.lines)
    for name in ("ping-1", "ping-2", "caller-1"):
        assert f"{name} " in text
    for service in ("caller", "ping"):
        assert f"{service} is not routed by the edge: no contract of it in" in text
    assert "payments" not in text  # the shop's, not this project's
    assert "No module named" not in text
    assert "not intercepting" not in text and "NotImplementedError" not in text
    # Its edge is the shop's (no [edge] table): the shop's issuer is named as missing.
    assert "the edge's token issuer 'users' is not in this topology" in text


ECHO_PROTO = """
syntax = "proto3";

package notes.echo.v1;

import "google/api/annotations.proto";
import "meshproto/api/v1/options.proto";

service EchoService {
  rpc Echo(EchoRequest) returns (EchoReply) {
    option (google.api.http) = {post: "/api/v1/echo", body: "*"};
    option (meshproto.api.v1.auth) = {access: ACCESS_PUBLIC};
  }
  rpc WhoAmI(WhoAmIRequest) returns (WhoAmIReply) {
    option (google.api.http) = {get: "/api/v1/whoami"};
    option (meshproto.api.v1.auth) = {access: ACCESS_USER};
  }
}

message EchoRequest { string text = 1; }
message EchoReply { string text = 1; }
message WhoAmIRequest {}
message WhoAmIReply { string user_id = 1; }
"""

ECHO = """
from interceptors.end_user import current_end_user
from mesh.server import ServiceDefinition, run_service
from notes.echo.v1 import echo_pb2, echo_pb2_grpc


class Echo(echo_pb2_grpc.EchoServiceServicer):
    async def Echo(self, request, context):
        return echo_pb2.EchoReply(text=request.text)

    async def WhoAmI(self, request, context):
        return echo_pb2.WhoAmIReply(user_id=current_end_user.get().user_id)


async def build(settings, runtime):
    return ServiceDefinition(
        name="echo",
        servicers=[(echo_pb2_grpc.add_EchoServiceServicer_to_server, Echo())],
        service_names=["notes.echo.v1.EchoService"],
    )


if __name__ == "__main__":
    run_service("echo", build, grpc_port=0, admin_port=0)
"""

ACCOUNTS = """
from pathlib import Path

from aiohttp import web

from mesh.admin import AdminRoute
from mesh.server import ServiceDefinition, run_service

JWKS = Path("jwks.json").read_text()  # the project's directory: meshctl up runs it there


async def jwks(request):
    return web.Response(text=JWKS, content_type="application/jwk-set+json")


async def build(settings, runtime):
    return ServiceDefinition(
        name="accounts", servicers=[], service_names=[],
        admin_routes=[AdminRoute("GET", "/.well-known/jwks.json", jwks)],
    )


if __name__ == "__main__":
    run_service("accounts", build, grpc_port=0, admin_port=0)
"""

EDGE_TOPOLOGY = """
[services.echo]
module = "echoproj.server"

[services.accounts]
module = "accountsproj.server"

[edge]
descriptors = "descriptors.binpb"

[edge.auth]
issuer = "notes/accounts"
audiences = ["notes"]
jwks_service = "accounts"
"""


def _signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "notes/accounts", "aud": "notes", "sub": "alice", "iat": now,
            "exp": now + 300, **claims}  # fmt: skip
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": "notes-1"})


def _edge_project(root: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    (root / "protos" / "notes" / "echo" / "v1").mkdir(parents=True)
    (root / "protos" / "notes" / "echo" / "v1" / "echo.proto").write_text(ECHO_PROTO)
    _write_project(root, {"echoproj": ECHO, "accountsproj": ACCOUNTS}, EDGE_TOPOLOGY)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="notes-1", alg="ES256", use="sig")
    (root / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    # As a user would: the project's stubs (importable from its directory) and the set.
    built = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "contracts", "build"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert (root / "descriptors.binpb").is_file()
    assert (root / "notes" / "echo" / "v1" / "echo_pb2_grpc.py").is_file()
    # `meshctl policy` in the project reads its contracts, not the shop's.
    policy = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "policy"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "notes.echo.v1.EchoService/WhoAmI" in policy.stdout, policy.stderr
    assert "shop." not in policy.stdout
    return root / "mesh.toml"


async def test_a_project_with_an_edge_of_its_own(tmp_path: Path) -> None:
    key = _signing_key()
    topology = _edge_project(tmp_path / "project", key)
    async with meshctl_up(topology, tmp_path) as up:
        edge = EdgeClient(int(up.edge_url().rsplit(":", 1)[1]))

        def whoami(token: str | None) -> int:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            status, body = edge.json("GET", "/api/v1/whoami", headers=headers)
            assert status == 401 or body == {"userId": "alice"}, (status, body)
            return status

        def through_the_edge() -> None:
            assert edge.json("POST", "/api/v1/echo", {"text": "hi"}) == (200, {"text": "hi"})
            assert whoami(_token(key)) == 200
            # The attacker's requests: no token, another key, an expired token, the
            # shop's issuer or audience.
            for token in (
                None,
                _token(_signing_key()),
                _token(key, exp=int(time.time()) - 120),
                _token(key, iss="shop-mesh/users"),
                _token(key, aud="shop-mesh"),
            ):
                assert whoami(token) == 401
            # gRPC through the edge: its reflection lists the project's contracts only.
            listed = edge.grpcurl(edge.address, "list")
            assert "notes.echo.v1.EchoService" in listed.stdout.split(), listed.stderr
            assert "shop." not in listed.stdout
            echoed = edge.call("notes.echo.v1.EchoService/Echo", {"text": "grpc"})
            assert json.loads(echoed.stdout) == {"text": "grpc"}, echoed.stderr
            mine = edge.call(
                "notes.echo.v1.EchoService/WhoAmI", {}, f"authorization: Bearer {_token(key)}"
            )
            assert json.loads(mine.stdout) == {"userId": "alice"}, mine.stderr
            anonymous = edge.call("notes.echo.v1.EchoService/WhoAmI", {})
            assert "Code: Unauthenticated" in anonymous.stderr, anonymous.stderr

        await asyncio.to_thread(through_the_edge)
    text = "\n".join(up.lines)
    assert "echo is not routed" not in text
    assert f"accounts is not routed by the edge: no contract of it in {topology.parent}" in text
    assert "is not in this topology" not in text
    assert "users" not in text and "payments" not in text  # nothing of the shop's
    assert "Jwks async fetching" not in text  # Envoy fetched the keys at once


# The example project users start from (examples/notes_project), run as it is.
NOTES_PROJECT = Path(__file__).resolve().parents[2] / "examples" / "notes_project"


def _indexed(db: Path) -> list[tuple[str, str]]:
    """(event id, text) of every row `search` wrote, read-only."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT event_id, text FROM indexed").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


def _credentials(run: Path, identity: str) -> tuple[str, str]:
    """(seed file, URL) of `identity` on the nats-server `up` runs in `run`."""
    env = local_client_env(run, identity)
    return env["NATS_NKEY_SEED_FILE"], env["NATS_URL"]


def _events_project(root: Path) -> Path:
    """A copy of the example project, away from this checkout (as a user's would be)."""
    shutil.copytree(NOTES_PROJECT, root, ignore=shutil.ignore_patterns("__pycache__", ".run"))
    return root / "mesh.toml"


async def test_a_project_with_events_of_its_own(tmp_path: Path) -> None:
    topology = _events_project(tmp_path / "project")
    run = tmp_path / "run"
    async with meshctl_up(topology, tmp_path, identities=True):
        db = run / "data" / "search.db"

        def all_notes() -> list[tuple[str, str]] | None:
            rows = _indexed(db)
            notes = [r for r in rows if r[1].startswith("note ")]
            return rows if len({t for _, t in notes}) == 20 else None

        rows = await eventually(all_notes, 60, "the 20 notes indexed by search")
        # Each handled once, by one of the two instances (the durable is shared).
        assert len({e for e, _ in rows}) == len(rows), "an event was indexed twice"
        assert sorted(t for _, t in rows if t.startswith("note ")) == sorted(
            f"note {i}" for i in range(20)
        )
        # meshctl's read-only identity sees them live, decoded with the project's types.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "NATS_"))}
        tail = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mesh.cli", "events", "tail", "note.created", "--limit", "2",
             "--run-dir", str(run), "--topology", str(topology)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        lines = [x for x in tail.stdout.splitlines() if "note.created" in x]
        assert tail.returncode == 0 and len(lines) == 2, tail.stdout + tail.stderr
        assert all('"tick ' in x and "source=notes" in x for x in lines), lines
        # The attacker's publish: search's own credentials may not publish a note.
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PUBLISH_AS, *_credentials(run, "search")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert 'permissions violation for publish to "note.created"' in refused.stdout, refused
        allowed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PUBLISH_AS, *_credentials(run, "notes")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "published" in allowed.stdout, allowed.stdout + allowed.stderr


# Publishes one message on note.created as the identity of the given seed file, through
# JetStream: an ack says the stream took it; a refused publish gets none, and the
# server's -ERR (reported to the error callback, from a task) says why.
PUBLISH_AS = """
import asyncio, sys
import nats

async def main(seed, url):  # seed file, URL
    errors = []
    async def on_error(e):
        errors.append(e)
    nc = await nats.connect(url, nkeys_seed=seed, error_cb=on_error,
                            inbox_prefix=b"_INBOX." + seed.rsplit("/", 1)[1].split(".")[0].encode())
    try:
        ack = await nc.jetstream().publish("note.created", b"forged", timeout=2)
        print("published", ack.stream)
    except Exception:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not errors and loop.time() < deadline:
            await asyncio.sleep(0.05)  # poll: the -ERR's callback, 5 s deadline
        print("errors:", errors)
        print("refused")
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

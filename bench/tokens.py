"""Token issuance of the users service: signing alone, Authenticate with and without argon2.

Run: `python -m bench tokens [--seconds S] [--concurrency C]`. Lines:

- `sign`: `services.users.tokens.access_token` alone (Ed25519 + PyJWT), one core;
- `authenticate (argon2 cheapest)`: the Authenticate RPC with the test-only
  argon2 profile, i.e. the token path (throttle read, session + refresh rows,
  signing) without the password cost;
- `authenticate (argon2 default)`: the same with the production profile
  (`rfc9106_low_memory`, 64 MiB; 2 hashes at a time): what a login costs;
- `refresh`: RefreshSession (spend + store a refresh token, sign).

The service runs in this process (grpc.aio on loopback, a fresh SQLite file,
the mesh's server chain without registry/metrics/tracing), and the client
shares its CPU: figures are a floor for one instance on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from shop.users.v1 import users_pb2, users_pb2_grpc

from mesh.server import start_service
from mesh.settings import SecuritySettings, Settings
from services.users.app import build
from services.users.config import UsersConfig
from services.users.signing_keys import SigningKey, thumbprint
from services.users.tokens import access_token

PASSWORD = "bench password 123"


@dataclass
class _Runtime:
    """What start_service needs of a MeshRuntime: no registry, metrics or tracing."""

    registry: Any = None
    prometheus: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: Any = None
    tracer_provider: Any = None


def sign_per_s(seconds: float) -> float:
    private = Ed25519PrivateKey.generate()
    key = SigningKey(thumbprint(private), private, datetime.now(UTC))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            access_token(
                key, "5f0c3a52-56a5-4c3e-9e51-0f4a3c2a8b1d", ["admin"], datetime.now(UTC), 900
            )
        n += 100
    return n / (time.perf_counter() - start)


async def _rate(call: Callable[[int], Awaitable[None]], seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(w)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.perf_counter() - start)


async def rpc_rates(profile: str, seconds: float, concurrency: int) -> dict[str, float]:
    """Authenticate (and, once, RefreshSession) calls per second against a fresh service."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            service="users", instance_id=f"bench-{uuid.uuid4().hex[:6]}", registry="none",
            nats_url="", data_dir=tmp, drain_grace_s=0.5,
            # What is measured is the password and token work, not TLS (bench.rpc has that).
            security=SecuritySettings(tls=False),
        )  # fmt: skip
        runtime = _Runtime()
        # No throttle in the way: the bench logs in successfully only.
        config = UsersConfig(password_profile=profile)
        running = await start_service(
            await build(settings, runtime, config=config), settings, runtime
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        try:
            users = users_pb2_grpc.UserServiceStub(channel)
            emails = [f"bench{w}@example.com" for w in range(concurrency)]
            for email in emails:
                await users.CreateUser(
                    users_pb2.CreateUserRequest(email=email, password=PASSWORD,
                                                profile=users_pb2.Profile(display_name="B"))
                )  # fmt: skip
            refresh = {
                w: (await users.Authenticate(
                    users_pb2.AuthenticateRequest(email=e, password=PASSWORD))).refresh_token
                for w, e in enumerate(emails)
            }  # fmt: skip

            async def authenticate(w: int) -> None:
                await users.Authenticate(
                    users_pb2.AuthenticateRequest(email=emails[w], password=PASSWORD)
                )

            async def rotate(w: int) -> None:
                res = await users.RefreshSession(
                    users_pb2.RefreshSessionRequest(refresh_token=refresh[w])
                )
                refresh[w] = res.refresh_token

            rates = {"authenticate": await _rate(authenticate, seconds, concurrency)}
            if profile == "cheapest":
                rates["refresh"] = await _rate(rotate, seconds, concurrency)
            return rates
        finally:
            await channel.close(None)
            await running.stop(0.5)


async def main(seconds: float, concurrency: int) -> None:
    print(f"token issuance (users service in-process, SQLite, concurrency {concurrency})")
    print(f"{'sign (JWT EdDSA, one core)':<34} {sign_per_s(seconds):9.0f} tokens/s")
    cheap = await rpc_rates("cheapest", seconds, concurrency)
    print(f"{'authenticate (argon2 cheapest)':<34} {cheap['authenticate']:9.0f} calls/s")
    print(f"{'refresh (RefreshSession)':<34} {cheap['refresh']:9.0f} calls/s")
    real = await rpc_rates("rfc9106_low_memory", seconds, concurrency)
    print(f"{'authenticate (argon2 default)':<34} {real['authenticate']:9.1f} calls/s")
    print(
        f"ratio authenticate default/cheapest: {real['authenticate'] / cheap['authenticate']:.3f}"
    )


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench tokens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    args = p.parse_args(argv)
    asyncio.run(main(args.seconds, args.concurrency))

"""`meshctl status`: every registered instance, its health and its breakers.

Health comes from each instance's admin `/health`; breaker states from its
`/metrics` (`mesh_breaker_state`: 0 closed, 1 half-open, 2 open), so status
shows what the processes themselves report, not what the registry assumes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from mesh.discovery.registry import Instance, Registry, RegistryUnavailable

_BREAKER = {0: "closed", 1: "half-open", 2: "open"}


async def _fetch(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url) as r:
            return await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


def breaker_states(metrics_text: str) -> list[str]:
    """`target method: state` for every breaker that is not closed."""
    out = []
    for line in metrics_text.splitlines():
        if not line.startswith("mesh_breaker_state{"):
            continue
        labels, _, value = line.rpartition(" ")
        state = _BREAKER.get(int(float(value)), value)
        if state != "closed":
            out.append(f"{labels[len('mesh_breaker_state') :]}={state}")
    return out


async def instance_status(session: aiohttp.ClientSession, inst: Instance) -> dict[str, Any]:
    admin = inst.meta.get("admin_port", "")
    row: dict[str, Any] = {"health": "unknown", "breakers": []}
    if not admin:
        return row
    base = f"http://{inst.host}:{admin}"
    health, metrics = await asyncio.gather(
        _fetch(session, f"{base}/health"), _fetch(session, f"{base}/metrics")
    )
    if health:
        try:
            doc = json.loads(health)
            row["health"] = doc.get("status", "unknown")
            row["failing"] = [c["name"] for c in doc.get("checks", []) if c.get("status") != "ok"]
        except ValueError:
            pass
    else:
        row["health"] = "unreachable"
    if metrics:
        row["breakers"] = breaker_states(metrics)
    return row


async def print_status(registry: Registry, services: tuple[str, ...]) -> int:
    """One row per instance of each of `services` (the topology's names)."""
    names = services
    rows = [("service", "instance", "grpc", "health", "breakers (not closed)")]
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name in names:
            try:
                instances = await registry.healthy(name)
            except RegistryUnavailable as exc:
                print(f"registry unreachable: {exc}")
                return 1
            if not instances:
                rows.append((name, "-", "-", "no healthy instance", ""))
            for inst in sorted(instances, key=lambda i: i.id):
                st = await instance_status(session, inst)
                health = st["health"]
                if st.get("failing"):
                    health += f" ({', '.join(st['failing'])})"
                rows.append((name, inst.id, inst.address, health, " ".join(st["breakers"])))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0

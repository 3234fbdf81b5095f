"""`meshctl status`: every registered instance, its health and its breakers; then the
mesh's own processes `meshctl up` supervises (the edge, nats-server, the trace sink).

Health comes from each instance's admin `/health`; breaker states from its
`/metrics` (`mesh_breaker_state`: 0 closed, 1 half-open, 2 open), so status
shows what the processes themselves report, not what the registry assumes.
The mesh's own processes register nowhere: their rows come from the
supervisor's state file alone (state, restarts, how the last one ended), so a
restarted Envoy or nats-server shows there as an instance's restarts do.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from mesh.discovery.registry import Instance, Registry, RegistryUnavailable
from mesh.local.supervisor import ProcessView
from mesh.traffic.policy import describe_policy, track_of

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


def supervised(run_dir: Path) -> dict[str, ProcessView]:
    """The running `meshctl up`'s view of its processes (`processes.json`), by name;
    empty when no live `meshctl up` wrote one in `run_dir`."""
    try:
        doc = json.loads((run_dir / "processes.json").read_text())
        os.kill(int(doc["pid"]), 0)
        return {
            p["name"]: ProcessView(
                p["name"],
                p.get("service", ""),
                p["state"],
                p["restarts"],
                p["last_exit"],
                p.get("pid"),
            )
            for p in doc.get("processes", [])
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def process_rows(procs: dict[str, ProcessView]) -> list[tuple[str, ...]]:
    """The table of the supervised processes that are not service instances (in the
    supervisor's start order), header first; only the header when there are none."""
    rows: list[tuple[str, ...]] = [("process", "pid", "state", "restarts", "last exit")]
    for p in procs.values():
        if not p.service:
            rows.append((p.name, _pid(p), p.state, str(p.restarts), p.last_exit_text))
    return rows


def _pid(view: ProcessView | None) -> str:
    return str(view.pid) if view is not None and view.pid is not None else "-"


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _loud(procs: dict[str, ProcessView]) -> list[str]:
    out = []
    for name, p in sorted(procs.items()):
        if p.state == "gave up":
            out.append(
                f"!!! {name}: GAVE UP after a crash loop (last exit {p.last_exit},"
                f" {p.restarts} restarts); its log is in the `meshctl up` output."
                " The rest of the mesh keeps serving; restart the mesh to try it again."
            )
        elif p.state in ("restarting", "exited"):
            out.append(f"!   {name}: {p.state} (last exit {p.last_exit})")
    return out


async def print_status(
    registry: Registry,
    services: tuple[str, ...],
    *,
    run_dir: Path | None = None,
    looked_in: str = "the registry",
) -> int:
    """The table; with no live `meshctl up` in `run_dir` and nothing registered, says that
    no mesh is running and where it looked, and returns 1."""
    names = services
    procs = supervised(run_dir) if run_dir is not None else {}
    rows = [
        ("service", "instance", "pid", "track", "grpc", "health", "restarts",
         "breakers (not closed)"),
    ]  # fmt: skip
    seen = False
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name in names:
            try:
                instances = await registry.healthy(name)
            except RegistryUnavailable as exc:
                print(f"registry unreachable: {exc} (looked in {looked_in})")
                return 1
            seen = seen or bool(instances)
            if not instances:
                rows.append((name, "-", "-", "-", "-", "no healthy instance", "", ""))
            for inst in sorted(instances, key=lambda i: i.id):
                st = await instance_status(session, inst)
                health = st["health"]
                if st.get("failing"):
                    health += f" ({', '.join(st['failing'])})"
                view = procs.get(inst.id)
                restarts = str(view.restarts) if view is not None else "-"
                rows.append(
                    (
                        name,
                        inst.id,
                        _pid(view),
                        track_of(inst),
                        inst.address,
                        health,
                        restarts,
                        " ".join(st["breakers"]),
                    )
                )
    if not seen and not procs:
        print(
            f"no mesh is running: no live `meshctl up` and no registered instance"
            f" (looked in {looked_in}). Start one with `make run` or `meshctl up`."
        )
        return 1
    _print_table(rows)
    own = process_rows(procs)
    if len(own) > 1:
        print()
        _print_table(own)
    for line in await policy_lines(registry, names):
        print(line)
    for line in _loud(procs):
        print(line)
    if run_dir is not None:
        from mesh.release.state import describe, load_all

        for release in load_all(run_dir):
            for line in ["release " + "\n".join(describe(release))]:
                print(line)
            if release.log:
                print(f"  last: {release.log[-1]['message']}")
        dead = await dead_letter_line(run_dir)
        if dead is not None:
            print(dead)
    return 0


async def dead_letter_line(run_dir: Path) -> str | None:
    """`dead letters: N in DLQ ...` when the mesh's dead-letter stream holds any; None
    when it holds none, or NATS cannot say within a few seconds (status never waits
    long on it, and the process table already says whether NATS runs)."""
    import nats.errors

    from mesh.events.nats_auth import DEAD_LETTERS
    from mesh.events.streams import DLQ_STREAM as stream
    from mesh.local.nats import connect_as

    try:
        nc = await connect_as(run_dir, DEAD_LETTERS.name, timeout_s=2)
        if nc is None:
            return None
        try:
            held = (await nc.jetstream(timeout=2).stream_info(stream)).state.messages
        finally:
            await nc.close()
    except (nats.errors.Error, OSError, TimeoutError):
        return None
    if not held:
        return None
    return f"dead letters: {held} in {stream} (`meshctl events dlq list` shows why they failed)"


async def policy_lines(registry: Registry, services: tuple[str, ...]) -> list[str]:
    """One line per service with a traffic policy (weights, faults, revision)."""
    from mesh.traffic.stores import policy_store_for

    store = policy_store_for(registry)
    if store is None:
        return []
    out = []
    try:
        for name in services:
            try:
                policy = await store.get(name)
            except Exception as exc:  # status must print whatever it can
                out.append(f"traffic {name}: unreadable policy ({exc})")
                continue
            if policy is not None:
                out.append(f"traffic {name}: {describe_policy(policy)}")
    finally:
        await store.close()
    return out

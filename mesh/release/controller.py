"""The release automation inside `meshctl up`: new subset, weight steps, analysis, verdict.

`meshctl release start` (mesh/release/cli.py) sends a request through the run dir
(mesh/release/state.py); this controller, running in the `meshctl up` process that
owns the supervisor, carries the release out:

1. **Start** `--instances N` new instances of the service as children of the
   supervisor, copies of the service's running instances with `MESH_VERSION=V`,
   `MESH_TRACK=<new track>` (green, or blue when the old one is green), their own
   ids (`<service>-<track>-<i>`) and free ports; from the release's source
   directory when one is given (a git worktree of a ref) instead of the current tree.
2. **Wait** until they are healthy in the registry and routed by the Envoy edge.
3. **Shift** the traffic policy (`mesh/traffic/policy.py`, compare-and-set on its
   revision, validated against the registry) step by step (default 0 → 10 → 50 →
   100 %). Each step settles (`settle_s`: the edge and the proxyless pickers
   follow the policy within a poll), then bakes `bake_s` while the new subset is
   compared with the old one every `check_s` from the instances' `/metrics`
   (mesh/release/analysis.py). A regression rolls back at once. A step between
   0 and 100 % whose new subset served fewer than `min_calls` calls in its bake
   bakes on until it has (or the user promotes, rolls back or aborts): with no
   traffic there is no evidence, and a release does not advance on none (until
   7 Dec 2026 an idle mesh's release went to 100 % on no calls at all).
4. **Promote** after the last step's bake: the old subset drains (its weight is 0,
   then SIGTERM: in-flight calls finish, it deregisters) and stops; the policy goes
   back to one pool (weights removed, faults kept).
5. **Roll back** (a regression, a failed start, or `release rollback`): weights
   back to old 100 / new 0, the new instances drain and stop, one pool again.
   `release abort` only stops the automation and sends all traffic back to the old
   subset; the new instances keep running (reachable with `x-mesh-track`) for a look.

Every step is logged (the `meshctl up` output and the state file, which
`release status` and `meshctl status` show). Limits: one release per service at a
time; local processes only (compose/Kubernetes releases change image tags, see the
README); the controller lives in `meshctl up`: stopping the mesh ends a release
where it is (the state file says so on the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from mesh.discovery.registry import Instance, Registry
from mesh.edge.admin import EnvoyAdmin, routed_hosts
from mesh.edge.envoy_config import write_atomically
from mesh.local.supervisor import Child, Supervisor
from mesh.local.topology import module_argv
from mesh.release import analysis
from mesh.release.state import CONTROLLER_FILE, Release, load_all, releases_dir, save
from mesh.traffic.policy import (
    InvalidPolicy,
    PolicyConflict,
    PolicyStore,
    TrafficPolicy,
    subset_counts,
    track_of,
    validate,
)

log = logging.getLogger(__name__)

# Routable hosts of one cluster as "ip:port", from the edge (None: the edge is unknown).
EdgeHosts = Callable[[str], Awaitable[set[str] | None]]


@dataclass(frozen=True, slots=True)
class Timing:
    settle_s: float = 2.0  # after a weight change, before the step's window opens
    check_s: float = 1.0  # analysis interval within a bake
    healthy_timeout_s: float = 60.0
    # How long the new subset may have no healthy instance (a crashed one is restarted
    # within a few seconds) before the release rolls back instead of going on.
    gone_s: float = 10.0
    poll_s: float = 0.2  # request directory poll


DEFAULT_TIMING = Timing()
DEFAULT_THRESHOLDS = analysis.Thresholds()


class ReleaseController:
    """Carries out the releases requested in `<run dir>/releases/requests/`."""

    def __init__(
        self,
        run_dir: Path,
        registry: Registry,
        supervisor: Supervisor,
        policies: PolicyStore,
        *,
        grace_s: float = 15.0,
        edge_hosts: EdgeHosts | None = None,
        timing: Timing = DEFAULT_TIMING,
        thresholds: analysis.Thresholds = DEFAULT_THRESHOLDS,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = run_dir.resolve()
        self.registry = registry
        self.sup = supervisor
        self.policies = policies
        self.grace_s = grace_s
        self.edge_hosts = edge_hosts
        self.timing = timing
        self.thresholds = thresholds
        self._say = say or (lambda line: print(line, flush=True))
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._commands: dict[str, str] = {}  # service -> promote | rollback | abort
        self._releases: dict[str, Release] = {}

    async def start(self) -> None:
        directory = releases_dir(self.run_dir)
        write_atomically(directory / CONTROLLER_FILE, json.dumps({"pid": os.getpid()}).encode())
        for old in load_all(self.run_dir):  # a mesh stopped mid-release
            if old.active:
                old.phase = "failed"
                old.reason = "the mesh stopped during the release"
                old.say(old.reason)
                save(self.run_dir, old)
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            (self.run_dir / "releases" / CONTROLLER_FILE).unlink()
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for release in self._releases.values():
            if release.active:
                release.phase = "failed"
                release.reason = "the mesh stopped during the release"
                release.say(release.reason)
                save(self.run_dir, release)

    # -- requests ---------------------------------------------------------------------

    async def _serve(self) -> None:
        requests = releases_dir(self.run_dir) / "requests"
        while True:
            for path in sorted(requests.glob("*.json")):
                if path.name.endswith(".reply.json"):
                    continue
                try:
                    doc = json.loads(path.read_text())
                    reply = await self.handle(doc)
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # a registry outage: answered, the loop goes on
                    log.exception("release request %s failed", path.name)
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                out = path.with_name(path.name.replace(".json", ".reply.json"))
                write_atomically(out, json.dumps(reply).encode())
                with contextlib.suppress(OSError):
                    path.unlink()
            await asyncio.sleep(self.timing.poll_s)  # request directory poll

    async def handle(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        op, service = doc["op"], str(doc["service"])
        if op == "start":
            return await self._start(doc)
        if op in ("promote", "rollback", "abort"):
            release = self._releases.get(service)
            if release is None or not release.active:
                return {"ok": False, "error": f"no release of {service} is in progress"}
            self._commands[service] = op
            return {"ok": True, "message": f"{op} requested for the release of {service}"}
        return {"ok": False, "error": f"unknown operation {op!r}"}

    async def _start(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        service = str(doc["service"])
        current = self._releases.get(service)
        if current is not None and current.active:
            return {
                "ok": False,
                "error": f"a release of {service} ({current.version}) is in progress",
            }
        template = self._template(service)
        if template is None:
            return {"ok": False, "error": f"no running instance of {service} to release"}
        healthy = await self.registry.healthy(service)
        tracks = subset_counts(healthy)
        if len(tracks) != 1:
            shown = ", ".join(f"{t} ({n})" for t, n in tracks.items()) or "none"
            return {
                "ok": False,
                "error": f"{service} must run one track to release from; it runs {shown}",
            }
        old_track = next(iter(tracks))
        new_track = "blue" if old_track == "green" else "green"
        steps = [int(s) for s in doc.get("steps", [0, 10, 50, 100])]
        if not steps or any(not 0 <= s <= 100 for s in steps) or steps != sorted(steps):
            return {"ok": False, "error": f"steps must rise from 0 to 100, got {steps}"}
        if steps[-1] != 100:
            steps.append(100)
        release = Release(
            service=service,
            version=str(doc["version"]),
            old_track=old_track,
            new_track=new_track,
            instances=int(doc.get("instances", 1)),
            source=str(doc.get("source", "")),
            steps=steps,
            bake_s=float(doc.get("bake_s", 30.0)),
        )
        self._releases[service] = release
        self._commands.pop(service, None)
        self._log(
            release, f"release of {service} {release.version} as {new_track} (now: {old_track})"
        )
        self._running[service] = asyncio.create_task(self._run(release, template))
        return {"ok": True, "message": f"release of {service} {release.version} started"}

    def _template(self, service: str) -> Child | None:
        return next(
            (c for c in self.sup.children if c.spec.service == service and not c.retiring),
            None,
        )

    def _log(self, release: Release, message: str) -> None:
        release.say(message)
        save(self.run_dir, release)
        self._say(f"release     | {message}")
        log.info("%s", message)

    # -- the release ------------------------------------------------------------------

    async def _run(self, release: Release, template: Child) -> None:
        children: list[Child] = []
        try:
            children = await self._start_instances(release, template)
            await self._wait_healthy(release)
            release.phase = "shifting"
            index = 0
            while index < len(release.steps):  # `promote` shortens the steps
                release.step = index
                verdict = await self._shift(release, release.steps[index])
                if verdict is not None:
                    await self._end(release, children, verdict)
                    return
                if release.weight == 100:
                    break
                index += 1
            await self._promote(release)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed release rolls back, whatever failed
            log.exception("release of %s failed", release.service)
            await self._end(release, children, ("rolled back", f"failed: {exc}"))

    async def _start_instances(self, release: Release, template: Child) -> list[Child]:
        children = []
        for i in range(1, release.instances + 1):
            iid = f"{release.service}-{release.new_track}-{i}"
            env = {
                **template.spec.env,
                "MESH_VERSION": release.version,
                "MESH_TRACK": release.new_track,
                "MESH_INSTANCE_ID": iid,
                "MESH_GRPC_PORT": "0",
                "MESH_ADMIN_PORT": "0",
            }
            argv = template.spec.argv
            if release.source:
                module = argv[-1] if len(argv) == 3 and argv[1] == "-m" else ""
                if not module:
                    raise RuntimeError(f"{template.spec.name} is not run as `python -m`")
                argv = module_argv(argv[0], module, source=Path(release.source))
            # The template's interpreter and directory; the source tree's code when one is given.
            spec = replace(template.spec, name=iid, argv=argv, env=env, service=release.service)
            children.append(await self.sup.start(spec))
            release.new_instances.append(iid)
        where = release.source or "the current tree"
        self._log(
            release,
            f"started {len(children)} instance(s) of {release.service} {release.version}"
            f" ({release.new_track}) from {where}",
        )
        return children

    async def _wait_healthy(self, release: Release) -> None:
        wanted = set(release.new_instances)
        deadline = time.monotonic() + self.timing.healthy_timeout_s
        while True:
            healthy = [i for i in await self.registry.healthy(release.service) if i.id in wanted]
            if {i.id for i in healthy} == wanted and all(
                track_of(i) == release.new_track for i in healthy
            ):
                routed = await self._routed(release.service, healthy)
                if routed:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the new instances were not healthy and routed within"
                    f" {self.timing.healthy_timeout_s:.0f}s"
                )
            await asyncio.sleep(0.2)  # polling the registry and the edge
        self._log(release, f"{len(wanted)} new instance(s) healthy and routed by the edge")

    async def _routed(self, service: str, instances: list[Instance]) -> bool:
        if self.edge_hosts is None:
            return True
        hosts = await self.edge_hosts(service)
        if hosts is None:
            return True  # this service is not behind the edge
        return all(i.address in hosts for i in instances)

    async def _set_weights(self, release: Release, weights: dict[str, int] | None) -> None:
        """Weights {old, new} (None: one pool), keeping the policy's faults; validated
        against the registry, compare-and-set on the revision (retried on a conflict)."""
        for _ in range(5):
            current = await self.policies.get(release.service)
            faults = current.faults if current is not None else ()
            policy = TrafficPolicy(release.service, weights or {}, faults)
            healthy = subset_counts(await self.registry.healthy(release.service))
            validate(policy, healthy)
            try:
                await self.policies.put(policy, current.revision if current else 0)
                return
            except PolicyConflict:
                continue
        raise RuntimeError(f"the traffic policy of {release.service} kept changing under us")

    async def _shift(self, release: Release, weight: int) -> tuple[str, str] | None:
        """One step: set the weight, settle, bake while analysing; a verdict ends it."""
        old, new = release.old_track, release.new_track
        try:
            await self._set_weights(release, {old: 100 - weight, new: weight})
        except InvalidPolicy as exc:
            return ("rolled back", f"policy refused: {exc}")
        release.weight = weight
        self._log(
            release,
            f"step {release.step + 1}/{len(release.steps)}: {old} {100 - weight}"
            f" / {new} {weight}; baking {release.bake_s:g}s",
        )
        command = await self._sleep_or_command(release, self.timing.settle_s)
        if command is not None:
            return self._command_verdict(release, command)
        instances = await self.registry.healthy(release.service)
        start = await analysis.snapshot(instances)
        started = time.monotonic()
        verdict: tuple[str, str] | None = None
        counts: dict[str, analysis.Counts] = {}
        waiting_said = False
        gone_since: float | None = None
        while True:
            left = release.bake_s - (time.monotonic() - started)
            # Past the bake (baking on for evidence): a check every `check_s`.
            pause = min(self.timing.check_s, left) if left > 0 else self.timing.check_s
            command = await self._sleep_or_command(release, pause)
            instances = await self.registry.healthy(release.service)
            now = await analysis.snapshot(instances)
            counts = analysis.window(start, now)
            if command is not None:
                verdict = self._command_verdict(release, command)
                break
            if any(track_of(i) == new for i in instances):
                gone_since = None
            elif gone_since is None:
                gone_since = time.monotonic()
            elif time.monotonic() - gone_since >= self.timing.gone_s:
                # The new subset is gone (stopped, or given up after a crash loop): going
                # on would promote nothing and stop the old one (found on a live mesh).
                gone = ", ".join(release.new_instances)
                verdict = (
                    "rolled back",
                    f"no healthy instance of {new} for {self.timing.gone_s:g}s ({gone})",
                )
                break
            reason = analysis.regression(
                counts.get(old, analysis.Counts()), counts.get(new, analysis.Counts()),
                self.thresholds,
            )  # fmt: skip
            if reason is not None and weight > 0:
                verdict = ("rolled back", f"regression at {weight}%: {reason}")
                break
            if time.monotonic() - started >= release.bake_s:
                served = counts.get(new, analysis.Counts()).calls
                if not 0 < weight < 100 or served >= self.thresholds.min_calls:
                    break
                # No evidence, no next step: bake on until the new subset has served
                # enough calls for a verdict, or the user decides.
                if not waiting_said:
                    waiting_said = True
                    self._log(
                        release,
                        f"step {release.step + 1}: {new} served {served:.0f} call(s), fewer"
                        f" than the {self.thresholds.min_calls} a verdict needs; baking on"
                        " until it has (`meshctl release promote` goes on without,"
                        " `rollback` stops)",
                    )
        stats = analysis.summary(counts)
        release.windows.append(
            {"weight": weight, "seconds": round(time.monotonic() - started, 2), "tracks": stats}
        )
        shown = ", ".join(
            f"{t}: {s['calls']:.0f} calls ({s['share']}%), errors {s['error_rate']:.1%},"
            f" p99 {s['p99_ms']} ms"
            for t, s in stats.items()
            if s["share"] is not None
        )
        self._log(release, f"step {release.step + 1} window: {shown or 'no calls'}")
        if verdict is not None and verdict[1] == "promote":
            release.steps = [*release.steps[: release.step + 1], 100]
            return None
        return verdict

    def _command_verdict(self, release: Release, command: str) -> tuple[str, str]:
        if command == "promote":
            return ("promote", "promote")
        if command == "abort":
            return ("aborted", "aborted by the user")
        return ("rolled back", "rolled back by the user")

    async def _sleep_or_command(self, release: Release, seconds: float) -> str | None:
        """Sleep, returning early with a user command (promote, rollback, abort)."""
        deadline = time.monotonic() + seconds
        while True:
            command = self._commands.pop(release.service, None)
            if command is not None:
                return command
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(0.1, left))  # waiting out a bake, watching for commands

    async def _end(self, release: Release, children: list[Child], verdict: tuple[str, str]) -> None:
        """Traffic back to the old subset; the new instances drain and stop (kept on abort)."""
        phase, reason = verdict
        self._log(release, f"{phase}: {reason}")
        with contextlib.suppress(Exception):
            await self._set_weights(release, {release.old_track: 100, release.new_track: 0})
        release.weight = 0
        self._log(release, f"traffic: {release.old_track} 100 / {release.new_track} 0")
        if phase != "aborted":
            await asyncio.sleep(self.timing.settle_s)  # the edge and pickers follow first
            await asyncio.gather(*(self.sup.retire(c, self.grace_s) for c in children))
            self._log(release, f"new instances drained and stopped: {release.new_instances}")
            with contextlib.suppress(Exception):
                await self._set_weights(release, None)
        release.phase = phase
        release.reason = reason
        self._log(release, f"release of {release.service} {release.version}: {phase}")

    async def _promote(self, release: Release) -> None:
        """The old subset drains and stops; first, the new one must have a healthy
        instance (within `gone_s`), or the release fails and rolls back: promoting a
        subset that is gone left the service with no instance at all."""
        deadline = time.monotonic() + self.timing.gone_s
        while not any(
            track_of(i) == release.new_track for i in await self.registry.healthy(release.service)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no healthy instance of {release.new_track} to promote; the old"
                    f" {release.old_track} instances keep serving"
                )
            await asyncio.sleep(0.2)  # polling the registry
        old_children = [
            c
            for c in self.sup.children
            if c.spec.service == release.service and c.spec.name not in release.new_instances
        ]
        self._log(release, f"promoting {release.new_track}: draining {release.old_track}")
        await asyncio.sleep(self.timing.settle_s)
        await asyncio.gather(*(self.sup.retire(c, self.grace_s) for c in old_children))
        self._log(
            release, f"old instances drained and stopped: {[c.spec.name for c in old_children]}"
        )
        with contextlib.suppress(InvalidPolicy):
            await self._set_weights(release, None)
        release.phase = "promoted"
        release.weight = 100
        self._log(release, f"release of {release.service} {release.version}: promoted")


async def edge_hosts_from_admin(admin: EnvoyAdmin, cluster: str) -> set[str] | None:
    """The hosts the Envoy edge routes to in `cluster` (None: no such cluster; an empty
    set when the edge does not answer)."""
    import aiohttp

    try:
        doc = await admin.clusters()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return set()
    return routed_hosts(doc).get(cluster)


class _MeshLike(Protocol):
    @property
    def registry(self) -> Registry: ...

    @property
    def sup(self) -> Supervisor: ...

    @property
    def policies(self) -> PolicyStore: ...

    @property
    def o(self) -> Any: ...


def start_releases(mesh: _MeshLike, run_dir: Path) -> ReleaseController:
    """The controller for `meshctl up`'s LocalMesh (its registry, supervisor, edge)."""
    admin: EnvoyAdmin = mesh.o.edge_admin

    async def edge_hosts(cluster: str) -> set[str] | None:
        return await edge_hosts_from_admin(admin, cluster)

    return ReleaseController(
        run_dir, mesh.registry, mesh.sup, mesh.policies, grace_s=mesh.o.grace_s,
        edge_hosts=edge_hosts,
    )  # fmt: skip

"""`meshctl traffic show|set|clear <service>`: read and change a service's traffic policy.

    meshctl traffic show orders
    meshctl traffic set orders blue=90 green=10
    meshctl traffic set orders blue=100 --fault subset=green,abort_percent=20
    meshctl traffic set orders --no-faults            # weights kept
    meshctl traffic set orders --one-pool             # weights removed, faults kept
    meshctl traffic clear orders                      # back to one pool, no faults

The registry (hence the store) is the one the other commands use: Consul when
CONSUL_HTTP_ADDR / MESH_REGISTRY say so (KV `shop-mesh/traffic/<service>`), else
the embedded registry of `--run-dir` (only that one when `--run-dir` is given: exit 1
when it has none), else of `.run/registry`, else the running `meshctl up` recorded for
this user (mesh/discovery/locate.py); MESH_REGISTRY_DIR overrides. `set` refuses a
service that the topology (`--topology`, else ./mesh.toml if present) does not name
and the registry has no instance of; it validates against the registry
(mesh/traffic/admin.py) and refuses an invalid policy with exit 2, the old policy
staying in force; a concurrent change (someone else wrote first) is exit 1. What
`set` is not given stays: no weights keeps the weights, no `--fault`/`--no-faults`
keeps the faults; only `--one-pool` or `clear` removes the weights. While a release
of the service is in progress (mesh/release/state.py) the release owns the weights:
changing them (`set` with weights or `--one-pool`, `clear`) is refused (exit 2);
faults may still be changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.cli_options import given
from mesh.discovery.registry import Registry, RegistryUnavailable
from mesh.settings import Settings
from mesh.traffic.policy import (
    Fault,
    InvalidPolicy,
    PolicyConflict,
    PolicyStore,
    describe_policy,
    parse_weights,
    subset_counts,
    track_of,
)

if TYPE_CHECKING:
    from mesh.release.state import Release


class NoRegistry(RuntimeError):
    """`--run-dir` was given and holds no embedded registry (the message says where)."""


def open_registry(run_dir: Path, *, explicit: bool = False) -> Registry:
    """The registry `meshctl` reads (see the module docstring). A run directory the user
    named (`explicit`) is the only one used: falling back to the running mesh made a
    typo'd `--run-dir` change another live mesh's policy (until 7 Dec 2026)."""
    from mesh.discovery import create_registry
    from mesh.discovery.locate import locate

    settings = Settings.from_env("meshctl")
    if settings.registry == "embedded" and not settings.registry_dir:
        local = run_dir.resolve() / "registry"
        if explicit and not local.is_dir():
            raise NoRegistry(f"no embedded registry in {run_dir} (no {local}): is a"
                             " `meshctl up` running there? (without --run-dir: the running"
                             " mesh)")  # fmt: skip
        directory = local if local.is_dir() else locate().directory
        settings = replace(settings, registry_dir=str(directory))
    return create_registry(settings)


async def _known_service(registry: Registry, service: str, topology: Path | None) -> str:
    """Why `service` may not be given a policy, or "" when it may: refused when the
    topology (named, or ./mesh.toml when there is one) lacks it and the registry has no
    instance of it (a policy for a typo was stored with exit 0 until 7 Dec 2026).
    Limits: without a topology file any name with no instances is accepted."""
    from mesh.local.topology import load_topology

    if topology is None:
        return ""
    names = [s.name for s in load_topology(topology).services]
    if service in names or await registry.healthy(service):
        return ""
    return f"{service!r} is not a service of {topology} ({', '.join(names)}) nor registered"


def _store(registry: Registry) -> PolicyStore:
    from mesh.traffic.stores import policy_store_for

    store = policy_store_for(registry)
    if store is None:
        raise SystemExit("meshctl traffic: MESH_REGISTRY=none keeps no traffic policies")
    return store


async def _show(registry: Registry, store: PolicyStore, service: str, as_json: bool) -> int:
    policy = await store.get(service)
    instances = await registry.healthy(service)
    if as_json:
        print(json.dumps(policy.to_json() if policy is not None else None, indent=2))
        return 0
    # The store names where any service's policy lives; say where this one's does.
    where = getattr(store, "describe", lambda: "")().replace("<service>", service)
    if policy is None:
        print(f"{service}: no traffic policy (one pool){f'; stored in {where}' if where else ''}")
    else:
        print(f"{service}: {describe_policy(policy)}{f'; stored in {where}' if where else ''}")
    counts = subset_counts(instances)
    weights = dict(policy.weights) if policy is not None else {}
    rows = [("track", "healthy", "weight", "instances")]
    for track in sorted(set(counts) | set(weights)):
        ids = " ".join(sorted(i.id for i in instances if track_of(i) == track))
        weight = f"{weights[track]}%" if track in weights else ("-" if weights else "all")
        rows.append((track, str(counts.get(track, 0)), weight, ids or "-"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _release_run_dirs(registry: Registry, args: argparse.Namespace) -> list[Path]:
    """Where a release of the mesh whose policy we change records its state: the run
    dir given (or `.run`), and the one holding the embedded registry found (a mesh keeps
    it in `<run dir>/registry`). Limits: an embedded registry moved elsewhere with
    MESH_REGISTRY_DIR, used without that run dir, hides the release."""
    from mesh.discovery.embedded import EmbeddedRegistry

    dirs = [Path(args.run_dir).resolve()]
    if isinstance(registry, EmbeddedRegistry):
        dirs.append(registry.directory.resolve().parent)
    return list(dict.fromkeys(dirs))


def _release_in_progress(run_dirs: list[Path], service: str) -> Release | None:
    """The active release of `service`, if one runs: its state says so and the `meshctl
    up` carrying it out is alive (one stopped mid-release leaves an "active" state until
    its next start marks it failed; that must not lock the weights). Reads only: makes
    no directory."""
    from base.processes import alive
    from mesh.release.state import CONTROLLER_FILE, load_all

    for run_dir in run_dirs:
        try:
            pid = int(json.loads((run_dir / "releases" / CONTROLLER_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not alive(pid):
            continue
        for release in load_all(run_dir):
            if release.service == service and release.active:
                return release
    return None


def _release_refusal(release: Release, command: str) -> str:
    """Why `command` may not change the weights now, and what to do instead."""
    return (
        f"meshctl traffic {command}: refused: the release of {release.service} to"
        f" {release.version} ({release.old_track} {100 - release.weight} /"
        f" {release.new_track} {release.weight}, {release.phase}) is in progress and owns"
        f" the weights; use `meshctl release promote|rollback|abort {release.service}`"
        f" (faults may still be set: `meshctl traffic set {release.service} --fault ...`);"
        " nothing was stored"
    )


def _topology_file(args: argparse.Namespace) -> Path | None:
    """The topology that names the services: the one given, else ./mesh.toml if present."""
    topology = getattr(args, "topology", None)
    if topology is None or not (given(topology) or Path(topology).is_file()):
        return None
    return Path(topology)


def _weights_given(args: argparse.Namespace) -> dict[str, int] | None:
    """The weights `set` was given: None when none (the current ones stay), {} for
    `--one-pool` (removed on purpose). Raises `InvalidPolicy` for both at once."""
    if args.one_pool and args.weights:
        raise InvalidPolicy("--one-pool removes the weights: give no weights with it")
    if args.one_pool:
        return {}
    return parse_weights(args.weights) if args.weights else None


async def _set(registry: Registry, store: PolicyStore, args: argparse.Namespace) -> int:
    from mesh.traffic.admin import change_policy

    service: str = args.service
    unknown = await _known_service(registry, service, _topology_file(args))
    if unknown:
        print(f"meshctl traffic set: refused: {unknown}; nothing was stored", file=sys.stderr)
        return 2
    if args.weights or args.one_pool:
        release = _release_in_progress(_release_run_dirs(registry, args), service)
        if release is not None:
            print(_release_refusal(release, "set"), file=sys.stderr)
            return 2
    before = None
    try:
        before = await store.get(service)
        weights = _weights_given(args)
        faults: list[Fault] | None = None
        if args.no_faults:
            faults = []
        if args.fault:
            faults = [Fault.parse(text) for text in args.fault]
        stored = await change_policy(
            store, registry, service, weights, faults, expected_revision=args.revision
        )
    except InvalidPolicy as exc:
        kept = (
            f"the old policy stays: {describe_policy(before)}"
            if before is not None
            else "no policy was stored (one pool stays)"
        )
        print(f"meshctl traffic set: refused: {exc}; {kept}", file=sys.stderr)
        return 2
    except PolicyConflict as exc:
        print(f"meshctl traffic set: {exc}", file=sys.stderr)
        return 1
    print(f"{service}: {describe_policy(stored)}")
    return 0


async def _clear(
    store: PolicyStore, service: str, revision: int | None, release: Release | None
) -> int:
    if release is not None:
        print(_release_refusal(release, "clear"), file=sys.stderr)
        return 2
    try:
        await store.delete(service, revision)
    except PolicyConflict as exc:
        print(f"meshctl traffic clear: {exc}", file=sys.stderr)
        return 1
    print(f"{service}: no traffic policy (one pool)")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    async def main() -> int:
        try:
            registry = open_registry(Path(args.run_dir), explicit=given(args.run_dir))
        except NoRegistry as exc:
            print(f"meshctl traffic: {exc}", file=sys.stderr)
            return 1
        store = _store(registry)
        try:
            if args.traffic_command == "set":
                return await _set(registry, store, args)
            unknown = await _known_service(registry, args.service, _topology_file(args))
            if unknown and await store.get(args.service) is None:
                # Nothing to show or clear for a name nobody knows: a typo said "no
                # policy (one pool)" with exit 0 until 7 Dec 2026.
                print(f"meshctl traffic {args.traffic_command}: {unknown}", file=sys.stderr)
                return 2
            if args.traffic_command == "show":
                return await _show(registry, store, args.service, args.json)
            release = _release_in_progress(_release_run_dirs(registry, args), args.service)
            return await _clear(store, args.service, args.revision, release)
        except RegistryUnavailable as exc:
            print(f"meshctl traffic: registry unreachable: {exc}", file=sys.stderr)
            return 1
        except InvalidPolicy as exc:  # a malformed stored policy, on show
            print(f"meshctl traffic: the stored policy is malformed: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()
            await registry.close()

    return asyncio.run(main())


def register(sub: Any) -> None:
    """Add `traffic` to meshctl's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", default=argparse.SUPPRESS)
    traffic = sub.add_parser(
        "traffic", help="show or change a service's traffic policy", parents=[common]
    ).add_subparsers(dest="traffic_command", required=True, metavar="<traffic command>")
    show = traffic.add_parser("show", help="the policy and the service's tracks", parents=[common])
    show.add_argument("service")
    show.add_argument("--json", action="store_true", help="the stored policy as JSON")
    show.set_defaults(fn=cmd_traffic)
    set_ = traffic.add_parser(
        "set", help="weights per subset (summing to 100) and faults", parents=[common]
    )
    set_.add_argument("service")
    set_.add_argument(
        "weights",
        nargs="*",
        help="subset=percent, e.g. blue=90 green=10 (none: the current weights stay)",
    )
    set_.add_argument(
        "--fault",
        action="append",
        default=[],
        help="key=value,... e.g. subset=green,abort_percent=20,abort_status=UNAVAILABLE"
        " or method=/pkg.Service/*,delay_percent=50,delay_ms=200 (repeatable; replaces"
        " the current faults)",
    )
    set_.add_argument(
        "--no-faults", action="store_true", help="remove every fault (the weights stay)"
    )
    set_.add_argument(
        "--one-pool",
        action="store_true",
        help="remove the weights, keeping the faults (without weights or this, the"
        " current weights stay; refused during a release of the service)",
    )
    set_.add_argument(
        "--revision", type=int, default=None, help="only if the stored policy is at this revision"
    )
    set_.set_defaults(fn=cmd_traffic)
    clear = traffic.add_parser(
        "clear",
        help="remove the policy, weights and faults (one pool; refused during a release)",
        parents=[common],
    )
    clear.add_argument("service")
    clear.add_argument("--revision", type=int, default=None)
    clear.set_defaults(fn=cmd_traffic)

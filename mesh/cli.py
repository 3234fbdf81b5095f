"""`meshctl`: run and inspect the mesh.

meshctl up [--detach]        the whole mesh locally (nats-server, services, Envoy)
meshctl down                 stop a running `up`
meshctl status               instances, health and breaker states
meshctl demo                 the project's demo (the module mesh.toml names)
meshctl edge render          render envoy/ from the descriptor set
meshctl edge serve           edge meta server + endpoint sync (the compose topology)
meshctl events tail [subj]   print decoded events live (default: every domain)
meshctl pki init|issue|rotate|show   the mesh CA and service certificates
meshctl policy [--markdown]  who may call what (the contracts' callers)

`up`, `status`, `demo` and `events tail` read the project's topology file
(`--topology PATH`, default `./mesh.toml`): its services, their instances and
ports, its event types and its demo (mesh/local/topology.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.discovery.registry import Registry
from mesh.local.topology import DEFAULT_TOPOLOGY, Topology, TopologyError, load_topology
from mesh.security import cli as security_cli
from mesh.security import policy as security_policy
from mesh.settings import Settings, SettingsError
from mesh.tools import MissingToolError


def _settings() -> Settings:
    return Settings.from_env("meshctl")


def _registry(run_dir: Path) -> Registry:
    from mesh.discovery import create_registry

    settings = _settings()
    if settings.registry == "embedded" and not os.environ.get("MESH_REGISTRY_DIR"):
        from dataclasses import replace

        settings = replace(settings, registry_dir=str(run_dir.resolve() / "registry"))
    return create_registry(settings)


def _topology(args: argparse.Namespace) -> Topology:
    return load_topology(Path(args.topology))


def cmd_up(args: argparse.Namespace) -> int:
    from mesh.local.up import UpError, UpOptions, free_port_options, run_up

    run_dir = Path(args.run_dir)
    topology = _topology(args)
    if args.detach:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = (run_dir / "up.log").open("ab")
        argv = [sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), "up",
                "--topology", str(topology.path.resolve())]  # fmt: skip
        proc = subprocess.Popen(
            argv + (["--free-ports"] if args.free_ports else []),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        print(f"mesh starting in the background (pid {proc.pid}); logs: {run_dir / 'up.log'}")
        print("`meshctl status` shows it, `meshctl down` stops it")
        return 0

    async def main() -> int:
        settings = _settings()
        registry = _registry(run_dir)
        try:
            options = UpOptions(
                run_dir=run_dir, nats_url=settings.nats_url, services=topology.services
            )
            if args.free_ports:
                options = free_port_options(options)
            return await run_up(
                options,
                registry,
            )
        finally:
            await registry.close()

    try:
        return asyncio.run(main())
    except UpError as exc:
        print(f"meshctl up: {exc}", file=sys.stderr)
        return 1


def cmd_down(args: argparse.Namespace) -> int:
    from mesh.local.up import run_down

    return run_down(Path(args.run_dir))


def cmd_status(args: argparse.Namespace) -> int:
    from mesh.local.status import print_status

    topology = _topology(args)

    async def main() -> int:
        registry = _registry(Path(args.run_dir))
        try:
            return await print_status(registry, tuple(s.name for s in topology.services))
        finally:
            await registry.close()

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    topology = _topology(args)
    if not topology.demo_module:
        print(f"meshctl demo: {topology.path} names no demo module", file=sys.stderr)
        return 1
    argv = [sys.executable, "-m", topology.demo_module, "--edge-port", str(args.edge_port)]
    return subprocess.call(argv, cwd=topology.root)


def cmd_edge_render(args: argparse.Namespace) -> int:
    from mesh.edge.render import main as render_main

    return render_main(["--out", args.out] if args.out else [])


def cmd_edge_serve(args: argparse.Namespace) -> int:
    import logging

    from mesh.edge.serve import serve_edge

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> int:
        registry = _registry(Path(args.run_dir))
        try:
            await serve_edge(
                registry,
                host=args.host,
                port=args.port,
                eds_dir=Path(args.eds_dir),
            )
        finally:
            await registry.close()
        return 0

    return asyncio.run(main())


def cmd_events_tail(args: argparse.Namespace) -> int:
    from mesh.local.tail import tail_events

    types = _topology(args).event_types()
    try:
        return asyncio.run(
            tail_events(_settings().nats_url, args.subject, types=types, limit=args.limit)
        )
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshctl", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=".run", help="state, data and logs of `up` (.run)")
    sub = p.add_subparsers(dest="command", required=True)
    topo = argparse.ArgumentParser(add_help=False)
    topo.add_argument(
        "--topology",
        default=str(DEFAULT_TOPOLOGY),
        help="the project's services, event types and demo (default: ./mesh.toml)",
    )
    up = sub.add_parser("up", parents=[topo], help="run the mesh locally in the foreground")
    up.add_argument("--detach", action="store_true", help="run in the background")
    up.add_argument(
        "--free-ports", action="store_true", help="every process and the edge on free ports"
    )
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop a running `meshctl up`").set_defaults(fn=cmd_down)
    status = sub.add_parser("status", parents=[topo], help="instances, health, breakers")
    status.set_defaults(fn=cmd_status)
    demo = sub.add_parser("demo", parents=[topo], help="the project's demo (mesh.toml `demo`)")
    demo.add_argument("--edge-port", type=int, default=8080)
    demo.set_defaults(fn=cmd_demo)
    edge = sub.add_parser("edge", help="edge gateway config").add_subparsers(
        dest="edge_command", required=True
    )
    render = edge.add_parser("render", help="render envoy/ from the descriptor set")
    render.add_argument("--out", default="")
    render.set_defaults(fn=cmd_edge_render)
    serve = edge.add_parser("serve", help="edge meta server + endpoint sync (compose)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9190)
    serve.add_argument("--eds-dir", default="/var/run/envoy/eds")
    serve.set_defaults(fn=cmd_edge_serve)
    events = sub.add_parser("events", help="events on NATS").add_subparsers(
        dest="events_command", required=True
    )
    tail = events.add_parser("tail", parents=[topo], help="print decoded events live")
    tail.add_argument("subject", nargs="?", default=">", help="e.g. order.* (default: all)")
    tail.add_argument("--limit", type=int, default=0, help="stop after N events (0: never)")
    tail.set_defaults(fn=cmd_events_tail)
    security_cli.register(sub)
    security_policy.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except SettingsError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    except MissingToolError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 3
    except TopologyError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())

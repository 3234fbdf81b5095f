"""`meshctl`: run and inspect the mesh.

meshctl up [--detach]        the whole mesh locally (nats-server, services, Envoy)
meshctl down                 stop a running `up`
meshctl status               instances, health, restarts and breaker states
meshctl demo                 the shop's story through the edge (grpcurl + curl)
meshctl edge render          render envoy/ from the descriptor set
meshctl edge serve           edge meta server + endpoint sync (the compose topology)
meshctl events tail [subj]   print decoded events live (default: every domain)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.discovery.registry import Registry
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


def _where(run_dir: Path) -> str:
    """The registry `meshctl` reads, in words (for "no mesh is running" messages)."""
    settings = _settings()
    if settings.registry == "consul":
        return f"Consul at {settings.consul_http_addr}"
    if settings.registry == "embedded":
        where = os.environ.get("MESH_REGISTRY_DIR") or str(run_dir.resolve() / "registry")
        return f"the embedded registry {where}"
    return "no registry (MESH_REGISTRY=none)"


def cmd_up(args: argparse.Namespace) -> int:
    from mesh.local.up import UpError, UpOptions, free_port_options, run_up

    run_dir = Path(args.run_dir)
    if args.detach:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = (run_dir / "up.log").open("ab")
        argv = [sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), "up"]
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
            options = UpOptions(run_dir=run_dir, nats_url=settings.nats_url)
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

    run_dir = Path(args.run_dir)
    looked_in = f"{run_dir.resolve() / 'processes.json'} and {_where(run_dir)}"

    async def main() -> int:
        registry = _registry(run_dir)
        try:
            return await print_status(registry, run_dir=run_dir, looked_in=looked_in)
        finally:
            await registry.close()

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from mesh.local.demo import run_demo

    return run_demo(edge=f"127.0.0.1:{args.edge_port}", nats_url=_settings().nats_url)


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

    try:
        return asyncio.run(tail_events(_settings().nats_url, args.subject, limit=args.limit))
    except KeyboardInterrupt:
        return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shop-mesh")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    # Options shared by every subcommand, accepted before or after it (`meshctl status
    # --run-dir x` as well as `meshctl --run-dir x status`); SUPPRESS keeps a subcommand
    # from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", default=argparse.SUPPRESS, help=_RUN_DIR_HELP)
    p = argparse.ArgumentParser(
        prog="meshctl",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"meshctl (shop-mesh) {_version()}")
    p.add_argument("--run-dir", default=".run", help=_RUN_DIR_HELP)
    sub = p.add_subparsers(dest="command", metavar="<command>")

    def add(parent: Any, name: str, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help_, parents=[common])
        return parser

    up = add(sub, "up", "run the mesh locally in the foreground")
    up.add_argument("--detach", action="store_true", help="run in the background")
    up.add_argument(
        "--free-ports", action="store_true", help="every process and the edge on free ports"
    )
    up.set_defaults(fn=cmd_up)
    add(sub, "down", "stop a running `meshctl up`").set_defaults(fn=cmd_down)
    add(sub, "status", "instances, health, breakers, restarts").set_defaults(fn=cmd_status)
    demo = add(sub, "demo", "the shop's story through the edge")
    demo.add_argument("--edge-port", type=int, default=8080)
    demo.set_defaults(fn=cmd_demo)
    edge = add(sub, "edge", "edge gateway config").add_subparsers(
        dest="edge_command", required=True, metavar="<edge command>"
    )
    render = add(edge, "render", "render envoy/ from the descriptor set")
    render.add_argument("--out", default="")
    render.set_defaults(fn=cmd_edge_render)
    serve = add(edge, "serve", "edge meta server + endpoint sync (compose)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9190)
    serve.add_argument("--eds-dir", default="/var/run/envoy/eds")
    serve.set_defaults(fn=cmd_edge_serve)
    events = add(sub, "events", "events on NATS").add_subparsers(
        dest="events_command", required=True, metavar="<events command>"
    )
    tail = add(events, "tail", "print decoded events live")
    tail.add_argument("subject", nargs="?", default=">", help="e.g. order.* (default: all)")
    tail.add_argument("--limit", type=int, default=0, help="stop after N events (0: never)")
    tail.set_defaults(fn=cmd_events_tail)
    return p


_RUN_DIR_HELP = "state, data and logs of `up` (default .run)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:  # `meshctl` alone: what it can do
        parser.print_help()
        return 0
    try:
        code: int = args.fn(args)
    except SettingsError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    except MissingToolError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    raise SystemExit(main())

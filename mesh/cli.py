"""`meshctl`: run and inspect the mesh.

meshctl up [--detach]        the whole mesh locally (nats-server, services, Envoy)
meshctl down                 stop a running `up`
meshctl status               instances and their pids, health, restarts, breakers
meshctl demo                 the project's demo (the module mesh.toml names)
meshctl contracts build      a project's stubs and edge descriptor set from its protos
meshctl edge render          render envoy/ from the descriptor set
meshctl edge serve           edge meta server + endpoint sync (the compose topology)
meshctl events tail [subj]   print decoded events live (default: every domain)
meshctl events dlq list|replay|drop   dead letters: why they failed, publish again, drop
meshctl events credentials DIR   NATS seeds and authorization for a deployment (compose)
meshctl traces [id]          recent traces, or one trace's tree with timings
meshctl k8s render|secrets   Kubernetes manifests from the topology (mesh/k8s/)
meshctl pki init|issue|rotate|renew|show   the mesh CA and service certificates
meshctl policy [--markdown]  who may call what (the contracts' callers)
meshctl traffic show|set|clear <service>   subset weights and faults (blue=90 green=10)

`up`, `status`, `demo` and `events tail` read the project's topology file
(`--topology PATH`, default `./mesh.toml`): its services, their instances and
ports, its event types and its demo (mesh/local/topology.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.cli_args import path_arg
from mesh.cli_options import Default
from mesh.contracts import codegen
from mesh.discovery import locate
from mesh.discovery.embedded import UnsafeRegistryDir
from mesh.discovery.registry import Registry
from mesh.events.nats_credentials import CredentialsError
from mesh.k8s import render as k8s_render
from mesh.local import dlq_cli
from mesh.local.topology import DEFAULT_TOPOLOGY, Topology, TopologyError, load_topology
from mesh.local.traces import command as traces_command
from mesh.release import cli as release_cli
from mesh.security import cli as security_cli
from mesh.security import policy as security_policy
from mesh.settings import Settings, SettingsError
from mesh.tools import MissingToolError
from mesh.traffic import cli as traffic_cli


def _settings() -> Settings:
    return Settings.from_env("meshctl")


def _registry_dir(run_dir: Path) -> Path:
    """The embedded registry of the mesh in `run_dir` (MESH_REGISTRY_DIR overrides)."""
    return Path(os.environ.get("MESH_REGISTRY_DIR") or run_dir.resolve() / "registry")


def _registry(run_dir: Path) -> Registry:
    from mesh.discovery import create_registry

    settings = _settings()
    if settings.registry == "embedded":
        from dataclasses import replace

        settings = replace(settings, registry_dir=str(_registry_dir(run_dir)))
    return create_registry(settings)


def _topology(args: argparse.Namespace) -> Topology:
    return load_topology(Path(args.topology))


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
    from mesh.local.log_rotation import LogRotation
    from mesh.local.observe import ObserveOptions
    from mesh.local.up import (
        UpError,
        UpOptions,
        free_port_options,
        make_run_dir,
        run_up,
        topology_events,
    )

    run_dir = Path(args.run_dir)
    topology = _topology(args)
    make_run_dir(run_dir)  # before anything below creates it with the umask's mode
    if args.detach:
        from mesh.local.detach import start_detached

        argv = [sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), "up",
                "--topology", str(topology.path.resolve()),
                "--log-file", str((run_dir / "up.log").resolve())]  # fmt: skip
        return start_detached(run_dir, argv + (["--free-ports"] if args.free_ports else []))

    async def main() -> int:
        # Detached: stdout and stderr are up.log, kept to a bounded size.
        rotation = (
            asyncio.get_running_loop().create_task(LogRotation(Path(args.log_file)).run())
            if args.log_file
            else None
        )
        settings = _settings()
        registry = _registry(run_dir)
        recorded = settings.registry == "embedded"
        if recorded:  # so that `mesh.connect` in any process of this user finds this mesh
            locate.record(
                _registry_dir(run_dir),
                pki_dir=Path(os.environ.get("MESH_PKI_DIR") or run_dir / "pki"),
            )
        try:
            identities, streams = topology_events(topology, settings)
            options = UpOptions(
                run_dir=run_dir,
                nats_url=settings.nats_url,
                services=topology.services,
                project_dir=topology.root,
                edge_descriptors=topology.edge_descriptors(),
                edge_auth=topology.edge.auth,
                edge_cors=topology.edge.cors,
                observe=ObserveOptions.from_settings(settings),
                nats_external=bool(os.environ.get("NATS_URL")),
                event_identities=identities,
                streams=streams,
            )
            if args.free_ports:
                options = free_port_options(options)
            return await run_up(
                options,
                registry,
            )
        finally:
            if rotation is not None:
                rotation.cancel()
            if recorded:
                locate.forget(_registry_dir(run_dir))
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
    run_dir = Path(args.run_dir)
    looked_in = f"{run_dir.resolve() / 'processes.json'} and {_where(run_dir)}"

    async def main() -> int:
        registry = _registry(run_dir)
        try:
            return await print_status(
                registry,
                tuple(s.name for s in topology.services),
                run_dir=run_dir,
                looked_in=looked_in,
            )
        finally:
            await registry.close()

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from mesh.local.nats import nats_env

    topology = _topology(args)
    if not topology.demo_module:
        print(f"meshctl demo: {topology.path} names no demo module", file=sys.stderr)
        return 1
    argv = [sys.executable, "-m", topology.demo_module, "--edge-port", str(args.edge_port)]
    env = nats_env(os.environ, Path(args.run_dir))  # it watches events as meshctl's identity
    return subprocess.call(argv, cwd=topology.root, env=env)


def cmd_edge_render(args: argparse.Namespace) -> int:
    """Compose's edge config, for the topology's `[edge]`: its contracts, token issuer
    and browser origins (the shop's mesh.toml names none: `envoy/` as committed). By
    default into the project's `envoy/`: this checkout's only for its own topology."""
    from dataclasses import replace

    from mesh.edge.render import COMPOSE_OPTIONS, ENVOY_DIR, project_output, render_files

    topology = _topology(args)
    edge = topology.edge
    out = Path(args.out) if args.out else project_output(topology.root, ENVOY_DIR)
    options = replace(COMPOSE_OPTIONS, auth=edge.auth, cors=edge.cors)
    descriptors = topology.edge_descriptors()
    config, _ = render_files(out, options, descriptors)
    # Compose mounts the directory as /etc/envoy: the transcoder's set goes with it.
    kept = out / Path(COMPOSE_OPTIONS.descriptor_path).name
    if not kept.exists() or not kept.samefile(descriptors):
        shutil.copyfile(descriptors, kept)
    print(f"rendered {config}")
    return 0


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
                **({"descriptors": args.descriptors} if args.descriptors else {}),
                **({"jwks_service": args.jwks_service} if args.jwks_service is not None else {}),
            )
        finally:
            await registry.close()
        return 0

    return asyncio.run(main())


def cmd_events_tail(args: argparse.Namespace) -> int:
    import nats.errors

    from mesh.events.nats_auth import valid_pattern
    from mesh.events.nats_connect import redact_urls
    from mesh.local.nats import client_for
    from mesh.local.tail import tail_events

    if not valid_pattern(args.subject):
        print(f"meshctl events tail: {args.subject!r} is not a NATS subject (tokens joined by"
              " '.', no spaces; '*' one token, '>' the rest: order.*, user.>)",
              file=sys.stderr)  # fmt: skip
        return 2
    types = _topology(args).event_types()
    client = client_for(Path(args.run_dir))
    if client is None:
        print(f"meshctl events tail: no mesh has run in {args.run_dir} (`make run` starts one),"
              " and NATS_URL is not set", file=sys.stderr)  # fmt: skip
        return 1
    url, auth = client
    try:
        return asyncio.run(tail_events(url, args.subject, types=types, limit=args.limit, auth=auth))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        raise  # the reader left (`| head`): main ends quietly, not "cannot use NATS"
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        # A stopped mesh leaves its NATS address behind; a refused login says why.
        print(f"meshctl events tail: cannot use NATS at {redact_urls(url)}"
              f" ({type(exc).__name__}: {exc}); is the mesh running? (`meshctl status`)",
              file=sys.stderr)  # fmt: skip
        return 1


def cmd_events_credentials(args: argparse.Namespace) -> int:
    """Seeds kept in DIRECTORY for the topology's event identities and meshctl's tools,
    and `nats.conf` with their authorization, for a nats-server started with `-c`
    (docker-compose.yml's `nats-init`; mesh/events/nats_credentials.py)."""
    from mesh.events.nats_credentials import keep_credentials, write_server_config

    topology = _topology(args)
    directory = Path(args.directory)
    kept = keep_credentials(directory, topology.event_identities(), topology.streams())
    path = write_server_config(directory, kept)
    print(f"{path}: {len(kept.seeds)} identities ({', '.join(kept.seeds)}); seeds kept beside it")
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
    common.add_argument("--topology", default=argparse.SUPPRESS, help=_TOPOLOGY_HELP)
    p = argparse.ArgumentParser(
        prog="meshctl",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"meshctl (shop-mesh) {_version()}")
    # Default: a command can tell them from a path typed (mesh/cli_options.py).
    p.add_argument("--run-dir", default=Default(".run"), help=_RUN_DIR_HELP)
    p.add_argument("--topology", default=Default(str(DEFAULT_TOPOLOGY)), help=_TOPOLOGY_HELP)
    sub = p.add_subparsers(dest="command", metavar="<command>")

    def add(parent: Any, name: str, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help_, parents=[common])
        return parser

    up = add(sub, "up", "run the mesh locally in the foreground")
    up.add_argument("--detach", action="store_true", help="run in the background")
    up.add_argument(
        "--free-ports", action="store_true", help="every process and the edge on free ports"
    )
    # Set by --detach for the background `up`: its stdout/stderr file, to keep bounded.
    up.add_argument("--log-file", default="", help=argparse.SUPPRESS)
    up.set_defaults(fn=cmd_up)
    add(sub, "down", "stop a running `meshctl up`").set_defaults(fn=cmd_down)
    add(sub, "status", "instances, pids, health, breakers, restarts").set_defaults(fn=cmd_status)
    demo = add(sub, "demo", "the project's demo (mesh.toml `demo`)")
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
    serve.add_argument(
        "--descriptors",
        default="",
        help="descriptor set: a path or package:resource (default: the checkout's envoy/)",
    )
    serve.add_argument(
        "--jwks-service",
        default=None,
        help="registry service serving the end users' keys (default: the shop's users;"
        " empty: the edge has no issuer)",
    )
    serve.set_defaults(fn=cmd_edge_serve)
    k8s_render.register(sub, common)
    events = add(sub, "events", "events on NATS").add_subparsers(
        dest="events_command", required=True, metavar="<events command>"
    )
    tail = add(events, "tail", "print decoded events live")
    tail.add_argument("subject", nargs="?", default=">", help="e.g. order.* (default: all)")
    tail.add_argument("--limit", type=int, default=0, help="stop after N events (0: never)")
    tail.set_defaults(fn=cmd_events_tail)
    dlq_cli.register(events, add)
    creds = add(events, "credentials", "NATS seeds and the server's authorization (compose)")
    creds.add_argument(
        "directory", type=path_arg, help="kept there: <identity>.nk (0600) and nats.conf"
    )
    creds.set_defaults(fn=cmd_events_credentials)
    traces_command.register(sub)
    codegen.register(sub)
    release_cli.register(sub)
    security_cli.register(sub)
    security_policy.register(sub)
    traffic_cli.register(sub)
    _common_options_everywhere(p)
    return p


def _common_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--run-dir` and `--topology` after every subcommand's name too, however its module
    registered it (`traces --run-dir x` and `policy --topology x` were "unrecognized
    arguments" while `status --run-dir x` worked); SUPPRESS keeps what was given before
    the subcommand. A parser that has the option already keeps its own."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in set(action.choices.values()):
            known = {flag for a in child._actions for flag in a.option_strings}
            for flag, help_ in (("--run-dir", _RUN_DIR_HELP), ("--topology", _TOPOLOGY_HELP)):
                if flag not in known:
                    child.add_argument(flag, default=argparse.SUPPRESS, help=help_)
            _common_options_everywhere(child)


_RUN_DIR_HELP = "state, data and logs of `up` (default .run)"
_TOPOLOGY_HELP = "the project's services, event types and demo (default ./mesh.toml)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:  # `meshctl` alone: what it can do
        parser.print_help()
        return 0
    try:
        code: int = args.fn(args)
        sys.stdout.flush()  # here, not at exit: a reader that left is met below
    except BrokenPipeError:
        # `meshctl status | head`: the reader has what it wanted. Ending as a shell tool
        # ends on SIGPIPE, with no traceback (one before 7 Dec 2026); stdout goes to
        # /dev/null so the interpreter's last flush does not fail again (Python's
        # documented way: "Note on SIGPIPE" in the signal module's docs).
        from mesh.local.up_output import to_devnull

        to_devnull(sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (SettingsError, UnsafeRegistryDir) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    except MissingToolError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 3
    except (TopologyError, CredentialsError) as exc:  # a file the user gave, named
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        # A path the user gave (`--out`, `--run-dir`, `--material`...) that cannot be
        # used: said in one line, as a shell command would (a traceback before 7 Dec 2026).
        where = f": {exc.filename}" if exc.filename else ""
        print(f"meshctl {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())

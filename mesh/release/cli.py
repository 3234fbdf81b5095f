"""`meshctl release start|status|promote|rollback|abort`: talk to the running `meshctl up`.

`start` prepares the source (the current tree, or a git ref as a worktree under
`<run dir>/releases/<V>`), refuses a version whose new migrations are not
compatible with the running one (mesh/release/source.py), then asks the controller
in `meshctl up` to carry the release out (mesh/release/controller.py) and follows
its log until it ends (`--detach`: return at once; `release status` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from mesh.cli_args import finite_at_least, int_between
from mesh.local.topology import DEFAULT_TOPOLOGY, MAX_INSTANCES, TopologyError, load_topology
from mesh.release.source import SourceError, check_migrations, prepare_source
from mesh.release.state import CONTROLLER_FILE, TERMINAL, describe, load, load_all, send, wait_reply


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps are percents like 0,10,50,100: {text!r}") from None
    if not steps or steps != sorted(steps) or not all(0 <= s <= 100 for s in steps):
        raise argparse.ArgumentTypeError(f"steps must rise within 0-100: {text!r}")
    return steps


# A Kubernetes label value (the `version` label), also a safe directory name for the
# release's source (`<run dir>/releases/<V>`): no empty version, no path in it.
_VERSION = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _version(text: str) -> str:
    if not _VERSION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a version: letters, digits, '.', '-', '_', at most 63,"
            " starting and ending with a letter or digit (e.g. 2.1.0)"
        )
    return text


def register(sub: Any) -> None:
    """Add `release` to meshctl's subcommands."""
    p = sub.add_parser("release", help="blue-green / canary releases of a service")
    cmds = p.add_subparsers(dest="release_command", required=True, metavar="<release command>")
    start = _run_dir_option(
        cmds.add_parser("start", help="start a new version and shift traffic to it")
    )
    start.add_argument("service")
    start.add_argument(
        "--version", required=True, dest="release_version", metavar="V", type=_version
    )
    start.add_argument(
        "--instances", type=int_between(1, MAX_INSTANCES), default=1, help=f"1-{MAX_INSTANCES} (1)"
    )
    start.add_argument("--source", default="", help="a git ref (default: the current tree)")
    start.add_argument("--steps", type=_steps, default=[0, 10, 50, 100], help="0,10,50,100")
    start.add_argument(
        "--bake", type=finite_at_least(0), default=30.0, help="seconds per step (30)"
    )
    start.add_argument("--detach", action="store_true", help="return once it has started")
    start.set_defaults(fn=cmd_start)
    status = _run_dir_option(cmds.add_parser("status", help="the releases and their steps"))
    status.add_argument("service", nargs="?", default="")
    status.set_defaults(fn=cmd_status)
    for name, help_ in (
        ("promote", "skip the remaining steps: all traffic to the new version now"),
        ("rollback", "traffic back to the old version; the new instances stop"),
        ("abort", "stop the automation, traffic back; the new instances stay up"),
    ):
        c = _run_dir_option(cmds.add_parser(name, help=help_))
        c.add_argument("service")
        c.set_defaults(fn=lambda args, op=name: cmd_command(args, op))


def _mesh_running(run_dir: Path) -> bool:
    """Whether a `meshctl up` with a release controller runs in `run_dir`."""
    try:
        pid = int(json.loads((run_dir.resolve() / "releases" / CONTROLLER_FILE).read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _run_dir_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--run-dir` after the subcommand too (SUPPRESS: keep one given before it)."""
    parser.add_argument("--run-dir", default=argparse.SUPPRESS, help="the run dir of `up`")
    return parser


def _no_mesh(run_dir: Path) -> bool:
    """Say so when no `meshctl up` runs in `run_dir` (a request would wait 30 s for nobody)."""
    if _mesh_running(run_dir):
        return False
    print(f"meshctl release: no `meshctl up` is running in {run_dir}", file=sys.stderr)
    return True


def cmd_start(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if _no_mesh(run_dir):
        return 1
    try:
        topology = load_topology(Path(getattr(args, "topology", DEFAULT_TOPOLOGY)))
    except TopologyError as exc:
        print(f"meshctl release: {exc}", file=sys.stderr)
        return 2
    spec = next((s for s in topology.services if s.name == args.service), None)
    if spec is None:
        print(f"meshctl release: {args.service} is not in {topology.path}", file=sys.stderr)
        return 2
    try:
        source = prepare_source(topology.root, run_dir, args.release_version, args.source)
        if spec.migrations and source != topology.root:  # the same tree adds none
            added = check_migrations(topology.root, source, spec.migrations)
            if added:
                print(f"new migrations (all compatible with the running version): {added}")
    except SourceError as exc:
        print(f"meshctl release: {exc}", file=sys.stderr)
        return 1
    request = {
        "op": "start",
        "service": args.service,
        "version": args.release_version,
        "instances": args.instances,
        "source": "" if source == topology.root else str(source),
        "steps": args.steps,
        "bake_s": args.bake,
    }
    reply = wait_reply(send(run_dir, request), 30)
    if reply is None:
        print("meshctl release: `meshctl up` did not answer within 30s", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"meshctl release: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply.get("message", "started"))
    if args.detach:
        return 0
    return follow(run_dir, args.service)


def follow(run_dir: Path, service: str) -> int:
    """Print the release's log as it grows, until it ends; 0 if promoted. Ctrl-C stops
    following only (the release is `meshctl up`'s): one line saying so, 130."""
    try:
        return _follow(run_dir, service)
    except KeyboardInterrupt:
        print("\nstopped following; the release goes on (`meshctl release status` /"
              f" `meshctl release rollback {service}`)", file=sys.stderr)  # fmt: skip
        return 130


def _follow(run_dir: Path, service: str) -> int:
    shown = 0
    while True:
        release = load(run_dir, service)
        if release is not None:
            for entry in release.log[shown:]:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
                print(f"{stamp} {entry['message']}", flush=True)
            shown = len(release.log)
            if release.phase in TERMINAL:
                return 0 if release.phase == "promoted" else 1
        time.sleep(0.3)  # polling the state file


def cmd_command(args: argparse.Namespace, op: str) -> int:
    run_dir = Path(args.run_dir)
    if _no_mesh(run_dir):
        return 1
    reply = wait_reply(send(run_dir, {"op": op, "service": args.service}), 30)
    if reply is None:
        print("meshctl release: `meshctl up` did not answer within 30s", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"meshctl release: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply.get("message"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    releases = [r for r in load_all(run_dir) if not args.service or r.service == args.service]
    if not releases:
        print("no release" + (f" of {args.service}" if args.service else ""))
        return 0
    for release in releases:
        for line in describe(release):
            print(line)
        for entry in release.log:
            stamp = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
            print(f"  {stamp} {entry['message']}")
    return 0

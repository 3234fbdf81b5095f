"""Two `meshctl up` stacks loaded at the same moment, one setting apart: CPU per order, B / A.

Run: `python -m bench side-by-side --b KEY=VALUE [--b KEY=VALUE ...] [--a KEY=VALUE ...]
[--b-instances orders=1,inventory=1] [--b-python PATH] [--a-ref REF --b-ref REF]
[--rounds 6] [--seconds 10] [--clients 16] [--api rest|grpc] [--database
sqlite|postgresql]`.

Why: the 2-core box this project is measured on drifts by 10-25 % within minutes.
Two runs of `bench orders` one after the other could not tell a 9 % lever (tracing
every call) from nothing: three pairs came out either way. Taking turns does not help
at this scale either: two stacks loaded in alternating 5 s turns spread an A/A ratio
over 0.81-1.20. Two stacks loaded at the same moment share whatever state the box is
in: in A/A runs of five 10 s rounds every round's ratio was within 0.95-1.04. That is
how this benchmark measures: ratios side by side in one run, as `bench rpc` and `bench
whole` do for single calls.

One bias remains, and the rounds are split to cancel it: the stack started first costs
~2 % more CPU per order (A/A with A started first: medians 0.991 and 0.981, every
round but one below 1; with B started first: 1.023). So the first half of the rounds
runs on a pair of stacks with A's started first, the second half on a new pair with
B's started first, and B / A is the geometric mean of the two passes' medians, which
cancels a start-order factor (`summarise`); that factor is printed too.

What it does: starts stack A (the defaults, plus `--a` settings) and stack B (`--b`
settings, `--b-instances`, `--b-python`, `--b-ref`), each the whole shop as `bench orders` starts it
(tests/support/local_mesh.py: its own nats-server, Envoy edge, trace sink and
databases, every port free). The settings go into every process's environment, the
edge's included, as a user's shell would give them to `meshctl up` (the developer's
own MESH_* / OTEL_* / NATS_* / CONSUL_* are left out, as for every test stack). It
signs customers up and makes products on each, then runs `--rounds` rounds (two
passes, above): in each,
both stacks take orders for `--seconds` at once, half the `--clients` each (8 and 8
for the default 16, so the box carries what `bench orders` puts on it at 16). Per
round and as medians it reports each side's orders/s, p50/p99 and CPU per order (all
the stack's processes: utime + stime from /proc), per service (instances summed, so
a topology with fewer instances compares), and B / A. With no `--b` at all it is an
A/A run: the method's own spread on this box.

Limits:
- The box runs two stacks, so each runs at half the rate with twice the processes
  around it. CPU per order is higher than one stack's (~17 ms against ~12.5 ms at 16
  clients on the 2-core box), so compare the ratios, not the figures, with `bench
  orders`. A lever whose effect depends on load (batching) may show differently at
  this rate.
- Settings, instance counts, the interpreter and the code. `--b-python` runs B's
  services and trace sink under another venv's interpreter (made with `make install
  PYTHON=...` in another checkout of the same commit): they run from this directory,
  so the code is this checkout's and the packages that venv's. `--b-ref REF` runs them
  from a git worktree of REF instead (made under the run's temp dir and removed after,
  `mesh.release.source`; run as a release runs its new version,
  `mesh.local.topology.RUN_FROM`): that commit's services, mesh and interceptors, with
  this venv's packages and generated stubs (the interpreter must import the code from
  the worktree, or the run is refused). Everything else is this checkout's: the edge's
  routes, the stack's start-up, nats-server and the load generator, so refs that
  changed the contracts or what `meshctl up` hands a service do not compare. Give both
  sides a ref (`--a-ref HEAD --b-ref HEAD~1`): a side run from a worktree cost 1-3 %
  more than one run from this directory in A/A runs (1.029, 1.030, and 0.988 with the
  sides swapped), two worktrees 0.998.
- CPU per order is the figure to compare. The orders/s ratio is printed but says
  little: the kernel shares the cores among threads, not stacks, so a stack with
  fewer processes (`--b-instances orders=1`) gets a smaller share and places fewer
  orders even when each costs less.
- The load generator (this process) serves both stacks and counts in neither.
- The read through the edge that `bench orders` uses for its per-hop bound is not
  measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import host
from bench.orders import Account, Shop, database_env, prepare, processes, run_level
from mesh.local.topology import ServiceSpec
from mesh.release.source import SourceError, prepare_source, remove_source
from tests.support.local_mesh import TOPOLOGY, Stack, free_port_shop, local_mesh

_ROOT = TOPOLOGY.parent  # this checkout: the repository the refs are checked out of

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What `summarise` gives each side as the median over the rounds.
_MEDIANS = ("orders_per_s", "cpu_ms_per_order_total", "p50_ms", "p99_ms")


@dataclass
class Side:
    """One of the two stacks: what differs, and its rounds' rows."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    python: str | None = None  # another interpreter for the services (None: this one)
    ref: str = ""  # a git ref the services run from ("": the current tree)
    source: Path | None = None  # that ref's worktree, once made (`use_ref`)
    commit: str = ""  # and its commit
    rows: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        code = f"{self.ref} ({self.commit})" if self.ref else str(self.source or "the current tree")
        return {"env": self.env, "instances": self.instances,
                "python": interpreter(self.python or sys.executable), "code": code}  # fmt: skip

    def use_ref(self, base: Path) -> None:
        """The side's ref checked out as a worktree under `base` (`source`, `commit`),
        checked to import under the side's interpreter; SourceError or ValueError."""
        if not self.ref:
            return
        self.source = prepare_source(_ROOT, base, self.label, self.ref)
        self.commit = _commit_of(self.source)
        check_tree(self.python or sys.executable, self.source)

    def drop_ref(self) -> None:
        if self.source is not None:
            remove_source(_ROOT, self.source)
            self.source = None


@dataclass
class _Loaded:
    """A side's running stack and what it places orders with."""

    stack: Stack
    shop: Shop
    pids: dict[str, int]
    accounts: list[Account]
    products: list[str]


def parse_setting(text: str) -> tuple[str, str]:
    """`KEY=VALUE` (an environment variable); ValueError with what is wrong."""
    key, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.fullmatch(key):
        raise ValueError(f"{text!r} is not KEY=VALUE with KEY an environment variable name")
    return key, value


def parse_instances(text: str, known: Sequence[str]) -> dict[str, int]:
    """`orders=1,inventory=1` -> {"orders": 1, "inventory": 1}; ValueError naming the
    service or count that is wrong."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = part.partition("=")
        if name not in known:
            raise ValueError(f"no service {name!r} in mesh.toml (known: {', '.join(known)})")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{part!r}: the instance count must be a whole number >= 1")
        out[name] = int(count)
    return out


@functools.cache
def interpreter(python: str) -> str:
    """`python` as `bench.host` describes an interpreter (run in it: version, real
    executable, shared libpython or static); ValueError when it cannot run or cannot
    import the project."""
    probe = (
        "import json, mesh, services, shop; from bench import host;"
        " print(json.dumps(host.describe()))"
    )
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise ValueError(f"{python}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ValueError(
            f"{python} cannot import the project ({last}); make its venv with"
            " `make install PYTHON=...` in a checkout of this commit"
        )
    return host.python_line(json.loads(done.stdout))


def check_tree(python: str, tree: Path) -> None:
    """ValueError unless `python` imports the project's code from `tree` as the stack's
    children will run it (`mesh.local.topology.RUN_FROM`: the tree first on sys.path),
    and from there, not from the venv's own install of another checkout."""
    probe = (
        "import mesh.local.traces as m, services.orders as s; print(m.__file__); print(s.__file__)"
    )
    done = subprocess.run(
        [python, "-c", probe], cwd=tree, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ValueError(f"{tree}: {python} cannot import its code ({last})")
    outside = [
        f for f in done.stdout.split() if not Path(f).resolve().is_relative_to(tree.resolve())
    ]
    if outside:
        raise ValueError(f"{tree}: {python} cannot import its code (it found {outside[0]})")


def _commit_of(tree: Path) -> str:
    """The short commit checked out in `tree` ("?" if git cannot say)."""
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "?"


def topology(instances: dict[str, int]) -> tuple[ServiceSpec, ...]:
    """The shop on free ports, with the instance counts `instances` sets."""
    return tuple(
        dataclasses.replace(s, instances=instances.get(s.name, s.instances))
        for s in free_port_shop()
    )


def by_service(cpu_ms_per_order: dict[str, float]) -> dict[str, float]:
    """Per process (`orders-1`, `orders-2`, `edge`...) -> per service (instances summed)."""
    out: dict[str, float] = {}
    for name, ms in cpu_ms_per_order.items():
        service = re.sub(r"-\d+$", "", name)
        out[service] = round(out.get(service, 0.0) + ms, 2)
    return out


def ratio(b: float, a: float) -> float:
    return round(b / a, 3) if a else 0.0


def summarise(a: Side, b: Side) -> dict[str, Any]:
    """The B / A CPU ratio, each side's medians over the rounds, and the round-by-round
    ratios.

    The CPU ratio is the geometric mean of the two passes' medians (rows carry their
    `pass`: 1, A's stack started first; 2, B's): if the stack started first costs a
    factor f more, pass 1 measures r / f and pass 2 r * f, and their geometric mean is
    r; `start_order_effect` is that f. With one pass (a single round), its median."""
    pairs = list(zip(a.rows, b.rows, strict=True))
    cpu = [ratio(rb["cpu_ms_per_order_total"], ra["cpu_ms_per_order_total"]) for ra, rb in pairs]
    rate = [ratio(rb["orders_per_s"], ra["orders_per_s"]) for ra, rb in pairs]
    per_pass: dict[int, list[float]] = {}
    for (ra, _), value in zip(pairs, cpu, strict=True):
        per_pass.setdefault(int(ra.get("pass", 1)), []).append(value)
    pass_medians = [float(statistics.median(v)) for _, v in sorted(per_pass.items())]
    if len(pass_medians) == 2:
        cpu_ratio = math.sqrt(pass_medians[0] * pass_medians[1])
        start_effect = math.sqrt(pass_medians[1] / pass_medians[0])
    else:
        cpu_ratio, start_effect = pass_medians[0], 1.0

    def medians(side: Side) -> dict[str, float]:
        return {k: round(float(statistics.median(r[k] for r in side.rows)), 2) for k in _MEDIANS}

    def services(side: Side) -> dict[str, float]:
        names = sorted({n for r in side.rows for n in r["cpu_ms_per_service"]})
        return {
            n: round(statistics.median(r["cpu_ms_per_service"].get(n, 0.0) for r in side.rows), 2)
            for n in names
        }

    return {
        "cpu_ratio": round(cpu_ratio, 3),
        "cpu_ratio_rounds": cpu,
        "cpu_ratio_passes": [round(m, 3) for m in pass_medians],
        "start_order_effect": round(start_effect, 3),
        "orders_ratio": round(statistics.median(rate), 3),
        "orders_ratio_rounds": rate,
        "a": medians(a),
        "b": medians(b),
        "a_cpu_ms_per_service": services(a),
        "b_cpu_ms_per_service": services(b),
        "errors": {
            side.label: sum(sum(r["errors"].values()) for r in side.rows) for side in (a, b)
        },
    }


@contextlib.asynccontextmanager
async def _loaded(side: Side, run_dir: Path, database: str) -> AsyncIterator[_Loaded]:
    async with (
        database_env(database) as db_env,
        local_mesh(
            run_dir,
            topology(side.instances),
            env={**db_env, **side.env},
            python=side.python,
            source=side.source,
        ) as stack,
    ):
        shop = Shop(stack.edge.port)
        try:
            accounts, products = await prepare(shop, stack)
            yield _Loaded(stack, shop, processes(stack), accounts, products)
        finally:
            await shop.close()


async def measure(
    a: Side,
    b: Side,
    *,
    rounds: int,
    seconds: float,
    clients: int,
    api: str,
    base: Path,
    database: str = "sqlite",
    report: bool = True,
    on_start: Callable[[Side, dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """`rounds` rounds of orders on both stacks at once, `clients // 2` each (at least
    one); `a.rows` and `b.rows` get each round's `bench orders` row. The rounds come in
    two passes, each on stacks of its own: A's stack started first, then (the second
    half of the rounds) B's, because the stack started first costs ~2 % more (module
    docstring). `on_start(side, pids)` sees each side's processes once both are up."""
    each = max(1, clients // 2)
    first_pass = (rounds + 1) // 2
    n = 0
    for number, (x, y, count) in enumerate(((a, b, first_pass), (b, a, rounds - first_pass))):
        if count == 0:
            continue
        suffix = "" if number == 0 else f"-{number + 1}"
        async with (
            _loaded(x, base / f"{x.label}{suffix}", database) as lx,
            _loaded(y, base / f"{y.label}{suffix}", database) as ly,
        ):
            loaded = {x.label: lx, y.label: ly}
            if on_start is not None:
                on_start(a, loaded[a.label].pids)
                on_start(b, loaded[b.label].pids)
            for _ in range(count):
                n += 1
                await _round(a, loaded[a.label], b, loaded[b.label], api, each, seconds)
                a.rows[-1]["pass"] = b.rows[-1]["pass"] = number + 1
                if report:
                    print(_round_line(n, number + 1, a.rows[-1], b.rows[-1]), flush=True)
    return {
        "host": host.describe(),
        "database": database,
        "api": api,
        "clients_each": each,
        "seconds": seconds,
        "a_setup": a.describe(),
        "b_setup": b.describe(),
        **summarise(a, b),
        "rounds": [{"a": ra, "b": rb} for ra, rb in zip(a.rows, b.rows, strict=True)],
    }


async def _round(
    a: Side, la: _Loaded, b: Side, lb: _Loaded, api: str, clients: int, seconds: float
) -> None:
    """One round on both stacks at once; each side's row appended to its `rows`."""
    pair = [(a, la), (b, lb)]
    levels = await asyncio.gather(*(
        run_level(x.shop, x.pids, api, clients, seconds, list(x.accounts), x.products)
        for _, x in pair
    ))  # fmt: skip
    for (side, _), level in zip(pair, levels, strict=True):
        row = level.row()
        # This process loads both stacks: its CPU is neither side's.
        del row["load_cpu_ms_per_order"]
        row["cpu_ms_per_service"] = by_service(row["cpu_ms_per_order"])
        side.rows.append(row)


def _round_line(n: int, number: int, ra: dict[str, Any], rb: dict[str, Any]) -> str:
    def side(r: dict[str, Any]) -> str:
        errs = f", {sum(r['errors'].values())} errors" if r["errors"] else ""
        return (
            f"{r['orders_per_s']:6.1f} orders/s {r['cpu_ms_per_order_total']:6.2f} ms CPU/order"
            f" (p99 {r['p99_ms']:.0f} ms{errs})"
        )

    return (
        f"round {n} (pass {number}): A {side(ra)} | B {side(rb)} | B/A CPU per order "
        f"{ratio(rb['cpu_ms_per_order_total'], ra['cpu_ms_per_order_total']):.3f},"
        f" orders/s {ratio(rb['orders_per_s'], ra['orders_per_s']):.3f}"
    )


def print_report(r: dict[str, Any]) -> None:
    cpu = r["cpu_ratio_rounds"]
    rate = r["orders_ratio_rounds"]
    passes = " and ".join(f"{m:.3f}" for m in r["cpu_ratio_passes"])
    print(
        f"\nB/A CPU per order: {r['cpu_ratio']:.3f} (pass medians {passes}; {len(cpu)} rounds"
        f" {min(cpu):.3f}-{max(cpu):.3f}; the stack started first costs"
        f" x{r['start_order_effect']:.3f}); B/A orders/s: {r['orders_ratio']:.3f}"
        f" ({min(rate):.3f}-{max(rate):.3f})"
    )
    print(f"A: {r['a_setup']}\nB: {r['b_setup']}")
    print(f"{'CPU ms per order':18s} {'A':>8s} {'B':>8s} {'B-A':>8s}")
    sa, sb = r["a_cpu_ms_per_service"], r["b_cpu_ms_per_service"]
    for name in sorted(set(sa) | set(sb)):
        va, vb = sa.get(name, 0.0), sb.get(name, 0.0)
        print(f"  {name:16s} {va:8.2f} {vb:8.2f} {vb - va:+8.2f}")
    ta, tb = r["a"]["cpu_ms_per_order_total"], r["b"]["cpu_ms_per_order_total"]
    print(f"  {'all':16s} {ta:8.2f} {tb:8.2f} {tb - ta:+8.2f}")
    print(f"host: {host.line(r['host'])}")


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench side-by-side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of stack A (repeatable)")  # fmt: skip
    p.add_argument("--b", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of stack B (repeatable); none: an A/A run")  # fmt: skip
    p.add_argument("--a-instances", default="", metavar="SERVICE=N,...",
                   help="instances of services in stack A (default: mesh.toml's)")  # fmt: skip
    p.add_argument("--b-instances", default="", metavar="SERVICE=N,...",
                   help="instances of services in stack B (default: mesh.toml's)")  # fmt: skip
    p.add_argument("--a-python", default=None, metavar="PATH",
                   help="the interpreter of stack A's services (default: this one)")  # fmt: skip
    p.add_argument("--b-python", default=None, metavar="PATH",
                   help="the interpreter of stack B's services (another venv's)")  # fmt: skip
    p.add_argument("--a-ref", default="", metavar="GIT_REF",
                   help="a commit for stack A's services (default: the current tree)")  # fmt: skip
    p.add_argument("--b-ref", default="", metavar="GIT_REF",
                   help="a commit for stack B's services (default: the current tree)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=6, help="half with each stack started first")
    p.add_argument("--seconds", type=float, default=10.0, help="per round")
    p.add_argument("--clients", type=int, default=16, help="in all; half on each stack")
    p.add_argument("--api", choices=("rest", "grpc"), default="rest")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = p.parse_args(argv)
    known = [s.name for s in free_port_shop()]
    try:
        a = Side("a", dict(parse_setting(x) for x in args.a),
                 parse_instances(args.a_instances, known), args.a_python, args.a_ref)  # fmt: skip
        b = Side("b", dict(parse_setting(x) for x in args.b),
                 parse_instances(args.b_instances, known), args.b_python, args.b_ref)  # fmt: skip
        a.describe(), b.describe()  # probes the interpreters (cached) before any stack starts
    except ValueError as exc:
        p.error(str(exc))
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1:
        p.error("--rounds and --clients must be >= 1 and --seconds > 0")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as tmp:
        try:
            try:
                a.use_ref(Path(tmp))
                b.use_ref(Path(tmp))
            except (SourceError, ValueError) as exc:
                p.error(str(exc))
            r = asyncio.run(
                measure(a, b, rounds=args.rounds, seconds=args.seconds, clients=args.clients,
                        api=args.api, base=Path(tmp), database=args.database)
            )  # fmt: skip
        finally:
            a.drop_ref()
            b.drop_ref()
    print_report(r)
    print(json.dumps(r))


if __name__ == "__main__":
    cli()

"""`python -m bench summary`: the headline figures, one JSON object on the last line.

The headline set is a registry (`HEADLINES`): each entry names a measurement
function as "module:function". A function takes a `Budget` (how long to
measure) and returns (or, when a coroutine function, resolves to) a dict of
headline keys → values; ratios per in-flight level are dicts keyed by level
("1", "16", "64"). Every key of `KEYS` is in the output, `null` when its
measurement is absent (module or function not there: another branch adds it)
or failed (the error is under "errors"). Adding a headline = one line in
`HEADLINES` and its keys in `KEYS`.

Keys:
  server_ratio           {level: RPS of the mesh server chain / bare server}, unsampled
  server_ratio_sampled   the same, the caller's trace sampled
  server_chain_us        server chain CPU per call without network (fused, unsampled)
  both_ratio             {level: RPS mesh client+server / bare client+server}, mTLS
  both_p99_ratio         {level: p99 mesh / p99 bare}
  both_floor_ratio       {level: RPS bare client sending a deadline and a traceparent / bare}:
                         what carrying them costs in gRPC alone, the ceiling of both_ratio
  sidecar_speedup        {level: RPS mesh / RPS bare client + two Envoys + bare server}
  sidecar_p99_ratio      {level: p99 mesh / p99 sidecar pair}
  events_per_s           events end to end (bench.events `headline`)
  orders_per_s           orders through the edge (bench.orders `headline`)

Also `host` (bench/host.py): the CPU, how many, and which Python build ran it.

`--smoke` shrinks every budget to a fraction of a second (the CI smoke test);
the default budget keeps the whole run under three minutes on the 2-core box.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench import host

log = logging.getLogger(__name__)

KEYS = (
    "server_ratio",
    "server_ratio_sampled",
    "server_chain_us",
    "both_ratio",
    "both_p99_ratio",
    "both_floor_ratio",
    "sidecar_speedup",
    "sidecar_p99_ratio",
    "events_per_s",
    "orders_per_s",
)

HEADLINES: dict[str, str] = {
    "server": "bench.summary:server_headline",
    "whole": "bench.summary:whole_headline",
    "events": "bench.events:headline",
    "orders": "bench.orders:headline",
}


@dataclass(frozen=True)
class Budget:
    """How long each headline may measure."""

    seconds: float = 1.5
    """Per mode and in-flight level (all rounds together)."""
    rounds: int = 3
    levels: tuple[int, ...] = (1, 16, 64)
    smoke: bool = False
    """A run that only shows the benchmark works (CI); figures meaningless."""


SMOKE = Budget(seconds=0.1, rounds=1, levels=(2,), smoke=True)


def _by_level(values: dict[int, float]) -> dict[str, float]:
    return {str(level): round(v, 3) for level, v in values.items()}


async def server_headline(budget: Budget) -> dict[str, Any]:
    from bench.rpc import server_chain_costs, server_side

    results = await server_side(budget.levels, budget.seconds, budget.rounds)
    steps = dict(await server_chain_costs("INFO", calls=200 if budget.smoke else 5000))
    return {
        "server_ratio": _by_level({lv: r["mesh"].rps / r["bare"].rps for lv, r in results.items()}),
        "server_ratio_sampled": _by_level(
            {lv: r["mesh+tr"].rps / r["bare"].rps for lv, r in results.items()}
        ),
        "server_chain_us": round(steps["fused (default)"] - steps["handler only"], 1),
    }


async def whole_headline(budget: Budget) -> dict[str, Any]:
    from bench.whole import run

    out = await run(budget.levels, budget.seconds, budget.rounds)
    levels = budget.levels
    return {
        "both_ratio": _by_level({lv: out.ratio("mesh", "direct", lv) for lv in levels}),
        "both_p99_ratio": _by_level({lv: out.p99_ratio("mesh", "direct", lv) for lv in levels}),
        "both_floor_ratio": _by_level({lv: out.ratio("carried", "direct", lv) for lv in levels}),
        "sidecar_speedup": _by_level({lv: out.ratio("mesh", "sidecar", lv) for lv in levels}),
        "sidecar_p99_ratio": _by_level({lv: out.p99_ratio("mesh", "sidecar", lv) for lv in levels}),
    }


def _resolve(target: str) -> Any | None:
    """The function `module:function`, or None when either is absent."""
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None  # the module itself is absent (not one it imports)
        raise
    return getattr(module, name, None)


def collect(budget: Budget, only: Sequence[str] = ()) -> dict[str, Any]:
    """Run the registered headlines (all, or `only` these names); every key present."""
    summary: dict[str, Any] = dict.fromkeys(KEYS)
    missing: list[str] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name, target in HEADLINES.items():
        if only and name not in only:
            continue
        t = time.monotonic()
        try:
            fn = _resolve(target)
            if fn is None:
                missing.append(target)
                continue
            result = fn(budget)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            summary.update(result or {})
        except Exception as exc:  # one failing headline must not hide the others
            log.debug("headline %s failed", name, exc_info=True)
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            seconds[name] = round(time.monotonic() - t, 1)
    summary["missing"] = missing
    summary["errors"] = errors
    summary["seconds"] = seconds
    summary["budget"] = asdict(budget)
    summary["host"] = host.describe()
    return summary


def print_block(summary: dict[str, Any]) -> None:
    """The headline figures, one per line, then the JSON object (last line)."""
    for key in KEYS:
        value = summary.get(key)
        if isinstance(value, dict):
            shown = "  ".join(f"{level}: {v:.2f}" for level, v in value.items())
        else:
            shown = "n/a" if value is None else str(value)
        print(f"  {key:<22} {shown}")
    if summary.get("missing"):
        print(f"  (not measured here: {', '.join(summary['missing'])})")
    for name, error in (summary.get("errors") or {}).items():
        print(f"  {name} FAILED: {error}")
    if summary.get("host"):
        print(f"  host: {host.line(summary['host'])}")
    print(json.dumps(summary), flush=True)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench summary", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny budgets (CI smoke run)")
    p.add_argument("--seconds", type=float, default=Budget.seconds)
    p.add_argument("--rounds", type=int, default=Budget.rounds)
    p.add_argument("--only", default="", help=f"comma-separated of: {', '.join(HEADLINES)}")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    budget = SMOKE if a.smoke else Budget(seconds=a.seconds, rounds=max(1, a.rounds))
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    print_block(collect(budget, only))


if __name__ == "__main__":
    cli()

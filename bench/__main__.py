"""`python -m bench [name] [options]`: the benchmarks.

Names: rpc, whole, growth, events, orders, side-by-side, fastpath, traces, tokens, picker,
edge-auth, policy, db, summary.
`orders` starts a whole `meshctl up` stack and `side-by-side` two of them, one setting
apart (a lever's cost, B / A, measured at the same moment); `policy` (the caller policy's
cost per call) and `db` (a session's transaction against a lean one) are focused
micro-benchmarks: these four are run by name only.
With no name (`make bench`): `bench.rpc`, `bench.whole`, `bench.growth`, `bench.events`,
`bench.tokens`, `bench.picker`, `bench.edge_auth`, each printing its tables, then the
summary block (`bench.summary`'s headline set, measured again at its own budget; its
JSON object is the last line). About ten minutes. With a name, only that one, with its own options
(`python -m bench whole --help`); `python -m bench summary` alone takes under three.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Modest defaults for the combined run; each benchmark's own defaults apply when run by name.
_DEFAULT_EVENTS_ARGS = ["--events", "10000"]
_DEFAULT_TOKENS_ARGS = ["--seconds", "3"]
_DEFAULT_PICKER_ARGS = ["--seconds", "2", "--rounds", "4"]
_DEFAULT_EDGE_AUTH_ARGS = ["--seconds", "6", "--rounds", "3"]


def _rpc(args: Sequence[str]) -> None:
    from bench import rpc

    rpc.cli(list(args))


def _events(args: Sequence[str]) -> None:
    from bench import events

    # bench.events parses sys.argv itself.
    sys.argv = ["python -m bench events", *args]
    events.cli()


def _orders(args: Sequence[str]) -> None:
    from bench import orders

    orders.cli(list(args))


def _side_by_side(args: Sequence[str]) -> None:
    from bench import side_by_side

    side_by_side.cli(list(args))


def _fastpath(args: Sequence[str]) -> None:
    from bench import fastpath

    fastpath.cli(list(args))


def _traces(args: Sequence[str]) -> None:
    from bench import traces

    traces.cli(list(args))


def _db(args: Sequence[str]) -> None:
    from bench import db

    db.cli(list(args))


def _whole(args: Sequence[str]) -> None:
    from bench import whole

    whole.cli(list(args))


def _growth(args: Sequence[str]) -> None:
    from bench import growth

    growth.cli(list(args))


def _summary(args: Sequence[str]) -> None:
    from bench import summary

    summary.cli(list(args))


def _tokens(args: Sequence[str]) -> None:
    from bench import tokens

    tokens.cli(list(args))


def _picker(args: Sequence[str]) -> None:
    from bench import picker

    picker.cli(list(args))


def _policy(args: Sequence[str]) -> None:
    from bench import policy

    policy.cli(list(args))


def _edge_auth(args: Sequence[str]) -> None:
    from bench import edge_auth

    edge_auth.cli(list(args))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    benches = {
        "rpc": _rpc,
        "events": _events,
        "orders": _orders,
        "side-by-side": _side_by_side,
        "fastpath": _fastpath,
        "traces": _traces,
        "tokens": _tokens,
        "picker": _picker,
        "whole": _whole,
        "growth": _growth,
        "summary": _summary,
        "edge-auth": _edge_auth,
        "policy": _policy,
        "db": _db,
    }
    if args and args[0] in benches:
        benches[args[0]](args[1:])
        return
    if args:
        names = " | ".join(benches)
        sys.exit(f"usage: python -m bench [{names}] [options]  (no name: all, default options)")
    print("== bench.rpc ==", flush=True)
    _rpc([])
    print("\n== bench.events ==", flush=True)
    _events(_DEFAULT_EVENTS_ARGS)
    print("\n== bench.tokens ==", flush=True)
    _tokens(_DEFAULT_TOKENS_ARGS)
    print("\n== bench.picker ==", flush=True)
    _picker(_DEFAULT_PICKER_ARGS)
    print("\n== bench.whole ==", flush=True)
    _whole([])
    print("\n== bench.growth ==", flush=True)
    _growth([])
    print("\n== bench.edge_auth ==", flush=True)
    _edge_auth(_DEFAULT_EDGE_AUTH_ARGS)
    print("\n== summary ==", flush=True)
    from bench import summary

    summary.print_block(summary.collect(summary.Budget()))


if __name__ == "__main__":
    main()

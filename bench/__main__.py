"""`python -m bench [rpc|events|fastpath|traces|tokens|edge-auth] [options]`: the benchmarks.

With no name: `bench.rpc`, `bench.events`, `bench.tokens`, then `bench.edge_auth` (about
three minutes).
With a name, only that one, with its own options (`python -m bench rpc --help`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Modest defaults for the combined run; each benchmark's own defaults apply when run by name.
_DEFAULT_EVENTS_ARGS = ["--events", "10000"]
_DEFAULT_TOKENS_ARGS = ["--seconds", "3"]
_DEFAULT_EDGE_AUTH_ARGS = ["--seconds", "6", "--rounds", "3"]


def _rpc(args: Sequence[str]) -> None:
    from bench import rpc

    rpc.cli(list(args))


def _events(args: Sequence[str]) -> None:
    from bench import events

    # bench.events parses sys.argv itself.
    sys.argv = ["python -m bench events", *args]
    events.cli()


def _fastpath(args: Sequence[str]) -> None:
    from bench import fastpath

    fastpath.cli(list(args))


def _traces(args: Sequence[str]) -> None:
    from bench import traces

    traces.cli(list(args))


def _tokens(args: Sequence[str]) -> None:
    from bench import tokens

    tokens.cli(list(args))


def _edge_auth(args: Sequence[str]) -> None:
    from bench import edge_auth

    edge_auth.cli(list(args))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    benches = {
        "rpc": _rpc,
        "events": _events,
        "fastpath": _fastpath,
        "traces": _traces,
        "tokens": _tokens,
        "edge-auth": _edge_auth,
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
    print("\n== bench.edge_auth ==", flush=True)
    _edge_auth(_DEFAULT_EDGE_AUTH_ARGS)


if __name__ == "__main__":
    main()

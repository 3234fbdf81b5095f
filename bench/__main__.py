"""`python -m bench [rpc|events|orders|fastpath|traces|tokens] [options]`: the benchmarks.

With no name: `bench.rpc`, `bench.events`, then `bench.tokens` (about two and a half minutes).
With a name, only that one, with its own options (`python -m bench rpc --help`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Modest defaults for the combined run; each benchmark's own defaults apply when run by name.
_DEFAULT_EVENTS_ARGS = ["--events", "10000"]
_DEFAULT_TOKENS_ARGS = ["--seconds", "3"]


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


def _fastpath(args: Sequence[str]) -> None:
    from bench import fastpath

    fastpath.cli(list(args))


def _traces(args: Sequence[str]) -> None:
    from bench import traces

    traces.cli(list(args))


def _tokens(args: Sequence[str]) -> None:
    from bench import tokens

    tokens.cli(list(args))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    benches = {
        "rpc": _rpc,
        "events": _events,
        "orders": _orders,
        "fastpath": _fastpath,
        "traces": _traces,
        "tokens": _tokens,
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


if __name__ == "__main__":
    main()

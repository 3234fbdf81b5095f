"""`meshctl events dlq list|replay|drop`: work off the dead letters (mesh/events/dead_letters.py).

    meshctl events dlq list [dlq.order.>] [--limit N]   what gave up, on what, and why
    meshctl events dlq replay 12 15 | --all [dlq.order.>]   again to every consumer
    meshctl events dlq drop 12                          remove without replaying

Reading and removing go as the `dead-letters` identity; a replay is published as the
identity that owns the event's domain (the topology's event identities say which),
then the dead letter is removed. Against the mesh `meshctl up` runs in `--run-dir`
(its NATS and seeds), or NATS_URL's server with the user's own credentials for both.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from mesh.cli_args import int_between
from mesh.events.dead_letters import (
    EVERY,
    DeadLetter,
    DeadLetterNotFound,
    NotReplayable,
    get,
    remove,
    replay,
)
from mesh.events.dead_letters import dead_letters as read_dead_letters
from mesh.events.nats_auth import DEAD_LETTERS, EventIdentity, stream_for, valid_pattern
from mesh.events.nats_connect import redact_urls
from mesh.events.streams import DLQ_PREFIX, DLQ_STREAM, StreamSpec
from mesh.local.nats import client_for, connect_as
from mesh.local.topology import Topology, load_topology

_ERROR_WIDTH = 70


class _Unusable(Exception):
    """NATS cannot be used as asked; the message says why (printed, exit 1)."""


class _Connections:
    """meshctl's NATS connections, one per identity, closed together."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._open: dict[str, NATS] = {}

    async def js(self, identity: str) -> JetStreamContext:
        if identity not in self._open:
            try:
                nc = await connect_as(self.run_dir, identity)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                url = (client_for(self.run_dir, identity) or ("?", None))[0]
                raise _Unusable(
                    f"cannot use NATS at {redact_urls(url)} as {identity} ({type(exc).__name__}:"
                    f" {exc}); is the mesh running? (`meshctl status`)"
                ) from None
            if nc is None:
                raise _Unusable(
                    f"no mesh has run in {self.run_dir} (`make run` starts one), and NATS_URL"
                    " is not set"
                )
            self._open[identity] = nc
        return self._open[identity].jetstream(timeout=5)

    async def close(self) -> None:
        for nc in self._open.values():
            await nc.close()


def _owner(subject: str, identities: Sequence[EventIdentity]) -> EventIdentity:
    domain = subject.split(".")[0]
    for ident in identities:
        if domain in ident.publishes:
            return ident
    raise _Unusable(f"no event identity of the topology publishes {domain}.> ({subject})")


def _age(when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    s = int((dt.datetime.now(dt.UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{max(s, 0)}s"


def _table(found: Sequence[DeadLetter]) -> str:
    rows = [("#", "age", "subject", "consumer", "tries", "error")]
    for d in found:
        error = d.error if len(d.error) <= _ERROR_WIDTH else d.error[: _ERROR_WIDTH - 1] + "…"
        rows.append((str(d.seq), _age(d.time), d.subject, d.consumer, d.deliveries, error))
    widths = [max(len(r[k]) for r in rows) for k in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


async def _list(conn: _Connections, stream: str, args: argparse.Namespace) -> int:
    js = await conn.js(DEAD_LETTERS.name)
    found, total = await read_dead_letters(js, stream, subject=args.subject, limit=args.limit)
    if not found:
        print(f"no dead letters{'' if args.subject == EVERY else f' on {args.subject}'}"
              f" ({total} in {stream})")  # fmt: skip
        return 0
    print(_table(found))
    more = f", the first {len(found)} shown" if total > len(found) else ""
    print(f"{total} dead letter(s) in {stream}{more}. `meshctl events dlq replay "
          f"{found[0].seq}` publishes one again (after the fix), `drop` removes it")  # fmt: skip
    return 0


async def _replay(
    conn: _Connections,
    stream: str,
    args: argparse.Namespace,
    identities: Sequence[EventIdentity],
    streams: Sequence[StreamSpec],
) -> int:
    if not args.all and not args.seq:
        raise _Unusable("name the dead letters to replay by number (`list`), or --all")
    js = await conn.js(DEAD_LETTERS.name)
    if args.all:
        todo, _ = await read_dead_letters(js, stream, subject=args.subject, limit=10_000)
    else:
        todo = [await get(js, stream, seq) for seq in args.seq]
    refused = 0
    for dead in todo:
        owner = _owner(dead.subject, identities)
        origin = stream_for(dead.subject, streams).name
        try:
            stored = await replay(await conn.js(owner.name), origin, dead)
        except NotReplayable as exc:
            print(f"meshctl events dlq: {exc}", file=sys.stderr)
            refused += 1
            continue
        await remove(js, stream, dead.seq)
        print(f"#{dead.seq} {dead.subject} (gave up by {dead.consumer or '?'}): replayed as"
              f" {owner.name} from {origin} #{dead.original_seq}, stored #{stored};"
              f" removed from {stream}")  # fmt: skip
    if not todo:
        print("no dead letters to replay")
    return 1 if refused else 0


async def _drop(conn: _Connections, stream: str, args: argparse.Namespace) -> int:
    js = await conn.js(DEAD_LETTERS.name)
    for seq in args.seq:
        dead = await get(js, stream, seq)
        await remove(js, stream, seq)
        print(f"#{seq} {dead.subject} dropped (it was {dead.original_id or 'no id'})")
    return 0


def _dead_letter_pattern(text: str) -> str:
    """A `dlq.` pattern; an event subject (`order.>`) is taken as its dead letters'."""
    pattern = text if text.startswith(f"{DLQ_PREFIX}.") else f"{DLQ_PREFIX}.{text}"
    if not valid_pattern(pattern):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a NATS subject (e.g. order.> or dlq.order.completed)"
        )
    return pattern


def cmd_dlq(args: argparse.Namespace) -> int:
    topology: Topology = load_topology(Path(args.topology))
    identities = topology.event_identities()
    streams = topology.streams()
    stream = DLQ_STREAM
    actions: dict[str, Callable[[_Connections], Any]] = {
        "list": lambda c: _list(c, stream, args),
        "replay": lambda c: _replay(c, stream, args, identities, streams),
        "drop": lambda c: _drop(c, stream, args),
    }

    async def main() -> int:
        conn = _Connections(Path(args.run_dir))
        try:
            code: int = await actions[args.dlq_command](conn)
            return code
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except (_Unusable, DeadLetterNotFound) as exc:
        print(f"meshctl events dlq: {exc}", file=sys.stderr)
        return 1
    except (nats.errors.Error, TimeoutError) as exc:
        print(f"meshctl events dlq: NATS refused or did not answer ({type(exc).__name__}:"
              f" {exc})", file=sys.stderr)  # fmt: skip
        return 1


# A dead letter's number is its JetStream sequence, a uint64 from 1: NATS answered 0, -1
# or 2**64 with its own "cannot unmarshal number -1 into Go struct field ... uint64".
_SEQ = int_between(1, 2**64 - 1)
_SEQ_HELP = "dead letters by number (`list`)"


def register(events: Any, add: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """Add `events dlq list|replay|drop` to meshctl's commands."""
    dlq = add(events, "dlq", "dead letters: list, replay, drop").add_subparsers(
        dest="dlq_command", required=True, metavar="<dlq command>"
    )
    listing = add(dlq, "list", "what gave up, on what, and why")
    listing.add_argument(
        "subject", nargs="?", default=EVERY, type=_dead_letter_pattern,
        help="e.g. order.> or dlq.order.completed (default all)",
    )  # fmt: skip

    listing.add_argument(
        "--limit", type=int_between(1), default=50, help="show at most N (default 50)"
    )
    again = add(dlq, "replay", "publish dead letters again to their subjects, then remove them")
    which = again.add_mutually_exclusive_group()  # `replay 1 --all` replayed them all
    # default=[]: argparse takes an empty `*` positional for one given unless it is the
    # default object itself, so `replay --all` alone would conflict.
    which.add_argument("seq", nargs="*", type=_SEQ, default=[], help=_SEQ_HELP)
    which.add_argument("--all", action="store_true", help="every dead letter (on SUBJECT)")
    again.add_argument(
        "--subject", default=EVERY, type=_dead_letter_pattern, help="with --all: e.g. order.>"
    )
    drop = add(dlq, "drop", "remove dead letters without replaying them")
    drop.add_argument("seq", nargs="+", type=_SEQ, help=_SEQ_HELP)
    for parser in (listing, again, drop):
        parser.set_defaults(fn=cmd_dlq)

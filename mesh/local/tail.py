"""`meshctl events tail`: print events live, decoded, for people debugging.

Uses a core NATS subscription (JetStream publishes are ordinary messages on
their subjects), so tailing creates no consumer state on the server and sees
only what is published from now on.

Payloads are decoded with the project's `EventTypes`, which meshctl imports by
the name the topology file gives (`event_types = "pkg.module:NAME"`); without
one, or for a type it does not register, the line shows the payload's type URL
and size instead of its fields.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from mesh.events import EventTypes, connect_nats, decode
from mesh.events.errors import UnknownEventError
from mesh.events.nats_connect import NatsClientAuth, redact_urls


class SeenIds:
    """The last `size` event ids: delivery is at least once, and a subscriber to
    `>` can see one event twice (a relay retry, JetStream's own traffic), so the
    tail prints each event id once."""

    def __init__(self, size: int = 10_000) -> None:
        self._order: deque[str] = deque(maxlen=size)
        self._ids: set[str] = set()

    def first_time(self, data: bytes) -> bool:
        try:
            event_id = decode(data).id
        except (DecodeError, ValueError):
            return True
        if event_id in self._ids:
            return False
        if len(self._order) == self._order.maxlen:
            self._ids.discard(self._order[0])
        self._order.append(event_id)
        self._ids.add(event_id)
        return True


def format_event(subject: str, data: bytes, types: EventTypes | None = None) -> str:
    try:
        env = decode(data)
    except (DecodeError, ValueError) as exc:
        return f"{subject}  <undecodable: {exc}>"
    if types is not None and env.type in types:
        try:
            payload = json_format.MessageToJson(
                types.payload(env), indent=None, preserving_proto_field_name=True
            )
        except (UnknownEventError, ValueError) as exc:
            return f"{subject}  <undecodable: {exc}>"
    else:
        payload = f"<{env.data.type_url or 'no payload'}, {len(env.data.value)} bytes>"
    trace = env.traceparent.split("-")[1] if env.traceparent.count("-") == 3 else "-"
    when = env.time.ToDatetime().isoformat(timespec="milliseconds") if env.HasField("time") else "-"
    return f"{when}  {env.type:<30} id={env.id} source={env.source} trace={trace}  {payload}"


async def tail_events(
    url: str,
    subject: str,
    *,
    types: EventTypes | None = None,
    limit: int = 0,
    out: TextIO | None = None,
    auth: NatsClientAuth | None = None,
) -> int:
    """Print each event published on `subject` until `limit` are printed (0: until
    cancelled). A reader that leaves (`| head`) ends it with BrokenPipeError."""
    stream = out or sys.stdout
    options = auth.connect_options() if auth is not None else {}
    nc = await connect_nats(url, name="meshctl-tail", max_reconnect_attempts=3, **options)
    seen = SeenIds()
    printed = 0
    done = asyncio.Event()
    reader_gone = False

    async def on_msg(msg: Msg) -> None:
        nonlocal printed, reader_gone
        subj: str = msg.subject
        if done.is_set():  # `limit` reached: what arrives while draining is not printed
            return
        if subj.startswith(("_INBOX.", "$JS.")) or not seen.first_time(msg.data):
            return
        try:
            print(format_event(subj, msg.data, types), file=stream, flush=True)
        except BrokenPipeError:
            # `meshctl events tail | head -3`: the reader left. nats-py would swallow
            # this in its callback and the tail would run on, printing nowhere.
            reader_gone = True
            done.set()
            return
        printed += 1
        if limit and printed >= limit:
            done.set()

    await nc.subscribe(subject, cb=on_msg)
    print(f"tailing {subject!r} on {redact_urls(url)} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        await done.wait()
    finally:
        await nc.drain()
    if reader_gone:
        raise BrokenPipeError("the reader of the tail left")  # meshctl ends as on SIGPIPE
    return 0

"""JetStream streams declared in code and applied idempotently at start.

Layout: one stream per domain (for the shop: `USER` <- `user.>`, `ORDER` <-
`order.>`, `PAYMENT` <- `payment.>`, `INVENTORY` <- `inventory.>`) plus `DLQ` <-
`dlq.>`. The application names its domains (`EventTypes.domains`); the mesh
knows none of them.

Why per domain rather than one stream for everything:
- each domain has exactly one writer (its owning service), so limits, retention
  and purges are decided per owner without touching the others' history;
- a consumer of `user.*` scans only the user stream: with one big stream, every
  filtered consumer walks past every other domain's messages on redelivery and
  catch-up;
- the failure and recovery unit is smaller (a damaged or full stream stops one
  domain). Ordering across domains is not something any consumer relies on, so
  one stream's global order buys nothing.
Subjects use `>` so multi-token events (`order.compensation.completed`) land in
their domain's stream. The DLQ is its own stream with longer retention: dead
letters are kept for people, not for consumers in a hurry.

All streams use file storage (survive a server restart) and a duplicate window
in which JetStream drops a second publish with the same `Nats-Msg-Id`: the
outbox relay republishes after a lost ack, and the window makes that harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str = ""
    max_age_s: float = 7 * DAY_S
    duplicate_window_s: float = 120.0
    # Size limits (-1: none); at a limit the oldest messages go first (discard OLD).
    max_bytes: int = -1
    max_msgs: int = -1
    # Copies on a JetStream cluster (MESH_STREAM_REPLICAS): 3 on the Kubernetes
    # manifests' 3-node cluster, so a stream survives losing a server; 1 on one server.
    replicas: int = 1

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
        )


DLQ_PREFIX = "dlq"
DLQ_STREAM = "DLQ"  # the dead letters' stream (mesh/events/dead_letters.py)


def default_streams(
    domains: Sequence[str],
    *,
    duplicate_window_s: float = 120.0,
    max_bytes: int = -1,
    max_msgs: int = -1,
    replicas: int = 1,
) -> list[StreamSpec]:
    """One stream per domain plus the dead-letter stream, each within `max_bytes` and
    `max_msgs` (services pass MESH_STREAM_MAX_BYTES / MESH_STREAM_MAX_MSGS).

    With discard OLD, a consumer further behind than a limit loses the oldest events,
    as it would at `max_age_s`: the limits bound the disk, the outbox and inbox do not
    depend on the stream keeping history.
    """
    specs = [
        StreamSpec(
            name=d.upper(),
            subjects=(f"{d}.>",),
            description=f"{d} domain events",
            duplicate_window_s=duplicate_window_s,
            max_bytes=max_bytes,
            max_msgs=max_msgs,
            replicas=replicas,
        )
        for d in domains
    ]
    specs.append(
        StreamSpec(
            name=DLQ_STREAM,
            subjects=(f"{DLQ_PREFIX}.>",),
            description="dead letters: events a consumer gave up on",
            max_age_s=30 * DAY_S,
            duplicate_window_s=duplicate_window_s,
            max_bytes=max_bytes,
            max_msgs=max_msgs,
            replicas=replicas,
        )
    )
    return specs


def dlq_subject(subject: str) -> str:
    return f"{DLQ_PREFIX}.{subject}"


async def ensure_streams(js: JetStreamContext, specs: Sequence[StreamSpec]) -> dict[str, str]:
    """Create missing streams and update existing ones; returns {name: "created"|"updated"}.

    Safe to call from every instance at every start: update with an unchanged
    config is a no-op on the server. Changes the server refuses (e.g. storage
    type) raise `nats.js.errors.BadRequestError`, which should stop the start.
    """
    result: dict[str, str] = {}
    for spec in specs:
        cfg = spec.config()
        try:
            await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
            result[spec.name] = "created"
        else:
            await js.update_stream(cfg)
            result[spec.name] = "updated"
    return result

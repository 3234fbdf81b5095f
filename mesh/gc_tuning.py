"""Python's cyclic garbage collector, set for a long-running process once it has started.

Why: CPython's full collection walks every object the process tracks. A started
service tracks ~100,000 that live for ever (modules, protobuf descriptors,
SQLAlchemy's compiled statements, grpc's and OpenTelemetry's state), so each full
collection stops the event loop for tens of milliseconds, and one comes every few
seconds under load (objects that live a little while, such as spans waiting in the
batch exporter, pile up in the oldest generation). Measured on the 2-core box: the
ping server with the mesh chain, 64 calls in flight, made full collections of 44 and
72 ms; a mesh client at 2,000 calls/s one of 37-46 ms every ~8 s. Each lands in the
calls' p99. Reference counting, not this collector, frees almost everything a call
allocates.

`tune_after_start(gen0)`, called by `run_service` once the service serves:

- collects once, then `gc.freeze()`: everything alive now moves to the permanent
  generation, which no later collection walks, so a full collection walks only what
  was made since (a few ms);
- collects the youngest generation every `gen0` container allocations (net of
  frees) instead of 700 (`MESH_GC_GEN0_THRESHOLD`, default 10,000), keeping
  Python's thresholds for the older ones, so cycles made while serving (exceptions
  with their tracebacks, asyncio's done futures) are still collected, in fewer
  young collections.

`gen0 = 0` leaves the collector exactly as Python set it (no freeze either).
Limits: a start-up object that becomes garbage later is never freed (start-up objects
live for the process's life; the cost is bounded and paid once). Unreachable cycles
can hold up to `gen0` container objects more between collections (a few MB at
10,000). Measured on the shop (`bench orders`), CPU per order did not change beyond
the box's drift; the gain is in the tail. A process that is only a client (no
`run_service`) can call it itself after its own start-up.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def tune_after_start(gen0: int) -> None:
    """Freeze what the started process holds and collect young garbage every `gen0`
    container allocations instead of 700; `gen0 = 0`: leave the collector as it is."""
    if gen0 <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)
    log.info(
        "gc: %d start-up objects frozen; young collections every %d allocations"
        " (MESH_GC_GEN0_THRESHOLD, 0: Python's defaults)",
        gc.get_freeze_count(),
        gen0,
    )

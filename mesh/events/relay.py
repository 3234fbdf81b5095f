"""The outbox relay: publishes committed outbox rows to JetStream, in order, at least once.

Runs as a task inside the service process. Each round reads up to `batch`
unsent rows (oldest first), publishes them pipelined (each with `Nats-Msg-Id` =
event id), waits for the acks and marks the acked rows sent. Given the NATS
connection (`nc`, as `EventBus.relay` does) it publishes through
`mesh.events.batch_publish` (one reply subscription for a batch's acks); given only
the JetStream context, through `publish_async` (about twice the CPU per event).
A crash between publish and mark republishes on the next start;
JetStream drops the copy inside the stream's duplicate window and consumers'
inboxes drop it after.

`run()` marks acked rows sent in bulk (every `mark_every_s`, or once `mark_max`
rows wait, when the relay stops and before a failure is raised) rather than after
every round: at one event per commit each round is usually one row, and its own
write transaction (the database's write lock) cost as much as the rest of the
round. Until marked, acked rows are left out of the next rounds' reads by their
`seq` (in memory); a crash or a takeover in between republishes at most
`mark_every_s` of them, the case above. `publish_pending()` called on its own
still marks at once. While NATS is down publishes time out and the relay
retries with backoff; nothing is lost because the rows stay unsent.

Several instances of one service may share a database: a lease row
(`mesh_outbox_lease`) makes one relay the publisher; the others stand by and
take over when its lease expires. One publisher per database keeps the order;
a takeover while the old holder is stuck can publish a row twice, which the
dedupe above absorbs. Order is the order of `seq` among committed rows: on
PostgreSQL two transactions can commit out of `seq` order, and a failed publish
in the middle of a batch lets the rows after it land first; consumers must not
rely on a strict global order (per-entity versions do that job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from sqlalchemy import Row, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from base.backoff import Backoff
from mesh.db_lean import lean
from mesh.events.batch_publish import BatchPublisher
from mesh.events.errors import PublishTimeoutError
from mesh.events.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    batch: int = 1000
    # How long to wait for JetStream to ack a batch before retrying it.
    ack_timeout_s: float = 5.0
    # Fallback poll for rows committed by other processes or left by a crash;
    # commits through `Outbox.add` in this process wake the relay at once.
    poll_interval_s: float = 0.5
    lease_s: float = 10.0
    keep_sent_s: float = 3600.0
    purge_every_s: float = 60.0
    # Acked rows are marked sent in one transaction per this interval (or `mark_max`
    # rows) by `run()`: at most this much is republished after a crash (deduped).
    mark_every_s: float = 0.5
    mark_max: int = 256
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0


class OutboxRelay:
    """Publish the outbox of one database to JetStream; `start()` / `stop()` or `run()`."""

    LEASE_NAME = "outbox"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        outbox: Outbox,
        *,
        config: RelayConfig | None = None,
        holder: str | None = None,
        nc: NATS | None = None,
    ) -> None:
        self._sessions = sessions
        self._js = js
        self._batch = BatchPublisher(nc) if nc is not None else None
        self._outbox = outbox
        self.config = config or RelayConfig()
        self.holder = holder or f"relay-{uuid.uuid4().hex[:12]}"
        self._t = outbox.tables
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lease_until = 0.0
        # A standby looks at the lease again at this time, not on every commit: when the
        # live lease it saw may lapse (at most lease_s / 3 on), or lease_s / 3 after
        # another holder won the write.
        self._standby_until = 0.0
        self._last_purge = 0.0
        self.published = 0
        # Acked, not yet marked sent (run() marks them in bulk); since when.
        self._unmarked: list[int] = []
        self._unmarked_since = 0.0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._select = lean(
            select(
                self._t.outbox.c.seq,
                self._t.outbox.c.subject,
                self._t.outbox.c.payload,
                self._t.outbox.c.headers,
            )
            .where(self._t.outbox.c.sent_at.is_(None))
            .order_by(self._t.outbox.c.seq)
            .limit(self.config.batch)
        )
        self._lease_holder = lean(
            select(self._t.lease.c.holder, self._t.lease.c.expires_at).where(
                self._t.lease.c.name == self.LEASE_NAME
            )
        )
        # The same, leaving out rows acked but not yet marked sent.
        self._select_after_unmarked = lean(
            self._select.where(self._t.outbox.c.seq.not_in(bindparam("unmarked", expanding=True)))
        )
        # Built once (an expanding IN): building it per round took ~40 µs of CPU (with its
        # cache key), more than running it.
        self._mark = lean(
            update(self._t.outbox)
            .where(self._t.outbox.c.seq.in_(bindparam("seqs", expanding=True)))
            .values(sent_at=bindparam("now"))
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.holder}")
        return self._task

    async def stop(self, grace_s: float = 5.0) -> None:
        """Finish the batch in flight (up to `grace_s`), release the lease, stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._outbox.notify()
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._flush_marks()
        with contextlib.suppress(Exception):
            await self._release_lease()
        if self._batch is not None:
            with contextlib.suppress(Exception):
                await self._batch.close()

    async def run(self) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stopping:
            try:
                if not await self._hold_lease():
                    await self._flush_marks()  # a takeover republishes the rest: deduped
                    await self._outbox.wait_committed(self._standby_wait_s())
                    continue
                sent = await self._publish_round()
                backoff.reset()
                await self._maybe_purge()
                if sent < self.config.batch:
                    await self._outbox.wait_committed(self._idle_wait_s())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, DB busy: retry, the rows are safe
                self.failures += 1
                self.last_error = exc
                delay = backoff.next()
                log.warning("outbox relay: %r; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)  # backoff, not synchronisation

    # -- one round ---------------------------------------------------------------

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows; returns how many were acked and marked sent."""
        sent = await self._publish_round()
        await self._flush_marks()
        return sent

    def _standby_wait_s(self) -> float:
        """How long a standby waits before its next look at the lease (a commit or a stop
        wakes it sooner; a commit alone does not make it look)."""
        return max(0.0, self._standby_until - time.monotonic())

    def _idle_wait_s(self) -> float:
        """How long an idle relay waits for a commit: the poll interval, or less when
        acked rows are due to be marked sent."""
        if not self._unmarked:
            return self.config.poll_interval_s
        due = self._unmarked_since + self.config.mark_every_s - time.monotonic()
        return max(0.0, min(self.config.poll_interval_s, due))

    async def _publish_round(self) -> int:
        """Publish one batch of unsent rows (less those acked but not yet marked); the
        acked ones join the rows to mark, marked when due (`_flush_marks`). Returns how
        many were acked."""
        async with self._sessions() as s:
            if self._unmarked:
                query = self._select_after_unmarked
                rows = (await s.execute(query, {"unmarked": self._unmarked})).all()
            else:
                rows = (await s.execute(self._select)).all()
        if not rows:
            if self._marks_due():
                await self._flush_marks()
            return 0
        if self._batch is not None:
            outgoing = [(subj, body, json.loads(hdrs)) for _, subj, body, hdrs in rows]
            results = await self._batch.publish(outgoing, self.config.ack_timeout_s)
        else:
            results = await self._publish_each(rows)
        acked = [row[0] for row, r in zip(rows, results, strict=True) if r is None]
        if acked:
            if not self._unmarked:
                self._unmarked_since = time.monotonic()
            self._unmarked.extend(acked)
            self.published += len(acked)
        error = next((r for r in results if r is not None), None)
        if error is not None:
            await self._flush_marks()
            raise error
        if self._marks_due():
            await self._flush_marks()
        return len(acked)

    def _marks_due(self) -> bool:
        return bool(self._unmarked) and (
            len(self._unmarked) >= self.config.mark_max
            or time.monotonic() - self._unmarked_since >= self.config.mark_every_s
        )

    async def _flush_marks(self) -> None:
        """Mark every acked row sent, in one transaction. Kept for the next try if the
        database refuses (the rows stay left out of the reads meanwhile)."""
        if not self._unmarked:
            return
        await self._mark_sent(self._unmarked)
        self._unmarked = []

    async def _publish_each(
        self, rows: Sequence[Row[Any, Any, Any, Any]]
    ) -> list[BaseException | None]:
        """The `publish_async` path: per row None (acked) or its error."""
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for _, subject, payload, headers in rows:
                hdrs: dict[str, Any] = json.loads(headers)
                futures.append(await self._js.publish_async(subject, payload, headers=hdrs))
            done, _ = await asyncio.wait(futures, timeout=self.config.ack_timeout_s)
        finally:
            # A timed-out future keeps a publish_async slot until it is done.
            for f in futures:
                if not f.done():
                    f.cancel()
        timeout = PublishTimeoutError(f"no ack within {self.config.ack_timeout_s}s")
        return [
            (f.exception() if not f.cancelled() else timeout) if f in done else timeout
            for f in futures
        ]

    async def _mark_sent(self, seqs: list[int]) -> None:
        now = datetime.now(UTC)
        async with self._sessions.begin() as s:
            # Chunks keep under SQLite's bound-parameter limit.
            for i in range(0, len(seqs), 500):
                await s.execute(self._mark, {"seqs": seqs[i : i + 500], "now": now})

    async def _maybe_purge(self) -> None:
        mono = time.monotonic()
        if mono - self._last_purge < self.config.purge_every_s:
            return
        self._last_purge = mono
        cutoff = datetime.now(UTC) - timedelta(seconds=self.config.keep_sent_s)
        c = self._t.outbox.c
        async with self._sessions.begin() as s:
            await s.execute(
                delete(self._t.outbox).where(c.sent_at.is_not(None), c.sent_at < cutoff)
            )

    # -- lease -------------------------------------------------------------------

    async def _hold_lease(self) -> bool:
        mono = time.monotonic()
        # Renew at a third of the lease so a slow round never lets it lapse.
        if mono < self._lease_until - self.config.lease_s * 2 / 3:
            return True
        now_ms = int(time.time() * 1000)
        expires = now_ms + int(self.config.lease_s * 1000)
        lease = self._t.lease
        if self._lease_until == 0.0:
            # A standby looks before it writes: while another holder's lease runs, its
            # try is a read, not two write transactions (UPDATE, then a failing INSERT)
            # queueing for the database's write lock every `lease_s / 3`. And it looks
            # only when that lease may have lapsed (or `lease_s / 3` on): its own
            # process's commits wake it, but they are the holder's to publish.
            if mono < self._standby_until:
                return False
            async with self._sessions() as s:
                held = (await s.execute(self._lease_holder)).first()
            if held is not None and held.holder != self.holder and held.expires_at >= now_ms:
                # Past the lapse by a millisecond: the next look finds it lapsed.
                lapses_in_s = (held.expires_at - now_ms + 1) / 1000
                self._standby_until = mono + min(self.config.lease_s / 3, lapses_in_s)
                return False
        async with self._sessions.begin() as s:
            res = await s.execute(
                update(lease)
                .where(lease.c.name == self.LEASE_NAME)
                .where((lease.c.holder == self.holder) | (lease.c.expires_at < now_ms))
                .values(holder=self.holder, expires_at=expires)
            )
            got = bool(getattr(res, "rowcount", 0))
        if not got:
            try:
                async with self._sessions.begin() as s:
                    await s.execute(
                        insert(lease).values(
                            name=self.LEASE_NAME, holder=self.holder, expires_at=expires
                        )
                    )
                got = True
            except IntegrityError:
                got = False
        self._lease_until = mono + self.config.lease_s if got else 0.0
        if not got:  # another holder won the write: its lease runs `lease_s` at most
            self._standby_until = mono + self.config.lease_s / 3
        return got

    async def _release_lease(self) -> None:
        lease = self._t.lease
        self._lease_until = 0.0
        async with self._sessions.begin() as s:
            await s.execute(
                update(lease)
                .where(lease.c.name == self.LEASE_NAME, lease.c.holder == self.holder)
                .values(expires_at=0)
            )

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._lease_until

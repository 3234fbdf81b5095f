"""Durable pull consumers: explicit ack, nak with backoff, dead letters, restart survival.

One `Subscription` runs one consume loop: fetch a batch from a durable pull
consumer, decode each message into an `Envelope`, run the handler inside a span
that is a child of the producer's `traceparent`, then

- ack when the handler returns;
- nak with a delay from `backoff_s` (by delivery count) when it raises;
- when it raised on the `max_deliver`-th delivery, publish the message to
  `dlq.<subject>` with its original headers plus the error and delivery count,
  then `term` it so JetStream stops redelivering.

A handler's CancelledError counts as raising (logged as a warning) unless the loop
itself is being cancelled (`stop()`, shutdown): a cancelled future or grpc.aio call
the handler awaited must not end the loop.

With a `batch_handler`, a fetched batch is handed over in one call (one
database transaction for many events, e.g. `Inbox.idempotent_batch`) inside a
span linked to every producer's context, and acked when it returns (the acks
written to the connection as one, `mesh.events.nats_writes`); if it
raises, the batch is replayed one message at a time through `handler`, so a
poison event gets its own nak, retries and dead letter while the rest pass.

The server-side `max_deliver` is unlimited on purpose: the consumer itself
decides to dead-letter, so a crash on the last delivery means one more
delivery, not a message the server silently stops sending.

The loop survives a nats-server restart: the client reconnects, fetches time
out meanwhile, and every few seconds of silence the loop checks that its
durable consumer still exists and re-creates and re-binds it if not. A re-bind
keeps the loop's one pull subscription (its inbox), so nothing the server
already handed out is stranded until `ack_wait` (see `_bind`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from meshproto.events.v1 import envelope_pb2
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from base.backoff import Backoff
from base.tasks import being_cancelled
from interceptors._spans import SpanShortcut
from mesh.events.envelope import HDR_MSG_ID, decode, extract_context
from mesh.events.errors import EventsTimeoutError
from mesh.events.nats_writes import ack_all
from mesh.events.pull import PullFetcher
from mesh.events.streams import dlq_subject

log = logging.getLogger(__name__)

Handler = Callable[[envelope_pb2.Envelope], Awaitable[None]]
BatchHandler = Callable[[list[envelope_pb2.Envelope]], Awaitable[None]]

HDR_DLQ_ERROR = "Shop-Dlq-Error"
HDR_DLQ_DELIVERIES = "Shop-Dlq-Deliveries"
HDR_DLQ_STREAM = "Shop-Dlq-Stream"
HDR_DLQ_CONSUMER = "Shop-Dlq-Consumer"
HDR_DLQ_SUBJECT = "Shop-Dlq-Subject"
HDR_DLQ_ORIGINAL_ID = "Shop-Dlq-Original-Msg-Id"
# Where the event is in its own stream: a replay publishes it from there, not the copy.
HDR_DLQ_STREAM_SEQ = "Shop-Dlq-Stream-Seq"


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    max_deliver: int = 5
    # Nak delay after the n-th failed delivery (the last value repeats).
    backoff_s: tuple[float, ...] = (0.5, 2.0, 10.0, 30.0)
    ack_wait_s: float = 30.0
    batch: int = 256
    # A pull waits this long for messages; it also bounds how long a lost
    # connection goes unnoticed and how long `stop()` takes.
    fetch_timeout_s: float = 1.0
    max_ack_pending: int = 4096
    # Handlers run one at a time (in stream order) unless raised.
    concurrency: int = 1
    # After this long without messages, check that the durable consumer exists.
    check_consumer_every_s: float = 3.0
    rebind_backoff_max_s: float = 2.0


@dataclass(slots=True)
class SubscriptionStats:
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    rebinds: int = 0
    # Errors of the loop (server gone, consumer check timed out...), each followed by a re-bind.
    interruptions: int = 0
    # Pull subscriptions made: one for the loop's life, however often it re-binds.
    pull_subscriptions: int = 0


def _header_value(text: str, limit: int = 1000) -> str:
    # Header values are one line of printable text.
    flat = " ".join(text.split())
    return flat[:limit]


class Subscription:
    """A consume loop over one durable pull consumer."""

    # How long a consumer that never bound waits quietly for its stream before warning.
    STREAM_PATIENCE_S = 10.0

    def __init__(
        self,
        js: JetStreamContext,
        *,
        subject: str,
        durable: str,
        handler: Handler,
        stream: str | None = None,
        options: SubscribeOptions | None = None,
        tracer: Tracer | None = None,
        batch_handler: BatchHandler | None = None,
        nc: NATS | None = None,
    ) -> None:
        self.js = js
        # Given the connection (as `EventBus.subscribe` does), fetches go through
        # `mesh.events.pull` (about a fifth less CPU per event than nats-py's fetch).
        self._nc = nc
        self._fetcher: PullFetcher | None = None
        self.batch_handler = batch_handler
        self.subject = subject
        self.durable = durable
        self.handler = handler
        self.stream = stream
        self.options = options or SubscribeOptions()
        self.tracer = tracer or trace.get_tracer("mesh.events")
        # A message's span without the SDK's set-up where the SDK allows it (the RPC
        # interceptors' shortcut): the SDK's span cost ~5 % of an inventory process's
        # CPU under `bench orders`.
        self._spans = SpanShortcut(self.tracer)
        self.stats = SubscriptionStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._fetching = False
        self._psub: JetStreamContext.PullSubscription | None = None
        self.bound = asyncio.Event()
        self._said_waiting = False  # the INFO line about a missing stream was written

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.options.max_ack_pending,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, bind_within_s: float = 10.0) -> None:
        """Start the loop and wait until the consumer is created and bound.

        Not bound in time: the loop is stopped before EventsTimeoutError is raised, so a
        caller that tries again (a service whose stream's owner is slow to start) never
        leaves a second loop running that nothing would stop."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name=f"consume-{self.durable}")
        task = self._task
        bound = asyncio.ensure_future(self.bound.wait())
        done, _ = await asyncio.wait({bound, task}, timeout=bind_within_s,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if bound not in done:
            bound.cancel()
            if task in done:
                task.result()  # raise what killed it
            await self.stop(grace_s=0)
            raise EventsTimeoutError(f"consumer {self.durable} not bound within {bind_within_s}s")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the batch in hand finish (up to `grace_s`), then stop. Messages fetched but
        not yet handled go back at once (`PullFetcher.close`: nak'ed, for the next
        instance to fetch); a batch cut off by the grace period comes back after
        `ack_wait`."""
        task, self._task = self._task, None
        self._stopping = True
        try:
            if task is not None:
                await self._end_loop(task, grace_s)
        finally:
            await self._unbind()

    async def _end_loop(self, task: asyncio.Task[None], grace_s: float) -> None:
        """Wait up to `grace_s` for the loop to finish, then cancel it and wait for that.

        A loop that ended cancelled (cancelled from elsewhere) is simply over: its
        CancelledError is not raised here, or `EventBus.close` would stop no further
        subscription nor close the connection. A cancellation of the caller itself still
        propagates. Whatever else killed the loop (run keeps going on any Exception) is
        raised, after the caller's `_unbind`."""
        if self._fetching:
            task.cancel()
        if not (await asyncio.wait({task}, timeout=grace_s))[0]:
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.result()

    # -- loop --------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(0.1, self.options.rebind_backoff_max_s)
        started = time.monotonic()
        while not self._stopping:
            try:
                await self._bind()
                backoff.reset()
                await self._consume()
            except asyncio.CancelledError as exc:
                if self._stopping:
                    return
                if being_cancelled():
                    raise
                # Not a cancel of this loop (a stray one from something it awaited):
                # re-bind like after any other error rather than die without a word.
                await self._interrupted(exc, backoff, started)
            except Exception as exc:  # server gone, consumer gone: re-bind
                await self._interrupted(exc, backoff, started)

    async def _interrupted(self, exc: BaseException, backoff: Backoff, started: float) -> None:
        """Count and log an error of the loop, then wait out the backoff before the re-bind.
        The pull subscription is kept (see _bind): only the consumer is re-checked."""
        self.stats.interruptions += 1
        delay = backoff.next()
        self._log_interruption(exc, delay, time.monotonic() - started)
        self.bound.clear()
        await asyncio.sleep(delay)  # backoff, not synchronisation

    def _log_interruption(self, exc: BaseException, delay: float, since_start_s: float) -> None:
        """A consumer that never bound and finds no stream is waiting for the service that
        owns the stream to start (each service declares only its own streams): said once
        at INFO, then quietly, and as a warning again after `STREAM_PATIENCE_S` (a subject
        no stream will ever carry, or an owner that does not come up)."""
        waiting = isinstance(exc, nats.js.errors.NotFoundError) and not self.stats.rebinds
        if not waiting or since_start_s >= self.STREAM_PATIENCE_S:
            log.warning("consumer %s: %r; re-binding in %.2fs", self.durable, exc, delay)
        elif not self._said_waiting:
            self._said_waiting = True
            log.info("consumer %s: no stream carries %s yet (its owner declares it when it"
                     " starts); waiting for it", self.durable, self.subject)  # fmt: skip
        else:
            log.debug("consumer %s: still no stream for %s; retrying in %.2fs",
                      self.durable, self.subject, delay)  # fmt: skip

    async def _bind(self) -> None:
        if self.stream is None:
            self.stream = await self.js.find_stream_name_by_subject(self.subject)
        cfg = self.consumer_config()
        try:
            await self.js.add_consumer(self.stream, cfg)
        except nats.js.errors.BadRequestError as exc:
            # An existing durable with settings the server will not change in
            # place: keep using it rather than fail the service's start.
            log.warning("consumer %s exists with other settings: %s", self.durable, exc)
        if self._psub is None and self._fetcher is None:
            # One pull subscription (one inbox) for the loop's whole life, across re-binds
            # and reconnects (the client re-subscribes it). Unsubscribing on a transient
            # error lost messages: the server still hands the next message to a pull
            # request sent before (or buffered during) the outage, and what sat in the old
            # inbox's queue was dropped; each then waited ack_wait (30 s) for redelivery.
            # Kept, those messages land in this inbox and the next fetch takes them.
            if self._nc is not None:
                self._fetcher = PullFetcher(self._nc, self.stream, self.durable)
                await self._fetcher.start()
            else:
                self._psub = await self.js.pull_subscribe_bind(
                    durable=self.durable, stream=self.stream
                )
            self.stats.pull_subscriptions += 1
        self.stats.rebinds += 1
        self.bound.set()

    async def _unbind(self) -> None:
        psub, self._psub = self._psub, None
        fetcher, self._fetcher = self._fetcher, None
        with contextlib.suppress(Exception):
            if psub is not None:
                await psub.unsubscribe()
            if fetcher is not None:
                await fetcher.close()

    async def _fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        if self._fetcher is not None:
            return await self._fetcher.fetch(batch, timeout_s)
        assert self._psub is not None
        return await self._psub.fetch(batch, timeout=timeout_s)

    async def _consume(self) -> None:
        opts = self.options
        last_seen = time.monotonic()
        while not self._stopping:
            self._fetching = True
            try:
                msgs = await self._fetch(opts.batch, opts.fetch_timeout_s)
            except nats.errors.TimeoutError:
                if time.monotonic() - last_seen >= opts.check_consumer_every_s:
                    last_seen = time.monotonic()
                    await self._check_consumer()
                continue
            finally:
                self._fetching = False
            last_seen = time.monotonic()
            if self.batch_handler is not None and len(msgs) > 1 and await self._process_batch(msgs):
                continue
            if opts.concurrency <= 1:
                for msg in msgs:
                    await self._process(msg)
            else:
                await self._process_concurrently(msgs, opts.concurrency)

    async def _process_concurrently(self, msgs: list[Msg], limit: int) -> None:
        sem = asyncio.Semaphore(limit)

        async def one(m: Msg) -> None:
            async with sem:
                await self._process(m)

        async with asyncio.TaskGroup() as tg:
            for msg in msgs:
                tg.create_task(one(msg))

    async def _process_batch(self, msgs: list[Msg]) -> bool:
        """Run the batch handler; True if it succeeded and every message was acked."""
        assert self.batch_handler is not None
        try:
            envs = [decode(m.data) for m in msgs]
        except DecodeError:
            return False  # the one-by-one path dead-letters the bad one
        links = [
            Link(trace.get_current_span(extract_context(m.headers, e)).get_span_context())
            for m, e in zip(msgs, envs, strict=True)
        ]
        with self.tracer.start_as_current_span(
            f"process {self.subject} batch",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self.durable,
                "messaging.batch.message_count": len(msgs),
            },
        ) as span:
            try:
                await self.batch_handler(envs)
            except (Exception, asyncio.CancelledError) as exc:
                if self._cancelled_by(exc, "batch handler"):
                    raise
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                log.info("consumer %s: batch failed (%r); one by one", self.durable, exc)
                return False
        await ack_all(msgs)
        self.stats.handled += len(msgs)
        return True

    async def _check_consumer(self) -> None:
        # Raises NotFoundError (-> re-bind) if the server lost the consumer, and
        # a timeout while still disconnected (-> re-bind after backoff).
        assert self.stream is not None
        await self.js.consumer_info(self.stream, self.durable, timeout=2.0)

    # -- one message ---------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered
        try:
            env = decode(msg.data)
        except DecodeError as exc:
            # Never decodable, so never worth a redelivery.
            await self._dead_letter(msg, exc, delivered)
            return
        ctx = extract_context(msg.headers, env)
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.message.id": env.id,
            "messaging.consumer.group.name": self.durable,
            "messaging.nats.delivery_count": delivered,
        }
        span = self._spans.span(
            f"process {msg.subject}",
            trace.get_current_span(ctx).get_span_context(),
            SpanKind.CONSUMER,
            attributes,
            remote=True,
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                await self.handler(env)
            except (Exception, asyncio.CancelledError) as exc:
                if self._cancelled_by(exc, "handler"):
                    raise
                await self._failed(msg, span, exc, delivered)
                return
        self.stats.handled += 1
        await msg.ack()

    def _cancelled_by(self, exc: BaseException, what: str) -> bool:
        """Whether `exc` cancels the loop's own task (`stop()`, shutdown): then it must
        propagate. A CancelledError without that came from something the handler awaited
        (a future or task someone else cancelled, a grpc.aio call on a closed channel): it
        is logged and then handled as the handler's failure, so the loop lives on."""
        if not isinstance(exc, asyncio.CancelledError):
            return False
        if being_cancelled():
            return True
        log.warning("consumer %s: %s raised CancelledError though the consumer was not"
                    " stopped (something it awaited was cancelled); handled as a failure",
                    self.durable, what)  # fmt: skip
        return False

    async def _failed(self, msg: Msg, span: Span, exc: BaseException, delivered: int) -> None:
        """The handler raised: nak with the backoff's delay, or dead-letter the message on
        its `max_deliver`-th delivery."""
        self.stats.failed += 1
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        if delivered >= self.options.max_deliver:
            await self._dead_letter(msg, exc, delivered)
        else:
            await msg.nak(delay=self._nak_delay(delivered))

    def _nak_delay(self, delivered: int) -> float:
        steps = self.options.backoff_s
        if not steps:
            return 0.0
        return steps[min(delivered, len(steps)) - 1]

    async def _dead_letter(self, msg: Msg, exc: BaseException, delivered: int) -> None:
        headers = dict(msg.headers or {})
        original_id = headers.get(HDR_MSG_ID, "")
        headers[HDR_DLQ_ORIGINAL_ID] = original_id
        # Per consumer: two consumers giving up on one event make two dead letters,
        # which the DLQ stream's dedupe would otherwise fold into one.
        headers[HDR_MSG_ID] = f"{original_id or msg.metadata.sequence.stream}:{self.durable}"
        headers[HDR_DLQ_ERROR] = _header_value(f"{type(exc).__name__}: {exc}")
        headers[HDR_DLQ_DELIVERIES] = str(delivered)
        headers[HDR_DLQ_STREAM] = msg.metadata.stream
        headers[HDR_DLQ_STREAM_SEQ] = str(msg.metadata.sequence.stream)
        headers[HDR_DLQ_CONSUMER] = self.durable
        headers[HDR_DLQ_SUBJECT] = msg.subject
        try:
            await self.js.publish(dlq_subject(msg.subject), msg.data, headers=headers, timeout=5.0)
        except Exception as pub_exc:
            # Could not park it: try again on a later delivery.
            log.warning("consumer %s: dead-letter publish failed: %r", self.durable, pub_exc)
            await msg.nak(delay=self._nak_delay(delivered))
            return
        self.stats.dead_lettered += 1
        log.error(
            "consumer %s: dead-lettered %s after %d deliveries: %s",
            self.durable, original_id, delivered, headers[HDR_DLQ_ERROR],
        )  # fmt: skip
        await msg.term()

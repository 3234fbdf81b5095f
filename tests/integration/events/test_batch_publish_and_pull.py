"""The relay's batch publisher and the consumer's pull fetcher against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from shop.events.v1 import events_pb2

from mesh.events import SubscribeOptions, Subscription, nats_writes, new_envelope
from mesh.events.batch_publish import BatchPublisher
from mesh.events.errors import PublishTimeoutError
from mesh.events.pull import PullFetcher
from services.common.event_types import EVENTS
from tests.support.poll import eventually


async def _durable(bus: Any, tag: str, subject: str, **config: Any) -> str:
    """A fresh durable pull consumer of `subject` on the USER stream, explicit acks."""
    durable = f"{tag}-{uuid.uuid4().hex[:8]}"
    await bus.js.add_consumer(
        "USER",
        ConsumerConfig(durable_name=durable, filter_subject=subject,
                       ack_policy=AckPolicy.EXPLICIT, **config),
    )  # fmt: skip
    return durable


def _msg(i: int, event_id: str | None = None) -> tuple[str, bytes, dict[str, str]]:
    return ("user.created", f"body {i}".encode(), {"Nats-Msg-Id": event_id or uuid.uuid4().hex})


@pytest.fixture(params=["one write", "one publish each"])
def batched(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Both ways of writing a batch (`mesh.events.nats_writes`)."""
    on = request.param == "one write"
    nats_writes.use_batched_writes(on)
    assert nats_writes.batched() is on
    yield on
    nats_writes.use_batched_writes(True)


async def test_batch_publisher_reports_each_message(bus_factory: Any, batched: bool) -> None:
    bus = await bus_factory()
    pub = BatchPublisher(bus.nc)
    before = (await bus.js.stream_info("USER")).state.messages
    dup = uuid.uuid4().hex
    msgs = [_msg(i) for i in range(300)] + [_msg(300, dup), _msg(301, dup)]
    msgs.insert(5, ("no.stream.here", b"x", {"Nats-Msg-Id": "n"}))
    results = await pub.publish(msgs, timeout_s=5.0)
    assert isinstance(results[5], NoStreamResponseError)
    assert results[:5] + results[6:] == [None] * 302  # a duplicate is acked too
    assert (await bus.js.stream_info("USER")).state.messages == before + 301
    # No time to answer: a timeout per message, nothing raised; the late answers of that
    # batch are ignored, and the next batch (same subscription) gets its own.
    timed_out = await pub.publish([_msg(i) for i in range(50)], timeout_s=0.0)
    assert all(isinstance(r, PublishTimeoutError) for r in timed_out)
    assert await pub.publish([_msg(0)], timeout_s=5.0) == [None]
    await pub.close()


async def test_a_batch_arrives_as_its_messages_published_one_by_one(bus_factory: Any) -> None:
    """Subject, reply, headers and payload as a subscriber sees them, both ways."""
    bus = await bus_factory()
    seen: list[Any] = []

    async def take(m: Any) -> None:
        seen.append((m.subject, m.reply, m.headers, m.data))

    sub = await bus.nc.subscribe("bw.>", cb=take)
    batch: list[Any] = [
        ("bw.a", b"one", {"Nats-Msg-Id": "1", "traceparent": " 00-ab-cd-01 "}),
        ("bw.b", b"", None),
        ("bw.c", b"\x00bin\r\n", {"Multi": "a\r\nb", "": "x"}),
    ]
    got = {}
    try:
        for on in (True, False):
            nats_writes.use_batched_writes(on)
            seen.clear()
            await nats_writes.publish_batch(bus.nc, batch, "bw.reply.")
            await eventually(lambda: len(seen) == len(batch), 5, "the batch at the subscriber")
            got[on] = list(seen)
    finally:
        nats_writes.use_batched_writes(True)
    assert got[True] == got[False]
    headers = {"Nats-Msg-Id": "1", "traceparent": "00-ab-cd-01"}  # the value trimmed
    assert got[True][0] == ("bw.a", "bw.reply.0", headers, b"one")
    assert got[True][1][2] is None
    await sub.unsubscribe()


async def test_acks_written_as_one_ack_every_message_once(bus_factory: Any, batched: bool) -> None:
    bus = await bus_factory()
    durable = await _durable(bus, "aa", "user.updated", ack_wait=30)
    for i in range(40):
        await bus.js.publish("user.updated", f"m{i}".encode())
    fetcher = PullFetcher(bus.nc, "USER", durable)
    try:
        got: list[Any] = []
        while len(got) < 40:
            got.extend(await fetcher.fetch(40 - len(got), timeout_s=2.0))
        await nats_writes.ack_all(got)
        # Acked twice: refused before anything is written, as Msg.ack refuses it.
        with pytest.raises(nats.errors.MsgAlreadyAckdError):
            await nats_writes.ack_all(got[:2])

        async def all_acked() -> bool:
            info = await bus.js.consumer_info("USER", durable)
            floor, delivered = info.ack_floor.stream_seq, info.delivered.stream_seq
            return bool(info.num_ack_pending == 0 and floor == delivered)

        await eventually(all_acked, 5, "every message acked at the server")
        with pytest.raises(nats.errors.TimeoutError):  # none comes back
            await fetcher.fetch(10, timeout_s=0.3)
    finally:
        await fetcher.close()


async def test_pull_fetcher_batches_keeps_the_rest_and_times_out(bus_factory: Any) -> None:
    bus = await bus_factory()
    durable = await _durable(bus, "pf", "user.created")
    info = await bus.js.consumer_info("USER", durable)
    first = info.num_pending
    for i in range(25):
        await bus.js.publish("user.created", f"m{i}".encode())
    fetcher = PullFetcher(bus.nc, "USER", durable)
    try:
        got: list[Any] = []
        while len(got) < first + 25:
            batch = await fetcher.fetch(10, timeout_s=2.0)
            assert 1 <= len(batch) <= 10
            got.extend(batch)
            for m in batch:
                await m.ack()
        assert [m.data for m in got[first:]] == [f"m{i}".encode() for i in range(25)]
        assert got[-1].metadata.num_delivered == 1
        # Nothing left: a waiting request, then a timeout within the time given.
        t0 = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await fetcher.fetch(10, timeout_s=0.4)
        assert time.monotonic() - t0 < 1.5
        # A message published while a fetch waits is returned at once.
        waiting = asyncio.ensure_future(fetcher.fetch(10, timeout_s=5.0))
        # The waiting request has reached the server (the consumer counts it).
        await eventually(
            lambda: _waiting_requests(bus, durable), 5, "the fetch's request at the server"
        )
        t0 = time.monotonic()
        await bus.js.publish("user.created", b"late")
        (late,) = await waiting
        assert late.data == b"late" and time.monotonic() - t0 < 1.0
        await late.ack()
        # The consumer gone: the server's 503 surfaces as an error (the loop re-binds).
        await bus.js.delete_consumer("USER", durable)
        with pytest.raises((ServiceUnavailableError, nats.errors.TimeoutError)):
            await fetcher.fetch(10, timeout_s=0.5)
    finally:
        await fetcher.close()


async def test_pull_fetcher_keeps_one_waiting_request_open_across_fetches(
    bus_factory: Any,
) -> None:
    """Messages arriving one at a time, each fetched as it comes: the waiting request
    that answered one fetch stays open for the next, so the fetcher's connection sends
    little more than the acks (not a no_wait request and a waiting request per message),
    and the server holds one waiting request, not one per message."""
    publisher, consumer = await bus_factory("pub"), await bus_factory("con")
    durable = await _durable(publisher, "pf", "user.created", deliver_policy=DeliverPolicy.NEW)
    fetcher = PullFetcher(consumer.nc, "USER", durable)
    try:
        first = asyncio.ensure_future(fetcher.fetch(10, timeout_s=10.0))
        await eventually(
            lambda: _waiting_requests(publisher, durable), 5, "the fetch's request at the server"
        )
        await publisher.js.publish("user.created", b"m0")
        (got,) = await first
        await got.ack()
        sent_before = consumer.nc.stats["out_msgs"]
        for i in range(1, 9):  # within the first request's room of 10
            fetching = asyncio.ensure_future(fetcher.fetch(10, timeout_s=10.0))
            await publisher.js.publish("user.created", f"m{i}".encode())
            (got,) = await fetching
            assert got.data == f"m{i}".encode()
            await got.ack()
        # Eight acks; the old way added two requests per message (24 in all).
        assert consumer.nc.stats["out_msgs"] - sent_before <= 8 + 1
        assert await _waiting_requests(publisher, durable) <= 1
        # Its room used up (10 messages), the next fetch asks again and is answered.
        await publisher.js.publish("user.created", b"m9")
        (got,) = await fetcher.fetch(10, timeout_s=5.0)
        await got.ack()
        fetching = asyncio.ensure_future(fetcher.fetch(10, timeout_s=5.0))
        await eventually(
            lambda: _waiting_requests(publisher, durable), 5, "a new request at the server"
        )
        await publisher.js.publish("user.created", b"m10")
        (got,) = await fetching
        assert got.data == b"m10"
        await got.ack()
    finally:
        await fetcher.close()


async def _waiting_requests(bus: Any, durable: str) -> int:
    return int((await bus.js.consumer_info("USER", durable)).num_waiting or 0)


async def test_subscription_without_the_connection_uses_nats_py_fetch(bus_factory: Any) -> None:
    """The public fallback: a Subscription given only the JetStream context."""
    bus = await bus_factory()
    seen: list[str] = []

    async def handler(env: Any) -> None:
        seen.append(env.id)

    sub = Subscription(bus.js, subject="user.*", durable="plain", handler=handler,
                       options=SubscribeOptions(fetch_timeout_s=0.5))  # fmt: skip
    await sub.start()
    try:
        envs = [
            new_envelope(events_pb2.UserCreated(user_id=f"u{i}"), types=EVENTS, source="t",
                         subject=f"u{i}")
            for i in range(3)
        ]  # fmt: skip
        for env in envs:
            await bus.publish(env)
        await eventually(lambda: len(seen) == 3, what="handled through nats-py's fetch")
        assert seen == [e.id for e in envs] and sub._fetcher is None
    finally:
        await sub.stop()


async def test_a_closed_fetcher_hands_back_what_it_holds_at_once(bus_factory: Any) -> None:
    """A stopping consumer (a rolling restart) returns the messages it received but did
    not hand out, and its open request takes no more: the next consumer of the durable
    gets them now, not after `ack_wait` (30 s here)."""
    bus = await bus_factory()
    durable = await _durable(bus, "hb", "user.updated", ack_wait=30)
    first = PullFetcher(bus.nc, "USER", durable)
    # Nothing there: the fetch leaves a waiting request for 8 open and returns at the
    # first of three messages; the other two land in its buffer.
    waiting = asyncio.ensure_future(first.fetch(8, timeout_s=5.0))
    await eventually(lambda: _waiting_requests(bus, durable), 5, "the waiting request")
    for i in range(3):
        await bus.js.publish("user.updated", f"a{i}".encode())
    got = await waiting
    await eventually(lambda: len(first._buf) + len(got) == 3, 5, "all three at the fetcher")
    for m in got:
        await m.ack()
    handed = {m.data for m in got}
    await first.close()
    # Published after the stop: the old request (room for 5 more) must not take them.
    for i in range(3):
        await bus.js.publish("user.updated", f"b{i}".encode())
    # The first fetch may have returned more than one of the three (they can arrive
    # together): wait for what is left, not for a fixed count.
    expected = {f"a{i}".encode() for i in range(3)} - handed | {f"b{i}".encode() for i in range(3)}
    second = PullFetcher(bus.nc, "USER", durable)
    try:
        rest: list[Any] = []
        t0 = time.monotonic()
        while len(rest) < len(expected) and time.monotonic() - t0 < 5:
            with contextlib.suppress(nats.errors.TimeoutError):
                rest.extend(await second.fetch(10, timeout_s=0.5))
        for m in rest:
            await m.ack()
        assert {m.data for m in rest} == expected
        assert time.monotonic() - t0 < 5  # not after ack_wait
    finally:
        await second.close()


async def test_a_stopped_subscription_hands_what_it_had_not_handled_to_the_next_at_once(
    bus_factory: Any,
) -> None:
    """A rolling restart through the consume loop: the stopping instance finishes the
    event in hand; the five its open request had brought in meanwhile reach the other
    instance now, not after `ack_wait` (30 s)."""
    bus = await bus_factory()
    first: list[str] = []
    second: list[str] = []
    release = asyncio.Event()

    async def busy(env: Any) -> None:
        first.append(env.id)
        await release.wait()  # the event in hand when the stop comes

    async def other(env: Any) -> None:
        second.append(env.id)

    # The fetch timeout is the waiting request's `expires`: the five published below must
    # reach the request the first fetch left open, so it must outlive a loaded box's
    # publishes (at 0.5 s it expired first once in CI, and the five never came).
    options = SubscribeOptions(batch=8, ack_wait_s=30, fetch_timeout_s=10)
    envs = [
        new_envelope(events_pb2.UserCreated(user_id=f"h{i}"), types=EVENTS, source="t",
                     subject=f"h{i}")
        for i in range(6)
    ]  # fmt: skip
    a = await bus.subscribe("user.*", busy, durable="handback", options=options)

    # Published before the first fetch, the first event would come back on its no_wait
    # request, which ends there: no request would stay open to bring the five in (seen
    # once in CI). Wait until the waiting one is open.
    def waiting_request_open() -> bool:
        return a._fetcher is not None and a._fetcher._waiting(time.monotonic())

    await eventually(waiting_request_open, 5, "the subscription's waiting pull request")
    await bus.publish(envs[0])
    await eventually(lambda: first, 5, "the first event in hand")
    for env in envs[1:]:
        await bus.publish(env)
    fetcher = a._fetcher
    assert fetcher is not None
    await eventually(lambda: len(fetcher._buf) == 5, 5, "the other five at the stopping fetcher")
    stopping = asyncio.ensure_future(a.stop(grace_s=5))
    release.set()
    await stopping
    assert first == [envs[0].id]
    t0 = time.monotonic()
    await bus.subscribe("user.*", other, durable="handback", options=options)
    await eventually(lambda: len(second) == 5, 5, "the five at the other instance")
    assert sorted(second) == sorted(e.id for e in envs[1:])
    assert time.monotonic() - t0 < 5  # not after ack_wait

"""`meshctl events dlq` on a real nats-server running `meshctl up`'s permissions: a
poison event's dead letter listed with why, replayed once the consumer is fixed
(handled once), dropped; and what the `dead-letters` identity may not do."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2

from mesh.events import EventBus, SubscribeOptions, new_envelope
from mesh.local.status import dead_letter_line
from services.common.event_types import EVENTS
from tests.support.nats import NatsServer
from tests.support.nats_clients import Client, bus_as, order_completed
from tests.support.poll import eventually

ROOT = Path(__file__).resolve().parents[3]
DURABLE = "inventory-order-completed"


async def _bus(srv: NatsServer, identity: str) -> EventBus:
    bus = await bus_as(srv, identity)
    await bus.ensure_streams()
    return bus


def _run_dir(srv: NatsServer, tmp_path: Path) -> Path:
    """A run directory as `meshctl up` leaves it: its NATS's address and the seeds."""
    assert srv.local is not None
    nats_dir = tmp_path / "run" / "nats"
    nats_dir.mkdir(parents=True)
    (nats_dir / "server.json").write_text(json.dumps({"url": srv.url}))
    for identity, seed in srv.local.seeds.items():
        (nats_dir / f"{identity}.nk").symlink_to(seed)
    return tmp_path / "run"


async def _meshctl(run_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MESH_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), "events", "dlq", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_dead_letter_is_listed_replayed_after_the_fix_and_another_dropped(
    nats_srv: NatsServer, tmp_path: Path
) -> None:
    orders = await _bus(nats_srv, "orders")
    inventory = await _bus(nats_srv, "inventory")
    broken = True
    handled: list[str] = []

    async def handle(env: Envelope) -> None:
        order = events_pb2.OrderCompleted()
        env.data.Unpack(order)
        if broken:
            raise RuntimeError(f"cannot handle {order.order_id} yet")
        handled.append(order.order_id)

    try:
        sub = await inventory.subscribe("order.completed", handle, durable=DURABLE, stream="ORDER",
                                        options=SubscribeOptions(max_deliver=1))  # fmt: skip
        await orders.publish(order_completed("o-1"))
        await orders.publish(order_completed("o-2"))
        await eventually(lambda: sub.stats.dead_lettered == 2, what="two dead letters")
        run = _run_dir(nats_srv, tmp_path)

        # `meshctl status` says they are there.
        assert await dead_letter_line(run) == (
            "dead letters: 2 in DLQ (`meshctl events dlq list` shows why they failed)"
        )
        code, out, err = await _meshctl(run, "list")
        assert code == 0, err
        rows = [line.split() for line in out.splitlines()[1:3]]
        assert [r[2:5] for r in rows] == [["order.completed", DURABLE, "1"]] * 2, out
        assert "RuntimeError: cannot handle o-1 yet" in out and "2 dead letter(s) in DLQ" in out
        # The event's subject names its dead letters too.
        code, by_subject, err = await _meshctl(run, "list", "order.completed")

        def no_age(text: str) -> list[list[str]]:
            return [line.split()[:1] + line.split()[2:] for line in text.splitlines()]

        assert code == 0 and no_age(by_subject) == no_age(out), (by_subject, err)
        first, second = (int(r[0]) for r in rows)

        broken = False  # the fix is deployed
        code, out, err = await _meshctl(run, "replay", str(first))
        assert code == 0, err
        assert f"#{first} order.completed (gave up by {DURABLE}): replayed as orders" in out, out
        await eventually(lambda: handled == ["o-1"], what="the replayed event handled")
        # Replayed once: the number is gone, and a second replay says so.
        code, out, err = await _meshctl(run, "replay", str(first))
        assert code == 1 and f"no dead letter #{first}" in err, (out, err)

        code, out, err = await _meshctl(run, "drop", str(second))
        assert code == 0 and f"#{second} order.completed dropped" in out, (out, err)
        code, out, err = await _meshctl(run, "list")
        assert code == 0 and out.startswith("no dead letters"), (out, err)
        assert await dead_letter_line(run) is None
        await asyncio.sleep(0.5)  # poll: room for a wrong second delivery to arrive
        assert handled == ["o-1"]  # o-2 was dropped, o-1 handled once
    finally:
        await inventory.close()
        await orders.close()


async def test_a_forged_dead_letter_replays_the_genuine_event_or_nothing(
    nats_srv: NatsServer, tmp_path: Path
) -> None:
    """A consumer's identity may write anything to `dlq.<what it consumes>`: a replay
    as the domain's owner must not launder that. It publishes the event as its own
    stream holds it, on the dead letter's own subject (not a header's), and refuses a
    dead letter whose named original is of another subject or not named at all."""
    orders = await _bus(nats_srv, "orders")
    await (await _bus(nats_srv, "inventory")).close()  # declares DLQ
    genuine = order_completed("o-1")
    await orders.publish(genuine)  # ORDER #1
    compensation = new_envelope(
        events_pb2.OrderCompensationCompleted(order_id="o-2", saga_id="s-2"),
        types=EVENTS, source="test", subject="o-2",
    )  # fmt: skip
    await orders.publish(compensation)  # ORDER #2, order.compensation.completed
    await orders.close()
    attacker = await nats.connect(nats_srv.url, allow_reconnect=False,
                                  **nats_srv.auth_for("inventory").connect_options())  # fmt: skip
    js = attacker.jetstream()
    forged = order_completed("o-evil").SerializeToString()

    async def plant(seq: str | None) -> int:
        headers = {"Shop-Dlq-Subject": "payment.completed", "Shop-Dlq-Consumer": DURABLE,
                   "Nats-Msg-Id": f"forged-{seq}"}  # fmt: skip
        if seq is not None:
            headers["Shop-Dlq-Stream-Seq"] = seq
        return int((await js.publish("dlq.order.completed", forged, headers=headers)).seq)

    try:
        laundered, other_subject, unnamed = await plant("1"), await plant("2"), await plant(None)
    finally:
        await attacker.close()
    run = _run_dir(nats_srv, tmp_path)
    code, out, err = await _meshctl(run, "replay", str(laundered))
    assert code == 0, (out, err)
    for seq, why in ((other_subject, "is order.compensation.completed: not replayed"),
                     (unnamed, "names no position in ORDER")):  # fmt: skip
        code, out, err = await _meshctl(run, "replay", str(seq))
        assert code == 1 and why in err, (out, err)
    admin = await nats.connect(nats_srv.admin_url)
    try:
        ajs = admin.jetstream()
        replayed = await ajs.get_msg("ORDER", 3)
        assert replayed.subject == "order.completed"
        assert replayed.data == genuine.SerializeToString(), "the genuine event, not the forgery"
        assert (await ajs.stream_info("ORDER")).state.messages == 3  # nothing else published
        with pytest.raises(nats.js.errors.NotFoundError):
            await ajs.stream_info("PAYMENT")  # no payment.completed ever: no such stream
        assert (await ajs.stream_info("DLQ")).state.messages == 2  # the refused ones stay
    finally:
        await admin.close()


async def test_replay_needs_numbers_or_all_and_no_mesh_says_so(tmp_path: Path) -> None:
    code, _, err = await _meshctl(tmp_path / "never", "list")
    assert code == 1 and "no mesh has run in" in err and "Traceback" not in err, err
    code, _, err = await _meshctl(tmp_path / "never", "replay")
    assert code == 1 and "by number (`list`), or --all" in err, err


async def test_the_dead_letters_identity_reads_and_removes_dead_letters_only(
    nats_srv: NatsServer,
) -> None:
    """Its grants are the DLQ stream's info, message get and delete: another stream's
    event, a publish, a consumer or the DLQ stream itself are refused."""
    await (await _bus(nats_srv, "inventory")).close()  # declares DLQ
    orders = await _bus(nats_srv, "orders")
    await orders.publish(order_completed("o-9"))  # ORDER #1
    await orders.close()
    keeper = Client()
    nc = await keeper.connect(nats_srv, "dead-letters")
    try:
        js = nc.jetstream(timeout=1.0)
        assert (await js.stream_info("DLQ")).config.name == "DLQ"  # the positive control
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_msg("ORDER", 1)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_msg("ORDER", 1)
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer("DLQ", durable_name="peek")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream("DLQ")
        await nc.publish("order.completed", b"forged")
        await nc.flush()

        for text in ("$JS.API.STREAM.MSG.GET.ORDER", "$JS.API.STREAM.MSG.DELETE.ORDER",
                     "$JS.API.CONSUMER.", "$JS.API.STREAM.DELETE.DLQ",
                     '"order.completed"'):  # fmt: skip
            await eventually(functools.partial(keeper.violation, text), what=f"{text} refused")
    finally:
        await nc.close()
    admin = await nats.connect(nats_srv.admin_url)
    try:
        assert (await admin.jetstream().stream_info("ORDER")).state.messages == 1
    finally:
        await admin.close()

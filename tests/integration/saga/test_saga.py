"""The saga runner against real databases (SQLite file and PostgreSQL), real processes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from base.errors import FailedPrecondition, NotFound, Unavailable
from interceptors.arity import for_channel
from interceptors.deadline import DeadlineClientInterceptor, DeadlineServerInterceptor
from mesh.saga import (
    ErrorKind,
    SagaBusy,
    SagaConflict,
    SagaContext,
    SagaDefinition,
    SagaFailed,
    SagaInterrupted,
    SagaStatus,
    SagaTransition,
    Step,
    StepCancelled,
    TransitionEvent,
)
from tests.support.ping import start_ping_server
from tests.support.poll import eventually
from tests.support.saga import FAST_RETRY, Db, Runners, sample
from tests.support.saga_scenario import (
    COMPENSATE,
    FORWARD,
    Script,
    crash_definition,
    log_transition,
    read_journal,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, "")


def demo(script: Script, *names: str, **step_kwargs: Any) -> SagaDefinition:
    return SagaDefinition(
        "demo",
        [script.step(n, retry=FAST_RETRY, **step_kwargs) for n in names or ("a", "b", "c")],
        on_transition=log_transition,
    )


async def saga_log(db: Db, saga_id: str) -> list[tuple[Any, ...]]:
    rows = await db.rows("SELECT event, status, step FROM saga_log WHERE saga_id = :i", i=saga_id)
    return sorted(rows, key=repr)


# -- forward ---------------------------------------------------------------------------


async def test_happy_path_persists_data_for_later_steps(db: Db, runners: Runners) -> None:
    script = Script()
    reg = CollectorRegistry()
    runner = runners(demo(script), registry=reg)

    result = await runner.run("demo", "s1", {"order_id": "o1"})

    expected = {"order_id": "o1", "a_forward": "a-s1", "b_forward": "b-s1", "c_forward": "c-s1"}
    assert result.status is SagaStatus.COMPLETED
    assert dict(result.data) == expected
    assert [c.key for c in script.calls] == ["s1:a", "s1:b", "s1:c"]
    # Each step sees what the earlier ones returned.
    assert script.calls[2].data == {"order_id": "o1", "a_forward": "a-s1", "b_forward": "b-s1"}
    row = await runner.store.get("s1")
    assert row is not None
    assert (row.status, row.completed, dict(row.data)) == (SagaStatus.COMPLETED, 3, expected)
    assert await saga_log(db, "s1") == sorted(
        [
            ("created", "RUNNING", None),
            ("step_completed", "RUNNING", "a"),
            ("step_completed", "RUNNING", "b"),
            ("step_completed", "COMPLETED", "c"),
        ],
        key=repr,
    )
    assert sample(reg, "saga_started_total", saga="demo") == 1
    assert sample(reg, "saga_completed_total", saga="demo") == 1
    assert sample(reg, "saga_compensated_total", saga="demo") == 0


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
async def test_failure_at_each_step_compensates_completed_steps_in_reverse(
    db: Db, runners: Runners, fail_at: int
) -> None:
    script = Script()
    names = ["a", "b", "notify", "d"]
    definition = SagaDefinition(
        "demo",
        [
            script.step("a"),
            script.step("b"),
            script.step("notify", compensable=False),  # nothing to undo: skipped
            script.step("d"),
        ],
        on_transition=log_transition,
    )
    reg = CollectorRegistry()
    runner = runners(definition, registry=reg)
    error = FailedPrecondition("out of stock", reason="NO_STOCK")
    script.fail(names[fail_at], error)

    with pytest.raises(FailedPrecondition) as raised:
        await runner.run("demo", "s1", {})

    assert raised.value is error  # the caller gets the step's own error
    assert script.steps(FORWARD) == names[: fail_at + 1]  # a business error is not retried
    expected = [n for n in reversed(names[:fail_at]) if n != "notify"]
    assert script.steps(COMPENSATE) == expected
    for call in script.calls:
        if call.phase == COMPENSATE:
            assert call.failed_step == names[fail_at]
            assert call.key == f"s1:{call.step}:compensate"
            # A compensation sees its own step's output (e.g. the payment id to refund).
            assert call.data[f"{call.step}_forward"] == f"{call.step}-s1"
    row = await runner.store.get("s1")
    assert row is not None and row.failure is not None
    assert (row.status, row.completed) == (SagaStatus.COMPENSATED, 0)
    assert (row.failure.step, row.failure.kind, row.failure.code, row.failure.reason) == (
        names[fail_at],
        ErrorKind.BUSINESS,
        "FAILED_PRECONDITION",
        "NO_STOCK",
    )
    log = await saga_log(db, "s1")
    assert ("step_failed", "COMPENSATED" if not expected else "COMPENSATING", names[fail_at]) in log
    assert sum(1 for e, *_ in log if e == "step_compensated") == len(expected)
    assert sample(reg, "saga_compensated_total", saga="demo") == 1
    assert sample(reg, "saga_completed_total", saga="demo") == 0


async def test_transient_error_is_retried_then_succeeds(db: Db, runners: Runners) -> None:
    script = Script()
    reg = CollectorRegistry()
    runner = runners(demo(script), registry=reg)
    script.fail("b", Unavailable("inventory down"), rpc_error(grpc.StatusCode.UNAVAILABLE))

    result = await runner.run("demo", "s1", {})

    assert result.status is SagaStatus.COMPLETED
    b_calls = [c for c in script.calls if c.step == "b"]
    assert [c.attempt for c in b_calls] == [1, 2, 3]
    assert {c.key for c in b_calls} == {"s1:b"}
    assert script.steps(COMPENSATE) == []
    assert sample(reg, "saga_step_retries_total", saga="demo", step="b", phase="forward") == 2


@pytest.mark.parametrize("undo_uncertain", [True, False])
async def test_transient_error_exhausted_compensates(
    db: Db, runners: Runners, undo_uncertain: bool
) -> None:
    script = Script()
    runner = runners(demo(script, compensate_after_transient_failure=undo_uncertain))
    error = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "payments slow")
    script.fail_always("b", error)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runner.run("demo", "s1", {})

    assert raised.value is error
    assert script.steps(FORWARD) == ["a", "b", "b", "b"]  # FAST_RETRY: 3 attempts
    # The timed-out call may have taken effect: its own compensation runs too.
    assert script.steps(COMPENSATE) == (["b", "a"] if undo_uncertain else ["a"])
    row = await runner.store.get("s1")
    assert row is not None and row.failure is not None
    assert (row.failure.kind, row.failure.code, row.failure.message) == (
        ErrorKind.TRANSIENT,
        "DEADLINE_EXCEEDED",
        "payments slow",
    )


async def test_business_error_is_not_retried(db: Db, runners: Runners) -> None:
    script = Script()
    runner = runners(demo(script))
    script.fail_always("b", NotFound("no such user"))

    with pytest.raises(NotFound):
        await runner.run("demo", "s1", {})

    assert script.steps(FORWARD) == ["a", "b"]
    assert script.steps(COMPENSATE) == ["a"]


async def test_classifier_is_pluggable(db: Db, runners: Runners) -> None:
    script = Script()
    script.fail("b", KeyError("flaky"))
    default = runners(demo(script))
    with pytest.raises(KeyError):
        await default.run("demo", "s1", {})
    assert script.steps(COMPENSATE) == ["a"]

    script2 = Script()
    script2.fail("b", KeyError("flaky"))
    custom = runners(demo(script2), classify=lambda exc: ErrorKind.TRANSIENT)
    result = await custom.run("demo", "s2", {})
    assert result.status is SagaStatus.COMPLETED
    assert script2.steps(FORWARD) == ["a", "b", "b", "c"]


# -- local steps and hooks ---------------------------------------------------------------


def order_saga(
    script: Script, confirm_fails: bool = False, writes_first: bool = False
) -> SagaDefinition:
    """Local steps around a remote one, like the shop's order saga (whose local steps
    write first: `writes_first` drops the runner's own first statement)."""

    async def create(ctx: SagaContext) -> dict[str, Any]:
        await ctx.tx.execute(
            text("INSERT INTO orders (id, status) VALUES (:i, 'PENDING')"), {"i": ctx.saga_id}
        )
        return {"order": "created"}

    async def cancel(ctx: SagaContext) -> None:
        await ctx.tx.execute(
            text("UPDATE orders SET status = 'CANCELLED' WHERE id = :i"), {"i": ctx.saga_id}
        )

    async def confirm(ctx: SagaContext) -> None:
        await ctx.tx.execute(
            text("UPDATE orders SET status = 'CONFIRMED' WHERE id = :i"), {"i": ctx.saga_id}
        )
        if confirm_fails:
            raise FailedPrecondition("order expired")

    return SagaDefinition(
        "order",
        [
            Step("create", create, cancel, local=True, writes_first=writes_first),
            script.step("charge", retry=FAST_RETRY),
            Step("confirm", confirm, local=True, retry=FAST_RETRY, writes_first=writes_first),
        ],
        on_transition=log_transition,
    )


async def order_status(db: Db, order_id: str) -> str | None:
    value = await db.scalar("SELECT status FROM orders WHERE id = :i", i=order_id)
    return str(value) if value is not None else None


@pytest.mark.parametrize("writes_first", [False, True])
async def test_local_steps_commit_with_the_saga(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    script = Script()
    runner = runners(order_saga(script, writes_first=writes_first))
    result = await runner.run("order", "o1", {})
    assert result.data["order"] == "created"
    assert await order_status(db, "o1") == "CONFIRMED"

    script.fail("charge", FailedPrecondition("card declined"))
    with pytest.raises(FailedPrecondition):
        await runner.run("order", "o2", {})
    assert await order_status(db, "o2") == "CANCELLED"


@pytest.mark.parametrize("writes_first", [False, True])
async def test_failing_local_step_rolls_back_its_writes(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    script = Script()
    runner = runners(order_saga(script, confirm_fails=True, writes_first=writes_first))
    with pytest.raises(FailedPrecondition, match="expired"):
        await runner.run("order", "o1", {})
    # confirm's UPDATE rolled back with the failed step; create was compensated.
    assert await order_status(db, "o1") == "CANCELLED"
    assert script.steps(COMPENSATE) == ["charge"]
    row = await runner.store.get("o1")
    assert row is not None and row.status is SagaStatus.COMPENSATED


async def test_hook_failure_leaves_the_step_unrecorded_for_recovery(
    db: Db, runners: Runners
) -> None:
    script = Script()
    failures = [RuntimeError("hook broke")]

    async def hook(session: Any, t: SagaTransition) -> None:
        await log_transition(session, t)
        if t.event is TransitionEvent.STEP_COMPLETED and t.step == "b" and failures:
            raise failures.pop()

    definition = SagaDefinition("demo", [script.step(n) for n in "abc"], on_transition=hook)
    runner = runners(definition)

    with pytest.raises(SagaInterrupted):
        await runner.run("demo", "s1", {})

    row = await runner.store.get("s1")
    assert row is not None
    assert (row.status, row.completed) == (SagaStatus.RUNNING, 1)  # b's progress rolled back
    assert ("step_completed", "RUNNING", "b") not in await saga_log(db, "s1")

    assert await runner.recover() == 1
    row = await runner.store.get("s1")
    assert row is not None and row.status is SagaStatus.COMPLETED
    b_keys = [c.key for c in script.calls if c.step == "b"]
    assert b_keys == ["s1:b", "s1:b"]  # re-run, same idempotency key


async def test_transient_database_errors_are_retried_not_fatal(db: Db, runners: Runners) -> None:
    script = Script()
    busy = [OperationalError("UPDATE mesh_saga", {}, Exception("database is locked"))]

    async def hook(session: Any, t: SagaTransition) -> None:
        await log_transition(session, t)
        if t.event is TransitionEvent.STEP_COMPLETED and t.step == "b" and busy:
            raise busy.pop()

    local_busy = [OperationalError("INSERT", {}, Exception("database is locked"))]

    async def local(ctx: SagaContext) -> dict[str, Any]:
        await ctx.tx.execute(
            text("INSERT INTO orders (id, status) VALUES (:i, 'NEW')"), {"i": ctx.saga_id}
        )
        if local_busy:
            raise local_busy.pop()  # rolls the INSERT back; the step is retried
        return {"local": ctx.attempt}

    definition = SagaDefinition(
        "demo",
        [script.step("a"), script.step("b"), Step("c", local, local=True, retry=FAST_RETRY)],
        on_transition=hook,
    )
    runner = runners(definition)
    result = await runner.run("demo", "s1", {})

    assert result.status is SagaStatus.COMPLETED and result.data["local"] == 2
    assert script.steps(FORWARD) == ["a", "b"]  # b's transaction was retried, not b itself
    log = await saga_log(db, "s1")
    assert log.count(("step_completed", "RUNNING", "b")) == 1  # the failed try rolled back
    assert await order_status(db, "s1") == "NEW"


# -- idempotent runs, concurrency, leases -------------------------------------------------


async def test_running_a_saga_id_again_replays_its_outcome(db: Db, runners: Runners) -> None:
    script = Script()
    other = SagaDefinition("other", [script.step("x")])
    runner = runners(demo(script), other)
    first = await runner.run("demo", "ok", {"n": 1})
    again = await runner.run("demo", "ok", {"n": 2})
    assert again == first and again.data["n"] == 1
    assert len(script.calls) == 3  # nothing ran twice

    script.fail("b", FailedPrecondition("out of stock", reason="NO_STOCK"))
    with pytest.raises(FailedPrecondition):
        await runner.run("demo", "bad", {})
    with pytest.raises(SagaFailed) as replay:
        await runner.run("demo", "bad", {})
    assert replay.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert (replay.value.message, replay.value.reason) == ("out of stock", "NO_STOCK")

    with pytest.raises(SagaConflict):
        await runner.run("other", "ok", {})


async def test_concurrent_runs_of_one_saga_id_share_one_execution(db: Db, runners: Runners) -> None:
    script = Script()
    gate = script.gate("a")
    runner = runners(demo(script))
    first = asyncio.create_task(runner.run("demo", "s1", {}))
    await gate.entered.wait()
    second = asyncio.create_task(runner.run("demo", "s1", {}))
    assert await runner.recover() == 0  # the live run holds it
    gate.release.set()
    r1, r2 = await asyncio.gather(first, second)
    assert r1 == r2 and r1.status is SagaStatus.COMPLETED
    assert script.steps(FORWARD) == ["a", "b", "c"]


async def test_a_live_lease_keeps_other_runners_out(db: Db, runners: Runners) -> None:
    script = Script()
    gate = script.gate("b")
    owner_a = runners(demo(script), owner="instance-a", lease_s=0.6)
    owner_b = runners(demo(script), owner="instance-b")
    run = asyncio.create_task(owner_a.run("demo", "s1", {}))
    await gate.entered.wait()

    # Over two lease periods: the heartbeat keeps renewing it.
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        async with asyncio.timeout(5):  # a wrongly claimed saga would block in the gate
            assert await owner_b.recover() == 0
        await asyncio.sleep(0.05)  # poll: keep trying to take the saga over 1.5 s
    with pytest.raises(SagaBusy):
        await owner_b.run("demo", "s1", {})

    gate.release.set()
    assert (await run).status is SagaStatus.COMPLETED
    assert script.steps(FORWARD) == ["a", "b", "c"]


async def test_close_releases_leases_for_immediate_takeover(db: Db, runners: Runners) -> None:
    script = Script()
    gate = script.gate("b")
    first = runners(demo(script), owner="instance-a", lease_s=30.0)
    run = asyncio.create_task(first.run("demo", "s1", {}))
    await gate.entered.wait()
    await first.close(grace_s=0.05)
    with pytest.raises(asyncio.CancelledError):
        await run

    script2 = Script()
    second = runners(demo(script2), owner="instance-b", lease_s=30.0)
    assert await second.recover() == 1  # no waiting for the 30 s lease
    assert script2.steps(FORWARD) == ["b", "c"]
    assert script2.calls[0].key == script.calls[-1].key == "s1:b"
    row = await second.store.get("s1")
    assert row is not None and row.status is SagaStatus.COMPLETED


async def test_racing_instances_recover_each_saga_once(db: Db, runners: Runners) -> None:
    script = Script()
    script.gate("b")  # never released: every saga stops there
    dead = runners(demo(script), owner="instance-a")
    ids = [f"s{i:02d}" for i in range(20)]
    runs = [asyncio.create_task(dead.run("demo", i, {})) for i in ids]
    await eventually(lambda: len(script.steps(FORWARD)) == 2 * len(ids), what="all at step b")
    await dead.close(grace_s=0.01)  # releases the leases
    await asyncio.gather(*runs, return_exceptions=True)

    s1, s2 = Script(), Script()
    b1 = runners(demo(s1), owner="instance-b")
    b2 = runners(demo(s2), owner="instance-c")
    n1, n2 = await asyncio.gather(b1.recover(), b2.recover())

    assert n1 + n2 == len(ids)
    resumed = sorted(c.saga_id for c in s1.calls + s2.calls if c.step == "b")
    assert resumed == ids  # each saga resumed by exactly one instance
    done = await db.scalar("SELECT COUNT(*) FROM mesh_saga WHERE status = 'COMPLETED'")
    assert done == len(ids)


async def test_background_recovery_resumes_interrupted_sagas(db: Db, runners: Runners) -> None:
    script = Script()
    broken = [RuntimeError("db hiccup")]

    async def hook(session: Any, t: SagaTransition) -> None:
        if t.step == "a" and broken:
            raise broken.pop()

    definition = SagaDefinition("demo", [script.step(n) for n in "abc"], on_transition=hook)
    runner = runners(definition)
    with pytest.raises(SagaInterrupted):
        await runner.run("demo", "s1", {})
    runner.start(recover_every_s=0.05)

    async def completed() -> bool:
        row = await runner.store.get("s1")
        return row is not None and row.status is SagaStatus.COMPLETED

    await eventually(completed, within_s=10, what="recovery to finish s1")
    assert [c.key for c in script.calls] == ["s1:a", "s1:a", "s1:b", "s1:c"]


async def test_two_hundred_concurrent_sagas_complete(db: Db, runners: Runners) -> None:
    script = Script()
    reg = CollectorRegistry()
    runner = runners(order_saga(script), registry=reg)
    ids = [f"order-{i:03d}" for i in range(200)]
    started = time.monotonic()
    results = await asyncio.gather(*(runner.run("order", i, {"i": n}) for n, i in enumerate(ids)))
    elapsed = time.monotonic() - started
    assert all(r.status is SagaStatus.COMPLETED for r in results)
    assert [r.data["i"] for r in results] == list(range(200))
    assert await db.scalar("SELECT COUNT(*) FROM orders WHERE status = 'CONFIRMED'") == 200
    assert await db.scalar("SELECT COUNT(*) FROM mesh_saga WHERE status = 'COMPLETED'") == 200
    assert sample(reg, "saga_completed_total", saga="order") == 200
    assert elapsed < 20, elapsed


# -- parking ---------------------------------------------------------------------------------


async def test_compensation_that_keeps_failing_is_parked_then_retried(
    db: Db, runners: Runners, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script()
    reg = CollectorRegistry()
    runner = runners(demo(script), registry=reg, compensation_retry=FAST_RETRY)
    error = FailedPrecondition("card declined")
    script.fail_always("b", error)
    script.fail_always("a", Unavailable("inventory down"), phase=COMPENSATE)

    with caplog.at_level(logging.ERROR, logger="mesh.saga"), pytest.raises(FailedPrecondition):
        await runner.run("demo", "s1", {})

    a_undo = [c for c in script.calls if c.phase == COMPENSATE]
    assert [c.attempt for c in a_undo] == [1, 2, 3]
    assert {c.key for c in a_undo} == {"s1:a:compensate"}
    row = await runner.store.get("s1")
    assert row is not None
    assert (row.status, row.completed, row.attempts) == (SagaStatus.PARKED, 1, 3)
    assert row.last_error is not None and "inventory down" in row.last_error
    assert [p.saga_id for p in await runner.parked()] == ["s1"]
    assert any(
        r.levelno == logging.ERROR and "PARKED" in r.getMessage() and "s1" in r.getMessage()
        for r in caplog.records
    )
    assert sample(reg, "saga_parked_total", saga="demo") == 1
    assert sample(reg, "saga_parked_current", saga="demo") == 1
    assert ("parked", "PARKED", "a") in await saga_log(db, "s1")

    # Parked is not "unfinished": recovery leaves it for an operator.
    assert await runner.recover() == 0
    assert sample(reg, "saga_parked_current", saga="demo") == 1  # refreshed from the database

    script.heal("a", phase=COMPENSATE)
    assert await runner.retry_parked() == 1
    row = await runner.store.get("s1")
    assert row is not None and (row.status, row.completed) == (SagaStatus.COMPENSATED, 0)
    assert await runner.parked() == []
    assert sample(reg, "saga_parked_current", saga="demo") == 0
    assert sample(reg, "saga_compensated_total", saga="demo") == 1
    assert await runner.retry_parked() == 0
    with pytest.raises(SagaFailed):  # a client retry gets the original failure
        await runner.run("demo", "s1", {})


async def test_purge_removes_old_finished_sagas_only(db: Db, runners: Runners) -> None:
    runner = runners(demo(Script()))
    await runner.run("demo", "done", {})
    script2 = Script()
    blocked = script2.gate("a")
    live = runners(demo(script2))
    task = asyncio.create_task(live.run("demo", "live", {}))
    await blocked.entered.wait()
    assert await runner.store.purge(int(time.time() * 1000) + 1000) == 1
    assert await runner.store.get("done") is None
    assert await runner.store.get("live") is not None
    blocked.release.set()
    await task


# -- crashes: a real process killed with SIGKILL mid-saga -------------------------------------


async def start_worker(
    db: Db, tmp_path: Path, mode: str, owner: str, lease_s: float, saga_id: str
) -> tuple[asyncio.subprocess.Process, Path]:
    journal = tmp_path / f"journal-{mode}.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
    log = (tmp_path / f"worker-{mode}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.saga_crash_worker",
        db.url,
        db.schema,
        mode,
        str(journal),
        owner,
        str(lease_s),
        saga_id,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()

    def blocked_or_dead() -> bool:
        return proc.returncode is not None or any(
            e["event"] == "blocked" for e in read_journal(journal)
        )

    await eventually(blocked_or_dead, within_s=20, what="the worker to block in its step")
    assert proc.returncode is None, (tmp_path / f"worker-{mode}.log").read_text()
    return proc, journal


async def test_crash_while_going_forward_resumes_forward_on_another_instance(
    db: Db, runners: Runners, tmp_path: Path
) -> None:
    lease_s = 1.0
    proc, journal = await start_worker(db, tmp_path, "forward", "instance-1", lease_s, "k1")
    proc.kill()
    assert await proc.wait() == -9
    killed_at = time.monotonic()
    child_calls = [e for e in read_journal(journal) if e["event"] == "call"]
    assert [(c["step"], c["phase"]) for c in child_calls] == [
        ("a", FORWARD),
        ("b", FORWARD),
        ("c", FORWARD),
    ]

    script = Script(journal)
    reg = CollectorRegistry()
    # Another instance: it may only take the saga once the dead one's lease expires.
    runner = runners(crash_definition(script), registry=reg, owner="instance-2")
    first = await runner.recover()
    if time.monotonic() - killed_at < lease_s / 4:  # surely before expiry
        assert first == 0
    recovered = first
    deadline = time.monotonic() + 10
    while not recovered and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # poll until the lease expires
        recovered = await runner.recover()
    assert recovered == 1

    row = await runner.store.get("k1")
    assert row is not None and row.status is SagaStatus.COMPLETED
    # The in-flight step ran again with the same key; the rest went on from there.
    assert [(c.step, c.key) for c in script.calls] == [("c", "k1:c"), ("d", "k1:d")]
    assert child_calls[2]["key"] == "k1:c" and child_calls[2]["pid"] == proc.pid
    # Data persisted by the dead process is there for the later steps.
    assert script.calls[1].data == {
        "order_id": "order-k1",
        "a_forward": "a-k1",
        "b_forward": "b-k1",
        "c_forward": "c-k1",
    }
    assert sample(reg, "saga_recovered_total", saga="crashy") == 1
    assert sample(reg, "saga_completed_total", saga="crashy") == 1
    assert ("step_completed", "COMPLETED", "d") in await saga_log(db, "k1")


async def test_crash_while_compensating_resumes_backward_after_restart(
    db: Db, runners: Runners, tmp_path: Path
) -> None:
    proc, journal = await start_worker(db, tmp_path, "backward", "instance-1", 30.0, "k2")
    proc.kill()
    assert await proc.wait() == -9
    child_calls = [e for e in read_journal(journal) if e["event"] == "call"]
    assert [(c["step"], c["phase"]) for c in child_calls] == [
        ("a", FORWARD),
        ("b", FORWARD),
        ("c", FORWARD),
        ("b", COMPENSATE),
    ]

    script = Script(journal)
    reg = CollectorRegistry()
    # The same instance restarted (same owner id): it takes its sagas back at once.
    runner = runners(crash_definition(script), registry=reg, owner="instance-1")
    assert await runner.recover() == 1

    row = await runner.store.get("k2")
    assert row is not None and row.failure is not None
    assert row.status is SagaStatus.COMPENSATED
    assert (row.failure.step, row.failure.code, row.failure.reason) == (
        "c",
        "FAILED_PRECONDITION",
        "NO_STOCK",
    )
    assert [(c.step, c.phase, c.key) for c in script.calls] == [
        ("b", COMPENSATE, "k2:b:compensate"),
        ("a", COMPENSATE, "k2:a:compensate"),
    ]
    assert child_calls[3]["key"] == "k2:b:compensate"
    assert all(c.failed_step == "c" for c in script.calls)
    assert sample(reg, "saga_compensated_total", saga="crashy") == 1
    assert await runner.recover() == 0  # nothing left


@pytest.mark.parametrize("writes_first", [False, True])
async def test_a_remote_step_is_recorded_with_the_local_step_after_it(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    # One transaction fewer per remote step: charge (remote) commits with confirm (local).
    script = Script()
    seen: list[tuple[str, str | None, Any]] = []
    base = order_saga(script, writes_first=writes_first)

    async def hook(session: Any, t: SagaTransition) -> None:
        await log_transition(session, t)
        # The transaction object itself (kept alive here, so never confused with another).
        seen.append((t.event.value, t.step, session.sync_session.get_transaction()))

    runner = runners(SagaDefinition(base.name, base.steps, on_transition=hook))
    result = await runner.run("order", "o1", {})
    assert result.status is SagaStatus.COMPLETED
    tx = {step: txid for _, step, txid in seen}
    assert tx["charge"] is tx["confirm"]
    assert tx["create"] is not tx["charge"]
    assert ("step_completed", "RUNNING", "charge") in await saga_log(db, "o1")


@pytest.mark.parametrize("writes_first", [False, True])
async def test_a_failing_local_step_still_records_the_remote_step_before_it(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    script = Script()
    runner = runners(order_saga(script, confirm_fails=True, writes_first=writes_first))
    with pytest.raises(FailedPrecondition, match="expired"):
        await runner.run("order", "o1", {})
    log = await saga_log(db, "o1")
    # charge's completion was recorded on its own once confirm failed, then undone.
    assert ("step_completed", "RUNNING", "charge") in log
    assert script.steps(COMPENSATE) == ["charge"]
    assert [c.step for c in script.calls].count("charge") == 2  # forward once, undo once


def chained_saga(
    script: Script, *, finish_fails: bool = False, writes_first: bool
) -> SagaDefinition:
    """pay (remote), then three local steps in a row: record, noop (nothing), finish."""

    async def record(ctx: SagaContext) -> dict[str, Any]:
        await ctx.tx.execute(
            text("INSERT INTO orders (id, status) VALUES (:i, 'PAID')"), {"i": ctx.saga_id}
        )
        return {"recorded": True}

    async def undo(ctx: SagaContext) -> None:
        await ctx.tx.execute(
            text("UPDATE orders SET status = 'UNDONE' WHERE id = :i"), {"i": ctx.saga_id}
        )

    async def noop(ctx: SagaContext) -> None:
        return None

    async def finish(ctx: SagaContext) -> None:
        assert ctx.data["recorded"]  # what the step before it returned, in this transaction
        await ctx.tx.execute(
            text("UPDATE orders SET status = 'DONE' WHERE id = :i"), {"i": ctx.saga_id}
        )
        if finish_fails:
            raise FailedPrecondition("cannot finish")

    kw: dict[str, Any] = {"local": True, "retry": FAST_RETRY, "writes_first": writes_first}
    return SagaDefinition(
        "chained",
        [
            script.step("pay", retry=FAST_RETRY),
            Step("record", record, undo, **kw),
            Step("noop", noop, **kw),
            Step("finish", finish, **kw),
        ],
        on_transition=log_transition,
    )


@pytest.mark.parametrize("writes_first", [False, True])
async def test_consecutive_local_steps_commit_in_one_transaction(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    # One commit for record, noop and finish (and pay, recorded with the first of them),
    # every transition still told to the hook, in order.
    seen: list[tuple[str, str | None, Any]] = []
    base = chained_saga(Script(), writes_first=writes_first)

    async def hook(session: Any, t: SagaTransition) -> None:
        await log_transition(session, t)
        seen.append((t.event.value, t.step, session.sync_session.get_transaction()))

    runner = runners(SagaDefinition(base.name, base.steps, on_transition=hook))
    result = await runner.run("chained", "c1", {})
    assert result.status is SagaStatus.COMPLETED and result.data["recorded"] is True
    assert [(event, step) for event, step, _ in seen] == [
        ("created", None),
        ("step_completed", "pay"),
        ("step_completed", "record"),
        ("step_completed", "noop"),
        ("step_completed", "finish"),
    ]
    assert len({id(tx) for _, step, tx in seen if step is not None}) == 1
    assert await order_status(db, "c1") == "DONE"
    row = await runner.store.get("c1")
    assert row is not None and (row.status, row.completed) == (SagaStatus.COMPLETED, 4)


@pytest.mark.parametrize("writes_first", [False, True])
async def test_a_chained_step_that_fails_leaves_the_steps_before_it_as_run_alone(
    db: Db, runners: Runners, writes_first: bool
) -> None:
    # finish fails in the shared transaction: all of it rolls back, record and noop run
    # again, committed on their own, and finish fails as if nothing had been chained:
    # the failure is finish's, its UPDATE is gone, record and pay are undone.
    script = Script()
    runner = runners(chained_saga(script, finish_fails=True, writes_first=writes_first))
    with pytest.raises(FailedPrecondition, match="cannot finish"):
        await runner.run("chained", "c1", {})
    row = await runner.store.get("c1")
    assert row is not None and row.status is SagaStatus.COMPENSATED
    assert row.failure is not None and row.failure.step == "finish"
    assert await order_status(db, "c1") == "UNDONE"
    log = await saga_log(db, "c1")
    assert ("step_completed", "RUNNING", "record") in log
    assert ("step_completed", "RUNNING", "noop") in log
    assert ("step_completed", "RUNNING", "finish") not in log
    assert script.steps(COMPENSATE) == ["pay"]


async def test_a_write_first_local_step_rolls_back_when_the_lease_was_lost(
    db: Db, runners: Runners
) -> None:
    # No lock statement before the action: the conditional UPDATE at its end finds the
    # row taken over and the whole transaction, the action's INSERT too, rolls back.
    async def steal(ctx: SagaContext) -> None:
        async with db.sessions.begin() as s:
            await s.execute(
                text("UPDATE mesh_saga SET owner = 'thief' WHERE saga_id = :i"), {"i": ctx.saga_id}
            )

    async def create(ctx: SagaContext) -> None:
        await ctx.tx.execute(
            text("INSERT INTO orders (id, status) VALUES (:i, 'PENDING')"), {"i": ctx.saga_id}
        )

    runner = runners(
        SagaDefinition(
            "stolen",
            [Step("steal", steal), Step("create", create, local=True, writes_first=True)],
        )
    )
    with pytest.raises(SagaBusy):
        await runner.run("stolen", "s1", {})
    assert await order_status(db, "s1") is None
    row = await runner.store.get("s1")
    assert row is not None and row.completed == 0


# -- a drive is its own task ----------------------------------------------------------------


async def test_a_drive_started_in_a_handler_outlives_the_caller_s_deadline(
    db: Db, runners: Runners
) -> None:
    """A saga started in a gRPC handler whose caller gives up (its deadline) still
    completes: the drive does not carry the incoming deadline (with it, every later call
    failed at once, the compensation too, and the saga parked; found by an audit)."""
    back = await start_ping_server("back")
    back_channel = grpc.aio.insecure_channel(
        back.address, interceptors=for_channel(DeadlineClientInterceptor(5.0))
    )
    upstream = ping_pb2_grpc.PingServiceStub(back_channel)

    async def reserve(ctx: SagaContext) -> None:
        await upstream.Ping(ping_pb2.PingRequest(value="reserve"))

    async def release(ctx: SagaContext) -> None:
        await upstream.Ping(ping_pb2.PingRequest(value="release"))

    async def charge(ctx: SagaContext) -> None:  # slow, and well within its own 5 s
        await upstream.Ping(ping_pb2.PingRequest(value="charge", sleep_ms=600))

    place = SagaDefinition(
        "place", [Step("reserve", reserve, release, retry=FAST_RETRY), Step("charge", charge)]
    )
    runner = runners(place)

    class Front(ping_pb2_grpc.PingServiceServicer):
        async def Ping(self, request: Any, context: Any) -> Any:
            await runner.run("place", request.value, {})  # as a shop handler does
            return ping_pb2.PingResponse(value="ok")

    front = grpc.aio.server(interceptors=[DeadlineServerInterceptor()])
    ping_pb2_grpc.add_PingServiceServicer_to_server(Front(), front)  # type: ignore[no-untyped-call]
    port = front.add_insecure_port("127.0.0.1:0")
    await front.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await ping_pb2_grpc.PingServiceStub(channel).Ping(
                    ping_pb2.PingRequest(value="saga-1"), timeout=0.3
                )
        assert gone.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        async def finished() -> Any:
            state = await runner.store.get("saga-1")
            return state if state is not None and not state.status.unfinished else None

        state = await eventually(finished, 10, "the saga to finish")
        assert state.status is SagaStatus.COMPLETED, state.failure
    finally:
        await front.stop(None)
        await back_channel.close(None)
        await back.stop(None)


async def test_a_step_cancelled_from_outside_its_drive_is_a_transient_failure(
    runners: Runners, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that awaits something another task cancelled raises CancelledError without
    its drive being cancelled: that is StepCancelled (UNAVAILABLE), retried and then
    compensated, and run() raises it (the CancelledError used to end the drive silently:
    no failure recorded, nothing undone, the lease kept)."""
    undone: list[str] = []
    tries: list[int] = []

    async def reserve(ctx: SagaContext) -> None:
        return None

    async def release(ctx: SagaContext) -> None:
        undone.append(ctx.step)

    async def charge(ctx: SagaContext) -> None:
        tries.append(ctx.attempt)
        shared = asyncio.get_running_loop().create_future()
        shared.cancel()  # someone else's
        await shared

    place = SagaDefinition(
        "place",
        [
            Step("reserve", reserve, release, retry=FAST_RETRY),
            Step("charge", charge, retry=FAST_RETRY),
        ],
    )
    runner = runners(place)
    with pytest.raises(StepCancelled) as err:
        await runner.run("place", "s1", {})
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert tries == [1, 2, 3] and undone == ["reserve"]
    state = await runner.store.get("s1")
    assert state is not None and state.status is SagaStatus.COMPENSATED
    assert state.failure is not None and state.failure.code == "UNAVAILABLE"

"""The saga runner: drives sagas step by step, compensates, recovers, parks.

Each saga is driven by one asyncio task per process (`_tasks`, keyed by saga
id: a live `run()` and `recover()` never drive the same saga twice here) and by
one runner across processes (the row's lease: `owner` + `lease_until`, renewed
by a heartbeat while the task lives; every write is conditional on it).

A drive runs in its own task, shielded from the caller: a client that goes
away mid-saga does not leave it half done; it still ends COMPLETED,
COMPENSATED or PARKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from base.tasks import being_cancelled
from interceptors.context import incoming_deadline
from mesh.saga.classify import Classifier, default_classifier, failure_of, is_transient_db_error
from mesh.saga.errors import SagaBusy, SagaConflict, SagaFailed, SagaInterrupted, StepCancelled
from mesh.saga.metrics import SagaMetrics
from mesh.saga.model import (
    ErrorKind,
    Phase,
    SagaContext,
    SagaDefinition,
    SagaResult,
    SagaState,
    SagaStatus,
    SagaTransition,
    Step,
    StepRetry,
    TransitionEvent,
)
from mesh.saga.state import (
    Compensate,
    Forward,
    compensation_failed,
    copy_data,
    new_saga,
    next_move,
    parked,
    step_compensated,
    step_done,
    step_failed,
    unparked,
)
from mesh.saga.store import LeaseLost, SagaStore

log = logging.getLogger(__name__)

DEFAULT_COMPENSATION_RETRY = StepRetry(max_attempts=8, initial_backoff_s=0.1, max_backoff_s=10.0)
# Transactions recording a transition, retried on transient database errors.
DEFAULT_STORE_RETRY = StepRetry(max_attempts=6, initial_backoff_s=0.05, max_backoff_s=1.0)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a drive task ends with: the last state, and the error for `run()` to raise."""

    state: SagaState | None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """A remote step's completion not yet committed: it commits in the transaction of
    the local step that follows (one transaction fewer per remote step)."""

    before: SagaState  # the state the row holds
    step: str


class _ActionError(Exception):
    """A local step's action failed inside the transaction (unwrapped by the caller)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class _ChainBroken(Exception):
    """A local step run in the transaction of the one before it failed: everything rolls
    back and the steps run again one transaction each (cause chained)."""


async def _uncancelled(step: Step, action: Awaitable[T]) -> T:
    """`action`'s result; a CancelledError out of it that does not cancel this drive
    becomes StepCancelled, a step failure the drive handles like any other."""
    try:
        return await action
    except asyncio.CancelledError:
        if being_cancelled():
            raise
        raise StepCancelled(f"step {step.name} was cancelled (not by its saga)") from None


class _StoreFailure(Exception):
    """Recording a transition failed (cause chained): the drive stops, the saga waits."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_owner() -> str:
    """Unique per runner. Pass a stable id (e.g. the service instance id) instead to let a
    restarted instance take its own sagas back at once rather than after lease expiry."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SagaRunner:
    """Runs the sagas of `definitions` (keyed by name) against `store`."""

    def __init__(
        self,
        store: SagaStore,
        definitions: Mapping[str, SagaDefinition],
        metrics_registry: CollectorRegistry,
        *,
        owner: str | None = None,
        classify: Classifier = default_classifier,
        compensation_retry: StepRetry = DEFAULT_COMPENSATION_RETRY,
        lease_s: float = 30.0,
        recovery_concurrency: int = 16,
        store_retry: StepRetry = DEFAULT_STORE_RETRY,
    ) -> None:
        for key, definition in definitions.items():
            if key != definition.name:
                raise ValueError(f"definition {definition.name!r} registered as {key!r}")
        if lease_s <= 0 or recovery_concurrency < 1:
            raise ValueError("lease_s must be > 0 and recovery_concurrency >= 1")
        self.store = store
        self.definitions = dict(definitions)
        self.metrics = SagaMetrics(metrics_registry)
        self.owner = owner or default_owner()
        self.classify = classify
        self.compensation_retry = compensation_retry
        self.store_retry = store_retry
        self.lease_s = lease_s
        self._recovery_slots = asyncio.Semaphore(recovery_concurrency)
        self._rng = random.Random()
        self._tasks: dict[str, asyncio.Task[_Outcome]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._recovery_loop: asyncio.Task[None] | None = None

    # -- public API --------------------------------------------------------------

    async def run(self, name: str, saga_id: str, data: Mapping[str, Any]) -> SagaResult:
        """Run saga `saga_id` of definition `name` to its end.

        Returns the result when every step completed. When a step fails, the
        completed steps are compensated first, then the step's own exception is
        raised. Running an existing saga id again does not start a new saga
        (`data` is ignored): a finished one returns its result or raises
        `SagaFailed` with the recorded failure; an unfinished one is resumed
        here if no other runner holds it, else `SagaBusy`."""
        definition = self._definition(name)
        task = self._tasks.get(saga_id)
        if task is None:
            task = self._spawn(saga_id, self._start(definition, saga_id, data))
        outcome = await asyncio.shield(task)
        return self._result(name, saga_id, outcome)

    async def recover(self) -> int:
        """Resume every unfinished saga that no live runner holds; returns how many.

        Each is driven to a terminal state (or parked) before this returns:
        forward ones re-run their in-flight step, compensating ones continue
        backward. Sagas of names this runner does not know are left alone."""
        now = _now_ms()
        ids = await self.store.claim(self.owner, list(self.definitions), self._lease_until(), now)
        tasks = [
            self._spawn(saga_id, self._recover_one(saga_id))
            for saga_id in ids
            if saga_id not in self._tasks
        ]
        # Shielded: cancelling recover() (shutdown) lets close() drain the drives.
        results = await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("saga recovery failed: %r", r, exc_info=r)
        await self._refresh_parked_gauge()
        return sum(1 for r in results if isinstance(r, _Outcome) and r.state is not None)

    async def parked(self, limit: int = 1000) -> list[SagaState]:
        """Parked sagas (compensation gave up), oldest first."""
        return await self.store.find([SagaStatus.PARKED], limit=limit)

    async def retry_parked(self, saga_id: str | None = None) -> int:
        """Resume compensating parked sagas (one, or all); returns how many were resumed.
        Each is driven to COMPENSATED, or parked again if its compensation still fails."""
        if saga_id is not None:
            found = await self.store.get(saga_id)
            states = [found] if found is not None else []
        else:
            states = await self.parked()
        tasks = [
            self._spawn(s.saga_id, self._unpark(self.definitions[s.name], s))
            for s in states
            if s.status is SagaStatus.PARKED
            and s.name in self.definitions
            and s.saga_id not in self._tasks
        ]
        results = await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("saga retry_parked failed: %r", r, exc_info=r)
        return sum(1 for r in results if isinstance(r, _Outcome) and r.state is not None)

    def start(self, recover_every_s: float = 30.0) -> None:
        """Call `recover()` now and every `recover_every_s` in the background (takes over
        sagas of dead instances once their leases expire)."""
        if self._recovery_loop is None or self._recovery_loop.done():
            self._recovery_loop = asyncio.create_task(
                self._recover_forever(recover_every_s), name=f"saga-recovery-{self.owner}"
            )

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop recovering; give running sagas `grace_s` to finish, then cancel them and
        release their leases so another runner can resume them at once."""
        loop_task, self._recovery_loop = self._recovery_loop, None
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        tasks = dict(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            cut = [sid for sid, t in tasks.items() if t in pending]
            if cut:
                with contextlib.suppress(Exception):
                    await self.store.release(self.owner, cut)
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    # -- tasks and leases ---------------------------------------------------------

    def _definition(self, name: str) -> SagaDefinition:
        try:
            return self.definitions[name]
        except KeyError:
            raise ValueError(f"unknown saga definition {name!r}") from None

    def _lease_until(self) -> int:
        return _now_ms() + int(self.lease_s * 1000)

    def _spawn(self, saga_id: str, coro: Coroutine[Any, Any, _Outcome]) -> asyncio.Task[_Outcome]:
        # Detached from the caller's deadline (the trace stays): a drive started in a
        # gRPC handler outlives the call, and with the incoming deadline its calls failed
        # at once once the client had gone, and the saga parked (found by an audit).
        context = contextvars.copy_context()
        context.run(incoming_deadline.set, None)
        task = asyncio.create_task(coro, name=f"saga-{saga_id}", context=context)
        self._tasks[saga_id] = task

        def done(t: asyncio.Task[_Outcome]) -> None:
            if self._tasks.get(saga_id) is t:
                del self._tasks[saga_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("saga %s: drive crashed", saga_id, exc_info=t.exception())

        task.add_done_callback(done)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name=f"saga-lease-{self.owner}")
        return task

    async def _beat(self) -> None:
        # Renew the leases of every saga this process drives, while there are any.
        while self._tasks:
            await asyncio.sleep(self.lease_s / 3)  # renewal period, not synchronisation
            ids = list(self._tasks)
            if not ids:
                break
            try:
                await self.store.renew(self.owner, ids, self._lease_until())
            except Exception as exc:
                log.warning("saga lease renewal failed: %r", exc)

    async def _recover_forever(self, every_s: float) -> None:
        while True:
            try:
                n = await self.recover()
                if n:
                    log.info("saga recovery resumed %d saga(s)", n)
            except Exception as exc:
                log.error("saga recovery round failed: %r", exc)
            await asyncio.sleep(every_s)  # period between rounds

    async def _refresh_parked_gauge(self) -> None:
        with contextlib.suppress(Exception):
            counts = await self.store.count(SagaStatus.PARKED)
            for name in self.definitions:
                self.metrics.parked.labels(name).set(counts.get(name, 0))

    # -- entry points of a drive task ----------------------------------------------

    async def _start(
        self, definition: SagaDefinition, saga_id: str, data: Mapping[str, Any]
    ) -> _Outcome:
        state = new_saga(saga_id, definition.name, data, _now_ms())

        async def create() -> bool:
            async with self.store.sessions.begin() as session:
                created = await self.store.insert(session, state, self.owner, self._lease_until())
                if created and definition.on_transition is not None:
                    await definition.on_transition(
                        session, SagaTransition(TransitionEvent.CREATED, None, None, state)
                    )
            return created

        try:
            created = await self._with_db_retry(saga_id, create)
        except SQLAlchemyError as exc:
            interrupted = SagaInterrupted(f"saga {saga_id}: store unavailable; retry later")
            interrupted.__cause__ = exc
            return _Outcome(None, interrupted)
        except Exception as exc:  # the hook refused (e.g. AlreadyExists): nothing recorded
            return _Outcome(None, exc)
        if created:
            self.metrics.started.labels(definition.name).inc()
            return await self._drive(definition, state)
        return await self._rerun(definition, saga_id)

    async def _rerun(self, definition: SagaDefinition, saga_id: str) -> _Outcome:
        """`run()` of a saga id that exists: replay its end, or resume it if nobody holds it."""
        try:
            existing = await self.store.get(saga_id)
            if existing is None:  # purged between the insert and this read
                return _Outcome(None, SagaBusy(f"saga {saga_id} changed concurrently; retry"))
            if existing.name != definition.name:
                return _Outcome(existing, SagaConflict(f"saga id {saga_id} is a {existing.name}"))
            if not existing.status.unfinished:
                return _Outcome(existing)
            claimed = await self.store.claim(
                self.owner, [definition.name], self._lease_until(), _now_ms(), saga_id=saga_id
            )
            fresh = await self.store.get(saga_id) if claimed else None
        except Exception as exc:
            interrupted = SagaInterrupted(f"saga {saga_id}: store unavailable; retry later")
            interrupted.__cause__ = exc
            return _Outcome(None, interrupted)
        if fresh is None:
            return _Outcome(existing, SagaBusy(f"saga {saga_id} is running elsewhere"))
        if not fresh.status.unfinished:  # finished by its holder just before our claim
            return _Outcome(fresh)
        return await self._drive(definition, fresh)

    async def _recover_one(self, saga_id: str) -> _Outcome:
        async with self._recovery_slots:
            state = await self.store.get(saga_id)
            if state is None or not state.status.unfinished:
                return _Outcome(None)
            definition = self.definitions[state.name]
            self.metrics.recovered.labels(state.name).inc()
            log.info("saga %s/%s: recovering (%s at step %d)", state.name, saga_id,
                     state.status.value, state.completed)  # fmt: skip
            return await self._drive(definition, state)

    async def _unpark(self, definition: SagaDefinition, state: SagaState) -> _Outcome:
        after = unparked(state, _now_ms())
        try:
            await self._commit(definition, state, after, TransitionEvent.UNPARKED, None, True)
        except _StoreFailure as f:
            if isinstance(f.__cause__, LeaseLost):  # someone else unparked it first
                return _Outcome(None)
            raise
        self.metrics.parked.labels(definition.name).dec()
        log.info("saga %s/%s: unparked, compensating again", definition.name, state.saga_id)
        return await self._drive(definition, after)

    def _result(self, name: str, saga_id: str, outcome: _Outcome) -> SagaResult:
        if outcome.error is not None:
            raise outcome.error
        state = outcome.state
        if state is None:
            raise SagaBusy(f"saga {saga_id} changed concurrently; retry")
        if state.name != name:
            raise SagaConflict(f"saga id {saga_id} is a {state.name}")
        if state.status is SagaStatus.COMPLETED:
            return SagaResult(state.saga_id, state.name, state.status, state.data)
        if state.failure is not None and not state.status.unfinished:
            raise SagaFailed(saga_id, state.failure)
        raise SagaBusy(f"saga {saga_id} is running elsewhere")

    # -- the drive loop ------------------------------------------------------------

    async def _drive(self, definition: SagaDefinition, state: SagaState) -> _Outcome:
        error: BaseException | None = None
        unrecorded: _Unrecorded | None = None
        try:
            while True:
                move = next_move(state, definition)
                if isinstance(move, Forward):
                    state, failed, unrecorded = await self._forward(
                        definition, state, move.index, unrecorded
                    )
                    error = failed or error
                elif isinstance(move, Compensate):
                    state = await self._compensate(definition, state, move.index)
                else:
                    break
        except _StoreFailure as f:
            return await self._interrupted(state, error, f)
        if state.status is SagaStatus.COMPLETED:
            self.metrics.completed.labels(definition.name).inc()
        elif state.status is SagaStatus.COMPENSATED:
            self.metrics.compensated.labels(definition.name).inc()
        return _Outcome(state, error)

    async def _interrupted(
        self, state: SagaState, error: BaseException | None, failure: _StoreFailure
    ) -> _Outcome:
        cause = failure.__cause__
        if isinstance(cause, LeaseLost):
            log.warning("saga %s/%s: taken over by another runner; stopping here",
                        state.name, state.saga_id)  # fmt: skip
            return _Outcome(state, SagaBusy(f"saga {state.saga_id} is running elsewhere"))
        log.error("saga %s/%s: cannot record progress, left for recovery: %r",
                  state.name, state.saga_id, cause)  # fmt: skip
        # Best effort: let any instance resume it now (ours will via recover() anyway).
        with contextlib.suppress(Exception):
            await self.store.release(self.owner, [state.saga_id])
        interrupted = SagaInterrupted(f"saga {state.saga_id} interrupted; retry later")
        interrupted.__cause__ = cause
        return _Outcome(state, interrupted)

    def _context(self, state: SagaState, step: Step, phase: Phase, attempt: int) -> SagaContext:
        return SagaContext(
            saga_id=state.saga_id,
            saga_name=state.name,
            step=step.name,
            phase=phase,
            data=copy_data(state.data),
            attempt=attempt,
            failure=state.failure if phase is Phase.COMPENSATE else None,
        )

    async def _forward(
        self,
        definition: SagaDefinition,
        state: SagaState,
        index: int,
        unrecorded: _Unrecorded | None = None,
    ) -> tuple[SagaState, BaseException | None, _Unrecorded | None]:
        """Run step `index` (retrying transient errors); returns the state, the step's
        error if it failed for good (then the state is COMPENSATING/COMPENSATED), and
        whether the state is still to be recorded (a remote step followed by a local
        one: `unrecorded` is then passed to that local step, whose transaction records
        both; `unrecorded` is only ever given to a local step)."""
        step = definition.steps[index]
        attempt = 0
        while True:
            attempt += 1
            ctx = self._context(state, step, Phase.FORWARD, attempt)
            try:
                if step.local:
                    after = await _uncancelled(
                        step, self._local(definition, state, step, ctx, unrecorded)
                    )
                    return after, None, None
                update = await _uncancelled(step, step.action(ctx))
            except _StoreFailure:
                raise
            except Exception as raised:
                exc = raised.error if isinstance(raised, _ActionError) else raised
                if isinstance(raised, _ActionError):
                    # _local recorded the remote step before it (if any) once its
                    # action failed: the row now holds `state`.
                    unrecorded = None
                kind = self.classify(exc)
                if kind is ErrorKind.TRANSIENT and attempt < step.retry.max_attempts:
                    self.metrics.step_retries.labels(definition.name, step.name, "forward").inc()
                    await asyncio.sleep(step.retry.delay(attempt, self._rng))  # backoff
                    continue
                # A remote step that timed out may have taken effect: undo it too.
                effect = (
                    not step.local
                    and kind is ErrorKind.TRANSIENT
                    and step.compensate_after_transient_failure
                )
                failed = await self._fail(definition, state, step, kind, exc, effect)
                return failed, exc, None
            try:
                after = step_done(state, definition, update, _now_ms())
            except (TypeError, ValueError) as exc:
                # The step did its work but returned data we cannot store: undo it.
                log.error("saga %s/%s: step %s returned non-JSON data: %r",
                          state.name, state.saga_id, step.name, exc)  # fmt: skip
                failed = await self._fail(definition, state, step, ErrorKind.BUSINESS, exc, True)
                return failed, exc, None
            move = next_move(after, definition)
            if isinstance(move, Forward) and definition.steps[move.index].local:
                # Recorded by the next (local) step's transaction: a crash before it
                # commits re-runs this step with the same idempotency key, exactly as a
                # crash between the call and its own commit would.
                return after, None, _Unrecorded(state, step.name)
            await self._commit(definition, state, after, TransitionEvent.STEP_COMPLETED, step.name)
            return after, None, None

    async def _fail(
        self,
        definition: SagaDefinition,
        state: SagaState,
        step: Step,
        kind: ErrorKind,
        exc: Exception,
        effect_possible: bool,
    ) -> SagaState:
        failure = failure_of(step.name, kind, exc)
        after = step_failed(
            state, definition, failure, effect_possible=effect_possible, now_ms=_now_ms()
        )
        log.warning("saga %s/%s: step %s failed (%s %s): %s; compensating",
                    state.name, state.saga_id, step.name, kind.value, failure.code,
                    failure.detail)  # fmt: skip
        await self._commit(definition, state, after, TransitionEvent.STEP_FAILED, step.name)
        return after

    async def _compensate(
        self, definition: SagaDefinition, state: SagaState, index: int
    ) -> SagaState:
        """Compensate step `index`, retrying with backoff; parks the saga after the policy's
        attempts (counted in the row, so they add up across restarts)."""
        step = definition.steps[index]
        compensation = step.compensation
        assert compensation is not None  # next_move only stops at compensable steps
        policy = step.compensation_retry or self.compensation_retry
        while True:
            ctx = self._context(state, step, Phase.COMPENSATE, state.attempts + 1)
            try:
                if step.local:
                    return await _uncancelled(step, self._local(definition, state, step, ctx))
                update = await _uncancelled(step, compensation(ctx))
                after = step_compensated(state, definition, update, _now_ms())
                await self._commit(
                    definition, state, after, TransitionEvent.STEP_COMPENSATED, step.name
                )
                return after
            except _StoreFailure:
                raise
            except Exception as raised:
                exc = raised.error if isinstance(raised, _ActionError) else raised
                failed = compensation_failed(state, repr(exc)[:2000], _now_ms())
                if failed.attempts >= policy.max_attempts:
                    return await self._park(definition, state, failed, step, exc)
                self.metrics.step_retries.labels(definition.name, step.name, "compensate").inc()
                log.warning("saga %s/%s: compensation of %s failed (attempt %d/%d): %r",
                            state.name, state.saga_id, step.name, failed.attempts,
                            policy.max_attempts, exc)  # fmt: skip
                await self._commit(
                    definition, state, failed, TransitionEvent.COMPENSATION_FAILED, step.name
                )
                state = failed
                await asyncio.sleep(policy.delay(failed.attempts, self._rng))  # backoff

    async def _park(
        self,
        definition: SagaDefinition,
        state: SagaState,
        failed: SagaState,
        step: Step,
        exc: Exception,
    ) -> SagaState:
        after = parked(failed, _now_ms())
        await self._commit(definition, state, after, TransitionEvent.PARKED, step.name)
        self.metrics.parked_total.labels(definition.name).inc()
        self.metrics.parked.labels(definition.name).inc()
        log.error(
            "saga %s/%s PARKED: compensation of step %s failed %d times, last error %r;"
            " original failure: %s; needs attention (retry_parked() resumes it)",
            definition.name,
            state.saga_id,
            step.name,
            after.attempts,
            exc,
            after.failure.detail if after.failure else "-",
        )
        return after

    # -- transactions ----------------------------------------------------------------

    async def _local(
        self,
        definition: SagaDefinition,
        state: SagaState,
        step: Step,
        ctx: SagaContext,
        unrecorded: _Unrecorded | None = None,
        *,
        chain: bool = True,
    ) -> SagaState:
        """A local step or compensation: its writes, the saga row and the transition hook
        commit in one transaction. An action error rolls all back (raised as _ActionError).

        Forward, with `chain`, the local steps that directly follow run in the same
        transaction (`_chain`): one commit for the run of them. If one of those fails,
        everything rolls back and this step runs again alone (`chain=False`); the drive
        loop then reaches the failing step as if nothing had been chained.

        With `unrecorded` (the remote step before it completed into `state` but was not
        committed), the transaction first records that step (its conditional UPDATE also
        checks ownership and takes the write lock, as `lock` does); if the action fails,
        that step is recorded on its own before the error is raised.

        A forward step that `writes_first` skips that first statement: its action takes
        the write lock, and one conditional UPDATE at the end moves the row from what it
        holds (`unrecorded.before` or `state`) to the step's end, checking ownership;
        both transitions' hooks still run in the transaction. A lost lease then rolls
        the action back with everything else, as before."""
        forward = ctx.phase is Phase.FORWARD
        action = step.action if forward else step.compensation
        assert action is not None
        event = TransitionEvent.STEP_COMPLETED if forward else TransitionEvent.STEP_COMPENSATED
        writing: list[SagaState] = []
        lock_first = not (forward and step.writes_first)
        # What the saga row holds when the step's own transition is written.
        held = state if lock_first or unrecorded is None else unrecorded.before

        async def attempt() -> SagaState:
            async with self.store.sessions.begin() as session:
                if lock_first and unrecorded is None:
                    await self.store.lock(session, state, self.owner, self._lease_until())
                elif lock_first and unrecorded is not None:
                    await self._write(session, definition, unrecorded.before, state,
                                      TransitionEvent.STEP_COMPLETED, unrecorded.step)  # fmt: skip
                try:
                    update = await action(replace(ctx, session=session))
                    if forward:
                        after = step_done(state, definition, update, _now_ms())
                    else:
                        after = step_compensated(state, definition, update, _now_ms())
                except Exception as exc:
                    raise _ActionError(exc) from exc
                if not lock_first and unrecorded is not None:
                    await self._hook(definition, session, unrecorded.before, state,
                                     TransitionEvent.STEP_COMPLETED, unrecorded.step)  # fmt: skip
                before, name = state, step.name
                if forward and chain:
                    before, name, after = await self._chain(
                        session, definition, before, name, after
                    )
                writing.append(after)
                await self._write(session, definition, before, after, event, name, held=held)
            return after

        try:
            return await self._with_db_retry(state.saga_id, attempt)
        except _ChainBroken as broken:
            log.info("saga %s/%s: a chained step failed (%r); running the steps one"
                     " transaction each", state.name, state.saga_id, broken.__cause__)  # fmt: skip
            return await self._local(definition, state, step, ctx, unrecorded, chain=False)
        except _ActionError:
            if unrecorded is not None:
                await self._commit(definition, unrecorded.before, state,
                                   TransitionEvent.STEP_COMPLETED, unrecorded.step)  # fmt: skip
            raise
        except LeaseLost as exc:
            if writing and await self._landed(writing[-1]):
                return writing[-1]
            raise _StoreFailure(repr(exc)) from exc
        except Exception as exc:
            raise _StoreFailure(repr(exc)) from exc

    async def _chain(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        before: SagaState,
        name: str,
        state: SagaState,
    ) -> tuple[SagaState, str, SagaState]:
        """Run, in `session`, the forward local steps that directly follow step `name`
        (which took the saga from `before` to `state` in this transaction, its
        transition not yet written); each transition but the last gets its hook here.
        Returns the transition left for the caller to write with the saga row (state
        before the last step, its name, the state after it). Any error of a chained
        step raises _ChainBroken: the transaction rolls back whole."""
        while True:
            move = next_move(state, definition)
            if not isinstance(move, Forward) or not definition.steps[move.index].local:
                return before, name, state
            nxt = definition.steps[move.index]
            await self._hook(definition, session, before, state,
                             TransitionEvent.STEP_COMPLETED, name)  # fmt: skip
            ctx = self._context(state, nxt, Phase.FORWARD, 1)
            try:
                update = await nxt.action(replace(ctx, session=session))
                after = step_done(state, definition, update, _now_ms())
            except Exception as exc:
                raise _ChainBroken() from exc
            before, name, state = state, nxt.name, after

    async def _commit(
        self,
        definition: SagaDefinition,
        before: SagaState,
        after: SagaState,
        event: TransitionEvent,
        step: str | None,
        take_over: bool = False,
    ) -> None:
        async def attempt() -> None:
            async with self.store.sessions.begin() as session:
                await self._write(session, definition, before, after, event, step, take_over)

        try:
            await self._with_db_retry(before.saga_id, attempt)
        except LeaseLost as exc:
            if not await self._landed(after):
                raise _StoreFailure(repr(exc)) from exc
        except Exception as exc:
            raise _StoreFailure(repr(exc)) from exc

    async def _with_db_retry(self, saga_id: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` (one whole transaction) again on a transient database error (SQLite
        busy, dropped connection, PostgreSQL deadlock): it rolled back, so nothing is half
        applied. Other errors propagate at once."""
        failures = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if isinstance(exc, _ActionError) or not is_transient_db_error(exc):
                    raise
                failures += 1
                if failures >= self.store_retry.max_attempts:
                    raise
                log.warning("saga %s: database error, retrying the transaction: %r",
                            saga_id, exc)  # fmt: skip
                await asyncio.sleep(self.store_retry.delay(failures, self._rng))  # backoff

    async def _landed(self, after: SagaState) -> bool:
        """Whether a commit whose outcome was lost (then retried, finding the row moved on)
        had in fact written `after`: its updated_at is this runner's own stamp."""
        try:
            row = await self.store.get(after.saga_id)
        except Exception:
            return False
        return row is not None and (
            row.status,
            row.completed,
            row.attempts,
            row.updated_at_ms,
        ) == (after.status, after.completed, after.attempts, after.updated_at_ms)

    async def _write(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        before: SagaState,
        after: SagaState,
        event: TransitionEvent,
        step: str | None,
        take_over: bool = False,
        *,
        held: SagaState | None = None,
    ) -> None:
        """Record `before` → `after`; the row's conditional UPDATE expects `held` (what
        the row holds, when an earlier transition of this transaction was not written)
        or else `before`."""
        await self.store.write(
            session, held or before, after, self.owner, self._lease_until(), take_over=take_over
        )
        await self._hook(definition, session, before, after, event, step)

    async def _hook(
        self,
        definition: SagaDefinition,
        session: AsyncSession,
        before: SagaState,
        after: SagaState,
        event: TransitionEvent,
        step: str | None,
    ) -> None:
        if definition.on_transition is not None:
            await definition.on_transition(
                session, SagaTransition(event, step, before.status, after)
            )

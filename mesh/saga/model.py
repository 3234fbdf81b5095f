"""The saga vocabulary: definitions (steps, retry policies), persisted state, contexts, results.

Everything here is plain data; the state machine is in `mesh.saga.state`, the
database in `mesh.saga.store`, the driving loop in `mesh.saga.runner`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from base.backoff import backoff_delay


class SagaStatus(StrEnum):
    """Stored in the `status` column; RUNNING and COMPENSATING are the unfinished ones."""

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    # Compensation kept failing: needs an operator (or `retry_parked()`); never dropped.
    PARKED = "PARKED"

    @property
    def unfinished(self) -> bool:
        return self in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class ErrorKind(StrEnum):
    """How a step failure is handled: BUSINESS compensates at once, TRANSIENT retries first."""

    BUSINESS = "business"
    TRANSIENT = "transient"


class Phase(StrEnum):
    FORWARD = "forward"
    COMPENSATE = "compensate"


@dataclass(frozen=True, slots=True)
class StepRetry:
    """Attempts and capped exponential backoff (jittered in [cap/2, cap])."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """Delay before the next attempt, after `failed_attempts` (>= 1) failures
        (the shared formula, base/backoff.py)."""
        return backoff_delay(
            failed_attempts - 1, self.initial_backoff_s, self.max_backoff_s, self.multiplier, rng
        )


@dataclass(frozen=True, slots=True)
class SagaFailure:
    """Why a saga is compensating: the failed step and its error (persisted as JSON)."""

    step: str
    kind: ErrorKind
    # A grpc.StatusCode name ("FAILED_PRECONDITION"); INTERNAL for non-gRPC errors.
    code: str
    message: str
    # ServiceError.reason (ErrorInfo), "" otherwise.
    reason: str = ""
    # repr of the original exception, for operators (not sent to callers).
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "step": self.step,
            "kind": self.kind.value,
            "code": self.code,
            "message": self.message,
            "reason": self.reason,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SagaFailure:
        return cls(
            step=str(obj["step"]),
            kind=ErrorKind(obj["kind"]),
            code=str(obj["code"]),
            message=str(obj["message"]),
            reason=str(obj.get("reason", "")),
            detail=str(obj.get("detail", "")),
        )


@dataclass(frozen=True, slots=True)
class SagaState:
    """One saga row. `completed` counts forward steps done and not yet compensated:
    going forward the next step is `steps[completed]`; compensating, the next
    compensation is that of `steps[completed - 1]`."""

    saga_id: str
    name: str
    status: SagaStatus
    completed: int
    data: Mapping[str, Any]
    failure: SagaFailure | None = None
    # Failed attempts of the compensation now in progress (reset when it succeeds).
    attempts: int = 0
    last_error: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class SagaContext:
    """What a step's action or compensation receives."""

    saga_id: str
    saga_name: str
    step: str
    phase: Phase
    # A deep copy of the saga's data: steps return updates instead of mutating it.
    data: dict[str, Any]
    # 1-based attempt of this action within the current run (restarts count from 1).
    attempt: int
    # Set while compensating. When `failure.step == step` this step itself failed
    # with a transient error: its effect may or may not exist, so the compensation
    # must succeed when there is nothing to undo.
    failure: SagaFailure | None = None
    # Local steps only: the transaction that also records the step's progress.
    session: AsyncSession | None = None

    @property
    def idempotency_key(self) -> str:
        """Deterministic per (saga, step, phase): the same on every retry and after a restart."""
        suffix = "" if self.phase is Phase.FORWARD else ":compensate"
        return f"{self.saga_id}:{self.step}{suffix}"

    @property
    def tx(self) -> AsyncSession:
        """The step's transaction; only local steps have one."""
        if self.session is None:
            raise RuntimeError(f"step {self.step!r} is not local: no transaction")
        return self.session


StepAction = Callable[[SagaContext], Awaitable[Mapping[str, Any] | None]]


class TransitionEvent(StrEnum):
    CREATED = "created"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_COMPENSATED = "step_compensated"
    COMPENSATION_FAILED = "compensation_failed"
    PARKED = "parked"
    UNPARKED = "unparked"


@dataclass(frozen=True, slots=True)
class SagaTransition:
    """Passed to `SagaDefinition.on_transition` inside the transaction that records it."""

    event: TransitionEvent
    # The step concerned (None for CREATED and UNPARKED).
    step: str | None
    previous: SagaStatus | None
    # The state being written.
    saga: SagaState


TransitionHook = Callable[[AsyncSession, SagaTransition], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Step:
    """One saga step.

    `action` / `compensation` get a `SagaContext`; a returned mapping is merged
    into the saga's data in the transaction that records the step. Both must be
    idempotent by `ctx.idempotency_key` (they are re-run after a crash).
    `local` steps run inside that transaction (`ctx.tx`): their writes commit
    atomically with the saga's progress, so they need no idempotency of their own.
    """

    name: str
    action: StepAction
    compensation: StepAction | None = None
    # Forward retries, for TRANSIENT errors only.
    retry: StepRetry = field(default_factory=StepRetry)
    # Overrides the runner's compensation policy (attempts before parking).
    compensation_retry: StepRetry | None = None
    local: bool = False
    # A transient failure (deadline exceeded...) leaves the remote effect unknown:
    # compensate this step too. Its compensation must then accept "nothing to undo".
    compensate_after_transient_failure: bool = True
    # A local step whose forward action's first statement writes (INSERT/UPDATE/DELETE):
    # its transaction then starts with the action, and the saga row's conditional UPDATE
    # at its end (the ownership check) is the only saga statement. Without it the runner
    # first takes the write lock with a statement of its own: on SQLite a transaction that
    # reads first fails outright (busy, retried) when another writer commits meanwhile.
    writes_first: bool = False


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """A named, ordered list of steps. Changing the steps of a name with sagas still
    in flight breaks their recorded position: use a new name (e.g. "order.v2")."""

    name: str
    steps: Sequence[Step]
    on_transition: TransitionHook | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("saga name must not be empty")
        if not self.steps:
            raise ValueError(f"saga {self.name!r} has no steps")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"saga {self.name!r}: step names must be unique and non-empty")
        object.__setattr__(self, "steps", tuple(self.steps))


@dataclass(frozen=True, slots=True)
class SagaResult:
    """A completed saga: its final data (everything the steps returned)."""

    saga_id: str
    name: str
    status: SagaStatus
    data: Mapping[str, Any]

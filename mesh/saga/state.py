"""The saga state machine as pure functions: what to do next, and the state after each event.

    RUNNING ──step done──▶ RUNNING ... ──last step done──▶ COMPLETED
       │ step failed
       ▼
    COMPENSATING ──compensated──▶ ... ──first step compensated──▶ COMPENSATED
       │ compensation failed N times            ▲
       ▼                                        │
    PARKED ──retry_parked()──▶ COMPENSATING ────┘

Steps without a compensation are skipped when going backward: `completed`
always drops to the next step that has something to undo (or 0, COMPENSATED).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mesh.saga.model import SagaDefinition, SagaFailure, SagaState, SagaStatus


class SagaStateError(RuntimeError):
    """A stored state that does not fit its definition (e.g. steps removed under a live saga)."""


@dataclass(frozen=True, slots=True)
class Forward:
    index: int


@dataclass(frozen=True, slots=True)
class Compensate:
    index: int


@dataclass(frozen=True, slots=True)
class Finished:
    pass


Move = Forward | Compensate | Finished


def next_move(state: SagaState, definition: SagaDefinition) -> Move:
    n = len(definition.steps)
    if not 0 <= state.completed <= n:
        raise SagaStateError(
            f"saga {state.saga_id}: {state.completed} steps recorded, definition "
            f"{definition.name!r} has {n}"
        )
    if state.status is SagaStatus.RUNNING:
        if state.completed == n:
            raise SagaStateError(f"saga {state.saga_id}: RUNNING with every step done")
        return Forward(state.completed)
    if state.status is SagaStatus.COMPENSATING:
        undo = undo_point(definition, state.completed)
        if undo == 0:
            raise SagaStateError(f"saga {state.saga_id}: COMPENSATING with nothing to undo")
        return Compensate(undo - 1)
    return Finished()


def undo_point(definition: SagaDefinition, upto: int) -> int:
    """The largest k <= upto with k == 0 or steps[k-1] compensable."""
    k = upto
    while k > 0 and definition.steps[k - 1].compensation is None:
        k -= 1
    return k


def merge_data(data: Mapping[str, Any], update: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data` updated with `update`, normalised through JSON so memory matches the DB.

    Only `update` goes through JSON: `data` is a saga's data, normalised already (by
    `new_saga`, an earlier merge, or read from its row), so the whole result is. An
    order's data round-tripped whole at every step cost 3 % of an orders process's
    CPU under `bench orders` (py-spy); a step's update is a key or two.

    Raises TypeError/ValueError when the result is not JSON-serialisable."""
    if not update:
        return dict(data)
    return {**data, **_normalised(update)}


def _normalised(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` through JSON: what the saga row will hold (tuples as lists, keys as
    strings); TypeError/ValueError when it is not JSON-serialisable."""
    out: dict[str, Any] = json.loads(json.dumps(dict(data)))
    return out


def copy_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a saga's data, for a step to read (and mutate) freely.

    The data is JSON (`merge_data` normalised it, or it was read from the row): dicts,
    lists and immutable scalars only, so copying the dicts and lists is a deep copy.
    A quarter of `copy.deepcopy`'s CPU (2.1 against 8.1 µs for an order's data), once
    per step attempt."""
    return {key: _copy_json(value) for key, value in data.items()}


def _copy_json(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {key: _copy_json(item) for key, item in value.items()}
    if kind is list:
        return [_copy_json(item) for item in value]
    return value  # str, int, float, bool, None


def new_saga(saga_id: str, name: str, data: Mapping[str, Any], now_ms: int) -> SagaState:
    return SagaState(
        saga_id=saga_id,
        name=name,
        status=SagaStatus.RUNNING,
        completed=0,
        data=_normalised(data),  # once; merge_data keeps it so
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


def _expect(state: SagaState, *allowed: SagaStatus) -> None:
    if state.status not in allowed:
        raise SagaStateError(f"saga {state.saga_id}: unexpected status {state.status}")


def step_done(
    state: SagaState,
    definition: SagaDefinition,
    update: Mapping[str, Any] | None,
    now_ms: int,
) -> SagaState:
    _expect(state, SagaStatus.RUNNING)
    completed = state.completed + 1
    done = completed == len(definition.steps)
    return replace(
        state,
        completed=completed,
        status=SagaStatus.COMPLETED if done else SagaStatus.RUNNING,
        data=merge_data(state.data, update),
        updated_at_ms=now_ms,
    )


def step_failed(
    state: SagaState,
    definition: SagaDefinition,
    failure: SagaFailure,
    *,
    effect_possible: bool,
    now_ms: int,
) -> SagaState:
    """The step at `state.completed` failed for good; `effect_possible` includes it in the
    compensation (its outcome is unknown, e.g. a deadline exceeded on a remote call)."""
    _expect(state, SagaStatus.RUNNING)
    undo = undo_point(definition, state.completed + (1 if effect_possible else 0))
    return replace(
        state,
        completed=undo,
        status=SagaStatus.COMPENSATING if undo else SagaStatus.COMPENSATED,
        failure=failure,
        updated_at_ms=now_ms,
    )


def step_compensated(
    state: SagaState,
    definition: SagaDefinition,
    update: Mapping[str, Any] | None,
    now_ms: int,
) -> SagaState:
    _expect(state, SagaStatus.COMPENSATING)
    undo = undo_point(definition, undo_point(definition, state.completed) - 1)
    return replace(
        state,
        completed=undo,
        status=SagaStatus.COMPENSATING if undo else SagaStatus.COMPENSATED,
        data=merge_data(state.data, update),
        attempts=0,
        last_error=None,
        updated_at_ms=now_ms,
    )


def compensation_failed(state: SagaState, error: str, now_ms: int) -> SagaState:
    _expect(state, SagaStatus.COMPENSATING)
    return replace(state, attempts=state.attempts + 1, last_error=error, updated_at_ms=now_ms)


def parked(state: SagaState, now_ms: int) -> SagaState:
    _expect(state, SagaStatus.COMPENSATING)
    return replace(state, status=SagaStatus.PARKED, updated_at_ms=now_ms)


def unparked(state: SagaState, now_ms: int) -> SagaState:
    _expect(state, SagaStatus.PARKED)
    return replace(
        state, status=SagaStatus.COMPENSATING, attempts=0, last_error=None, updated_at_ms=now_ms
    )

"""The saga state machine (pure): moves, transitions, skipping steps with nothing to undo."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.saga import ErrorKind, SagaContext, SagaDefinition, SagaFailure, SagaStatus, Step
from mesh.saga.state import (
    Compensate,
    Finished,
    Forward,
    SagaStateError,
    compensation_failed,
    copy_data,
    merge_data,
    new_saga,
    next_move,
    parked,
    step_compensated,
    step_done,
    step_failed,
    undo_point,
    unparked,
)


async def _noop(ctx: SagaContext) -> dict[str, Any] | None:
    return None


def definition(*compensable: bool) -> SagaDefinition:
    return SagaDefinition(
        "demo",
        [Step(f"s{i}", _noop, _noop if comp else None) for i, comp in enumerate(compensable)],
    )


FAIL = SagaFailure("s1", ErrorKind.BUSINESS, "FAILED_PRECONDITION", "no stock", "NO_STOCK")


def test_forward_until_completed_merging_data() -> None:
    d = definition(True, True, True)
    s = new_saga("id1", "demo", {"order": "o1"}, now_ms=1)
    assert (s.status, s.completed) == (SagaStatus.RUNNING, 0)
    seen: list[Any] = []
    for i in range(3):
        move = next_move(s, d)
        seen.append(move)
        s = step_done(s, d, {f"out{i}": i}, now_ms=10 + i)
    assert seen == [Forward(0), Forward(1), Forward(2)]
    assert s.status is SagaStatus.COMPLETED
    assert s.completed == 3
    assert s.data == {"order": "o1", "out0": 0, "out1": 1, "out2": 2}
    assert s.updated_at_ms == 12 and s.created_at_ms == 1
    assert next_move(s, d) == Finished()


def test_data_is_json_normalised_and_must_be_serialisable() -> None:
    assert merge_data({"a": 1}, {"t": (1, 2), "a": 2}) == {"a": 2, "t": [1, 2]}
    with pytest.raises(TypeError):
        merge_data({}, {"x": object()})
    with pytest.raises(TypeError):
        new_saga("id", "demo", {"x": {1, 2}}, now_ms=0)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _json, max_size=6))
def test_copy_data_is_a_deep_copy_of_json_data(data: dict[str, Any]) -> None:
    state = new_saga("id", "demo", data, now_ms=0)
    copied = copy_data(state.data)
    assert copied == state.data

    def containers(value: Any) -> list[int]:
        if isinstance(value, dict):
            return [id(value)] + [i for v in value.values() for i in containers(v)]
        if isinstance(value, list):
            return [id(value)] + [i for v in value for i in containers(v)]
        return []

    # No dict or list is shared: a step mutating its copy leaves the saga's data alone.
    assert not set(containers(copied)) & set(containers(state.data))


def test_business_failure_compensates_only_completed_steps_in_reverse() -> None:
    d = definition(True, True, True, True)
    s = new_saga("id", "demo", {}, 0)
    s = step_done(s, d, None, 0)
    s = step_done(s, d, None, 0)  # steps 0 and 1 done, step 2 fails
    s = step_failed(s, d, FAIL, effect_possible=False, now_ms=5)
    assert (s.status, s.completed, s.failure) == (SagaStatus.COMPENSATING, 2, FAIL)
    order = []
    while isinstance(m := next_move(s, d), Compensate):
        order.append(m.index)
        s = step_compensated(s, d, {"undone": m.index}, 6)
    assert order == [1, 0]
    assert s.status is SagaStatus.COMPENSATED
    assert s.data == {"undone": 0}
    assert s.failure == FAIL  # the reason stays recorded


def test_uncertain_failure_includes_the_failed_step() -> None:
    d = definition(True, True, True)
    s = step_done(new_saga("id", "demo", {}, 0), d, None, 0)
    s = step_failed(s, d, FAIL, effect_possible=True, now_ms=1)
    assert (s.status, s.completed) == (SagaStatus.COMPENSATING, 2)
    assert next_move(s, d) == Compensate(1)


def test_failure_of_the_first_step_ends_compensated_at_once() -> None:
    d = definition(True, True)
    s = step_failed(new_saga("id", "demo", {}, 0), d, FAIL, effect_possible=False, now_ms=1)
    assert (s.status, s.completed) == (SagaStatus.COMPENSATED, 0)
    assert next_move(s, d) == Finished()


def test_steps_without_compensation_are_skipped() -> None:
    d = definition(True, False, True, False)
    assert [undo_point(d, k) for k in range(5)] == [0, 1, 1, 3, 3]
    s = new_saga("id", "demo", {}, 0)
    for _ in range(3):
        s = step_done(s, d, None, 0)
    s = step_failed(s, d, FAIL, effect_possible=True, now_ms=0)  # step 3: no compensation
    assert s.completed == 3 and next_move(s, d) == Compensate(2)
    s = step_compensated(s, d, None, 0)
    assert s.completed == 1 and next_move(s, d) == Compensate(0)
    s = step_compensated(s, d, None, 0)
    assert s.status is SagaStatus.COMPENSATED


def test_nothing_to_undo_means_compensated() -> None:
    d = definition(False, False, True)
    s = step_done(step_done(new_saga("id", "demo", {}, 0), d, None, 0), d, None, 0)
    s = step_failed(s, d, FAIL, effect_possible=False, now_ms=0)
    assert s.status is SagaStatus.COMPENSATED


def test_compensation_failures_count_then_park_and_unpark() -> None:
    d = definition(True, True)
    s = step_done(new_saga("id", "demo", {}, 0), d, None, 0)
    s = step_failed(s, d, FAIL, effect_possible=False, now_ms=0)
    s = compensation_failed(s, "boom1", 1)
    s = compensation_failed(s, "boom2", 2)
    assert (s.attempts, s.last_error, s.status) == (2, "boom2", SagaStatus.COMPENSATING)
    p = parked(s, 3)
    assert p.status is SagaStatus.PARKED and next_move(p, d) == Finished()
    u = unparked(p, 4)
    assert (u.status, u.attempts, u.last_error) == (SagaStatus.COMPENSATING, 0, None)
    assert next_move(u, d) == Compensate(0)
    done = step_compensated(compensation_failed(u, "x", 5), d, None, 6)
    assert (done.status, done.attempts, done.last_error) == (SagaStatus.COMPENSATED, 0, None)


def test_transitions_reject_the_wrong_status() -> None:
    d = definition(True, True)
    s = new_saga("id", "demo", {}, 0)
    with pytest.raises(SagaStateError):
        step_compensated(s, d, None, 0)
    with pytest.raises(SagaStateError):
        parked(s, 0)
    with pytest.raises(SagaStateError):
        unparked(s, 0)
    failed = step_failed(step_done(s, d, None, 0), d, FAIL, effect_possible=False, now_ms=0)
    with pytest.raises(SagaStateError):
        step_done(failed, d, None, 0)


def test_state_that_does_not_fit_the_definition_is_an_error() -> None:
    d = definition(True)
    s = new_saga("id", "demo", {}, 0)
    with pytest.raises(SagaStateError):
        next_move(replace(s, completed=2), d)
    with pytest.raises(SagaStateError):
        next_move(replace(s, completed=1), d)  # RUNNING past the last step


@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=8),
    data=st.data(),
)
def test_any_failure_undoes_exactly_the_done_compensable_steps_in_reverse(
    flags: list[bool], data: st.DataObject
) -> None:
    d = definition(*flags)
    fail_at = data.draw(st.integers(0, len(flags) - 1))
    effect = data.draw(st.booleans())
    s = new_saga("id", "demo", {}, 0)
    for _ in range(fail_at):
        s = step_done(s, d, None, 0)
    s = step_failed(s, d, FAIL, effect_possible=effect, now_ms=0)
    undone = []
    while isinstance(m := next_move(s, d), Compensate):
        undone.append(m.index)
        s = step_compensated(s, d, None, 0)
    touched = fail_at + (1 if effect else 0)
    assert undone == [i for i in reversed(range(touched)) if flags[i]]
    assert s.status is SagaStatus.COMPENSATED and s.completed == 0

"""Outlier ejection as a state machine, on a fake clock."""

from __future__ import annotations

import pytest

from mesh.balancer.outlier import OutlierConfig, OutlierTracker


def fail(tracker: OutlierTracker, times: int) -> list[bool]:
    return [tracker.record_failure() for _ in range(times)]


def test_ejects_after_n_consecutive_failures_only() -> None:
    t = OutlierTracker(OutlierConfig(consecutive_failures=3, base_ejection_s=1.0))
    assert fail(t, 2) == [False, False]
    t.record_success(now=0.0)  # the streak is broken
    assert fail(t, 2) == [False, False]
    assert t.record_failure() is True
    assert not t.ejected


def test_ejection_grows_with_repeats_and_is_capped() -> None:
    t = OutlierTracker(
        OutlierConfig(consecutive_failures=1, base_ejection_s=2.0, max_ejection_s=5.0)
    )
    now = 0.0
    durations = []
    for _ in range(4):
        assert t.record_failure()
        d = t.eject(now)
        durations.append(d)
        assert t.ejected and t.ejected_until == now + d
        now += d
        t.release(now)
    assert durations == [2.0, 4.0, 5.0, 5.0]


def test_probation_failure_reejects_at_once_success_clears_it() -> None:
    t = OutlierTracker(OutlierConfig(consecutive_failures=5, base_ejection_s=1.0))
    assert fail(t, 5)[-1]
    t.eject(0.0)
    assert t.record_failure() is False  # results of calls made before the ejection
    t.release(1.0)
    assert t.probing
    assert t.record_failure() is True  # one failure on probation is enough
    t.eject(1.0)
    t.release(3.0)
    t.record_success(3.1)
    assert not t.probing
    assert fail(t, 4) == [False] * 4  # back to needing the full streak


def test_calm_periods_forget_past_ejections() -> None:
    t = OutlierTracker(OutlierConfig(consecutive_failures=1, base_ejection_s=1.0))
    for now in (0.0, 1.0):
        t.record_failure()
        t.eject(now)
        t.release(now + t.ejections)
    assert t.ejections == 2
    released = 3.0
    t.record_success(released + 0.5)
    assert t.ejections == 2  # not calm long enough yet
    t.record_success(released + 2.5)
    assert t.ejections == 0
    assert t.clean
    t.record_failure()
    assert t.eject(10.0) == 1.0  # starts over at the base time


@pytest.mark.parametrize(
    ("ejected", "total", "allowed"),
    [(0, 1, True), (0, 3, True), (1, 3, False), (1, 4, True), (2, 4, False), (2, 10, True)],
)
def test_max_ejected_fraction(ejected: int, total: int, allowed: bool) -> None:
    assert OutlierConfig(max_ejected_fraction=0.5).may_eject(ejected, total) is allowed


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        OutlierConfig(consecutive_failures=0)
    with pytest.raises(ValueError):
        OutlierConfig(base_ejection_s=0)
    with pytest.raises(ValueError):
        OutlierConfig(base_ejection_s=10, max_ejection_s=5)

"""base/backoff.py: one jittered formula behind every pause between attempts."""

from __future__ import annotations

import random

import grpc

from base.backoff import Backoff, backoff_cap, backoff_delay
from interceptors.retry import RetryPolicy
from mesh.saga.model import StepRetry


def test_cap_doubles_up_to_the_maximum_and_never_overflows() -> None:
    caps = [backoff_cap(n, 0.1, 1.0) for n in range(6)]
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff_cap(10_000, 0.1, 1.0) == 1.0


def test_delay_is_in_the_upper_half_of_the_cap() -> None:
    rng = random.Random(7)
    for n in range(8):
        cap = backoff_cap(n, 0.05, 2.0)
        delays = [backoff_delay(n, 0.05, 2.0, 2.0, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # jittered, not fixed


def test_retry_saga_and_stateful_backoff_use_the_same_formula() -> None:
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=1.0, multiplier=2.0)
    step = StepRetry(initial_backoff_s=0.05, max_backoff_s=1.0, multiplier=2.0)
    stateful = Backoff(0.05, 1.0, 2.0, _rng=random.Random(3))
    a, b, c = random.Random(3), random.Random(3), random.Random(3)
    for n in range(1, 8):
        expected = backoff_delay(n - 1, 0.05, 1.0, 2.0, c)
        assert policy.backoff_s(n, grpc.StatusCode.UNAVAILABLE, a) == expected
        assert step.delay(n, b) == expected
    again = random.Random(3)
    assert [stateful.next() for _ in range(7)] == [
        backoff_delay(n, 0.05, 1.0, 2.0, again) for n in range(7)
    ]


def test_resource_exhausted_scales_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, exhausted_backoff_factor=4.0)
    delays = [
        policy.backoff_s(5, grpc.StatusCode.RESOURCE_EXHAUSTED, random.Random(i)) for i in range(50)
    ]
    assert all(2.0 <= d <= 4.0 for d in delays)

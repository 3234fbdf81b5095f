"""`bench.rpc._cpu_per_call_in_turns`: the chain figures (`server_chain_us`) are
differences of variants, so every variant must be measured in every moment of the run,
with the collector as a service's, and the process's collector left as it was."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

import pytest

from bench.rpc import _cpu_per_call_in_turns


def _recording(log: list[str], label: str) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        log.append(label)

    return call


async def test_variants_take_turns_forward_then_backward() -> None:
    log: list[str] = []
    variants = [(name, _recording(log, name)) for name in ("a", "b", "c")]
    costs = await _cpu_per_call_in_turns(variants, calls=30, rounds=3)

    assert [label for label, _ in costs] == ["a", "b", "c"]
    assert all(us >= 0 for _, us in costs)
    warm, runs = log[:1500], log[1500:]
    assert warm == ["a"] * 500 + ["b"] * 500 + ["c"] * 500
    # Three rounds of 10 calls each, the order reversed every other round.
    blocks = [runs[i] for i in range(0, len(runs), 10)]
    assert blocks == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert len(runs) == 90


async def test_the_collector_runs_as_a_services_then_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESH_GC_GEN0_THRESHOLD", "12345")
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    thresholds: set[int] = set()
    frozen: list[int] = []

    async def call() -> None:
        thresholds.add(gc.get_threshold()[0])
        if not frozen:  # once: the count walks every frozen object (seconds in a full worker)
            frozen.append(gc.get_freeze_count())

    await _cpu_per_call_in_turns([("x", call)], calls=2, rounds=1)

    assert thresholds == {12345}
    assert frozen[0] > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before

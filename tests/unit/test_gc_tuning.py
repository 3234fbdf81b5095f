"""mesh.gc_tuning: what `run_service` does to Python's collector once it serves."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mesh.gc_tuning import tune_after_start


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_freezes_what_exists_and_raises_the_young_threshold(restore_gc: None) -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_after_start(10_000)
    assert gc.get_freeze_count() > 1000  # this interpreter's modules at least
    assert gc.get_threshold() == (10_000, gen1, gen2)


def test_a_full_collection_walks_only_what_came_after(restore_gc: None) -> None:
    """The point of freezing: the oldest generation, what a full collection walks,
    holds what came after the freeze, not the start-up objects."""
    tune_after_start(10_000)
    frozen = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() == frozen  # a collection leaves the frozen set alone
    assert len(gc.get_objects(generation=2)) < frozen


def test_cycles_made_later_are_still_collected(restore_gc: None) -> None:
    tune_after_start(10_000)

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_zero_leaves_the_collector_as_it_is(restore_gc: None) -> None:
    before = gc.get_threshold()
    tune_after_start(0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before

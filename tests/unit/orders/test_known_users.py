"""The bounded memory of users confirmed to exist."""

from __future__ import annotations

import pytest

from services.orders.known_users import KnownUsers


def test_remembers_and_forgets_the_oldest_past_its_capacity() -> None:
    known = KnownUsers(capacity=2)
    known.add("a")
    known.add("b")
    known.add("a")  # known already: still the oldest
    assert "a" in known and "b" in known and len(known) == 2
    known.add("c")
    assert "a" not in known
    assert "b" in known and "c" in known and len(known) == 2


def test_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError):
        KnownUsers(capacity=0)

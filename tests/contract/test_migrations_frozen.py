"""Released migrations are frozen: their DDL is pinned in frozen_migrations.json.

A change to a pinned version's DDL means a released migration was edited
(a fresh database would then differ from an upgraded one): add a new
migration instead. A version not pinned yet fails too, until it is pinned
with `python -m tests.support.migrations_lock --write` (which never rewrites
a pinned version).
"""

from __future__ import annotations

import pytest

from tests.support.migrations_lock import SERVICES, current, pinned

NOW = current()
LOCK = pinned()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_released_migrations_keep_their_ddl(service: str) -> None:
    for dialect, versions in NOW[service].items():
        pins = LOCK.get(service, {}).get(dialect, {})
        for version, statements in versions.items():
            assert version in pins, (
                f"{service} migration {version} is not pinned: once final, run"
                " `python -m tests.support.migrations_lock --write`"
            )
            assert statements == pins[version], (
                f"{service} migration {version} ({dialect}) was edited after release:"
                " add a new migration instead"
            )
        assert set(pins) <= set(versions), f"{service}: pinned migrations disappeared"

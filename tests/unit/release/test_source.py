"""`release start` refuses a version whose new migrations are not compatible (expand/contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.release.source import SourceError, check_migrations

TEMPLATE = """
from mesh.db import Migration

def migrations():
    return [{entries}]
"""


def tree(base: Path, name: str, *entries: str) -> Path:
    root = base / name
    (root / "svc").mkdir(parents=True)
    (root / "svc" / "__init__.py").write_text("")
    (root / "svc" / "store.py").write_text(TEMPLATE.format(entries=", ".join(entries)))
    return root


V1 = "Migration(1, 'tables', compatible_with_previous=True)"
EXPAND = "Migration(2, 'a nullable column', compatible_with_previous=True)"
CONTRACT = "Migration(3, 'drop a column')"


def test_expand_steps_are_accepted(tmp_path: Path) -> None:
    running, release = tree(tmp_path, "a", V1), tree(tmp_path, "b", V1, EXPAND)
    assert check_migrations(running, release, "svc.store:migrations") == ["2 (a nullable column)"]


def test_a_contract_step_is_refused_with_its_name(tmp_path: Path) -> None:
    running, release = tree(tmp_path, "a", V1), tree(tmp_path, "b", V1, EXPAND, CONTRACT)
    with pytest.raises(SourceError, match=r"3 \(drop a column\)"):
        check_migrations(running, release, "svc.store:migrations")


def test_the_running_versions_own_steps_are_not_checked_again(tmp_path: Path) -> None:
    running = tree(tmp_path, "a", V1, CONTRACT)  # already applied by the running version
    release = tree(tmp_path, "b", V1, CONTRACT, EXPAND)
    assert check_migrations(running, release, "svc.store:migrations") == ["2 (a nullable column)"]

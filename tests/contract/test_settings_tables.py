"""The README's settings tables are the ones generated from the settings declarations.

Fix a failure with `make readme-settings` (it rewrites the tables between their
`<!-- settings:NAME -->` markers), then review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from base.settings import readme_table
from mesh.settings import readme_tables as mesh_tables
from services.settings_tables import readme_tables as shop_tables

README = Path(__file__).resolve().parents[2] / "README.md"
TABLES = {**mesh_tables(), **shop_tables()}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_readme_table_is_current(name: str) -> None:
    found = readme_table(README.read_text(encoding="utf-8"), name)
    assert found is not None, f"README.md lacks the markers of the {name!r} settings table"
    assert found == TABLES[name], (
        f"README.md's {name!r} settings table is stale: run `make readme-settings`"
    )

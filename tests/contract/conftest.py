from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.proto_tree import ProtoTree


@pytest.fixture
def protos(tmp_path: Path) -> ProtoTree:
    """A fresh, editable copy of protos/ (without the baseline)."""
    return ProtoTree(tmp_path / "protos")

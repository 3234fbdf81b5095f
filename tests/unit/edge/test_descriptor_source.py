"""The edge companion finds its descriptor set through the installed package, or a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.edge.render import DESCRIPTORS, descriptor_source


def test_package_reference_resolves_to_the_shipped_set() -> None:
    shipped = descriptor_source("shop:descriptors.binpb")
    assert shipped.read_bytes() == DESCRIPTORS.read_bytes(), "run `make protos`"


def test_a_path_stays_a_path(tmp_path: Path) -> None:
    assert descriptor_source(tmp_path / "x.binpb") == tmp_path / "x.binpb"
    assert descriptor_source("envoy/descriptors.binpb") == Path("envoy/descriptors.binpb")


@pytest.mark.parametrize("ref", ["nosuchpackage:descriptors.binpb", "shop:nothing.binpb"])
def test_a_reference_to_nothing_says_what_is_missing(ref: str) -> None:
    with pytest.raises(FileNotFoundError, match=ref.split(":")[0]):
        descriptor_source(ref)

"""generated/ and envoy/ are exactly what `make protos` makes from protos/ today."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.contracts import codegen
from mesh.edge import render

FIX = "generated code is stale: run `make protos` and commit the result"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full regeneration into a temp dir: generated/, the descriptor set, envoy/."""
    out = tmp_path_factory.mktemp("codegen")
    codegen.generate(out / "generated", out / "descriptors.binpb")
    render.render_files(out / "envoy", render.COMPOSE_OPTIONS, out / "descriptors.binpb")
    return out


def test_generated_tree_matches(fresh):
    want = codegen.generated_tree(fresh / "generated")
    have = codegen.generated_tree(codegen.GENERATED)
    missing = sorted(set(want) - set(have))
    stale = sorted(set(have) - set(want))
    differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    assert (missing, stale, differ) == ([], [], []), (
        f"{FIX}: missing {missing}, not produced any more {stale}, different {differ}"
    )


def test_the_mesh_contracts_ship_with_the_generated_code(fresh):
    # The shop's stubs import the mesh's options: both live in generated/ (one
    # distribution), so the clients wheel alone imports.
    want = codegen.generated_tree(fresh / "generated")
    assert "meshproto/api/v1/options_pb2.py" in want and "meshproto/api/v1/options_pb2.pyi" in want
    assert "meshproto/events/v1/envelope_pb2.py" in want


def test_descriptor_set_matches(fresh):
    assert (fresh / "descriptors.binpb").read_bytes() == codegen.DESCRIPTOR_SET.read_bytes(), (
        f"envoy/descriptors.binpb differs: {FIX}"
    )


@pytest.mark.parametrize("name", ["envoy.yaml", render.EDGE_DESCRIPTORS_NAME])
def test_edge_config_matches(fresh, name):
    assert (fresh / "envoy" / name).read_bytes() == (render.ENVOY_DIR / name).read_bytes(), (
        f"envoy/{name} differs: {FIX}"
    )


def test_generation_is_deterministic(fresh, tmp_path):
    codegen.generate(tmp_path / "generated", tmp_path / "descriptors.binpb")
    assert codegen.generated_tree(tmp_path / "generated") == codegen.generated_tree(
        fresh / "generated"
    )
    assert (tmp_path / "descriptors.binpb").read_bytes() == (
        fresh / "descriptors.binpb"
    ).read_bytes()


def test_baseline_is_not_compiled():
    # The released descriptor sets live under protos/ but are never contracts themselves.
    assert all("baseline" not in Path(f).parts for f in codegen.proto_files())
    assert (codegen.PROTO_ROOT / "baseline").is_dir()

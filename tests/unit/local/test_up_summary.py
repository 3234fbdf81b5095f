"""What `meshctl up` prints once the mesh is up: the services the edge does not route
come from the edge's contracts, not from a list of the shop's (the mesh knows no shop)."""

from __future__ import annotations

from mesh.edge.model import EdgeModel, build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from mesh.local.up import table, unrouted


def _edge() -> EdgeModel:
    return build_model(load_descriptor_set(DESCRIPTORS).file)


def test_the_shops_internal_service_is_named_as_internal() -> None:
    model = _edge()
    assert unrouted(["payments", "inventory", "users", "orders"], model) == [
        "payments is internal: not routed by the edge"
    ]
    # A reduced topology names only what it runs.
    assert unrouted(["orders", "inventory"], model) == []


def test_another_projects_service_is_named_as_missing_from_the_edges_contracts() -> None:
    assert unrouted(["ping", "users"], _edge()) == [
        f"ping is not routed by the edge: no contract of it in {DESCRIPTORS}"
    ]


def test_the_summary_ends_with_the_notes() -> None:
    shown = table({}, 8080, "nats://127.0.0.1:4222", ["notes is internal: not routed by the edge"])
    assert shown.splitlines()[-2:] == [
        "edge (gRPC + REST): http://127.0.0.1:8080   nats: nats://127.0.0.1:4222",
        "notes is internal: not routed by the edge",
    ]
    assert "payments" not in table({}, 8080, "nats://127.0.0.1:4222")

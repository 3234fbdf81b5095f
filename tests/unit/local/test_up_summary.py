"""What `meshctl up` prints once the mesh is up: the services the edge does not route
come from the edge's contracts, not from a list of the shop's (the mesh knows no shop)."""

from __future__ import annotations

from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from mesh.local.up import table, unrouted


def _edge() -> tuple[list[str], list[str]]:
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    internal = sorted({s.cluster for s in model.services} - set(model.clusters))
    return model.clusters, internal


def test_the_shops_internal_service_is_named_as_internal() -> None:
    routed, internal = _edge()
    assert unrouted(["payments", "inventory", "users", "orders"], routed, internal) == [
        "payments is internal: not routed by the edge"
    ]
    # A reduced topology names only what it runs.
    assert unrouted(["orders", "inventory"], routed, internal) == []


def test_another_projects_service_is_named_as_missing_from_the_edges_contracts() -> None:
    routed, internal = _edge()
    assert unrouted(["ping", "users"], routed, internal) == [
        f"ping is not routed by the edge: no contract of it in {DESCRIPTORS}"
    ]


def test_the_summary_ends_with_the_notes() -> None:
    shown = table({}, 8080, "nats://127.0.0.1:4222", ["notes is internal: not routed by the edge"])
    assert shown.splitlines()[-2:] == [
        "edge (gRPC + REST): http://127.0.0.1:8080   nats: nats://127.0.0.1:4222",
        "notes is internal: not routed by the edge",
    ]
    assert "payments" not in table({}, 8080, "nats://127.0.0.1:4222")

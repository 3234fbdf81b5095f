"""What `meshctl up` prints once the mesh is up: the services the edge does not route
come from the edge's contracts, not from a list of the shop's (the mesh knows no shop),
and a missing token issuer is named when some method needs a login."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from mesh.api.options import Access
from mesh.edge.browsers import EdgeCors
from mesh.edge.jwt_authn import NO_ISSUER, EdgeAuthOptions
from mesh.edge.model import EdgeModel, build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from mesh.local.supervisor import Supervisor
from mesh.local.topology import ServiceSpec
from mesh.local.up import LocalMesh, UpError, UpOptions, edge_notes, table
from tests.support.stand_ins import MemoryRegistry

ISSUER_MISSING = (
    "the edge's token issuer 'users' is not in this topology: methods that need a login"
    " answer 401, and Envoy logs a failed key fetch every second (name your issuer in"
    " mesh.toml's [edge.auth])"
)


def _edge() -> EdgeModel:
    return build_model(load_descriptor_set(DESCRIPTORS).file)


def test_the_shops_internal_service_is_named_as_internal() -> None:
    model = _edge()
    assert edge_notes(["payments", "inventory", "users", "orders"], model) == [
        "payments is internal: not routed by the edge"
    ]
    # A reduced topology names only what it runs.
    assert edge_notes(["orders", "users"], model) == []


def test_another_projects_service_is_named_as_missing_from_the_edges_contracts() -> None:
    assert edge_notes(["ping", "users"], _edge()) == [
        f"ping is not routed by the edge: no contract of it in {DESCRIPTORS}"
    ]
    elsewhere = Path("/project/gen/descriptors.binpb")
    assert edge_notes(["ping", "users"], _edge(), elsewhere) == [
        f"ping is not routed by the edge: no contract of it in {elsewhere}"
    ]


def test_a_missing_token_issuer_is_named_when_a_method_needs_a_login() -> None:
    model = _edge()  # the shop's: most methods need a user
    assert edge_notes(["orders", "inventory"], model) == [ISSUER_MISSING]
    accounts = EdgeAuthOptions(issuer="notes", audiences=("notes",), jwks_service="accounts")
    assert ISSUER_MISSING not in edge_notes(["orders", "accounts"], model, auth=accounts)
    assert not any("issuer" in n for n in edge_notes(["orders", "accounts"], model, auth=accounts))
    assert edge_notes(["orders"], model, auth=accounts)[-1].startswith(
        "the edge's token issuer 'accounts' is not in this topology"
    )
    # Only public methods: no login is ever asked, but a token sent must verify.
    only_public = EdgeModel(
        tuple(
            replace(s, methods=public)
            for s in model.public
            if (public := tuple(m for m in s.methods if m.auth and m.auth.access is Access.PUBLIC))
        )
    )
    assert only_public.services, "the shop has public methods (GetProduct...)"
    assert edge_notes(["inventory"], only_public) == [
        ISSUER_MISSING.replace("methods that need a login", "calls with a token")
    ]
    assert edge_notes(["inventory", "users"], only_public) == []


def test_an_edge_with_no_issuer_is_named_only_when_a_method_needs_a_login() -> None:
    model = _edge()
    assert edge_notes(["orders", "users"], model, auth=NO_ISSUER) == [
        "the edge trusts no token issuer (mesh.toml's [edge] names no [edge.auth]): methods"
        " that need a login answer 401"
    ]
    only_public = EdgeModel(tuple(replace(s, methods=s.methods[:0]) for s in model.public))
    assert edge_notes([], only_public, auth=NO_ISSUER) == []  # nothing fetched, nothing to say


def test_the_origins_browsers_may_call_from_are_named() -> None:
    cors = EdgeCors(("https://shop.example.com", "http://localhost:5173"))
    assert edge_notes(["orders", "users"], _edge(), cors=cors) == [
        "browsers: pages of https://shop.example.com, http://localhost:5173 may call the edge"
        " (CORS)"
    ]


def test_the_summary_ends_with_the_notes() -> None:
    shown = table({}, 8080, "nats://127.0.0.1:4222", ["notes is internal: not routed by the edge"])
    assert shown.splitlines()[-2:] == [
        "edge (gRPC + REST): http://127.0.0.1:8080   nats: nats://127.0.0.1:4222",
        "notes is internal: not routed by the edge",
    ]
    assert "payments" not in table({}, 8080, "nats://127.0.0.1:4222")


async def test_an_edge_that_never_gets_ready_is_said_why(tmp_path: Path) -> None:
    """`meshctl up`'s timeout waiting for the edge names what Envoy's admin said last
    (a CI run's timeout said only that it timed out)."""
    options = UpOptions(
        run_dir=tmp_path, services=(ServiceSpec("orders", 0, 0),), ready_timeout_s=0.3
    )
    mesh = LocalMesh(options, MemoryRegistry(), Supervisor(out=io.StringIO(), colour=False))
    mesh.clusters = ["orders"]
    with pytest.raises(UpError, match="Envoy's admin does not answer"):
        await mesh.wait_edge_routes()  # no Envoy at all
    # An Envoy the supervisor restarted: how it last exited and what it last said.
    mesh.envoy_child = SimpleNamespace(  # type: ignore[assignment]
        restarts=2, last_exit=1, tail=lambda n: "cannot bind '127.0.0.1:8080'"
    )
    with pytest.raises(UpError) as restarted:
        await mesh.wait_edge_routes()
    assert "restarted 2 time(s) (it last ended with exit 1)" in str(restarted.value)
    assert str(restarted.value).endswith("cannot bind '127.0.0.1:8080'")
    mesh.envoy_child = None

    state = {"ready": (503, "PRE_INITIALIZING\n")}
    app = web.Application()

    async def ready(_request: web.Request) -> web.Response:
        status, text = state["ready"]
        return web.Response(status=status, text=text)

    async def clusters(_request: web.Request) -> web.Response:
        return web.json_response({"cluster_statuses": [{"name": "orders"}]})

    app.router.add_get("/ready", ready)
    app.router.add_get("/clusters", clusters)
    runner = web.AppRunner(app)
    await runner.setup()
    options.edge_dir.mkdir(parents=True)
    await web.UnixSite(runner, str(options.edge_admin.socket_path)).start()
    try:
        with pytest.raises(UpError, match=r"Envoy is not ready \(its admin's /ready answers 503\)"):
            await mesh.wait_edge_routes()
        state["ready"] = (200, "LIVE\n")
        with pytest.raises(UpError, match="Envoy routes to no healthy instance of orders"):
            await mesh.wait_edge_routes()
    finally:
        await runner.cleanup()

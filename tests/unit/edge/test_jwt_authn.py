"""The rendered end-user auth: rules from the auth options, fail closed, filter order."""

from __future__ import annotations

import pytest

from mesh.edge.envoy_config import EdgeOptions, render
from mesh.edge.jwt_authn import (
    FILTER,
    JWKS_CLUSTER,
    EdgeAuthOptions,
    jwks_sources,
    local_reply_mappers,
    public_paths,
)
from mesh.edge.local_replies import GRPC_OF_HTTP, local_reply_config
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS

MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)


def _hcm(options: EdgeOptions) -> dict:  # type: ignore[type-arg]
    config = render(MODEL, options)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    return chain["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def test_public_paths_follow_the_auth_option() -> None:
    paths = public_paths(MODEL)
    assert "/shop.inventory.v1.InventoryService/GetProduct" in paths
    assert "/shop.inventory.v1.InventoryService/CheckAvailability" in paths
    assert "/shop.users.v1.UserService/Authenticate" in paths
    assert "/shop.inventory.InventoryService/GetProduct" in paths  # unversioned twin
    for needs_user in (
        "/shop.orders.v2.OrderService/CreateOrder",
        "/shop.orders.OrderService/GetOrder",
        "/shop.inventory.v1.InventoryService/CreateProduct",
        "/shop.users.v1.UserService/GetUser",
    ):
        assert needs_user not in paths


def test_every_other_path_requires_a_token_and_the_filters_are_in_order() -> None:
    hcm = _hcm(EdgeOptions())
    names = [f["name"] for f in hcm["http_filters"]]
    jwt_at = names.index(FILTER)
    assert names.index("envoy.filters.http.grpc_json_transcoder") < jwt_at
    assert names[jwt_at - 1] == "envoy.filters.http.header_mutation"  # strip first
    assert names[jwt_at + 1] == "envoy.filters.http.lua"  # then set from the token
    assert names[-1] == "envoy.filters.http.router"
    rules = hcm["http_filters"][jwt_at]["typed_config"]["rules"]
    assert rules[-1] == {"match": {"prefix": "/"}, "requires": {"provider_name": "end_user"}}
    assert {"prefix": "/grpc.health.v1.Health/"} in [r["match"] for r in rules]
    provider = hcm["http_filters"][jwt_at]["typed_config"]["providers"]["end_user"]
    assert provider["forward"] is False
    assert provider["issuer"] == "shop-mesh/users" and provider["audiences"] == ["shop-mesh"]
    assert provider["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    mappers = hcm["local_reply_config"]["mappers"]
    assert mappers[:2] == local_reply_mappers(EdgeAuthOptions())  # the token's refusals first
    assert len(mappers) == 2 + 1 + 1 + len(GRPC_OF_HTTP) + 1  # + the escaped-slash text


def test_the_issuer_is_configurable_and_auth_can_be_left_out() -> None:
    auth = EdgeAuthOptions(issuer="me", audiences=("a", "b"), jwks_service="idp")
    hcm = _hcm(EdgeOptions(auth=auth))
    jwt = next(f for f in hcm["http_filters"] if f["name"] == FILTER)
    assert jwt["typed_config"]["providers"]["end_user"]["issuer"] == "me"
    assert jwks_sources(auth) == {JWKS_CLUSTER: ("idp", "admin_port")}
    off = EdgeOptions(auth=EdgeAuthOptions(enabled=False))
    hcm = _hcm(off)
    assert FILTER not in [f["name"] for f in hcm["http_filters"]]
    assert hcm["local_reply_config"] == local_reply_config()  # no token mappers
    clusters = render(MODEL, off)["static_resources"]["clusters"]
    assert JWKS_CLUSTER not in [c["name"] for c in clusters]


def test_a_clock_skew_envoy_would_read_as_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _hcm(EdgeOptions(auth=EdgeAuthOptions(clock_skew_s=0)))
    hcm = _hcm(EdgeOptions(auth=EdgeAuthOptions(clock_skew_s=1)))
    jwt = next(f for f in hcm["http_filters"] if f["name"] == FILTER)
    assert jwt["typed_config"]["providers"]["end_user"]["clock_skew_seconds"] == 1

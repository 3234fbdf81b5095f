"""Browsers at the edge, rendered: origins as browsers send them, the CORS filter's
place, the anchor route's limits, gRPC-Web always. How it behaves in a real Envoy and
a real browser: tests/integration/edge/test_edge_browsers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.cli import main as meshctl
from mesh.edge.browsers import (
    ANCHOR_CLUSTER,
    CORS_FILTER,
    GRPC_WEB_FILTER,
    NO_CORS,
    EdgeCors,
    origin_problem,
)
from mesh.edge.envoy_config import EdgeOptions, render
from mesh.edge.limits import EdgeLimits
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS

MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)
PAGE = "https://shop.example.com"
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        (PAGE, None),
        ("http://localhost:5173", None),
        ("http://127.0.0.1:3000", None),
        ("http://[::1]:8080", None),
        ("*", "`*` and `null` are refused"),
        ("null", "`*` and `null` are refused"),
        ("https://shop.example.com/", "nothing after it"),
        ("https://shop.example.com/app", "nothing after it"),
        ("https://Shop.example.com", "lower-case host"),
        ("https://shop.example.com:443", "default port out (443)"),
        ("http://shop.example.com:80", "default port out (80)"),
        ("ftp://shop.example.com", "expected http://host[:port]"),
        ("shop.example.com", "expected http://host[:port]"),
        ("https://shop_example.com", "lower-case host"),
        ("https://shop.example.com:99999", "not an origin"),
    ],
)
def test_an_origin_is_what_a_browser_sends(origin: str, problem: str | None) -> None:
    found = origin_problem(origin)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_settings_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="origin '\\*'"):
        EdgeCors(("*",))
    with pytest.raises(ValueError, match="max_age_s"):
        EdgeCors((PAGE,), max_age_s=86_401)


def _hcm(options: EdgeOptions) -> dict[str, Any]:
    config = render(MODEL, options)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm: dict[str, Any] = chain["filters"][0]["typed_config"]
    return hcm


def _cluster_names(options: EdgeOptions) -> list[str]:
    return [c["name"] for c in render(MODEL, options)["static_resources"]["clusters"]]


def test_without_origins_only_grpc_web_is_added() -> None:
    hcm = _hcm(EdgeOptions(cors=NO_CORS))
    names = [f["name"] for f in hcm["http_filters"]]
    assert CORS_FILTER not in names
    assert names.index(GRPC_WEB_FILTER) < names.index("envoy.filters.http.grpc_json_transcoder")
    vhost = hcm["route_config"]["virtual_hosts"][0]
    assert "typed_per_filter_config" not in vhost
    assert all(r["match"].get("prefix") != "/" for r in vhost["routes"])
    assert ANCHOR_CLUSTER not in _cluster_names(EdgeOptions())


def test_cors_runs_after_the_abuse_limit_and_before_every_other_refusal() -> None:
    names = [f["name"] for f in _hcm(EdgeOptions(cors=EdgeCors((PAGE,))))["http_filters"]]
    order = [
        "envoy.filters.http.local_ratelimit",
        CORS_FILTER,
        GRPC_WEB_FILTER,
        "envoy.filters.http.buffer",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]
    assert [n for n in names if n in order] == order


def test_the_policy_names_the_origins_and_the_contracts_verbs() -> None:
    hcm = _hcm(EdgeOptions(cors=EdgeCors((PAGE, "http://localhost:5173"), max_age_s=120)))
    policy = hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"][CORS_FILTER]
    assert policy["allow_origin_string_match"] == [
        {"exact": PAGE},
        {"exact": "http://localhost:5173"},
    ]
    verbs = {b.verb.upper() for s in MODEL.public for m in s.methods for b in m.bindings}
    assert policy["allow_methods"].split(", ") == sorted(verbs | {"POST"})
    assert policy["max_age"] == "120"
    assert policy["allow_credentials"] is False
    assert policy["forward_not_matching_preflights"] is False


def test_the_anchor_route_is_last_keeps_the_body_limit_and_leads_nowhere() -> None:
    options = EdgeOptions(cors=EdgeCors((PAGE,)), limits=EdgeLimits(max_request_body_bytes=4096))
    routes = _hcm(options)["route_config"]["virtual_hosts"][0]["routes"]
    anchor = routes[-1]
    assert anchor["match"]["prefix"] == "/" and anchor["route"]["cluster"] == ANCHOR_CLUSTER
    # After hardening, which turns the buffer off on every route without a transcoder.
    buffer = anchor["typed_per_filter_config"]["envoy.filters.http.buffer"]
    assert buffer["buffer"] == {"max_request_bytes": 4096} and "disabled" not in buffer
    clusters = render(MODEL, options)["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == ANCHOR_CLUSTER]
    assert cluster["load_assignment"]["endpoints"] == []


def _shop_with_origins(tmp_path: Path) -> Path:
    topology = tmp_path / "mesh.toml"
    topology.write_text((ROOT / "mesh.toml").read_text() + f'\n[edge.cors]\norigins = ["{PAGE}"]\n')
    return topology


def test_compose_and_kubernetes_configs_carry_the_topologys_origins(tmp_path: Path) -> None:
    topology = _shop_with_origins(tmp_path)
    out = tmp_path / "envoy"
    assert meshctl(["edge", "render", "--topology", str(topology), "--out", str(out)]) == 0
    compose = (out / "envoy.yaml").read_text()
    assert CORS_FILTER in compose and PAGE in compose
    k8s = tmp_path / "k8s"
    assert meshctl(["k8s", "render", "--topology", str(topology), "--out", str(k8s)]) == 0
    edge_docs = list(yaml.safe_load_all((k8s / "40-edge.yaml").read_text()))
    (config_map,) = [d for d in edge_docs if d["kind"] == "ConfigMap"]
    assert PAGE in config_map["data"]["envoy.yaml"]
    # The shop's own mesh.toml lists none: the committed envoy/ has no CORS.
    assert CORS_FILTER not in (ROOT / "envoy" / "envoy.yaml").read_text()


def test_edge_render_writes_a_projects_config_into_the_projects_directory(
    tmp_path: Path,
) -> None:
    """Without --out, another project's config goes to its own envoy/ (with the
    transcoder's descriptor set, which compose mounts beside it), never into this
    checkout's committed one."""
    committed = (ROOT / "envoy" / "envoy.yaml").read_bytes()
    topology = _shop_with_origins(tmp_path)
    assert meshctl(["edge", "render", "--topology", str(topology)]) == 0
    assert PAGE in (tmp_path / "envoy" / "envoy.yaml").read_text()
    assert (tmp_path / "envoy" / "descriptors.binpb").read_bytes() == (
        ROOT / "envoy" / "descriptors.binpb"
    ).read_bytes()
    assert (ROOT / "envoy" / "envoy.yaml").read_bytes() == committed

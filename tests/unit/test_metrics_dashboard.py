"""The Grafana dashboard and the compose Prometheus config, checked without running them:
the JSON loads, and every metric and label it queries exists in the code's metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from interceptors.metrics import RpcMetrics
from mesh.saga.metrics import SagaMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/shop-mesh-red.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
# Labels of interceptors/metrics.py and mesh/saga/metrics.py, plus those the scrape adds
# (compose relabelling, file-SD groups, Prometheus's own) and histogram buckets.
KNOWN_LABELS = {"grpc_service", "grpc_method", "grpc_code", "service", "method", "saga"} | {
    "instance_id",
    "version",
    "job",
    "instance",
    "le",
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}


def _exposed() -> set[str]:
    """Every sample name the services' metrics expose (families from the public
    `collect()`, with the suffixes each type adds)."""
    registry = CollectorRegistry()
    RpcMetrics(registry)
    SagaMetrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {f.name + suffix for f in registry.collect() for suffix in suffixes[f.type]}


def _metrics_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression uses."""
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)', " ", expr)
    names = {
        n
        for n in re.findall(r"[a-zA-Z_:][\w:]*(?!\w*\s*\()", bare)
        if n not in _KEYWORDS and not re.fullmatch(r"[\d.e]+", n)
    }
    return names, labels


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var["query"]["query"]
        inner = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert inner, query
        exprs.append(f"{inner[1]}{{{inner[2]}!=''}}")
    return exprs


def test_dashboard_queries_only_metrics_the_code_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = _exposed()
    assert "grpc_server_handled_total" in exposed  # the inventory itself works
    exprs = _exprs(dashboard)
    assert len(exprs) >= 8
    used: set[str] = set()
    for expr in exprs:
        names, labels = _metrics_in(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - exposed
        assert not unknown, f"{expr!r}: no such metric {sorted(unknown)}"
        assert labels <= KNOWN_LABELS, f"{expr!r}: unknown labels {sorted(labels - KNOWN_LABELS)}"
        used |= names
    # RED: rate and errors from the handled counter, duration from the histogram.
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} <= used


def test_the_check_catches_a_misspelt_metric() -> None:
    names, labels = _metrics_in('sum by (grpc_method) (rate(grpc_server_handeld_total{a="b"}[1m]))')
    assert names == {"grpc_server_handeld_total"} and labels == {"grpc_method", "a"}
    assert "grpc_server_handeld_total" not in _exposed()


def test_compose_wires_prometheus_and_grafana() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = " ".join(compose["prometheus"]["volumes"] + compose["grafana"]["volumes"])
    for path in ("deploy/prometheus/prometheus.yml", "deploy/grafana/dashboards"):
        assert f"./{path}" in mounts and (ROOT / path).exists()
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = config["scrape_configs"]
    assert job["consul_sd_configs"][0]["server"] == "consul:8500"
    relabel = {r.get("target_label"): r for r in job["relabel_configs"]}
    # Scraped on the admin port each instance registers (mesh.server puts it in meta).
    assert relabel["__address__"]["source_labels"][1] == "__meta_consul_service_metadata_admin_port"
    assert relabel["service"]["source_labels"] == ["__meta_consul_service"]

"""What `meshctl up` hands its services and the edge so traces reach the local sink."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mesh.local.observe import Observability, ObserveOptions, pick_port


def _with_sink(tmp_path: Path) -> Observability:
    o = Observability(ObserveOptions(), tmp_path)
    o.sink_port = 43170  # as start_sink sets it
    return o


def test_services_export_to_the_sink_by_default(tmp_path: Path) -> None:
    env = _with_sink(tmp_path).service_env({})
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://127.0.0.1:43170"
    assert env["OTEL_EXPORTER_OTLP_TRACES_INSECURE"] == "true"
    assert len(env["MESH_ADMIN_TOKEN"]) >= 32


@pytest.mark.parametrize(
    "user",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
    ],
)
def test_the_users_tracing_choice_wins(tmp_path: Path, user: dict[str, str]) -> None:
    env = _with_sink(tmp_path).service_env(user)
    assert "OTEL_TRACES_EXPORTER" not in env
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env


def test_admin_token_differs_per_run(tmp_path: Path) -> None:
    assert _with_sink(tmp_path).admin_token != _with_sink(tmp_path).admin_token


@pytest.mark.parametrize(
    ("env", "percent"),
    [
        ({}, 100.0),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            10.0,
        ),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "junk"}, 100.0),
    ],
)
def test_edge_samples_at_the_services_ratio(
    tmp_path: Path, env: dict[str, str], percent: float
) -> None:
    opts = _with_sink(tmp_path).edge_options(env)
    assert opts["otlp_port"] == 43170
    assert opts["trace_sample_percent"] == pytest.approx(percent)
    # The edge's spans reach the sink as soon as the services' do.
    assert opts["trace_flush_ms"] == ObserveOptions().export_delay_ms == 500


def test_no_sink_no_edge_tracer(tmp_path: Path) -> None:
    assert Observability(ObserveOptions(), tmp_path).edge_options({}) == {}


def test_pick_port_takes_a_free_port_when_the_preferred_one_listens() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert pick_port(taken) != taken
    assert pick_port(0) > 0

"""docker-compose.yml, checked without a Docker engine.

Debian's docker-compose validates the file statically; the rest checks that
what the file names exists in the code: the modules it runs, the environment
variables it sets (read by Settings or standard OTEL_*), the ports (the same
as `meshctl up`'s topology) and the edge wiring (Envoy's config points at the
companion that `meshctl edge serve` runs).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry import environment_variables as otel_api_env
from opentelemetry.sdk import environment_variables as otel_env

from base.settings import specs
from mesh.local.topology import load_topology
from mesh.settings import ResilienceSettings, SecuritySettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def _ours(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from our image (the shop and the edge companion)."""
    return {n: s for n, s in doc["services"].items() if s.get("image") == "shop-mesh:latest"}


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (.ci/run installs Debian's package)")
    result = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_module_it_runs_exists() -> None:
    for name, svc in _ours(_compose()).items():
        cmd = svc["command"]
        assert cmd[:2] == ["python", "-m"], name
        assert importlib.util.find_spec(cmd[2]) is not None, f"{name}: no module {cmd[2]}"


def test_every_env_var_is_read_by_the_code() -> None:
    declared = {
        spec.env
        for cls in (Settings, ResilienceSettings, SecuritySettings)
        for _, spec in specs(cls)
    }
    standard_otel = {
        v for m in (otel_env, otel_api_env) for k, v in vars(m).items() if k.startswith("OTEL_")
    }
    for name, svc in _ours(_compose()).items():
        for var in svc.get("environment", {}):
            if var.startswith("OTEL_"):
                assert var in standard_otel, f"{name}: {var} is not a standard OTEL_ variable"
            elif var.endswith("_DATABASE_URL"):
                assert "<SERVICE>_DATABASE_URL" in declared
                service = var.removesuffix("_DATABASE_URL").lower()
                assert importlib.util.find_spec(f"services.{service}"), f"{name}: {var}"
            else:
                assert var in declared, f"{name}: {var} is not a setting of mesh/settings.py"


def test_ports_match_the_local_topology_and_healthchecks() -> None:
    services = _ours(_compose())
    for spec in load_topology(ROOT / "mesh.toml").services:
        first = services.get(spec.name) or services[f"{spec.name}-1"]
        env = first["environment"]
        assert env["MESH_GRPC_PORT"] == str(spec.grpc_port), spec.name
        assert env["MESH_ADMIN_PORT"] == str(spec.admin_port), spec.name
        probe = " ".join(first["healthcheck"]["test"])
        assert f":{spec.admin_port}/health" in probe, spec.name
        instances = [n for n in services if re.fullmatch(rf"{spec.name}(-\d+)?", n)]
        assert len(instances) == spec.instances, f"{spec.name}: {instances}"


def test_edge_points_at_its_companion() -> None:
    doc = _compose()
    envoy_cfg = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    meta = next(c for c in envoy_cfg["static_resources"]["clusters"] if c["name"] == "edge_meta")
    sock = meta["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    companion = doc["services"][sock["address"]]
    cmd = companion["command"]
    assert cmd[cmd.index("--port") + 1] == str(sock["port_value"])
    assert "payments" not in {c["name"] for c in envoy_cfg["static_resources"]["clusters"]}, (
        "payments must not be routable from the edge"
    )
    for svc in _ours(doc).values():
        deps = svc.get("depends_on", {})
        assert all(d.get("condition") for d in deps.values()), "depends_on needs conditions"


def test_postgres_is_ready_only_when_it_listens_on_tcp() -> None:
    probe = _compose()["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in probe and probe[probe.index("-h") + 1] == "127.0.0.1", probe


def test_envoy_image_is_the_version_the_config_is_validated_with() -> None:
    from mesh.tools import envoy_binary

    out = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    version = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert version, out
    image = _compose()["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{version.group(1)}", image


def test_envoy_admin_answers_in_its_network_and_is_not_published_on_the_host() -> None:
    """Inside compose's network (the healthcheck, a scraper) but not on the host, where
    every account reaches loopback and the admin can stop the edge."""
    envoy_cfg = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    admin = envoy_cfg["admin"]["address"]["socket_address"]
    assert admin["address"] == "0.0.0.0", "bound to 127.0.0.1 in the container, 9901 refuses"
    envoy = _compose()["services"]["envoy"]
    assert str(admin["port_value"]) in " ".join(envoy["healthcheck"]["test"])
    published = [str(p).rsplit(":", 1)[-1] for p in envoy["ports"]]
    assert str(admin["port_value"]) not in published, envoy["ports"]


def test_nothing_of_ours_runs_as_root_and_the_data_dir_is_the_users() -> None:
    for name, svc in _ours(_compose()).items():
        assert svc.get("user", "") in ("", None), f"{name} overrides the image's user"
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(rf"chown {users[-1]}:\S+ .*/data", dockerfile), "data dir not owned"
    assert "MESH_DATA_DIR=/data" in dockerfile


def test_the_edge_companion_reads_the_descriptor_set_from_the_package() -> None:
    cmd = _compose()["services"]["edge-meta"]["command"]
    ref = cmd[cmd.index("--descriptors") + 1]
    assert ":" in ref, "a package reference, not a path into the image's checkout copy"
    from mesh.edge.render import descriptor_source

    assert descriptor_source(ref).is_file()


def test_envoy_s_and_consul_s_certificate_files_are_renewed_while_compose_runs() -> None:
    """Both read their certificates from the `pki` volume and renew nothing themselves:
    `pki-renew` re-issues those files (with the volume writable); Envoy watches the
    directory the store publishes a finished pair into, Consul reloads on change."""
    services = _compose()["services"]
    renew = services["pki-renew"]
    assert renew["command"][-4:] == ["pki", "renew", "edge", "consul"]
    assert renew["volumes"] == ["pki:/etc/shop-mesh/pki"]  # not :ro
    assert renew["depends_on"]["pki-init"] == {"condition": "service_completed_successfully"}
    assert "auto_reload_config = true" in services["consul"]["command"]
    sds = yaml.safe_load((ROOT / "envoy" / "edge_sds.yaml").read_text())
    tls = sds["resources"][0]["tls_certificate"]
    assert tls["watched_directory"]["path"] == "/etc/shop-mesh/pki/published"


def test_nats_admits_only_the_identities_nats_init_gives_a_seed() -> None:
    """Compose's NATS runs the authorization `nats-init` writes (no anonymous client, the
    published 4222 included); each service that uses events connects with its own seed
    from the volume; nats-init runs `meshctl events credentials` into it first."""
    services = _compose()["services"]
    init = services["nats-init"]
    assert init["command"][-3:] == ["events", "credentials", "/etc/shop-mesh/nats"]
    assert init["volumes"] == ["nats-auth:/etc/shop-mesh/nats"]
    nats = services["nats"]
    assert nats["command"][-2:] == ["-c", "/etc/shop-mesh/nats/nats.conf"]
    assert "nats-auth:/etc/shop-mesh/nats:ro" in nats["volumes"]
    assert nats["depends_on"]["nats-init"] == {"condition": "service_completed_successfully"}
    for name in ("users", "orders-1", "orders-2", "inventory-1", "inventory-2", "payments"):
        env = services[name]["environment"]
        service = name.split("-")[0]
        assert env["NATS_NKEY_SEED_FILE"] == f"/etc/shop-mesh/nats/{service}.nk", name
        assert "nats-auth:/etc/shop-mesh/nats:ro" in services[name]["volumes"], name
    assert "/etc/shop-mesh/nats" in (ROOT / "Dockerfile").read_text()

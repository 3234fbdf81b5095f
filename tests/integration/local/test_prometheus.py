"""The Prometheus file-SD targets `meshctl up` keeps current from the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from mesh.local.prometheus import PrometheusTargets, scrape_config
from tests.support.poll import eventually


def _inst(id_: str, admin: str = "9102") -> Instance:
    meta = {"admin_port": admin} if admin else {}
    return Instance(id_, "orders", "127.0.0.1", 50052, "2.0.0", meta=meta)


def _targets(path: Path) -> list[dict[str, object]] | None:
    try:
        doc: list[dict[str, object]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


@pytest.mark.asyncio(loop_scope="function")
async def test_targets_follow_the_registry(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry", health_check=False)
    targets = PrometheusTargets(registry, ["orders", "users"], tmp_path / "prometheus")
    try:
        await registry.register(_inst("orders-1"))
        await registry.register(_inst("orders-9", admin=""))  # no /metrics to scrape
        await targets.start()
        want = [
            {
                "targets": ["127.0.0.1:9102"],
                "labels": {"service": "orders", "instance_id": "orders-1", "version": "2.0.0"},
            }
        ]
        await eventually(lambda: _targets(targets.targets_file) == want, 10, "orders-1 listed")
        # Restarted on another admin port: the file follows.
        await registry.register(_inst("orders-1", admin="9200"))
        await eventually(
            lambda: (t := _targets(targets.targets_file)) and t[0]["targets"] == ["127.0.0.1:9200"],
            10,
            "the new admin port",
        )
        await registry.deregister("orders-1")
        await eventually(lambda: _targets(targets.targets_file) == [], 10, "orders-1 removed")
    finally:
        await targets.stop()
        await registry.close()
    config = yaml.safe_load(targets.config_file.read_text())
    [job] = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str(targets.targets_file)]
    assert job["metrics_path"] == "/metrics"


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    (tmp_path / "targets.json").write_text("[]\n")
    (tmp_path / "prometheus.yml").write_text(scrape_config(tmp_path / "targets.json"))
    r = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr

"""Prometheus scrape config for `meshctl up`: file-based service discovery from the registry.

`meshctl up` writes, under `<run dir>/prometheus/`:

- `targets.json` — the `file_sd_configs` format: one group per instance (its admin
  `host:port`, labels `service`, `instance_id`, `version`), rewritten whenever the
  registry's healthy set changes (a restarted instance on a new port, a new instance);
- `prometheus.yml` — a scrape config that reads it, so a user's Prometheus scrapes every
  instance's `/metrics` with `prometheus --config.file=.run/prometheus/prometheus.yml`.

Files are replaced atomically (Prometheus may read at any time); Prometheus re-reads
`targets.json` on change (inotify) and every `refresh_interval`. Only instances that
publish an `admin_port` in their registry meta are listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.discovery.registry import Instance, Registry
from mesh.edge.envoy_config import write_atomically

TARGETS = "targets.json"
CONFIG = "prometheus.yml"
JOB = "shop-mesh"


def target_groups(instances: Mapping[str, Sequence[Instance]]) -> list[dict[str, Any]]:
    """file_sd groups, one per instance with an admin port, in a stable order."""
    groups = []
    for service in sorted(instances):
        for inst in sorted(instances[service], key=lambda i: i.id):
            admin = inst.meta.get("admin_port", "")
            if not admin:
                continue
            labels = {"service": service, "instance_id": inst.id, "version": inst.version}
            groups.append({"targets": [f"{inst.host}:{admin}"], "labels": labels})
    return groups


def scrape_config(targets_file: Path, *, interval_s: float = 5.0) -> str:
    """prometheus.yml (YAML written as JSON, which YAML accepts) pointing at `targets_file`."""
    doc = {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "30s"}],
            }
        ],
    }
    return "# written by `meshctl up`; targets.json is kept current from the registry\n" + (
        json.dumps(doc, indent=2) + "\n"
    )


class PrometheusTargets:
    """Keeps `targets.json` equal to the registry's healthy instances of `services`."""

    def __init__(self, registry: Registry, services: Iterable[str], out_dir: Path) -> None:
        self.registry = registry
        self.services = tuple(services)
        self.out_dir = out_dir
        self.targets_file = out_dir / TARGETS
        self.config_file = out_dir / CONFIG
        self._current: dict[str, list[Instance]] = {s: [] for s in self.services}
        self._tasks: list[asyncio.Task[None]] = []
        self._written = ""

    async def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.config_file, scrape_config(self.targets_file).encode())
        self._flush()
        self._tasks = [asyncio.create_task(self._follow(s)) for s in self.services]

    async def _follow(self, service: str) -> None:
        async for instances in self.registry.watch(service):
            self._current[service] = instances
            self._flush()

    def _flush(self) -> None:
        text = json.dumps(target_groups(self._current), indent=1) + "\n"
        if text != self._written:
            write_atomically(self.targets_file, text.encode())
            self._written = text

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

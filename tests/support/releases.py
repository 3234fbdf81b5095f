"""A release of a service as `meshctl up`'s controller records it, without a mesh:
its state file and the controller's pid in `<run dir>/releases/` (mesh/release/state.py),
for the commands that must behave differently while one is in progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mesh.edge.envoy_config import write_atomically
from mesh.release.state import CONTROLLER_FILE, Release, releases_dir, save


def record_release(
    run_dir: Path, service: str, *, phase: str = "shifting", controller_pid: int | None = None
) -> Release:
    """Record a release of `service` (blue 100 / green 0, at its 0 % step) in `phase`,
    carried out by `controller_pid` (default: this process, so it is alive)."""
    pid = os.getpid() if controller_pid is None else controller_pid
    write_atomically(releases_dir(run_dir) / CONTROLLER_FILE, json.dumps({"pid": pid}).encode())
    release = Release(service, "2.0.0", "blue", "green", phase=phase, weight=0, step=0)
    save(run_dir, release)
    return release


def gone_pid() -> int:
    """The pid of a process that has exited (a `meshctl up` stopped mid-release).
    Limit: the pid may be reused meanwhile (unlikely within a test)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid

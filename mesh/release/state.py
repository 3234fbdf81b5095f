"""A release's state and the requests `meshctl release` sends the running `meshctl up`.

Both are small JSON files in `<run dir>/releases/` (0700), replaced atomically:

* `<service>.json` — the release of that service: version, tracks, steps, the
  current weight, its phase, and every step logged with what each subset served
  (written by the controller inside `meshctl up`; read by `release status` and
  `meshctl status`). It stays after the release ends, until the next one.
* `requests/<id>.json` — one command (`start`, `promote`, `rollback`, `abort`);
  the controller answers in `requests/<id>.reply.json` and removes the request.

Why files: `meshctl up` already shares its state with other commands through its
run dir (processes.json, the registry), any process of the user can write there
and none other can (0700), and a file outlives a CLI that was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh.edge.envoy_config import write_atomically

DEFAULT_STEPS = (0, 10, 50, 100)
ACTIVE = ("starting", "shifting")
TERMINAL = ("promoted", "rolled back", "aborted", "failed")
CONTROLLER_FILE = "controller.json"  # {"pid": the `meshctl up` serving requests}


def releases_dir(run_dir: Path) -> Path:
    path = run_dir.resolve() / "releases"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    (path / "requests").mkdir(mode=0o700, exist_ok=True)
    return path


@dataclass
class Release:
    """One release of one service (the state file's content)."""

    service: str
    version: str
    old_track: str
    new_track: str
    instances: int = 1
    source: str = ""  # a directory to run the new instances from ("": the current tree)
    steps: list[int] = field(default_factory=lambda: list(DEFAULT_STEPS))
    bake_s: float = 30.0
    phase: str = "starting"  # starting | shifting | promoted | rolled back | aborted | failed
    weight: int = 0  # the new subset's current percent
    step: int = -1  # index into steps
    reason: str = ""
    new_instances: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)  # per step: what each served
    started_at: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def say(self, message: str) -> str:
        self.log.append({"t": round(time.time(), 3), "message": message})
        return message

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Release:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def state_path(run_dir: Path, service: str) -> Path:
    return releases_dir(run_dir) / f"{service}.json"


def save(run_dir: Path, release: Release) -> None:
    write_atomically(state_path(run_dir, release.service), json.dumps(release.to_json()).encode())


def load(run_dir: Path, service: str) -> Release | None:
    try:
        return Release.from_json(json.loads(state_path(run_dir, service).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def load_all(run_dir: Path) -> list[Release]:
    out = []
    directory = run_dir.resolve() / "releases"
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(Release.from_json(json.loads(path.read_text())))
    return out


def send(run_dir: Path, request: dict[str, Any]) -> Path:
    """Write a request for the controller; returns the path its reply will have."""
    requests = releases_dir(run_dir) / "requests"
    rid = uuid.uuid4().hex
    write_atomically(requests / f"{rid}.json", json.dumps(request).encode())
    return requests / f"{rid}.reply.json"


def wait_reply(reply: Path, timeout_s: float) -> dict[str, Any] | None:
    """The controller's reply, or None if none came within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            doc: dict[str, Any] = json.loads(reply.read_text())
            with contextlib.suppress(OSError):
                os.unlink(reply)
            return doc
        time.sleep(0.1)  # polling for the controller's answer
    return None


def describe(release: Release) -> list[str]:
    """A release in a few lines (for `release status` and `meshctl status`)."""
    head = (
        f"{release.service} {release.version}: {release.phase}"
        f" — {release.old_track} {100 - release.weight} / {release.new_track} {release.weight}"
    )
    if release.active and release.step >= 0:
        head += f" (step {release.step + 1}/{len(release.steps)}, bake {release.bake_s:g}s)"
    lines = [head]
    if release.reason:
        lines.append(f"  reason: {release.reason}")
    return lines

"""`<run dir>/up.json`: which process is the `meshctl up` of a run directory.

`up` writes its pid and its start time (field 22 of `/proc/<pid>/stat`: clock ticks
after boot); `down` signals that pid, and `up` and `up --detach` refuse to start beside
it. Until 7 Dec 2026 the pid alone was trusted: after a crash or a reboot, `down` sent
SIGTERM to whatever process had been given that pid since, `{"pid": 0}` to its own
process group, and `{"pid": -1}` would have been every process the user may signal.
Now a record is used only when its pid is a positive integer and the process with that
pid is still the one that wrote it (same start time); anything else is stale or invalid
and nothing is signalled.

Limits: a record without a start time (written before 7 Dec 2026, or where there is no
`/proc`) is matched by the process's command line (`meshctl ... up` or
`python -m mesh.cli ... up`) where `/proc` exists, and by the pid alone where it does not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from base.processes import PROC, alive, process_start

STATE_FILE = "up.json"


class InvalidRecord(ValueError):
    """`up.json` exists but is not a record `meshctl up` wrote (the message names it)."""


@dataclass(frozen=True, slots=True)
class UpRecord:
    """A `meshctl up` as it recorded itself."""

    pid: int
    started: int | None  # /proc/<pid>/stat starttime; None: not recorded (see module doc)


def write_record(run_dir: Path, **extra: object) -> Path:
    """Record this process as the `meshctl up` of `run_dir`; the file's path."""
    path = run_dir / STATE_FILE
    pid = os.getpid()
    path.write_text(json.dumps({"pid": pid, "started": process_start(pid), **extra}))
    return path


def read_record(path: Path) -> UpRecord | None:
    """The record in `path`, None when there is no file; InvalidRecord when it is not
    one `meshctl up` wrote (not JSON, a pid that is not a positive integer...)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidRecord(f"{path} is unreadable ({exc})") from None
    pid = doc.get("pid") if isinstance(doc, dict) else None
    started = doc.get("started") if isinstance(doc, dict) else None
    # bool is an int to Python: `true` is no pid.
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidRecord(f"{path} is invalid: pid {pid!r} is not a positive integer")
    if started is not None and (not isinstance(started, int) or isinstance(started, bool)):
        raise InvalidRecord(f"{path} is invalid: started {started!r} is not an integer")
    return UpRecord(pid, started)


def is_running(record: UpRecord) -> bool:
    """Whether the process `record` names is still the `meshctl up` that wrote it."""
    start = process_start(record.pid)
    if record.started is not None:
        return start == record.started
    if not PROC.is_dir():
        return alive(record.pid)  # no /proc: the pid alone (module doc's limits)
    try:
        argv = (PROC / str(record.pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return start is not None and is_meshctl_up([a.decode(errors="replace") for a in argv if a])


def is_meshctl_up(argv: list[str]) -> bool:
    """Whether a command line is `meshctl ... up` or `python -m mesh.cli ... up`."""
    meshctl = any(Path(a).name == "meshctl" or a == "mesh.cli" for a in argv[:3])
    return meshctl and "up" in argv


def running_pid(run_dir: Path) -> int | None:
    """The pid of the `meshctl up` running in `run_dir`, if one is (an unreadable or
    stale record: none)."""
    try:
        record = read_record(run_dir.resolve() / STATE_FILE)
    except InvalidRecord:
        return None
    return record.pid if record is not None and is_running(record) else None

"""`meshctl down` signals only the `meshctl up` that wrote `up.json`
(mesh/local/up_record.py): a stale, reused or invalid pid is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.processes import process_start
from mesh.local.up import run_down, running_up
from mesh.local.up_record import STATE_FILE, is_meshctl_up, read_record

_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # poll: killed by the test


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a `meshctl up` (what a reused pid points at)."""
    proc = subprocess.Popen(_SLEEPER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Signals sent through os.kill, recorded and not delivered (an existence check,
    signal 0, still asks the kernel): a wrong `down` must not reach pytest's group."""
    sent: list[tuple[int, int]] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig == 0:
            real_kill(pid, 0)
        else:
            sent.append((pid, sig))

    monkeypatch.setattr(os, "kill", kill)
    return sent


def _record(run_dir: Path, doc: object) -> Path:
    path = run_dir / STATE_FILE
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_down_stops_the_up_that_wrote_the_record(
    tmp_path: Path,
    other_process: subprocess.Popen[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The control: the process the record names, started when it says, gets SIGTERM."""
    proc = other_process
    _record(tmp_path, {"pid": proc.pid, "started": process_start(proc.pid)})
    assert running_up(tmp_path) == proc.pid
    assert run_down(tmp_path, timeout_s=10) == 0
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert f"mesh (pid {proc.pid}) stopped" in capsys.readouterr().out


@pytest.mark.parametrize("started", ["other start", None])
def test_a_stale_pid_is_reported_and_not_signalled(
    started: str | None,
    tmp_path: Path,
    other_process: subprocess.Popen[bytes],
    signals: list[tuple[int, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a crash or reboot the pid is another process's: a different start time, or
    (a record with none) a command line that is not `meshctl up`."""
    pid = other_process.pid
    start = process_start(pid)
    assert start is not None
    doc: dict[str, object] = {"pid": pid}
    if started:
        doc["started"] = start + 1
    path = _record(tmp_path, doc)
    assert running_up(tmp_path) is None
    assert run_down(tmp_path) == 0
    assert signals == []
    assert f"no mesh is running; removing stale {path}" in capsys.readouterr().out
    assert not path.exists() and other_process.poll() is None


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"pid": 0}, "pid 0 is not a positive integer"),  # kill(0): down's own group
        ({"pid": -1}, "pid -1 is not a positive integer"),  # kill(-1): every process
        ({"pid": "abc"}, "pid 'abc' is not a positive integer"),
        ({"pid": True}, "pid True is not a positive integer"),
        ([1234], "pid None is not a positive integer"),
        ("{not json", "is unreadable"),
    ],
)
def test_an_invalid_record_is_refused_and_nothing_signalled(
    doc: object,
    says: str,
    tmp_path: Path,
    signals: list[tuple[int, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _record(tmp_path, doc)
    assert run_down(tmp_path) == 1
    assert signals == []
    err = capsys.readouterr().err
    assert f"{path} is" in err and says in err and "nothing was signalled" in err, err
    assert path.exists()  # the user's to look at; running_up sees none
    assert running_up(tmp_path) is None


def test_a_record_is_read_back_and_a_missing_one_is_none(tmp_path: Path) -> None:
    assert read_record(tmp_path / STATE_FILE) is None
    _record(tmp_path, {"pid": 12, "started": 34, "edge_port": 8080})
    record = read_record(tmp_path / STATE_FILE)
    assert record is not None and (record.pid, record.started) == (12, 34)


def test_an_old_record_without_a_start_time_matches_a_meshctl_up_command_line() -> None:
    venv = "/home/u/shop/.venv/bin"
    assert is_meshctl_up([f"{venv}/python", f"{venv}/meshctl", "up"])
    assert is_meshctl_up(["python", "-m", "mesh.cli", "--run-dir", ".run", "up", "--detach"])
    assert not is_meshctl_up(["python", "-m", "pytest", "up"])
    assert not is_meshctl_up([f"{venv}/python", f"{venv}/meshctl", "status"])
    assert not is_meshctl_up(["sleep", "60"])

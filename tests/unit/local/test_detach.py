"""`meshctl up --detach`'s wait (mesh/local/detach.py), with stand-in children for the
background `up`: ready, failing, slow, already running, and the user's Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.local.detach import start_detached
from mesh.local.up import READY_LINE
from mesh.local.up_record import STATE_FILE, write_record


def _child(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


def test_ready_returns_0_once_the_ready_line_is_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stand-in `up` takes 0.3 s to come up, then lives on a little: its own time.
    ready = f"import time; time.sleep(0.3); print({READY_LINE!r}); time.sleep(0.5)"  # poll
    code = start_detached(tmp_path, _child(ready))
    assert code == 0
    out = capsys.readouterr().out
    assert "mesh starting in the background" in out and "mesh is up:" in out
    assert (tmp_path / "up.log").stat().st_mode & 0o077 == 0  # the user's only


def test_a_failing_background_up_gives_its_code_and_its_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "up.log").write_text("an earlier run's line\n")
    code = start_detached(tmp_path, _child("import sys; print('ports already in use: [8080]');"
                                           " sys.exit(3)"))  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert "the background mesh exited (3)" in err and "ports already in use" in err
    assert "an earlier run's line" not in err  # only this run's lines


def test_still_starting_after_the_wait_returns_0_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    never_ready = "import time; time.sleep(5)"  # poll: a stand-in `up` slower than the wait
    code = start_detached(tmp_path, _child(never_ready), wait_s=0.3)
    assert code == 0
    assert "mesh still starting after 0s" in capsys.readouterr().out


def test_a_running_up_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_record(tmp_path)  # this process, as `up` records itself: alive
    assert start_detached(tmp_path, _child("raise SystemExit('must not run')")) == 1
    assert f"already running in {tmp_path} (pid {os.getpid()})" in capsys.readouterr().err
    assert not (tmp_path / "up.log").exists()


def test_a_stale_record_does_not_block_a_new_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live pid that is not the recorded `up` (reused after a crash) blocked it before."""
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "started": 1}))
    assert start_detached(tmp_path, _child(f"print({READY_LINE!r})")) == 0
    assert "already running" not in capsys.readouterr().err


def test_ctrl_c_stops_the_wait_not_the_mesh(tmp_path: Path) -> None:
    marker, go_on = tmp_path / "still-alive", tmp_path / "go-on"
    # The stand-in `up` works until the test lets it finish (so the wait can only end by
    # the Ctrl-C, never by the stand-in's exit), then marks that it outlived the wait.
    works = (
        "import time, pathlib; go = pathlib.Path(" + repr(str(go_on)) + ");"
        "t = time.monotonic() + 60\n"
        "while not go.exists() and time.monotonic() < t: time.sleep(0.05)"  # poll: the test
    )
    stand_in = f"{works}\npathlib.Path({str(marker)!r}).touch()"
    # The waiter gets Ctrl-C as at a terminal: a test run started in the background by a
    # shell without job control (`make test &` in a script) ignores SIGINT, and a child
    # inherits that, so without this the Ctrl-C would never reach the wait.
    waiter = subprocess.Popen(
        [sys.executable, "-c", "import sys, signal; from pathlib import Path;"
         "signal.signal(signal.SIGINT, signal.default_int_handler);"
         "from mesh.local.detach import start_detached;"
         f"sys.exit(start_detached(Path({str(tmp_path)!r}), {_child(stand_in)!r}))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiter.stdout is not None
        assert "mesh starting in the background" in waiter.stdout.readline()
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, (out, err)
        assert "stopped waiting; the mesh goes on starting" in out, (out, err)
        assert "Traceback" not in err, err
    finally:
        waiter.kill()  # a waiter that ignored the Ctrl-C must not outlive the test
        go_on.touch()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # poll: the background stand-in finishing its work
    assert marker.exists(), "the background process carried on"

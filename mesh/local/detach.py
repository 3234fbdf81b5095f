"""`meshctl up --detach`: start the mesh in the background and say how that went.

Until 7 Dec 2026 it printed "mesh starting in the background" and returned at once,
whatever happened next: with a port taken, or a mesh already running in the same run
directory, the background `up` failed a second later and only `up.log` said so; a
script's next step (`meshctl demo`) then met no mesh, or one still starting. Now it
refuses at once when a `meshctl up` is already running there, and otherwise waits
until the background `up` has printed `READY_LINE` (exit 0) or has exited (its exit
code, and the lines it wrote this time printed to stderr), or `wait_s` has passed
(exit 0: still starting, see `meshctl status`). The background process outlives an
interrupted wait. Its log is `<run dir>/up.log` (0600; kept bounded by the process
itself, mesh/local/log_rotation.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mesh.local.up import READY_LINE, running_up

WAIT_S = 180.0
_TAIL_LINES = 30


def start_detached(run_dir: Path, argv: Sequence[str], *, wait_s: float = WAIT_S) -> int:
    """Run `argv` (a foreground `meshctl up` writing to `--log-file`) in a new session;
    see the module doc for what is waited for and returned."""
    pid = running_up(run_dir)
    if pid is not None:
        print(f"meshctl up: already running in {run_dir} (pid {pid}); `meshctl down` stops it",
              file=sys.stderr)  # fmt: skip
        return 1
    path = run_dir / "up.log"
    # The log is the user's only, as the run directory is.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = os.fstat(fd).st_size  # this run's lines begin here
    with open(fd, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:  # from the first line on: Ctrl-C right after it must not be a traceback
        print(f"mesh starting in the background (pid {proc.pid}); logs: {path}", flush=True)
        return _wait(proc, path, start, wait_s)
    except KeyboardInterrupt:  # the wait only: the background mesh carries on
        print("\nstopped waiting; the mesh goes on starting: `meshctl status` shows it,"
              " `meshctl down` stops it")  # fmt: skip
        return 0


def _wait(proc: subprocess.Popen[bytes], path: Path, start: int, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        code = proc.poll()
        text = _since(path, start)
        if READY_LINE in text:
            print("mesh is up: `meshctl status` shows it, `meshctl down` stops it")
            return 0
        if code is not None:
            tail = "\n".join(text.rstrip().splitlines()[-_TAIL_LINES:])
            print(f"meshctl up: the background mesh exited ({code}); its last lines:\n{tail}",
                  file=sys.stderr)  # fmt: skip
            return code or 1
        time.sleep(0.2)  # poll: the background process's log and exit
    print(f"mesh still starting after {wait_s:.0f}s: `meshctl status` shows it, `meshctl down`"
          " stops it")  # fmt: skip
    return 0


def _since(path: Path, offset: int) -> str:
    """What `path` gained after `offset` (all of it if it was rotated meanwhile)."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset if size >= offset else 0)
            return f.read().decode(errors="replace")
    except OSError:
        return ""

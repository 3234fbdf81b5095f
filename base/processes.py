"""Whether a process is still there, and which one it is: what a record of a pid (a
`meshctl up`'s `up.json`, the registry it published) needs before it is believed."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (another user's too: it exists, though not ours).
    Limit: a pid is reused; `process_start` tells the process that had it from another."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot), None when there is no
    such process (a zombie has exited: none), or no `/proc` to ask."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 2, the command name in parentheses, may hold spaces and ')': count from the
    # last ')'. What follows is field 3 (the state) onwards, so starttime (22) is index 19.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X") or not fields[19].isdigit():
        return None
    return int(fields[19])

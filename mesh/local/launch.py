"""Exec a command with the parent-death signal set: the fork-safe way to tie a child's life to
the supervisor's.

`meshctl up` runs grpc.aio servers (the edge meta server) in its own process, and a
`preexec_fn` makes `subprocess` run Python in the forked child, which aborted children
(gRPC's fork handlers, "epoll_wait error: Bad file descriptor") in 2 of 7 starts. So the
supervisor spawns without `preexec_fn` and puts this script in front of the real argv:

    python -I -S mesh/local/launch.py <supervisor pid> <argv...>

It runs as a fresh interpreter (no fork of the supervisor's state), asks the kernel for
SIGTERM when the parent dies (`PR_SET_PDEATHSIG`, kept across exec), then execs the command,
which keeps this pid. SIGTERM lets services drain and deregister as on a normal stop.

It is run by path with `-S` (no site, no `mesh` package import) to add only ~20 ms to a
start. Limits: Linux only (elsewhere it just execs); the signal fires when the *thread* that
spawned the child exits, so the supervisor spawns from its event-loop thread, which lives as
long as the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: launch.py <parent pid> <command> [args...]", file=sys.stderr)
        return 2
    parent, command = int(argv[1]), argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            print(f"prctl(PR_SET_PDEATHSIG): errno {ctypes.get_errno()}", file=sys.stderr)
            return 1
        if os.getppid() != parent:  # the supervisor died before prctl: nobody to serve
            return 1
    os.execvp(command[0], command)
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

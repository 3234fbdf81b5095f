"""A stand-in service for supervisor tests, run as `python -m tests.support.idle_service`:
appends `start <MESH_INSTANCE_ID> <pid>` to the file named by IDLE_SERVICE_LOG, then idles
until SIGTERM. Importing it does nothing (so a warm spare can preload it)."""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    with open(os.environ["IDLE_SERVICE_LOG"], "a") as out:
        out.write(f"start {os.environ['MESH_INSTANCE_ID']} {os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("serving", flush=True)
    while True:
        signal.pause()  # idle until SIGTERM (its handler exits)


if __name__ == "__main__":
    main()

"""A warm spare: an interpreter that has already imported a service and starts it on cue.

A Python service spends most of its start-up importing (grpc, SQLAlchemy, nats, protobuf
stubs: ~0.9 s of CPU here); on a loaded machine that made a killed instance take 6-7 s to
serve again. The supervisor keeps one spare per service module, started after the mesh is
up: `python -m mesh.local.warm services.orders` imports `services.orders.__main__` (its
`main()` is guarded; a plain module is imported itself), then blocks on stdin. On a
restart the supervisor writes the failed instance's environment as one JSON line; the
spare takes it as its own `os.environ` and runs the module as `python -m` would, so the
instance keeps its id and ports.

Limits: only for children started as `python -m <module>`; a module that read the
environment at import time would see the spare's (the template instance's) values — the
services read settings in `main()` (`Settings.from_env`). EOF on stdin (supervisor gone
or stopping) ends the spare quietly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import runpy
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mesh.local.warm <module>", file=sys.stderr)
        return 2
    module = argv[1]
    spec = importlib.util.find_spec(module)
    package = spec is not None and spec.submodule_search_locations is not None
    entry = f"{module}.__main__" if package else module  # what `python -m` runs
    importlib.import_module(entry)
    line = sys.stdin.readline()
    if not line:
        return 0
    env = json.loads(line)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    del sys.modules[entry]  # run it afresh as __main__ (its imports stay warm)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""What `meshctl up` is doing while it starts: the step, the instances it still waits for,
and — when it gives up — which instance is not healthy and what it last logged.

Without this, a slow or broken start-up was a silent minute followed by "timed out waiting
for every instance to be healthy", naming nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

from mesh.discovery.registry import Instance
from mesh.local.supervisor import Child, Supervisor

_TAIL_LINES = 15


class StartupProgress:
    def __init__(self, sup: Supervisor, out: TextIO | None = None, every_s: float = 3.0) -> None:
        self.sup = sup
        self.out = out or sys.stdout
        self.every_s = every_s
        self.t0 = time.monotonic()
        self._last: tuple[str, ...] = ()
        self._last_at = 0.0

    def step(self, text: str) -> None:
        print(f"meshctl up: {text} ({time.monotonic() - self.t0:.1f}s)", file=self.out, flush=True)

    def _instances(self) -> list[Child]:
        return [c for c in self.sup.children if c.spec.service]

    def waiting_for(self, found: Mapping[str, list[Instance]]) -> list[str]:
        """Instances not yet registered healthy; printed when the set changes, and every
        `every_s` while it does not."""
        healthy = {i.id for insts in found.values() for i in insts}
        missing = tuple(
            c.spec.name
            for c in self._instances()
            if c.spec.env.get("MESH_INSTANCE_ID", c.spec.name) not in healthy
        )
        now = time.monotonic()
        if missing and (missing != self._last or now - self._last_at >= self.every_s):
            self.step(f"waiting for {', '.join(missing)} to be healthy")
            self._last, self._last_at = missing, now
        return list(missing)

    def timeout_report(self, found: Mapping[str, list[Instance]]) -> str:
        healthy = {i.id for insts in found.values() for i in insts}
        parts = []
        for c in self._instances():
            if c.spec.env.get("MESH_INSTANCE_ID", c.spec.name) in healthy:
                continue
            parts.append(
                f"not healthy: {c.spec.name} ({c.state}, restarts {c.restarts});"
                f" its last log lines:\n{_indent(c.tail(_TAIL_LINES))}"
            )
        return "\n".join(parts) or "every instance is registered healthy"

    def exited_report(self) -> str:
        dead = [c for c in self.sup.children if c.state in ("exited", "gave up")]
        report = "\n".join(
            f"--- {c.spec.name} ({c.state}, last exit {c.last_exit}); its last log lines:\n"
            f"{_indent(c.tail(_TAIL_LINES))}"
            for c in dead
        )
        return f"a process stopped for good during start-up:\n{report}"


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in (text or "(no output)").splitlines())

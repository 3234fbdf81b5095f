"""Run child processes with prefixed, streamed logs, and stop them all cleanly.

Children start in their own session so a terminal's Ctrl-C reaches only the
supervisor, which then stops them in order (services first, so they drain and
deregister, then the edge and the broker) and never leaves orphans: whatever
has not exited within the grace period is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from mesh.local.topology import ProcessSpec

_COLOURS = ("36", "32", "33", "35", "34", "31", "96", "92", "93", "95")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL.

    Children run in their own session (so a terminal's Ctrl-C reaches only the
    supervisor); without this, a supervisor killed outright would orphan them.
    SIGTERM lets them drain and deregister as on a normal stop. Linux only.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None] | None = None
    lines: list[str] = field(default_factory=list)  # last lines, for error reports

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.lines[-n:])


class Supervisor:
    """Starts processes, prefixes each output line with the process name, stops them."""

    def __init__(self, out: TextIO | None = None, *, colour: bool | None = None) -> None:
        self._out = out or sys.stdout
        self._colour = self._out.isatty() if colour is None else colour
        self.children: list[Child] = []
        self.exited = asyncio.Event()  # set when a child exits on its own
        self._stopping = False
        self.on_line: Callable[[str, str], None] | None = None

    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<12}|"
        if not self._colour:
            return label
        return f"\x1b[{_COLOURS[index % len(_COLOURS)]}m{label}\x1b[0m"

    async def start(self, spec: ProcessSpec, *, quiet: bool = False) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            env=dict(spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(spec, proc)
        child.pump = asyncio.create_task(self._pump(child, len(self.children), quiet))
        self.children.append(child)
        return child

    async def _pump(self, child: Child, index: int, quiet: bool) -> None:
        prefix = self._prefix(child.spec.name, index)
        assert child.proc.stdout is not None
        async for raw in child.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.lines.append(line)
            del child.lines[:-200]
            if self.on_line is not None:
                self.on_line(child.spec.name, line)
            if not quiet:
                print(f"{prefix} {line}", file=self._out, flush=True)
        await child.proc.wait()
        if not self._stopping:
            print(f"{prefix} exited with code {child.proc.returncode}", file=self._out, flush=True)
            self.exited.set()

    async def stop(self, child: Child, grace_s: float) -> None:
        if child.running:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                await child.proc.wait()
        if child.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.pump

    async def stop_all(self, grace_s: float, *, first: Callable[[Child], bool]) -> None:
        """Stop the children `first` selects (in parallel), then the rest."""
        self._stopping = True
        group = [c for c in self.children if first(c)]
        rest = [c for c in self.children if not first(c)]
        for batch in (group, rest):
            await asyncio.gather(*(self.stop(c, grace_s) for c in batch))

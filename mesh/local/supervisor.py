"""Run child processes with prefixed, streamed logs, restart them when they fail, stop them
all cleanly.

Children start in their own session so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order (services first, so they drain and deregister, then the
edge, then the broker) and never leaves orphans: whatever has not exited within the grace
period is killed with its process group.

Spawning is fork-safe in a threaded parent (the edge meta server is a grpc.aio server in
this process): no `preexec_fn` — every child goes through `mesh/local/launch.py`, which
sets the parent-death signal in a fresh interpreter and execs the real command, so a
supervisor killed outright (SIGKILL) still takes its children down.

Restart policy (`RestartPolicy`): on failure (a non-zero exit or a signal, while not
stopping) the same spec is started again — same argv and environment, so the same
`MESH_INSTANCE_ID` and the first instance's fixed ports — after an exponential backoff
(`base.backoff.Backoff`), reset once a run lasted `stable_s`. A crash loop
(`max_failures` within `window_s`) gives up on that child only: it is reported loudly and
recorded in the state file (`meshctl status` shows it); everything else keeps running. A
child that exits 0 on its own is not restarted (on-failure, as systemd's `Restart=`).
Once the mesh is up, `warm_spares()` keeps one pre-imported interpreter per service module
(`mesh/local/warm.py`) that a restart takes over, so an instance serves again in about a
second instead of re-importing for several on a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from base.backoff import Backoff
from mesh.edge.envoy_config import write_atomically
from mesh.local.topology import ProcessSpec

_COLOURS = ("36", "32", "33", "35", "34", "31", "96", "92", "93", "95")
LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When and how fast a failed child is started again; `enabled=False`: never."""

    enabled: bool = True
    max_failures: int = 5  # this many failures within window_s is a crash loop: give up
    window_s: float = 60.0
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    stable_s: float = 10.0  # a run this long resets the backoff


NO_RESTART = RestartPolicy(enabled=False)


@dataclass
class Child:
    """One supervised process; `proc` is replaced on every restart, the object stays."""

    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    index: int
    policy: RestartPolicy
    quiet: bool = False
    task: asyncio.Task[None] | None = None
    lines: list[str] = field(default_factory=list)  # last lines, for error reports
    state: str = "running"  # running | restarting | exited | gave up | stopped
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    failures: deque[float] = field(default_factory=deque)
    retiring: bool = False  # stopped for good on purpose (`retire`): never restarted

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.lines[-n:])


def exit_text(code: int | None) -> str:
    """A process's exit as a person reads it: `-9` is `SIGKILL`, `1` is `exit 1`."""
    if code is None:
        return "-"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@dataclass(frozen=True, slots=True)
class ProcessView:
    """A supervised process as `meshctl status` (from the state file) and the dashboard
    (from the supervisor itself) show it."""

    name: str
    service: str  # "" for the mesh's own processes (envoy, nats, traces)
    state: str  # running | restarting | exited | gave up | stopped
    restarts: int
    last_exit: int | None
    pid: int | None = None  # while it runs: what `kill` takes in a fault drill

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def last_exit_text(self) -> str:
        return exit_text(self.last_exit)


def _module_of(spec: ProcessSpec) -> str:
    """`services.orders` for a child run as `python -m services.orders`, else ""."""
    argv = tuple(spec.argv)
    if len(argv) == 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2]
    return ""


async def _end_spare(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """EOF on its stdin ends a spare; killed if it does not go."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _every(_child: Child) -> bool:
    return True


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    """Starts processes, prefixes each output line with the process name, restarts the
    ones that fail, stops them in order."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        colour: bool | None = None,
        state_file: Path | None = None,
    ) -> None:
        self._out = out or sys.stdout
        self._colour = self._out.isatty() if colour is None else colour
        self.children: list[Child] = []
        # Set when a child will not come back (gave up after a crash loop, or exited 0).
        self.exited = asyncio.Event()
        self._stopping = asyncio.Event()
        self.on_line: Callable[[str, str], None] | None = None
        self.state_file = state_file
        self._spares: dict[str, asyncio.subprocess.Process] = {}  # module -> warm spare
        self._warm = False
        self._background: set[asyncio.Task[None]] = set()

    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<12}|"
        if not self._colour:
            return label
        return f"\x1b[{_COLOURS[index % len(_COLOURS)]}m{label}\x1b[0m"

    def _say(self, child: Child, text: str) -> None:
        print(f"{self._prefix(child.spec.name, child.index)} {text}", file=self._out, flush=True)

    @staticmethod
    async def _spawn(
        spec: ProcessSpec, argv: Sequence[str] = (), *, stdin: int = asyncio.subprocess.DEVNULL
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(LAUNCHER), str(os.getpid()), *(argv or spec.argv),
            env=dict(spec.env),
            cwd=spec.cwd,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def spares(self) -> dict[str, int]:
        """Pid of the warm spare per service module."""
        return {m: p.pid for m, p in self._spares.items() if p.returncode is None}

    async def warm_spares(self) -> None:
        """One warm spare (`mesh.local.warm`) per service module of the restartable
        children, so a restart skips the imports. Called once the mesh is up (spares
        started with it would slow the start-up); each costs one idle interpreter."""
        self._warm = True
        for child in self.children:
            module = _module_of(child.spec)
            if module and child.policy.enabled and module not in self._spares:
                self._spares[module] = await self._spawn(
                    child.spec,
                    (sys.executable, "-m", "mesh.local.warm", module),
                    stdin=asyncio.subprocess.PIPE,
                )

    async def _respawn(self, spec: ProcessSpec) -> asyncio.subprocess.Process:
        """The failed child again: from a warm spare when one is ready, else cold."""
        module = _module_of(spec)
        spare = self._spares.pop(module, None) if module else None
        if spare is not None and spare.returncode is None and spare.stdin is not None:
            try:
                spare.stdin.write(json.dumps(dict(spec.env)).encode() + b"\n")
                await spare.stdin.drain()
                spare.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                spare = None
            if spare is not None:
                self._refill(spec)
                return spare
        return await self._spawn(spec)

    def _refill(self, spec: ProcessSpec) -> None:
        """A new spare for the one just used, in the background."""
        module = _module_of(spec)

        async def make() -> None:
            if not self._warm or self._stopping.is_set() or not module or module in self._spares:
                return
            self._spares[module] = await self._spawn(
                spec,
                (sys.executable, "-m", "mesh.local.warm", module),
                stdin=asyncio.subprocess.PIPE,
            )

        task = asyncio.create_task(make())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(
        self, spec: ProcessSpec, *, quiet: bool = False, policy: RestartPolicy | None = None
    ) -> Child:
        proc = await self._spawn(spec)
        child = Child(spec, proc, len(self.children), policy or RestartPolicy(), quiet)
        child.task = asyncio.create_task(self._watch(child))
        self.children.append(child)
        self._write_state()
        return child

    async def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        async for raw in child.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.lines.append(line)
            del child.lines[:-200]
            if self.on_line is not None:
                self.on_line(child.spec.name, line)
            if not child.quiet:
                self._say(child, line)
        await child.proc.wait()

    async def _watch(self, child: Child) -> None:
        backoff = Backoff(
            initial_s=child.policy.initial_backoff_s, max_s=child.policy.max_backoff_s
        )
        while True:
            await self._pump(child)
            code = child.proc.returncode
            assert code is not None
            child.last_exit = code
            if self._stopping.is_set() or child.retiring:
                child.state = "stopped"
                self._write_state()
                return
            now = time.monotonic()
            if code == 0 or not child.policy.enabled:
                child.state = "exited"
                self._say(child, f"{_describe(code)}; not restarted")
                self._write_state()
                self.exited.set()
                return
            if now - child.started_at >= child.policy.stable_s:
                backoff.reset()
            child.failures.append(now)
            while child.failures and now - child.failures[0] > child.policy.window_s:
                child.failures.popleft()
            if len(child.failures) >= child.policy.max_failures:
                child.state = "gave up"
                self._say(
                    child,
                    f"!!! {_describe(code)}: {len(child.failures)} failures within"
                    f" {child.policy.window_s:.0f}s — GIVING UP on {child.spec.name}"
                    " (crash loop); the rest of the mesh keeps running",
                )
                self._write_state()
                self.exited.set()
                return
            delay = backoff.next()
            child.state = "restarting"
            self._say(child, f"{_describe(code)}; restarting in {delay:.2f}s")
            self._write_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                child.state = "stopped"
                self._write_state()
                return
            try:
                child.proc = await self._respawn(child.spec)
            except OSError as exc:
                child.state = "gave up"
                self._say(child, f"!!! cannot start again ({exc}); GIVING UP on it")
                self._write_state()
                self.exited.set()
                return
            child.started_at = time.monotonic()
            child.restarts += 1
            child.state = "running"
            self._write_state()

    def views(self) -> list[ProcessView]:
        """Every child as `meshctl status` and the dashboard show it, in start order."""
        return [
            ProcessView(
                c.spec.name,
                c.spec.service,
                c.state,
                c.restarts,
                c.last_exit,
                c.proc.pid if c.running else None,
            )
            for c in self.children
        ]

    def _write_state(self) -> None:
        """Each child's state for `meshctl status` (another process), replaced atomically."""
        if self.state_file is None:
            return
        doc = {
            "pid": os.getpid(),
            "processes": [dataclasses.asdict(v) for v in self.views()],
        }
        with contextlib.suppress(OSError):
            write_atomically(self.state_file, json.dumps(doc, indent=1).encode())

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
        if child.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.task

    async def retire(self, child: Child, grace_s: float) -> None:
        """Stop one child for good while the rest runs (a release's drained subset):
        SIGTERM (it drains and deregisters), killed after `grace_s`, then dropped from
        the state file; not restarted, and not a reason for `exited`."""
        child.retiring = True
        await self.stop(child, grace_s)
        child.state = "stopped"
        if child in self.children:
            self.children.remove(child)
        self._write_state()

    async def stop_all(
        self, grace_s: float, *, order: Sequence[Callable[[Child], bool]] = ()
    ) -> None:
        """Stop in batches: the children each predicate of `order` selects (a batch in
        parallel, batches one after another), then the rest. No restart from here on."""
        self._stopping.set()
        left = list(self.children)
        for pick in (*order, _every):
            batch = [c for c in left if pick(c)]
            left = [c for c in left if c not in batch]
            await asyncio.gather(*(self.stop(c, grace_s) for c in batch))
        for task in list(self._background):
            await task
        await asyncio.gather(*(_end_spare(p, grace_s) for p in self._spares.values()))
        self._spares.clear()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

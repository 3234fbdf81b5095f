"""Scripted saga steps that journal every call, shared by the tests and the crash worker."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.saga import Phase, SagaContext, SagaDefinition, SagaTransition, Step, StepAction

FORWARD = Phase.FORWARD.value
COMPENSATE = Phase.COMPENSATE.value


@dataclass(frozen=True)
class Call:
    phase: str
    step: str
    key: str
    attempt: int
    saga_id: str
    data: dict[str, Any]
    # Set on compensations: the step whose failure started them.
    failed_step: str | None
    pid: int


@dataclass
class Gate:
    """A step that waits: `entered` is set when it is called, it returns once `release` is."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class Script:
    """Step behaviour scripted per (phase, step) and a journal of every call.

    With `journal`, calls are also appended to that file as JSON lines (for the
    crash tests: the file outlives a killed process)."""

    def __init__(self, journal: Path | None = None) -> None:
        self.calls: list[Call] = []
        self.journal = journal
        self._queued: dict[tuple[str, str], list[BaseException]] = {}
        self._always: dict[tuple[str, str], BaseException] = {}
        self._gates: dict[tuple[str, str], Gate] = {}

    # -- scripting -----------------------------------------------------------------

    def fail(self, step: str, *errors: BaseException, phase: str = FORWARD) -> None:
        """Raise `errors` on the next calls, one each, then succeed."""
        self._queued.setdefault((phase, step), []).extend(errors)

    def fail_always(self, step: str, error: BaseException, phase: str = FORWARD) -> None:
        self._always[(phase, step)] = error

    def heal(self, step: str, phase: str = FORWARD) -> None:
        self._always.pop((phase, step), None)
        self._queued.pop((phase, step), None)

    def gate(self, step: str, phase: str = FORWARD) -> Gate:
        g = Gate()
        self._gates[(phase, step)] = g
        return g

    # -- steps ---------------------------------------------------------------------

    def action(self, step: str) -> StepAction:
        return self._make(step, FORWARD)

    def compensation(self, step: str) -> StepAction:
        return self._make(step, COMPENSATE)

    def step(self, name: str, *, compensable: bool = True, **kwargs: Any) -> Step:
        comp = self.compensation(name) if compensable else None
        return Step(name, self.action(name), comp, **kwargs)

    def _make(self, step: str, phase: str) -> StepAction:
        async def run(ctx: SagaContext) -> Mapping[str, Any] | None:
            self._record(ctx, step, phase)
            gate = self._gates.get((phase, step))
            if gate is not None:
                gate.entered.set()
                self._mark("blocked", ctx, step, phase)
                await gate.release.wait()
            queued = self._queued.get((phase, step))
            if queued:
                raise queued.pop(0)
            if (phase, step) in self._always:
                raise self._always[(phase, step)]
            # Data a later step or compensation reads (a payment id, say).
            return {f"{step}_{phase}": f"{step}-{ctx.saga_id}"}

        return run

    def _record(self, ctx: SagaContext, step: str, phase: str) -> None:
        call = Call(
            phase=phase,
            step=step,
            key=ctx.idempotency_key,
            attempt=ctx.attempt,
            saga_id=ctx.saga_id,
            data=dict(ctx.data),
            failed_step=ctx.failure.step if ctx.failure else None,
            pid=os.getpid(),
        )
        self.calls.append(call)
        self._append({"event": "call", **asdict(call)})

    def _mark(self, event: str, ctx: SagaContext, step: str, phase: str) -> None:
        self._append({"event": event, "step": step, "phase": phase, "saga_id": ctx.saga_id})

    def _append(self, obj: dict[str, Any]) -> None:
        if self.journal is None:
            return
        with self.journal.open("a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()

    # -- reading -------------------------------------------------------------------

    def steps(self, phase: str, saga_id: str | None = None) -> list[str]:
        return [
            c.step
            for c in self.calls
            if c.phase == phase and (saga_id is None or c.saga_id == saga_id)
        ]


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def log_transition(session: AsyncSession, t: SagaTransition) -> None:
    """A transition hook writing the service's own table in the saga's transaction."""
    await session.execute(
        text("INSERT INTO saga_log (saga_id, event, status, step) VALUES (:i, :e, :s, :st)"),
        {"i": t.saga.saga_id, "e": t.event.value, "s": t.saga.status.value, "st": t.step},
    )


def crash_definition(script: Script) -> SagaDefinition:
    """a, b, c, d: c is where the crash tests block (forward) or fail (backward)."""
    return SagaDefinition(
        "crashy",
        [script.step("a"), script.step("b"), script.step("c"), script.step("d")],
        on_transition=log_transition,
    )

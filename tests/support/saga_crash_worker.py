"""A process that runs one saga and blocks inside a step, to be killed with SIGKILL.

    python -m tests.support.saga_crash_worker URL SCHEMA MODE JOURNAL OWNER LEASE_S SAGA_ID

MODE "forward": blocks in step c's action. MODE "backward": step c fails with
FAILED_PRECONDITION and the worker blocks in step b's compensation.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from base.errors import FailedPrecondition
from mesh.db import create_engine, session_factory
from mesh.saga import SagaRunner, SagaStore
from tests.support.saga_scenario import COMPENSATE, Script, crash_definition


async def main(argv: list[str]) -> None:
    url, schema, mode, journal, owner, lease_s, saga_id = argv
    kwargs: dict[str, Any] = (
        {"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}
    )
    engine = create_engine(url, **kwargs)
    script = Script(Path(journal))
    if mode == "forward":
        script.gate("c")  # never released: the process dies in there
    else:
        script.fail_always("c", FailedPrecondition("out of stock", reason="NO_STOCK"))
        script.gate("b", phase=COMPENSATE)
    definition = crash_definition(script)
    runner = SagaRunner(
        SagaStore(session_factory(engine)),
        {definition.name: definition},
        CollectorRegistry(),
        owner=owner,
        lease_s=float(lease_s),
    )
    await runner.run(definition.name, saga_id, {"order_id": f"order-{saga_id}"})
    raise SystemExit("the saga was expected to block")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

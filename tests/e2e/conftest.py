"""One real stack per e2e test module: `tests.support.local_mesh` (the code behind
`meshctl up`, free ports), on `up`'s own authenticated nats-server as `make run` runs
it: every service publishes and consumes with its own NATS identity and permissions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.local_mesh import Stack, local_mesh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with local_mesh(tmp_path_factory.mktemp("stack"), own_nats=True) as s:
        yield s

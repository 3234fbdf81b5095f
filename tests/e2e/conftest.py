"""One real stack per e2e test module: `tests.support.local_mesh` (the code behind
`meshctl up`, free ports), on `up`'s own authenticated nats-server as `make run` runs
it: every service publishes and consumes with its own NATS identity and permissions,
and its edge lets pages of `E2E_PAGE_ORIGIN` call it from a browser (CORS on, as a
project with a storefront runs it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mesh.edge.browsers import EdgeCors
from tests.support.local_mesh import E2E_PAGE_ORIGIN, Stack, local_mesh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with local_mesh(
        tmp_path_factory.mktemp("stack"), own_nats=True, edge_cors=EdgeCors((E2E_PAGE_ORIGIN,))
    ) as s:
        yield s

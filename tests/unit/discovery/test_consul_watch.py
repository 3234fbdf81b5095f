"""Consul's blocking-query rules in the shared watch loop, against a scripted agent."""

from __future__ import annotations

import logging

import pytest

from mesh.discovery.consul_watch import BlockingQueries
from mesh.discovery.lifecycle import Availability, Closer
from mesh.discovery.registry import RegistryUnavailable

QUERIES = BlockingQueries(
    wait_s=2.0, request_timeout_s=1.0, retry_initial_s=0.001, retry_max_s=0.002, queries_per_s=1e6
)


def test_a_query_blocks_from_index_one_on_and_waits_for_the_jitter() -> None:
    assert QUERIES.params(0) == {"index": None, "wait": None}
    assert QUERIES.params(7) == {"index": 7, "wait": "2s"}
    assert QUERIES.timeout_s(0) == 1.0
    assert QUERIES.timeout_s(7) == 1.0 + 2.0 * 17 / 16


async def test_the_index_follows_the_agent_and_starts_over_after_a_reset_or_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the agent answers, in turn: an index, or an outage.
    script: list[int | None] = [0, 5, 9, 3, None, 4]
    asked: list[int] = []
    closer = Closer()

    async def query(index: int) -> tuple[int, str]:
        asked.append(index)
        answer = script.pop(0)
        if not script:
            closer.close()
        if answer is None:
            raise RegistryUnavailable("agent down")
        return answer, f"at {answer}"

    log = logging.getLogger("test.discovery.consul_watch")
    caplog.set_level(logging.INFO, logger=log.name)
    got = [v async for v in QUERIES.follow(query, closer, Availability("agent", log))]
    # Index 0 answers at once and is never sent again (an index is at least 1);
    # 9 -> 3 went backwards (start over); after the outage, ask without blocking.
    assert asked == [0, 1, 5, 9, 0, 0]
    assert got == ["at 0", "at 5", "at 9", "at 3", "at 4"]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "agent unreachable",
        "agent reachable again",
    ]

"""`meshctl status` shows each instance's track (traffic subset)."""

from __future__ import annotations

import pytest

from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.local.status import print_status


async def test_status_has_a_track_column(capsys: pytest.CaptureFixture[str]) -> None:
    registry = StaticRegistry(
        [
            Instance("orders-1", "orders", "127.0.0.1", 1, "1.0", meta={"track": "blue"}),
            Instance("orders-2", "orders", "127.0.0.1", 2, "2.0"),  # no track: its version
        ]
    )
    assert await print_status(registry, ("orders",)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["service", "instance", "pid", "track", "grpc"]
    rows = {line.split()[1]: line.split()[2:4] for line in lines[2:] if line.startswith("orders")}
    # No `meshctl up` supervises them (another registry, compose): no pid to show.
    assert rows == {"orders-1": ["-", "blue"], "orders-2": ["-", "2.0"]}

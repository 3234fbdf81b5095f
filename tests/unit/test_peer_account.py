"""Who is at the other end of a loopback TCP connection, from the kernel's table."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mesh.local.peer_account import available, peer_uid

# Two rows as Linux prints them (little-endian: 127.0.0.1 is 0100007F): a listener on
# 9900 (uid 0) and a client at 127.0.0.1:40000 connected to it, owned by uid 1000;
# then the same ports in TIME_WAIT (06) for uid 7, which must not match.
TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:26AC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:9C40 0100007F:26AC 06 00000000:00000000 00:00000000 00000000     7        0 2 1
   2: 0100007F:9C40 0100007F:26AC 01 00000000:00000000 00:00000000 00000000  1000        0 3 1
"""


def test_the_client_end_of_an_established_connection_names_its_owner(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(TABLE)
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9900), table) == 1000
    assert peer_uid(("127.0.0.1", 40001), ("127.0.0.1", 9900), table) is None
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9901), table) is None
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9900), tmp_path / "none") is None


@pytest.mark.skipif(not available(), reason="Linux's /proc/net/tcp")
def test_a_real_loopback_connection_is_this_account_s() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        with socket.create_connection(ours) as client:
            accepted, peer = server.accept()
            with accepted:
                assert peer == client.getsockname()
                assert peer_uid(peer, ours) == os.getuid()

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


# A dual-stack client (gRPC's C core) at ::ffff:127.0.0.1:40002, uid 1001.
TABLE6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9C42 0000000000000000FFFF00000100007F:26AC 01 00000000:00000000 00:00000000 00000000  1001        0 4 1
"""  # noqa: E501


def test_the_client_end_of_an_established_connection_names_its_owner(tmp_path: Path) -> None:
    table, table6 = tmp_path / "tcp", tmp_path / "tcp6"
    table.write_text(TABLE)
    table6.write_text(TABLE6)
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9900), table, table6) == 1000
    assert peer_uid(("127.0.0.1", 40002), ("127.0.0.1", 9900), table, table6) == 1001
    assert peer_uid(("127.0.0.1", 40001), ("127.0.0.1", 9900), table, table6) is None
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9901), table, table6) is None
    none = tmp_path / "none"
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 9900), none, none) is None


@pytest.mark.skipif(not available(), reason="Linux's /proc/net/tcp6")
def test_a_real_dual_stack_client_of_an_ipv4_server_is_this_account_s() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
            client.connect((f"::ffff:{ours[0]}", ours[1]))
            accepted, peer = server.accept()
            with accepted:
                assert peer[1] == client.getsockname()[1]
                assert peer_uid(peer, ours) == os.getuid()


@pytest.mark.skipif(not available(), reason="Linux's /proc/net/tcp")
def test_a_real_loopback_connection_is_this_account_s() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        with socket.create_connection(ours) as client:
            accepted, peer = server.accept()
            with accepted:
                assert peer == client.getsockname()
                assert peer_uid(peer, ours) == os.getuid()

"""Who is at the other end of a loopback TCP connection, asked of the kernel."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from mesh.local.peer_account import available, peer_uid
from tests.support.other_account import NOBODY, needs_other_account

pytestmark = pytest.mark.skipif(not available(), reason="Linux's sock_diag netlink")


def test_a_loopback_client_is_this_account_s_and_an_unknown_one_is_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        with socket.create_connection(ours) as client:
            accepted, peer = server.accept()
            with accepted:
                assert peer == client.getsockname()
                assert peer_uid(peer, ours) == os.getuid()
                assert peer_uid((peer[0], peer[1] ^ 1), ours) is None
                assert peer_uid(peer, (ours[0], ours[1] ^ 1)) is None


def test_a_dual_stack_client_of_an_ipv4_server_is_found() -> None:
    """gRPC's C core connects to 127.0.0.1 from an AF_INET6 socket (::ffff:127.0.0.1):
    the server sees an IPv4 peer, and the IPv4 lookup must find it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
            client.connect((f"::ffff:{ours[0]}", ours[1]))
            accepted, peer = server.accept()
            with accepted:
                assert peer[1] == client.getsockname()[1]
                assert peer_uid(peer, ours) == os.getuid()


@needs_other_account
def test_another_account_s_client_is_named_as_that_account() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = server.getsockname()
        code = (
            "import socket, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {ours[1]}))\n"
            "print('connected', flush=True)\n"
            "sys.stdin.read()\n"
        )
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        client = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             python, "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert client.stdout is not None and client.stdout.readline().strip() == "connected"
            accepted, peer = server.accept()
            with accepted:
                assert peer_uid(peer, ours) == NOBODY
        finally:
            client.communicate(timeout=10)

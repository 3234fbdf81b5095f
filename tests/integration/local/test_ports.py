"""The free-port check: a listener makes a port busy, TIME_WAIT leftovers do not."""

from __future__ import annotations

import socket

from mesh.local.ports import port_free
from tests.support.ports import in_time_wait


def _time_wait_port() -> int:
    """A port whose server closed an accepted connection first: it sits in TIME_WAIT.

    The listener sets SO_REUSEADDR as Envoy's and gRPC's do (Linux lets a new bind share a
    TIME_WAIT port only when both sockets set it)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.recv(1)  # EOF
        client.close()
    return port


def test_a_port_in_time_wait_is_free() -> None:
    port = _time_wait_port()
    assert in_time_wait(port), "the set-up did not leave a TIME_WAIT socket"
    with socket.socket() as plain:  # what the old check did: it reads as busy
        try:
            plain.bind(("127.0.0.1", port))
            plain_busy = False
        except OSError:
            plain_busy = True
    assert plain_busy
    assert port_free(port)


def test_a_listening_port_is_busy_even_with_so_reuseport() -> None:
    for reuseport in (False, True):
        with socket.socket() as s:
            if reuseport:  # as gRPC servers bind by default
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", 0))
            s.listen()
            assert not port_free(int(s.getsockname()[1]))

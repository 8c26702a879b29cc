"""The gatekeeper's look at an accepted connection's fd, which libzmq owns and may already
have closed (and the number been reused) by the time the monitor event is read."""
from __future__ import annotations

import os
import socket

from taskmesh._gatekeeper import _peer_address


def test_a_tcp_connection_names_its_peer() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                host, port = client.getsockname()
                assert _peer_address(conn.fileno()) == f"{host}:{port}"
                assert conn.fileno() >= 0  # looked at through a duplicate: still open


def test_an_fd_reused_by_a_unix_socket_or_a_pipe_names_no_one() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        assert _peer_address(a.fileno()) is None
        assert _peer_address(r) is None
        open_fds = len(os.listdir("/proc/self/fd"))
        assert _peer_address(w) is None
        assert len(os.listdir("/proc/self/fd")) == open_fds  # the duplicate was closed
    finally:
        a.close(), b.close(), os.close(r), os.close(w)


def test_a_closed_fd_names_no_one() -> None:
    r, w = os.pipe()
    os.close(r), os.close(w)
    assert _peer_address(r) is None

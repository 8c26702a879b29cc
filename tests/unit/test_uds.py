"""The local framed transport (_uds.py): framing, large messages, partial writes, bad input."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from taskmesh._uds import FramedConnection, LocalClient, LocalServer


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return FramedConnection(a), FramedConnection(b)


def pump(sender: FramedConnection, receiver: FramedConnection, want: int) -> list:
    """Alternate writing and reading until ``want`` messages arrived (no threads needed)."""
    got: list = []
    for _ in range(100_000):
        sender.flush()
        msgs = receiver.read()
        assert msgs is not None
        got.extend(msgs)
        if len(got) >= want and not sender.wants_write:
            return got
    raise AssertionError("messages did not arrive")


def test_small_messages_round_trip_in_order():
    a, b = pair()
    sent = [[b"header-%d" % i, b"x" * i] for i in range(300)]
    for m in sent:
        a.queue(m)
    got = pump(a, b, len(sent))
    assert [[bytes(f) for f in m] for m in got] == [[m[0], m[1]] for m in sent]


def test_large_message_arrives_whole_through_partial_writes():
    a, b = pair()
    big = os.urandom(8 * 1024 * 1024)  # far more than a socket buffer: many partial writes
    a.queue([b"hdr", memoryview(big), b""])
    a.queue([b"after"])
    assert not a.flush()  # the kernel could not take it all at once
    got = pump(a, b, 2)
    assert bytes(got[0][0]) == b"hdr" and bytes(got[0][1]) == big and bytes(got[0][2]) == b""
    assert isinstance(got[0][1], memoryview)  # large frames are not copied into bytes again
    assert [bytes(f) for f in got[1]] == [b"after"]


def test_eof_and_garbage():
    a, b = pair()
    a.sock.sendall(struct.pack("<I", 0))  # zero frames: not a message
    with pytest.raises(ValueError):
        b.read()
    a, b = pair()
    a.close()
    assert b.read() is None and b.closed


def test_sending_to_a_closed_peer_drops_quietly():
    a, b = pair()
    b.close()
    a.queue([b"x" * 100_000])
    for _ in range(10):
        if a.flush():
            break
    assert a.closed and not a.wants_write


def test_server_and_client_by_identity():
    name = f"taskmesh-test-{os.getpid()}"
    server = LocalServer(name)
    try:
        client = LocalClient(name, b"Dpeer1", timeout_s=2)
        fds = []
        for _ in range(100):
            fds += server.accept()
            if fds:
                break
        assert len(fds) == 1
        client.send_frames([b"hello", b"world"])
        got = []
        for _ in range(1000):
            got += list(server.read(fds[0]))
            if got:
                break
        assert got == [(b"Dpeer1", [b"hello", b"world"])]
        assert server.send(b"Dpeer1", [b"reply"]) is None
        reply = None
        for _ in range(1000):
            reply = client.recv_frames()
            if reply:
                break
        assert reply == [b"reply"]
        client.close()
        for _ in range(1000):
            list(server.read(fds[0]))
            if not server.has_peer(b"Dpeer1"):
                break
        assert server.closed_peers == [b"Dpeer1"]
    finally:
        server.close()


def test_client_connect_times_out_with_a_clear_error():
    with pytest.raises(ConnectionError, match="taskmesh-nobody"):
        LocalClient(f"taskmesh-nobody-{os.getpid()}", b"x", timeout_s=0.2)


def _read_all(server, fds, rounds=1000):
    got = []
    for _ in range(rounds):
        for fd in fds:
            got += list(server.read(fd))
        if got:
            return got
    return got


def test_reconnect_with_the_same_identity_takes_over_quietly():
    name = f"taskmesh-test-takeover-{os.getpid()}"
    server = LocalServer(name)
    try:
        first = LocalClient(name, b"Nnode1", timeout_s=2)
        fd1 = [fd for _ in range(100) for fd in server.accept()][:1]
        _read_all(server, fd1, rounds=50)  # takes in the identity message
        second = LocalClient(name, b"Nnode1", timeout_s=2)
        fd2 = [fd for _ in range(100) for fd in server.accept()][:1]
        second.send_frames([b"hi"])
        assert _read_all(server, fd2) == [(b"Nnode1", [b"hi"])]
        assert fd1[0] in server.dropped_fds  # the head un-polls it ...
        assert server.closed_peers == []  # ... but the peer is not reported gone
        assert server.has_peer(b"Nnode1")
        first.close()
        second.close()
    finally:
        server.close()


def test_server_reports_joined_peers_when_asked():
    name = f"taskmesh-test-joins-{os.getpid()}"
    server = LocalServer(name, report_joins=True)
    try:
        client = LocalClient(name, b"Speer", timeout_s=2)
        fds = [fd for _ in range(100) for fd in server.accept()][:1]
        client.send_frames([b"first"])
        assert _read_all(server, fds) == [(b"Speer", [b"first"])]
        assert server.joined_peers == [b"Speer"]
        client.close()
    finally:
        server.close()
    quiet = LocalServer(name)  # by default (the head) joins are not collected
    try:
        assert quiet.joined_peers is None
    finally:
        quiet.close()

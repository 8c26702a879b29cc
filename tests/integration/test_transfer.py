"""Node-to-node transfer between two real store processes (tests/integration/_store_node.py):
StoreFetch on B pulls an object from A's arena into B's over TCP on 127.0.0.1; pins on B wait
for it. Byte counters prove the bytes crossed the socket (both arenas are in the same /dev/shm).
Also: one transfer however many ask, fallback to the next source (dead, not holding it, dying
mid-stream), every source failing, an object spilled to disk on the source, a node holding
another cluster secret refused, encryption on and off."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import taskmesh
from taskmesh import _protocol as P
from taskmesh import _transfer as transfer
from taskmesh import _transfer_stream as wire
from taskmesh._secret import ClusterKey, Security
from taskmesh._store.client import StoreClient
from taskmesh._store.shm import SHM_DIR, unlink

from ..support.store import dead_address, random_bytes
from ..support.wait import until

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
KEY = ClusterKey.generate()  # the cluster's secret (every node's unless a test says otherwise)


class StoreNode:
    """One _store_node process: its store socket name, transfer address, and commands."""

    def __init__(self, tmp_path: Path, capacity: int, create_timeout_s: float = 1.0,
                 transfer_timeout_s: float = 3.0, key: ClusterKey = KEY, encrypt: bool = True) -> None:
        self.node_id = uuid.uuid4().hex[:12]
        spill = tmp_path / f"spill-{self.node_id}"
        self.spill = spill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration._store_node", self.node_id, str(capacity),
             str(spill), str(create_timeout_s), str(transfer_timeout_s), str(int(encrypt))],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **key.env()})
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"the store node process exited with {self.proc.returncode}")
        info = json.loads(line)
        self.store, self.address, self.arena = info["store"], info["transfer"], info["arena"]

    def source(self) -> list[str]:
        return [self.node_id, self.address]

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self.ask({"op": "stats"})

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def nodes(tmp_path):
    """Start store nodes with ``nodes(capacity, ...)``; afterwards: every process has exited
    cleanly, its arena and spill directory are gone."""
    started: list[StoreNode] = []

    def start(capacity: int = 64 * MiB, **kw) -> StoreNode:
        node = StoreNode(tmp_path, capacity, **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
    for node in started:
        leftover = os.path.exists(os.path.join(SHM_DIR, node.arena))
        unlink(node.arena)
        assert node.proc.returncode == 0, f"store node exited with {node.proc.returncode}"
        assert not leftover, f"arena {node.arena} was left in /dev/shm"
        assert not node.spill.exists() or not any(node.spill.iterdir()), "spill files left"


def put(client: StoreClient, oid: bytes, data: bytes | np.ndarray) -> None:
    raw = memoryview(data).cast("B")
    view = client.create(oid, raw.nbytes)
    view[:] = raw
    client.seal(oid)
    del view


def fetch(client: StoreClient, oid: bytes, size: int, sources: list) -> None:
    client._send(P.StoreFetch(oid, size, sources))  # (StoreClient.fetch may not exist yet)


def pinned_bytes(client: StoreClient, oid: bytes) -> bytes:
    [view] = client.pin([oid], timeout_s=20)
    try:
        return bytes(view)
    finally:
        client.unpin([oid])
        del view


class FakeSource:
    """A transfer endpoint of the cluster in this process: after the handshake,
    ``handler(session, object_id)`` answers each request."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, transfer.TransferError, wire._Refused):
                session = wire._server_handshake(conn, Security(KEY), transfer.TransferCounters(), 5)
                oid = session.recv_message(wire.MAX_OBJECT_ID)
                self.requests += 1
                self.handler(session, oid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def fake_source():
    servers: list[FakeSource] = []

    def make(handler) -> FakeSource:
        servers.append(FakeSource(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def half_then_close(data: bytes):
    """A source that promises ``data`` and dies after sending half of it."""
    def handler(session, oid: bytes) -> None:
        session.send_message(wire._response(wire.OK, len(data)))
        session.send_chunk(memoryview(data)[:len(data) // 2], False)
    return handler


def not_here(session, oid: bytes) -> None:
    session.send_message(wire._response(wire.NOT_HERE, 0, "no such object here"))


# ------------------------------------------------------------------ tests


def test_an_object_written_on_a_is_pulled_into_bs_arena_and_counted_on_both(nodes):
    a, b = nodes(), nodes()
    data = random_bytes(12 * MiB)
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"obj-1", data)
        fetch(cb, b"obj-1", len(data), [a.source()])
        [view] = cb.pin([b"obj-1"], timeout_s=20)
        assert view.readonly and view.nbytes == len(data)
        assert bytes(view) == data
        # it is B's own copy: in B's arena, not A's
        assert cb.arena.name == b.arena != a.arena
        cb.unpin([b"obj-1"])
        del view
    sa, sb = a.stats(), b.stats()
    assert sa["transfer_objects_sent"] == 1 and sb["transfer_objects_received"] == 1
    assert sa["transfer_raw_bytes_sent"] == len(data) == sb["transfer_raw_bytes_received"]
    assert sb["transfer_bytes_received"] >= len(data), "random data crosses the wire whole"
    assert sb["transfer_bytes_received"] == sa["transfer_bytes_sent"]
    assert sb["fetched"] == [b"obj-1".hex()] and sb["fetches_in_flight"] == 0
    assert sa["num_pinned"] == 0, "A released the transfer's pin"
    # a second fetch of an object B holds does nothing
    with StoreClient(b.store) as cb:
        fetch(cb, b"obj-1", len(data), [a.source()])
        assert pinned_bytes(cb, b"obj-1") == data
    assert a.stats()["transfer_objects_sent"] == 1
    # deleting the copy on B frees it and says so
    b.ask({"op": "delete", "ids": [b"obj-1".hex()]})
    assert b.stats()["freed"] == [b"obj-1".hex()]


def test_zeros_are_compressed_on_the_wire(nodes):
    a, b = nodes(), nodes()
    size = 16 * MiB
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"zeros", bytes(size))
        fetch(cb, b"zeros", size, [a.source()])
        assert pinned_bytes(cb, b"zeros") == bytes(size)
    sb = b.stats()
    assert sb["transfer_raw_bytes_received"] == size
    assert sb["transfer_bytes_received"] < size // 50
    assert a.stats()["transfer_chunks_compressed"] == a.stats()["transfer_chunks_sent"] > 0


def test_many_concurrent_fetches_and_pins_of_one_object_make_one_transfer(nodes):
    a, b = nodes(), nodes()
    data = random_bytes(8 * MiB, seed=1)
    with StoreClient(a.store) as ca:
        put(ca, b"shared", data)
    results: list = []

    def reader() -> None:
        try:
            with StoreClient(b.store) as cb:
                fetch(cb, b"shared", len(data), [a.source()])
                results.append(pinned_bytes(cb, b"shared") == data)
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 8
    assert a.stats()["transfer_objects_sent"] == 1
    sb = b.stats()
    assert sb["transfer_objects_received"] == 1 and sb["transfer_raw_bytes_received"] == len(data)
    assert sb["fetched"] == [b"shared".hex()]


def test_dead_and_empty_sources_are_skipped_for_the_next_one(nodes, fake_source):
    a, b = nodes(), nodes()
    data = random_bytes(4 * MiB, seed=2)
    empty = fake_source(not_here)
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"fallback", data)
        fetch(cb, b"fallback", len(data),
              [["dead", dead_address()], ["empty", empty.address], a.source()])
        assert pinned_bytes(cb, b"fallback") == data
    assert empty.requests == 1
    sb = b.stats()
    assert sb["transfer_fetch_failures"] == 2 and sb["transfer_fetches_failed"] == 0
    assert a.stats()["transfer_objects_sent"] == 1


def test_a_source_dying_mid_transfer_makes_the_fetch_use_the_next(nodes, fake_source):
    a, b = nodes(), nodes()
    data = random_bytes(6 * MiB, seed=3)
    dying = fake_source(half_then_close(data))
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"mid", data)
        fetch(cb, b"mid", len(data), [["dying", dying.address], a.source()])
        assert pinned_bytes(cb, b"mid") == data
    assert dying.requests == 1, "a truncated stream is not retried on the same source"
    sb = b.stats()
    assert sb["transfer_fetch_failures"] == 1 and sb["transfer_objects_received"] == 1


def test_every_source_failing_makes_the_pin_raise_object_lost_naming_the_object(nodes, fake_source):
    b = nodes()
    dying = fake_source(half_then_close(random_bytes(2 * MiB)))
    empty = fake_source(not_here)
    oid = b"lost-everywhere"
    with StoreClient(b.store) as cb:
        fetch(cb, oid, 2 * MiB, [["n1", dead_address()], ["n2", empty.address], ["n3", dying.address]])
        with pytest.raises(taskmesh.ObjectLostError) as info:
            cb.pin([oid], timeout_s=20)
        message = str(info.value)
        assert oid.hex() in message
        assert "node n1" in message and "node n2" in message and "node n3" in message
        assert "no such object here" in message and "TruncatedTransfer" in message
        # a later reader learns the same
        with pytest.raises(taskmesh.ObjectLostError, match=oid.hex()):
            cb.pin([oid], timeout_s=5)
    sb = b.stats()
    assert sb["transfer_fetches_failed"] == 1 and sb["fetches_in_flight"] == 0
    assert sb["used_bytes"] == 0, "the aborted fetch gave its space back"
    assert sb["fetched"] == []


def test_an_object_spilled_to_disk_on_the_source_is_restored_and_served(nodes):
    a = nodes(capacity=8 * MiB)  # two 3 MiB objects fit, three do not
    b = nodes()
    objs = {name: random_bytes(3 * MiB, seed=i) for i, name in enumerate((b"s1", b"s2", b"s3"))}
    with StoreClient(a.store) as ca:
        for oid, data in objs.items():
            put(ca, oid, data)
    assert a.stats()["num_on_disk"] >= 1
    with StoreClient(b.store) as cb:
        fetch(cb, b"s1", 3 * MiB, [a.source()])  # the first one went to disk
        assert pinned_bytes(cb, b"s1") == objs[b"s1"]
    sa = a.stats()
    assert sa["total_restores"] == 1 and sa["transfer_objects_sent"] == 1 and sa["num_pinned"] == 0


def test_a_fetch_larger_than_the_store_fails_its_readers_clearly(nodes):
    a, b = nodes(), nodes(capacity=4 * MiB)
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"big", random_bytes(6 * MiB))
        fetch(cb, b"big", 6 * MiB, [a.source()])
        with pytest.raises(taskmesh.ObjectLostError) as info:
            cb.pin([b"big"], timeout_s=10)
        assert b"big".hex() in str(info.value) and "larger than this node's object store" in str(info.value)
    assert a.stats()["transfer_objects_sent"] == 0


def test_closing_a_node_stops_a_fetch_stuck_on_a_silent_source_at_once(nodes, fake_source):
    silent_done = threading.Event()
    silent = fake_source(lambda session, oid: silent_done.wait(30))  # accepts, never answers
    b = nodes(transfer_timeout_s=30.0)
    with StoreClient(b.store) as cb:
        fetch(cb, b"stuck", MiB, [["silent", silent.address]])
        until(lambda: silent.requests, timeout=5, interval=0.01, what="the silent source's request")
        assert silent.requests == 1 and b.stats()["fetches_in_flight"] == 1
    started = time.monotonic()
    b.stop()
    assert time.monotonic() - started < 3.0
    silent_done.set()


def test_local_clients_cannot_seal_or_abort_an_object_being_fetched(nodes, fake_source):
    data = random_bytes(2 * MiB, seed=7)
    go_on = threading.Event()

    def slow(session, oid: bytes) -> None:  # half the object, a pause, the rest
        session.send_message(wire._response(wire.OK, len(data)))
        session.send_chunk(memoryview(data)[:MiB], False)
        go_on.wait(10)
        session.send_chunk(memoryview(data)[MiB:], False)

    source = fake_source(slow)
    b = nodes()
    with StoreClient(b.store) as cb:
        fetch(cb, b"slow", len(data), [["slow", source.address]])
        until(lambda: source.requests, timeout=5, interval=0.01, what="the slow source's request")
        cb.seal(b"slow")  # both ignored (logged): the bytes are still arriving
        cb.abort(b"slow")
        assert b.stats()["fetches_in_flight"] == 1
        go_on.set()
        assert pinned_bytes(cb, b"slow") == data
    assert b.stats()["fetched"] == [b"slow".hex()]


def test_a_source_answers_an_error_when_the_object_stays_unreadable_and_releases_the_late_pin(nodes):
    a = nodes(transfer_timeout_s=0.5)  # A's serving thread waits this long for its pin
    b = nodes()
    data = random_bytes(MiB, seed=8)
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        view = ca.create(b"unsealed", len(data))  # being written on A: not readable yet
        fetch(cb, b"unsealed", len(data), [a.source()])
        with pytest.raises(taskmesh.ObjectLostError, match="did not become readable within 0.5 s"):
            cb.pin([b"unsealed"], timeout_s=10)
        view[:] = data
        ca.seal(b"unsealed")  # the pin A's loop asked for is granted now, to nobody: released
        del view
        until(lambda: a.stats()["num_pinned"] == 0, timeout=5, interval=0.01,
              what="A to release the late pin")
        sa = a.stats()
        assert sa["num_pinned"] == 0 and sa["transfer_serve_failures"] == 1
        # a new fetch now succeeds
        fetch(cb, b"unsealed", len(data), [a.source()])
        assert pinned_bytes(cb, b"unsealed") == data


def test_a_node_holding_another_secret_gets_nothing_and_its_readers_learn_why(nodes):
    a, b = nodes(), nodes(key=ClusterKey.generate())
    data = random_bytes(2 * MiB, seed=9)
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"guarded", data)
        fetch(cb, b"guarded", len(data), [a.source()])
        with pytest.raises(taskmesh.ObjectLostError) as info:
            cb.pin([b"guarded"], timeout_s=20)
        assert b"guarded".hex() in str(info.value) and "another cluster secret" in str(info.value)
    # A counts once it checked the proof B sent last
    until(lambda: a.stats()["transfer_refused"], timeout=5, interval=0.01,
          what="A to count the refusal")
    sa, sb = a.stats(), b.stats()
    assert sa["transfer_refused"] == 1, "A refused B's connection, and counted it"
    assert sa["transfer_objects_sent"] == sa["transfer_raw_bytes_sent"] == sa["num_pinned"] == 0
    assert sb["transfer_raw_bytes_received"] == 0 and sb["transfer_fetches_failed"] == 1
    assert sb["used_bytes"] == 0


@pytest.mark.parametrize("encrypt_a, encrypt_b", [(False, False), (True, False), (False, True)])
def test_encryption_is_off_only_when_both_nodes_turn_it_off(nodes, encrypt_a, encrypt_b):
    a, b = nodes(encrypt=encrypt_a), nodes(encrypt=encrypt_b)
    data = random_bytes(4 * MiB + 8, seed=10)  # 9 chunks of at most 512 KiB, all raw
    with StoreClient(a.store) as ca, StoreClient(b.store) as cb:
        put(ca, b"either", data)
        fetch(cb, b"either", len(data), [a.source()])
        assert pinned_bytes(cb, b"either") == data
    sb = b.stats()
    chunks = -(-len(data) // wire.DEFAULT_CHUNK_SIZE)
    beyond = sb["transfer_bytes_received"] - len(data)
    tags = chunks * wire.TAG_SIZE
    plain = (wire.SERVER_HELLO_SIZE + wire.FRAME_HEADER_SIZE + wire.RESPONSE_HEADER_SIZE
             + wire.TAG_SIZE + chunks * wire.CHUNK_HEADER_SIZE)
    assert beyond == (plain + tags if encrypt_a or encrypt_b else plain)

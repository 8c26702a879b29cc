"""The transfer stream (taskmesh/_transfer.py) over real sockets in this process: round trips
of incompressible, zero and mixed data with the counters showing what crossed the wire; lz4 only
where it pays; truncated and tampered streams detected, never returned; "not here", wrong peers,
time-outs, cancellation, and the order in which sources are tried."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest

from taskmesh import _transfer as T

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
CHUNK = 1 * MiB


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).random(n // 8).tobytes()


class Objects(dict):
    """object id -> bytes, served by a TransferServer; counts opens and closes."""

    def __init__(self, **kw: bytes) -> None:
        super().__init__({k.encode(): v for k, v in kw.items()})
        self.opened = 0
        self.closed = 0

    @contextlib.contextmanager
    def open(self, oid: bytes):
        if oid not in self:
            raise T.NotHere(f"object {oid.hex()} is not held here")
        self.opened += 1
        try:
            yield memoryview(self[oid])
        finally:
            self.closed += 1


@pytest.fixture
def serve():
    """``serve(objects, **kw)`` -> a started TransferServer on 127.0.0.1; all closed afterwards."""
    servers: list[T.TransferServer] = []

    def start(objects: Objects, **kw) -> T.TransferServer:
        server = T.TransferServer("127.0.0.1", objects.open, chunk_size=kw.pop("chunk_size", CHUNK), **kw)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Recorder:
    """A stand-in socket that records what send_object writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendmsg(self, buffers) -> int:
        n = 0
        for b in buffers:
            self.data += b
            n += len(b)
        return n


def stream_of(data: bytes, **kw) -> bytes:
    """The exact bytes a server sends for ``data`` (response header and chunks)."""
    rec = Recorder()
    T.send_object(rec, memoryview(data), T.TransferCounters(), chunk_size=CHUNK, **kw)  # type: ignore[arg-type]
    return bytes(rec.data)


class RawSource:
    """A listening socket whose connections get ``reply(attempt)`` bytes after the request, then
    are closed (``None``: keep the connection open, silent, until closed)."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.attempts = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = conn.recv(T.REQUEST_HEADER_SIZE, socket.MSG_WAITALL)
            conn.recv(T._REQUEST.unpack(head)[2], socket.MSG_WAITALL)
            with self.lock:
                self.attempts += 1
                attempt = self.attempts
            data = self.reply(attempt)
            if data is None:
                self.stop.wait(20)
                return
            with contextlib.suppress(OSError):
                conn.sendall(data)

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def raw_source():
    sources: list[RawSource] = []

    def start(reply) -> RawSource:
        sources.append(RawSource(reply))
        return sources[-1]

    yield start
    for s in sources:
        s.close()


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def overhead(size: int, chunk: int = CHUNK) -> int:
    """Wire bytes beyond the object's for an uncompressed stream."""
    return T.RESPONSE_HEADER_SIZE + -(-size // chunk) * T.CHUNK_HEADER_SIZE


# ------------------------------------------------------------------ the compression rule


def test_compression_is_chosen_per_chunk_from_a_sample():
    rnd = memoryview(random_bytes(4 * MiB))
    enc, wire = T._encode(rnd, True)
    assert enc == T.RAW and wire is rnd, "random float64 goes raw, as the same view (no copy)"
    enc, wire = T._encode(memoryview(bytes(4 * MiB)), True)
    assert enc == T.LZ4 and len(wire) < 4 * MiB // 100
    pattern = memoryview(np.tile(np.arange(1000, dtype=np.float64), 512).tobytes())
    assert T._encode(pattern, True)[0] == T.LZ4
    assert T._encode(memoryview(bytes(16 << 10)), True)[0] == T.RAW, "too small to bother"
    assert T._encode(memoryview(bytes(4 * MiB)), False)[0] == T.RAW, "compression turned off"
    # compressible slices but an incompressible chunk as a whole: the full try decides, raw
    mixed = bytearray(random_bytes(4 * MiB, seed=5))
    step = len(mixed) // 4
    for i in range(4):
        mixed[i * step:i * step + 2048] = bytes(2048)
    assert T._encode(memoryview(mixed), True)[0] == T.RAW


# ------------------------------------------------------------------ round trips


def test_the_stream_round_trips_over_a_socketpair():
    data = random_bytes(3 * MiB) + bytes(2 * MiB) + b"tail"
    objects = Objects(x=data)
    server_end, client_end = socket.socketpair()
    counters = T.TransferCounters()
    thread = threading.Thread(target=T.serve_connection,
                              args=(server_end, objects.open, counters),
                              kwargs={"chunk_size": CHUNK})
    thread.start()
    try:
        client_end.sendall(T._REQUEST.pack(T.MAGIC_REQUEST, T.VERSION, 1) + b"x")
        head = client_end.recv(T.RESPONSE_HEADER_SIZE, socket.MSG_WAITALL)
        magic, version, status, size, msg_len = T._RESPONSE.unpack(head)
        assert (magic, version, status, size, msg_len) == (T.MAGIC_RESPONSE, T.VERSION, T.OK, len(data), 0)
        dest = bytearray(size)
        got = T.TransferCounters()
        T._recv_chunks(client_end, memoryview(dest), got)
        assert dest == data
        # the connection serves a second request; its end closes it cleanly
        client_end.sendall(T._REQUEST.pack(T.MAGIC_REQUEST, T.VERSION, 1) + b"y")
        head = client_end.recv(T.RESPONSE_HEADER_SIZE, socket.MSG_WAITALL)
        status, _, msg_len = T._RESPONSE.unpack(head)[2:]
        assert status == T.NOT_HERE
        assert client_end.recv(msg_len, socket.MSG_WAITALL) == b"object 79 is not held here"
        client_end.shutdown(socket.SHUT_WR)
        thread.join(5)
        assert not thread.is_alive()
    finally:
        client_end.close()
        server_end.close()
    assert objects.opened == objects.closed == 1
    snap = counters.snapshot()
    assert snap["objects_sent"] == 1 and snap["raw_bytes_sent"] == len(data)
    assert snap["chunks_sent"] == 6 and snap["chunks_compressed"] == 2  # the two zero chunks
    assert got.snapshot()["raw_bytes_received"] == len(data)


@pytest.mark.parametrize("kind", ["random", "zeros", "mixed"])
def test_fetch_into_round_trips_and_the_counters_show_what_crossed(serve, kind):
    size = 6 * MiB
    data = {"random": random_bytes(size),
            "zeros": bytes(size),
            "mixed": bytes(3 * MiB) + random_bytes(3 * MiB, seed=9)}[kind]
    server = serve(Objects(obj=data))
    counters = T.TransferCounters()
    dest = bytearray(size)
    assert T.fetch_into(b"obj", memoryview(dest), [server.address], counters=counters) == server.address
    assert dest == data
    got = counters.snapshot()
    # the serving thread counts once its last send returned, which may be just after the
    # receiver has every byte: wait for its count, with a deadline
    deadline = time.monotonic() + 5
    while server.counters.snapshot()["objects_sent"] < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    sent = server.counters.snapshot()
    assert got["raw_bytes_received"] == size == sent["raw_bytes_sent"]
    assert got["objects_received"] == 1 == sent["objects_sent"]
    assert got["bytes_received"] == sent["bytes_sent"]
    assert got["bytes_sent"] == sent["bytes_received"] == T.REQUEST_HEADER_SIZE + 3
    assert got["corrupt_chunks"] == got["fetch_failures"] == 0
    if kind == "random":
        assert got["bytes_received"] == size + overhead(size)
        assert sent["chunks_compressed"] == 0
    elif kind == "zeros":
        assert got["bytes_received"] < size // 100
        assert sent["chunks_compressed"] == sent["chunks_sent"] == 6
    else:
        assert sent["chunks_compressed"] == 3
        assert 3 * MiB < got["bytes_received"] < 3 * MiB + 64 * 1024


def test_fetch_without_a_known_size_and_empty_objects(serve):
    server = serve(Objects(big=random_bytes(2 * MiB + 8), empty=b""))
    got = T.fetch(b"big", [server.address])
    assert isinstance(got, memoryview) and not got.readonly
    assert bytes(got) == random_bytes(2 * MiB + 8)
    assert bytes(T.fetch(b"big", [server.address], size=2 * MiB + 8)) == random_bytes(2 * MiB + 8)
    assert T.fetch(b"empty", [server.address]).nbytes == 0
    with pytest.raises(T.FetchFailed, match="holds 2097160 bytes under this id, not 5"):
        T.fetch_into(b"big", memoryview(bytearray(5)), [server.address])


# ------------------------------------------------------------------ failures are detected


def test_a_truncated_stream_raises_and_the_next_source_is_used(serve, raw_source):
    data = random_bytes(4 * MiB, seed=1)
    full = stream_of(data)
    cut = raw_source(lambda attempt: full[:len(full) // 2])
    good = serve(Objects(obj=data))
    # alone, the truncation is an error naming it
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"obj", memoryview(bytearray(len(data))), [cut.address])
    [(label, exc)] = info.value.failures
    assert label == cut.address and isinstance(exc, T.TruncatedTransfer)
    assert "ended after" in str(exc) and f"of {len(data)} bytes" in str(exc)
    assert cut.attempts == 1, "a truncated stream is not retried on the same source"
    # with a second source, the fetch succeeds
    dest = bytearray(len(data))
    counters = T.TransferCounters()
    assert T.fetch_into(b"obj", memoryview(dest), [["cut", cut.address], ["good", good.address]],
                        counters=counters) == good.address
    assert dest == data
    assert counters.fetch_failures == 1 and counters.objects_received == 1


@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_a_flipped_byte_is_caught_retried_once_then_the_source_is_given_up(raw_source, kind):
    data = random_bytes(3 * MiB, seed=2) if kind == "random" else bytes(3 * MiB)
    good = stream_of(data)
    bad = bytearray(good)
    bad[-100] ^= 0x40  # in the last chunk's payload (raw bytes, or lz4 data)
    always = raw_source(lambda attempt: bytes(bad))
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"obj", memoryview(bytearray(len(data))), [always.address])
    [(_, exc)] = info.value.failures
    assert isinstance(exc, T.CorruptTransfer)
    assert always.attempts == 2, "corruption gets one retry of the same source"
    # corrupt once, then fine: the retry delivers
    once = raw_source(lambda attempt: bytes(bad) if attempt == 1 else good)
    counters = T.TransferCounters()
    dest = bytearray(len(data))
    T.fetch_into(b"obj", memoryview(dest), [once.address], counters=counters)
    assert dest == data
    assert counters.corrupt_chunks == 1 and counters.fetch_failures == 1 and once.attempts == 2


def test_impossible_lengths_are_corruption(raw_source):
    data = random_bytes(MiB)
    ok = T._response(T.OK, len(data))
    too_long = ok + T._CHUNK.pack(T.RAW, len(data) + 1, len(data) + 1, 0) + data
    lying = ok + T._CHUNK.pack(T.RAW, len(data), 10, 0) + data
    unknown = ok + T._CHUNK.pack(7, len(data), len(data), 0) + data
    for stream, words in ((too_long, "a chunk of"), (lying, "on the wire"), (unknown, "encoding 7")):
        source = raw_source(lambda attempt, stream=stream: stream)
        with pytest.raises(T.FetchFailed, match=words) as info:
            T.fetch_into(b"obj", memoryview(bytearray(len(data))), [source.address])
        assert isinstance(info.value.failures[0][1], T.CorruptTransfer)


def test_not_here_and_the_order_of_sources(serve, raw_source):
    data = random_bytes(MiB, seed=3)
    empty = serve(Objects())
    holder = serve(Objects(obj=data))
    garbage = raw_source(lambda attempt: b"HTTP/1.1 400 Bad Request\r\n\r\n")
    counters = T.TransferCounters()
    sources = [["dead", dead_address()], ["empty", empty.address], ["web", garbage.address],
               "not an address", ["holder", holder.address], ["never", dead_address()]]
    dest = bytearray(len(data))
    assert T.fetch_into(b"obj", memoryview(dest), sources, counters=counters) == holder.address
    assert dest == data
    assert counters.fetch_failures == 4  # dead, empty, web, the malformed one
    assert empty.counters.objects_sent == 0
    # nobody has it: one error naming the object and every source's failure, in order
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"nope", memoryview(bytearray(3)), [["dead", dead_address()], ["empty", empty.address],
                                                        ["web", garbage.address]])
    message = str(info.value)
    assert message.startswith(f"could not fetch object {b'nope'.hex()} (3 bytes) from any of its 3 source(s)")
    assert message.index("node dead") < message.index("node empty") < message.index("node web")
    assert "ConnectionRefusedError" in message
    assert f"NotHere: object {b'nope'.hex()} is not held here" in message
    assert "not a taskmesh transfer endpoint" in message
    with pytest.raises(T.FetchFailed, match="no source was given"):
        T.fetch(b"obj", [])


def test_a_wrong_peer_or_version_is_refused_clearly(serve):
    server = serve(Objects(obj=b"x" * 100))
    host, port = T.split_address(server.address)
    for request, words in ((b"GET / HTTP/1.1\r\n\r\n", b"not a taskmesh transfer request"),
                           (T._REQUEST.pack(T.MAGIC_REQUEST, 99, 3) + b"obj",
                            b"transfer protocol version 99 requested, this node speaks 1")):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(request)
            magic, _, status, _, msg_len = T._RESPONSE.unpack(s.recv(T.RESPONSE_HEADER_SIZE, socket.MSG_WAITALL))
            assert magic == T.MAGIC_RESPONSE and status == T.ERROR
            assert words in s.recv(msg_len, socket.MSG_WAITALL)
            assert s.recv(1) == b"", "the server hangs up"
    assert server.counters.serve_failures == 2


def test_a_source_of_another_version_is_named_as_such(raw_source):
    newer = raw_source(lambda attempt: T._RESPONSE.pack(T.MAGIC_RESPONSE, 2, T.OK, 10, 0))
    with pytest.raises(T.FetchFailed, match="it speaks transfer protocol version 2, this process 1"):
        T.fetch(b"obj", [newer.address])


def test_a_silent_source_times_out_and_a_cancel_stops_a_fetch_at_once(raw_source):
    silent = raw_source(lambda attempt: None)
    started = time.monotonic()
    with pytest.raises(T.FetchFailed, match="nothing arrived for 0.3 s"):
        T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address], timeout_s=0.3)
    assert time.monotonic() - started < 3

    cancel = T.Cancellation()
    outcome: list = []

    def run() -> None:
        try:
            T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address, dead_address()],
                         timeout_s=20, cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while silent.attempts < 2 and time.monotonic() < deadline:  # the timed-out one, and this one
        time.sleep(0.01)
    started = time.monotonic()
    cancel.cancel()
    thread.join(5)
    assert time.monotonic() - started < 1
    assert len(outcome) == 1 and isinstance(outcome[0], T.TransferCancelled)
    with pytest.raises(T.TransferCancelled):  # and no new fetch starts
        T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address], cancel=cancel)


def test_the_server_unpins_when_the_peer_goes_away_and_closes_promptly(serve):
    data = random_bytes(64 * MiB, seed=4)
    objects = Objects(obj=data)
    server = serve(objects)
    host, port = T.split_address(server.address)
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(T._REQUEST.pack(T.MAGIC_REQUEST, T.VERSION, 3) + b"obj")
    s.recv(T.RESPONSE_HEADER_SIZE + 1000, socket.MSG_WAITALL)  # a little, then hang up
    s.close()
    deadline = time.monotonic() + 5
    while objects.closed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert objects.opened == objects.closed == 1
    assert server.counters.serve_failures == 1 and server.counters.objects_sent == 0
    # a connection in the middle of a stream is cut by close()
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(T._REQUEST.pack(T.MAGIC_REQUEST, T.VERSION, 3) + b"obj")
    s.recv(1000)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2
    assert objects.opened == objects.closed == 2
    s.close()


def test_counters_are_thread_safe_and_flat():
    counters = T.TransferCounters()

    def bump() -> None:
        for _ in range(10_000):
            counters.add(bytes_sent=2, corrupt_chunks=1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counters.snapshot()
    assert snap["bytes_sent"] == 80_000 and snap["corrupt_chunks"] == 40_000
    assert set(snap) == set(T.TransferCounters.FIELDS) and all(type(v) is int for v in snap.values())
    assert counters.bytes_sent == 80_000

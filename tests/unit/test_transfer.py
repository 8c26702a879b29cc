"""The transfer stream (taskmesh/_transfer.py) over real sockets in this process: round trips
of incompressible, zero and mixed data, encrypted or not, with the counters showing what crossed
the wire; lz4 only where it pays; truncated and tampered streams detected, never returned; "not
here", wrong peers, time-outs, cancellation, and the order in which sources are tried. Security:
peers without the cluster secret, of another version, sending garbage or a pickle are refused,
counted and never interpreted, and the server keeps serving; a byte changed on the way fails
authentication; with encryption on, no plaintext crosses the wire."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pytest

from taskmesh import _transfer as T
from taskmesh import _transfer_stream as W
from taskmesh._secret import ClusterKey, Security

from ..support.store import dead_address, random_bytes
from ..support.wait import until

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
CHUNK = 1 * MiB
KEY = ClusterKey.generate()
SECURE = Security(KEY)  # the default: authenticated and encrypted
PLAIN = Security(KEY, encrypt=False)  # authenticated, chunks in the clear
OTHER = Security(ClusterKey.generate())  # another cluster's secret


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
    """``serve(objects, **kw)`` -> a started TransferServer on 127.0.0.1 (``security``: SECURE
    unless given); all closed afterwards."""
    servers: list[T.TransferServer] = []

    def start(objects: Objects, **kw) -> T.TransferServer:
        kw.setdefault("security", SECURE)
        server = T.TransferServer("127.0.0.1", objects.open, chunk_size=kw.pop("chunk_size", CHUNK), **kw)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Recorder:
    """A stand-in socket that records what a session writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendmsg(self, buffers) -> int:
        n = 0
        for b in buffers:
            self.data += b
            n += len(b)
        return n


def chunks_of(data: bytes, **kw) -> bytes:
    """The exact bytes a server sends for ``data`` after the OK response, unencrypted (they do
    not depend on the session's keys then)."""
    rec = Recorder()
    session = W._Session(rec, T.TransferCounters(), send_key=bytes(32), recv_key=bytes(32),  # type: ignore[arg-type]
                         encrypt=False)
    view = memoryview(data)
    for pos in range(0, len(data), CHUNK):
        session.send_chunk(view[pos:pos + CHUNK], kw.get("compress", True))
    return bytes(rec.data)


def ok(data: bytes) -> bytes:
    """The body of an OK response for ``data``."""
    return W._response(W.OK, len(data))


class RawSource:
    """A listening socket standing in for a server. With ``security`` (PLAIN by default), it
    does the server's handshake and reads the request, then answers ``reply(attempt)``: a
    (response body, bytes that follow it as they are), then closes; ``None``: keeps the
    connection open, silent, until closed. With ``security=None``, it reads the client's hello
    and answers ``reply(attempt)`` bytes instead of a handshake."""

    def __init__(self, reply, security: Security | None = PLAIN) -> None:
        self.reply = reply
        self.security = security
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
        with conn, contextlib.suppress(OSError, T.TransferError, W._Refused):
            session = None
            if self.security is None:
                conn.recv(W.CLIENT_HELLO_SIZE, socket.MSG_WAITALL)
            else:
                session = W._server_handshake(conn, self.security, T.TransferCounters(), 5)
                conn.settimeout(20)
                session.recv_message(W.MAX_OBJECT_ID)
            with self.lock:
                self.attempts += 1
                attempt = self.attempts
            answer = self.reply(attempt)
            if answer is None:
                self.stop.wait(20)
            elif session is None:
                conn.sendall(answer)
            else:
                body, rest = answer
                session.send_message(body)
                conn.sendall(rest)

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def raw_source():
    sources: list[RawSource] = []

    def start(reply, **kw) -> RawSource:
        sources.append(RawSource(reply, **kw))
        return sources[-1]

    yield start
    for s in sources:
        s.close()


def overhead(size: int, chunk: int = CHUNK, encrypt: bool = True) -> int:
    """Bytes a fetching side receives beyond the object's for an uncompressed stream: the
    server hello, the sealed response, the chunk headers (and tags)."""
    per_chunk = W.CHUNK_HEADER_SIZE + (W.TAG_SIZE if encrypt else 0)
    return (W.SERVER_HELLO_SIZE + W.FRAME_HEADER_SIZE + W.RESPONSE_HEADER_SIZE + W.TAG_SIZE
            + -(-size // chunk) * per_chunk)


#: what a fetching side sends for a request of an object id of ``n`` bytes
def request_bytes(n: int) -> int:
    return W.CLIENT_HELLO_SIZE + W.PROOF_SIZE + W.FRAME_HEADER_SIZE + n + W.TAG_SIZE


class Proxy:
    """A TCP proxy in front of ``upstream`` that records the bytes going each way, and may
    flip one byte of what the server sends (``flip_at``: its offset in the server's stream)."""

    def __init__(self, upstream: str, flip_at: int | None = None) -> None:
        self.upstream = T.split_address(upstream)
        self.flip_at = flip_at
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=10)
            self.socks += [client, server]
            for args in ((client, server, self.to_server, None), (server, client, self.to_client, self.flip_at)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray, flip_at: int | None) -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                data = bytearray(data)
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data[flip_at - seen] ^= 0x01
                seen += len(data)
                record += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.accepter.join(5)
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def proxy():
    proxies: list[Proxy] = []

    def start(upstream: str, **kw) -> Proxy:
        proxies.append(Proxy(upstream, **kw))
        return proxies[-1]

    yield start
    for p in proxies:
        p.close()


def fetch_all(address: str, oid: bytes, size: int, security: Security = SECURE, **kw) -> bytes:
    dest = bytearray(size)
    T.fetch_into(oid, memoryview(dest), [address], security=security, **kw)
    return bytes(dest)


# ------------------------------------------------------------------ the compression rule


def test_compression_is_chosen_per_chunk_from_a_sample():
    rnd = memoryview(random_bytes(4 * MiB))
    enc, wire = W._encode(rnd, True)
    assert enc == W.RAW and wire is rnd, "random float64 goes raw, as the same view (no copy)"
    enc, wire = W._encode(memoryview(bytes(4 * MiB)), True)
    assert enc == W.LZ4 and len(wire) < 4 * MiB // 100
    pattern = memoryview(np.tile(np.arange(1000, dtype=np.float64), 512).tobytes())
    assert W._encode(pattern, True)[0] == W.LZ4
    assert W._encode(memoryview(bytes(16 << 10)), True)[0] == W.RAW, "too small to bother"
    assert W._encode(memoryview(bytes(4 * MiB)), False)[0] == W.RAW, "compression turned off"
    # compressible slices but an incompressible chunk as a whole: the full try decides, raw
    mixed = bytearray(random_bytes(4 * MiB, seed=5))
    step = len(mixed) // 4
    for i in range(4):
        mixed[i * step:i * step + 2048] = bytes(2048)
    assert W._encode(memoryview(mixed), True)[0] == W.RAW


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("security", [SECURE, PLAIN], ids=["encrypted", "plain"])
def test_the_stream_round_trips_over_a_socketpair(security):
    data = random_bytes(3 * MiB) + bytes(2 * MiB) + b"tail"
    objects = Objects(x=data)
    server_end, client_end = socket.socketpair()
    counters = T.TransferCounters()
    thread = threading.Thread(target=T.serve_connection,
                              args=(server_end, objects.open, counters),
                              kwargs={"chunk_size": CHUNK, "security": security})
    thread.start()
    try:
        got = T.TransferCounters()
        session = W._client_handshake(client_end, security, got, 5)
        assert session.encrypt == security.encrypt
        session.send_message(b"x")
        status, size = W._RESPONSE.unpack(session.recv_message(W.RESPONSE_HEADER_SIZE))
        assert (status, size) == (W.OK, len(data))
        dest = bytearray(size)
        session.recv_chunks(memoryview(dest))
        assert dest == data
        # the connection serves a second request; its end closes it cleanly
        session.send_message(b"y")
        body = session.recv_message(W.RESPONSE_HEADER_SIZE + W.MAX_MESSAGE)
        assert W._RESPONSE.unpack_from(body)[0] == W.NOT_HERE
        assert body[W.RESPONSE_HEADER_SIZE:] == b"object 79 is not held here"
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
    assert snap["refused"] == 0
    assert got.snapshot()["raw_bytes_received"] == len(data)
    assert got.bytes_received == snap["bytes_sent"] and got.bytes_sent == snap["bytes_received"]


@pytest.mark.parametrize("security", [SECURE, PLAIN], ids=["encrypted", "plain"])
@pytest.mark.parametrize("kind", ["random", "zeros", "mixed"])
def test_fetch_into_round_trips_and_the_counters_show_what_crossed(serve, kind, security):
    size = 6 * MiB
    data = {"random": random_bytes(size),
            "zeros": bytes(size),
            "mixed": bytes(3 * MiB) + random_bytes(3 * MiB, seed=9)}[kind]
    server = serve(Objects(obj=data), security=security)
    counters = T.TransferCounters()
    dest = bytearray(size)
    assert T.fetch_into(b"obj", memoryview(dest), [server.address], security=security,
                        counters=counters) == server.address
    assert dest == data
    got = counters.snapshot()
    # the serving thread counts once its last send returned, which may be just after the
    # receiver has every byte: wait for its count, with a deadline
    until(lambda: server.counters.snapshot()["objects_sent"] >= 1, timeout=5, interval=0.001,
          what="the server to count the object sent")
    sent = server.counters.snapshot()
    assert got["raw_bytes_received"] == size == sent["raw_bytes_sent"]
    assert got["objects_received"] == 1 == sent["objects_sent"]
    assert got["bytes_received"] == sent["bytes_sent"]
    assert got["bytes_sent"] == sent["bytes_received"] == request_bytes(3)
    assert got["corrupt_chunks"] == got["fetch_failures"] == sent["refused"] == 0
    if kind == "random":
        assert got["bytes_received"] == size + overhead(size, encrypt=security.encrypt)
        assert sent["chunks_compressed"] == 0
    elif kind == "zeros":
        assert got["bytes_received"] < size // 100
        assert sent["chunks_compressed"] == sent["chunks_sent"] == 6
    else:
        assert sent["chunks_compressed"] == 3
        assert 3 * MiB < got["bytes_received"] < 3 * MiB + 64 * 1024


@pytest.mark.parametrize("server_security, client_security, encrypted", [
    (SECURE, SECURE, True), (SECURE, PLAIN, True), (PLAIN, SECURE, True), (PLAIN, PLAIN, False)])
def test_chunks_are_encrypted_if_either_side_asks(serve, server_security, client_security, encrypted):
    size = 2 * MiB + 8
    server = serve(Objects(obj=random_bytes(size, seed=11)), security=server_security)
    counters = T.TransferCounters()
    assert fetch_all(server.address, b"obj", size, client_security, counters=counters) == random_bytes(size, seed=11)
    assert counters.bytes_received == size + overhead(size, encrypt=encrypted)


@pytest.mark.parametrize("security", [SECURE, PLAIN], ids=["encrypted", "plain"])
def test_every_size_and_both_kinds_of_chunk_round_trip(serve, security):
    sizes = [0, 1, 2, 65535, 65536, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7]
    objects = Objects()
    for n in sizes:
        objects[b"r%d" % n] = os.urandom(n)
        objects[b"z%d" % n] = bytes(n)
        objects[b"p%d" % n] = (b"taskmesh " * (n // 9 + 1))[:n]  # compressible, not zeros
    server = serve(objects, security=security)
    counters = T.TransferCounters()
    for oid, data in objects.items():
        assert fetch_all(server.address, oid, len(data), security, counters=counters) == data, oid
        assert bytes(T.fetch(oid, [server.address], security=security)) == data, oid
    assert counters.objects_received == len(objects) and counters.corrupt_chunks == 0
    assert server.counters.chunks_compressed > 0


def test_fetch_without_a_known_size_and_empty_objects(serve):
    server = serve(Objects(big=random_bytes(2 * MiB + 8), empty=b""))
    got = T.fetch(b"big", [server.address], security=SECURE)
    assert isinstance(got, memoryview) and not got.readonly
    assert bytes(got) == random_bytes(2 * MiB + 8)
    assert bytes(T.fetch(b"big", [server.address], security=SECURE, size=2 * MiB + 8)) == random_bytes(2 * MiB + 8)
    assert T.fetch(b"empty", [server.address], security=SECURE).nbytes == 0
    with pytest.raises(T.FetchFailed, match="holds 2097160 bytes under this id, not 5"):
        T.fetch_into(b"big", memoryview(bytearray(5)), [server.address], security=SECURE)


# ------------------------------------------------------------------ failures are detected


def test_a_truncated_stream_raises_and_the_next_source_is_used(serve, raw_source):
    data = random_bytes(4 * MiB, seed=1)
    full = chunks_of(data)
    cut = raw_source(lambda attempt: (ok(data), full[:len(full) // 2]))
    good = serve(Objects(obj=data))
    # alone, the truncation is an error naming it
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"obj", memoryview(bytearray(len(data))), [cut.address], security=PLAIN)
    [(label, exc)] = info.value.failures
    assert label == cut.address and isinstance(exc, T.TruncatedTransfer)
    assert "ended after" in str(exc) and f"of {len(data)} bytes" in str(exc)
    assert cut.attempts == 1, "a truncated stream is not retried on the same source"
    # with a second source, the fetch succeeds
    dest = bytearray(len(data))
    counters = T.TransferCounters()
    assert T.fetch_into(b"obj", memoryview(dest), [["cut", cut.address], ["good", good.address]],
                        security=PLAIN, counters=counters) == good.address
    assert dest == data
    assert counters.fetch_failures == 1 and counters.objects_received == 1


@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_a_flipped_byte_is_caught_retried_once_then_the_source_is_given_up(raw_source, kind):
    data = random_bytes(3 * MiB, seed=2) if kind == "random" else bytes(3 * MiB)
    good = chunks_of(data)
    bad = bytearray(good)
    bad[-100] ^= 0x40  # in the last chunk's payload (raw bytes, or lz4 data)
    always = raw_source(lambda attempt: (ok(data), bytes(bad)))
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"obj", memoryview(bytearray(len(data))), [always.address], security=PLAIN)
    [(_, exc)] = info.value.failures
    assert isinstance(exc, T.CorruptTransfer)
    assert always.attempts == 2, "corruption gets one retry of the same source"
    # corrupt once, then fine: the retry delivers
    once = raw_source(lambda attempt: (ok(data), bytes(bad) if attempt == 1 else good))
    counters = T.TransferCounters()
    dest = bytearray(len(data))
    T.fetch_into(b"obj", memoryview(dest), [once.address], security=PLAIN, counters=counters)
    assert dest == data
    assert counters.corrupt_chunks == 1 and counters.fetch_failures == 1 and once.attempts == 2


def test_impossible_lengths_are_corruption(raw_source):
    data = random_bytes(MiB)
    too_long = W._CHUNK.pack(W.RAW, len(data) + 1, len(data) + 1, 0) + data
    lying = W._CHUNK.pack(W.RAW, len(data), 10, 0) + data
    unknown = W._CHUNK.pack(7, len(data), len(data), 0) + data
    for stream, words in ((too_long, "a chunk of"), (lying, "on the wire"), (unknown, "encoding 7")):
        source = raw_source(lambda attempt, stream=stream: (ok(data), stream))
        with pytest.raises(T.FetchFailed, match=words) as info:
            T.fetch_into(b"obj", memoryview(bytearray(len(data))), [source.address], security=PLAIN)
        assert isinstance(info.value.failures[0][1], T.CorruptTransfer)
    # encrypted: a raw chunk must carry its tag
    plain_length = W._CHUNK.pack(W.RAW, len(data), len(data), 0) + data
    source = raw_source(lambda attempt: (ok(data), plain_length), security=SECURE)
    with pytest.raises(T.FetchFailed, match="on the wire"):
        T.fetch_into(b"obj", memoryview(bytearray(len(data))), [source.address], security=SECURE)


def test_not_here_and_the_order_of_sources(serve, raw_source):
    data = random_bytes(MiB, seed=3)
    empty = serve(Objects())
    holder = serve(Objects(obj=data))
    garbage = raw_source(lambda attempt: b"HTTP/1.1 400 Bad Request\r\n\r\n", security=None)
    counters = T.TransferCounters()
    sources = [["dead", dead_address()], ["empty", empty.address], ["web", garbage.address],
               "not an address", ["holder", holder.address], ["never", dead_address()]]
    dest = bytearray(len(data))
    assert T.fetch_into(b"obj", memoryview(dest), sources, security=SECURE, counters=counters) == holder.address
    assert dest == data
    assert counters.fetch_failures == 4  # dead, empty, web, the malformed one
    assert empty.counters.objects_sent == 0
    # nobody has it: one error naming the object and every source's failure, in order
    with pytest.raises(T.FetchFailed) as info:
        T.fetch_into(b"nope", memoryview(bytearray(3)), [["dead", dead_address()], ["empty", empty.address],
                                                        ["web", garbage.address]], security=SECURE)
    message = str(info.value)
    assert message.startswith(f"could not fetch object {b'nope'.hex()} (3 bytes) from any of its 3 source(s)")
    assert message.index("node dead") < message.index("node empty") < message.index("node web")
    assert "ConnectionRefusedError" in message
    assert f"NotHere: object {b'nope'.hex()} is not held here" in message
    assert "not a taskmesh transfer endpoint" in message
    with pytest.raises(T.FetchFailed, match="no source was given"):
        T.fetch(b"obj", [], security=SECURE)


def test_a_source_of_another_version_is_named_as_such(raw_source):
    # a version-1 server answers a version-2 hello with its response layout: ERROR, and why
    why = b"transfer protocol version 2 requested, this node speaks 1"
    older = raw_source(lambda attempt: struct.pack("<4sHBxQI", b"TMXR", 1, W.ERROR, 0, len(why)) + why,
                       security=None)
    with pytest.raises(T.FetchFailed, match="it speaks transfer protocol version 1, this process 2") as info:
        T.fetch(b"obj", [older.address], security=SECURE)
    assert isinstance(info.value.failures[0][1], T.HandshakeFailed)


# ------------------------------------------------------------------ who may connect


def refusal_of(sock: socket.socket) -> tuple[int, int, str]:
    """(version, status, message) of a refusal the server sent, after which it hangs up."""
    magic, version, status, _, n = W._REFUSAL.unpack(sock.recv(W._REFUSAL.size, socket.MSG_WAITALL))
    assert magic == W.MAGIC_SERVER
    text = sock.recv(n, socket.MSG_WAITALL).decode()
    assert sock.recv(1) == b"", "the server hangs up"
    return version, status, text


def test_a_peer_with_another_secret_is_refused_on_both_sides_and_gets_no_data(serve, caplog):
    objects = Objects(obj=b"the object's bytes" * 1000)
    server = serve(objects)
    # a fetch with another secret: the server's proof fails at the client, the client's at the server
    with caplog.at_level(logging.WARNING, logger="taskmesh.node.transfer"):
        with pytest.raises(T.FetchFailed) as info:
            T.fetch(b"obj", [server.address], security=OTHER)
        until(lambda: server.counters.refused == 1, timeout=5.0, what="the refusal to be counted")
    [(_, exc)] = info.value.failures
    assert isinstance(exc, T.HandshakeFailed)
    assert "it holds another cluster secret" in str(exc) and OTHER.key.fingerprint in str(exc)
    [record] = [r for r in caplog.records if "refused a transfer connection" in r.getMessage()]
    assert "it holds another cluster secret" in record.getMessage() and "127.0.0.1:" in record.getMessage()
    assert KEY.fingerprint in record.getMessage()
    # step by step: the server proved itself, checked the client's proof, refused in words
    host, port = T.split_address(server.address)
    with socket.create_connection((host, port), timeout=5) as s:
        with pytest.raises(T.HandshakeFailed, match="another cluster secret"):
            W._client_handshake(s, OTHER, T.TransferCounters(), 5)
        s.sendall(b"\0" * 100)  # whatever follows is never read as a request
        kind, n = W._FRAME.unpack(s.recv(W.FRAME_HEADER_SIZE, socket.MSG_WAITALL))
        assert (kind, s.recv(n, socket.MSG_WAITALL).decode()) == (W.REFUSED, W.ANOTHER_SECRET)
        assert s.recv(1) == b""
    # and a server with another secret is not believed by a client with the right one
    impostor = serve(Objects(obj=b"forged bytes" * 1000), security=OTHER)
    with pytest.raises(T.FetchFailed, match="it holds another cluster secret"):
        T.fetch(b"obj", [impostor.address], security=SECURE)
    until(lambda: impostor.counters.refused == 1, timeout=5.0, what="the impostor's refusal")
    for s in (server, impostor):
        snap = s.counters.snapshot()
        assert snap["objects_sent"] == snap["chunks_sent"] == snap["raw_bytes_sent"] == 0
    assert objects.opened == 0, "no object was even looked up"
    assert server.counters.refused == 2
    # the server serves the cluster's own
    assert bytes(T.fetch(b"obj", [server.address], security=SECURE)) == objects[b"obj"]


class Evil:
    """Unpickling this runs ``touch path``."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_pickle_and_garbage_are_refused_never_interpreted_and_the_server_keeps_serving(
        serve, tmp_path, caplog):
    marker = tmp_path / "pwned"
    evil = [pickle.dumps(Evil(marker), protocol=p) for p in (0, 2, 5)]
    data = random_bytes(MiB, seed=12)
    server = serve(Objects(obj=data), handshake_timeout_s=0.5)
    host, port = T.split_address(server.address)
    hello_prefix = struct.pack("<4sH", W.MAGIC_CLIENT, W.VERSION)
    attempts = [
        *evil,  # a pickle instead of a hello
        *(hello_prefix + b"\0\0" + bytes(32) + p for p in evil),  # a hello, then a pickle for a proof
        os.urandom(4096),  # garbage
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",  # connect, then hang up at once
        hello_prefix + b"\0",  # a truncated hello, then hang up
    ]
    with caplog.at_level(logging.WARNING, logger="taskmesh.node.transfer"):
        for payload in attempts:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
                # nothing, a refusal, or a server hello and the refusal of the proof
                assert answer == b"" or answer.startswith(W.MAGIC_SERVER)
                assert len(answer) <= W.SERVER_HELLO_SIZE + W.FRAME_HEADER_SIZE + len(W.ANOTHER_SECRET)
                assert data[:64] not in answer
        # a peer that says nothing, or trickles bytes, is cut off by the handshake deadline
        started = time.monotonic()
        with socket.create_connection((host, port), timeout=5) as silent, \
                socket.create_connection((host, port), timeout=5) as trickle:
            for byte in hello_prefix + b"\0" * 10:
                with contextlib.suppress(OSError):
                    trickle.sendall(bytes([byte]))
                time.sleep(0.05)
            assert silent.recv(1) == b"" and trickle.recv(1) == b""
        assert time.monotonic() - started < 3
        until(lambda: server.counters.refused == len(attempts) + 2, timeout=5.0,
              what="every refusal to be counted")
    assert not marker.exists(), "nothing was unpickled"
    # they are logged with the peer's address, at most one line per kind of refusal
    lines = [r.getMessage() for r in caplog.records if "refused a transfer connection" in r.getMessage()]
    assert all("from 127.0.0.1:" in line for line in lines)
    assert len(lines) == 3  # not taskmesh, another secret (the pickled proofs), incomplete
    assert server.refusals.counts == {"not taskmesh": 5, "secret": 3, "incomplete": 4}
    # the server still serves the cluster's own, and no thread is left behind
    assert fetch_all(server.address, b"obj", len(data)) == data
    until(lambda: server.active == 0, timeout=5.0, what="the serving threads to end")
    assert server.counters.objects_sent == 1 and server.counters.serve_failures == 0


def test_after_the_handshake_a_request_that_does_not_authenticate_ends_the_connection(serve, tmp_path):
    marker = tmp_path / "pwned"
    objects = Objects(obj=b"x" * 100)
    server = serve(objects)
    host, port = T.split_address(server.address)
    for tail in (pickle.dumps(Evil(marker)), W._FRAME.pack(W.SEALED, 40) + os.urandom(40)):
        with socket.create_connection((host, port), timeout=5) as s:
            W._client_handshake(s, SECURE, T.TransferCounters(), 5)
            s.sendall(tail)
            try:  # (unread bytes make the hang-up a reset)
                assert s.recv(1) == b"", "the server hangs up without a word"
            except ConnectionResetError:
                pass
    until(lambda: server.counters.serve_failures == 2, timeout=5.0,
          what="both failures to be counted")
    assert not marker.exists() and objects.opened == 0
    assert server.counters.refused == 0 and server.counters.corrupt_chunks == 2


def test_another_version_is_refused_naming_both(serve, caplog):
    server = serve(Objects(obj=b"x" * 100))
    host, port = T.split_address(server.address)
    old_request = struct.pack("<4sHH", W.MAGIC_CLIENT, 1, 3) + b"obj"  # what version 1 sent
    newer_hello = W._CLIENT_HELLO.pack(W.MAGIC_CLIENT, 3, 0, bytes(32))
    with caplog.at_level(logging.WARNING, logger="taskmesh.node.transfer"):
        for request, theirs in ((old_request, 1), (newer_hello, 3)):
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(request)
                version, status, text = refusal_of(s)
                assert (version, status) == (W.VERSION, W.ERROR)
                assert text == f"transfer protocol version {theirs} requested, this node speaks 2"
        until(lambda: server.counters.refused == 2, timeout=5.0, what="the refusals to be counted")
    [line] = [r.getMessage() for r in caplog.records if "refused a transfer connection" in r.getMessage()]
    assert "requested, this node speaks 2" in line  # (the second of the kind is not logged)
    assert server.counters.objects_sent == 0


# ------------------------------------------------------------------ encryption


def test_with_encryption_no_plaintext_crosses_the_wire(serve, proxy):
    marker = b"THE PLAINTEXT MARKER, NEVER ON THE WIRE "
    data = random_bytes(3 * MiB, seed=13)  # the marker, raw, at a chunk boundary and inside
    data = data[:CHUNK - 20] + marker + data[CHUNK - 20 + len(marker):2 * CHUNK] + marker * 1000
    compressible = marker * (MiB // len(marker))  # lz4 first, then encrypted
    oid = b"secret object name"
    for security, hidden in ((SECURE, True), (PLAIN, False)):
        server = serve(Objects(**{oid.decode(): data, "c": compressible}), security=security)
        wire = proxy(server.address)
        assert fetch_all(wire.address, oid, len(data), security) == data
        assert fetch_all(wire.address, b"c", len(compressible), security) == compressible
        assert (marker in wire.to_client) is not hidden
        assert oid not in wire.to_server, "requests travel sealed either way"
        if hidden:
            assert len(wire.to_client) > len(data), "it did cross this proxy"


@pytest.mark.parametrize("where", ["server proof", "response", "chunk", "chunk header", "lz4 chunk"])
def test_a_byte_changed_on_the_way_is_caught(serve, proxy, where):
    data = random_bytes(2 * MiB, seed=14) if where != "lz4 chunk" else bytes(2 * MiB)
    server = serve(Objects(obj=data))
    first_chunk = W.SERVER_HELLO_SIZE + W.FRAME_HEADER_SIZE + W.RESPONSE_HEADER_SIZE + W.TAG_SIZE
    flip_at = {"server proof": W.SERVER_HELLO_SIZE - 1,
               "response": first_chunk - W.TAG_SIZE - 1,
               "chunk": first_chunk + W.CHUNK_HEADER_SIZE + CHUNK + W.TAG_SIZE + 1000,  # the second
               "chunk header": first_chunk + 3,  # a pad byte: only the authentication sees it
               "lz4 chunk": first_chunk + W.CHUNK_HEADER_SIZE + 10}[where]
    wire = proxy(server.address, flip_at=flip_at)
    counters = T.TransferCounters()
    with pytest.raises(T.FetchFailed) as info:
        fetch_all(wire.address, b"obj", len(data), counters=counters)
    [(_, exc)] = info.value.failures
    if where == "server proof":
        assert isinstance(exc, T.HandshakeFailed) and "another cluster secret" in str(exc)
    else:
        assert isinstance(exc, T.CorruptTransfer) and "failed authentication" in str(exc)
        assert counters.fetch_failures == 2, "corruption gets one retry"
        assert counters.objects_received == 0
    # straight from the server, the same fetch is fine
    assert fetch_all(server.address, b"obj", len(data)) == data


def test_a_tampered_or_replayed_chunk_fails_authentication(raw_source):
    data = random_bytes(2 * MiB, seed=15)
    # a stream sealed for another session (its keys and counters): the recording's chunks
    rec = Recorder()
    other = W._Session(rec, T.TransferCounters(), send_key=os.urandom(32), recv_key=os.urandom(32),  # type: ignore[arg-type]
                       encrypt=True)
    other.send_chunk(memoryview(data)[:CHUNK], True)
    foreign = bytes(rec.data)
    source = raw_source(lambda attempt: (ok(data), foreign), security=SECURE)
    with pytest.raises(T.FetchFailed, match="failed authentication"):
        fetch_all(source.address, b"obj", len(data))


# ------------------------------------------------------------------ time-outs, cancellation, closing


def test_a_silent_source_times_out_and_a_cancel_stops_a_fetch_at_once(raw_source):
    silent = raw_source(lambda attempt: None)
    started = time.monotonic()
    with pytest.raises(T.FetchFailed, match="nothing arrived for 0.3 s"):
        T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address], security=PLAIN, timeout_s=0.3)
    assert time.monotonic() - started < 3

    cancel = T.Cancellation()
    outcome: list = []

    def run() -> None:
        try:
            T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address, dead_address()],
                         security=PLAIN, timeout_s=20, cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    until(lambda: silent.attempts >= 2, timeout=5, interval=0.01,  # the timed-out one, and this one
          what="the second attempt on the silent source")
    started = time.monotonic()
    cancel.cancel()
    thread.join(5)
    assert time.monotonic() - started < 1
    assert len(outcome) == 1 and isinstance(outcome[0], T.TransferCancelled)
    with pytest.raises(T.TransferCancelled):  # and no new fetch starts
        T.fetch_into(b"obj", memoryview(bytearray(10)), [silent.address], security=PLAIN, cancel=cancel)


def test_the_server_unpins_when_the_peer_goes_away_and_closes_promptly(serve):
    data = random_bytes(64 * MiB, seed=4)
    objects = Objects(obj=data)
    server = serve(objects)
    host, port = T.split_address(server.address)
    s = socket.create_connection((host, port), timeout=5)
    W._client_handshake(s, SECURE, T.TransferCounters(), 5).send_message(b"obj")
    s.recv(W.RESPONSE_HEADER_SIZE + 1000, socket.MSG_WAITALL)  # a little, then hang up
    s.close()
    until(lambda: objects.closed >= 1, timeout=5, interval=0.01, what="the object to be closed")
    assert objects.opened == objects.closed == 1
    assert server.counters.serve_failures == 1 and server.counters.objects_sent == 0
    # a connection in the middle of a stream is cut by close()
    s = socket.create_connection((host, port), timeout=5)
    W._client_handshake(s, SECURE, T.TransferCounters(), 5).send_message(b"obj")
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

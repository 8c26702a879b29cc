"""Object transfer between machines: the TCP stream that carries one object's bytes, and its blocking I/O.

    fetching side (fetch_into / fetch)                    serving side (TransferServer, a thread per connection)
      connect ──── request: magic, version, object id ────▶ open_object(id): pin it (wait for a restore)
      recv_into(destination) ◀── response: status, size ─── (not here / error: status + message, done)
         ▲ checksum each chunk ◀── chunk, chunk, chunk ...── sendmsg(chunk header, view of the arena)
         └ next source on a failure                         unpin when done, or when the peer went away

An object is an opaque byte range. The serving side sends it as one pipelined stream of chunks
(``DEFAULT_CHUNK_SIZE``; there is no round trip per chunk: TCP's window keeps the pipe full), each
with a small header: encoding (raw, or an lz4 block), raw length, wire length and the xxh3-64
checksum of the raw bytes. A chunk is lz4-compressed only when that pays: a cheap sample of it
(four 2 KiB slices) must shrink to 3/4 or less, and then the whole compressed chunk to 7/8 or
less of the raw bytes, else the raw bytes go. So random float64 arrays go raw at the cost of
compressing 8 KiB per chunk, and zeros or repetitive data shrink. Raw chunks are sent straight
from a memoryview of the arena (``sendmsg``, no copy in user space) and received with
``recv_into`` straight into the destination; compressed ones are decompressed into it.

The receiving side never returns wrong bytes: a stream that ends early raises
:class:`TruncatedTransfer`, impossible lengths, a failed decompression or a checksum mismatch
:class:`CorruptTransfer`. Sources are tried in order; a source that cannot be reached, does not
have the object, times out, truncates the stream or sends corrupt data twice in a row (one retry
for corruption) is logged in one line and the next one is tried; when all fail,
:class:`FetchFailed` names the object and each source's failure. Connect and inactivity
time-outs (``DEFAULT_CONNECT_TIMEOUT_S``, ``DEFAULT_TIMEOUT_S``) bound every wait, so a silent
dead source never hangs a fetch, and a :class:`Cancellation` stops fetches in flight at once.

The wire format (docs/protocol.md, "Transfer stream"), little-endian::

    request   4s magic b"TMXQ" | u16 version | u16 len(object_id) | object_id
    response  4s magic b"TMXR" | u16 version | u8 status | pad | u64 size | u32 len(message) | message
    chunk     u8 encoding | pad[3] | u32 raw length | u32 wire length | u64 xxh3_64(raw) | wire bytes

A connection may carry several requests one after the other; the fetch functions here use one
connection per object. :class:`TransferCounters` counts what crossed the network, so tests and
``taskmesh status`` can tell a transfer from two processes sharing /dev/shm.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import lz4.block
import xxhash

__all__ = [
    "Cancellation", "CorruptTransfer", "FetchFailed", "NotHere", "TransferCancelled",
    "TransferCounters", "TransferError", "TransferServer", "TruncatedTransfer", "fetch",
    "fetch_into", "serve_connection",
]

log = logging.getLogger("taskmesh.node.transfer")

VERSION = 1
MAGIC_REQUEST = b"TMXQ"
MAGIC_RESPONSE = b"TMXR"
_REQUEST = struct.Struct("<4sHH")  # magic, version, len(object_id)
_RESPONSE = struct.Struct("<4sHBxQI")  # magic, version, status, size, len(message)
_CHUNK = struct.Struct("<BxxxIIQ")  # encoding, raw length, wire length, xxh3_64 of the raw bytes
REQUEST_HEADER_SIZE = _REQUEST.size
RESPONSE_HEADER_SIZE = _RESPONSE.size
CHUNK_HEADER_SIZE = _CHUNK.size

# response status
OK, NOT_HERE, ERROR = 0, 1, 2
# chunk encoding
RAW, LZ4 = 0, 1

#: bytes per chunk. Measured over loopback on the 2-vCPU test machine (100 MB, process to
#: process): 512 KiB gave 3.8-4.0 GB/s for random and zero data, 1-4 MiB 2.3-2.7 (random) and
#: 2.7-3.4 (zeros), 128 KiB 2.9: a chunk the receiver checksums (or decompresses) while it is
#: still in the CPU cache after the kernel's copy, with few enough system calls
DEFAULT_CHUNK_SIZE = 512 << 10
#: the largest chunk a receiver accepts (a bound on its scratch buffer)
MAX_CHUNK = 64 << 20
MAX_OBJECT_ID = 255
MAX_MESSAGE = 64 << 10
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: a connection on which nothing moves for this long is given up (both sides)
DEFAULT_TIMEOUT_S = 10.0

# the compression rule (see the module docstring)
_SAMPLE_SLICES = 4
_SAMPLE_SLICE = 2048
_MIN_COMPRESS = 64 << 10  # smaller chunks go raw: too little to gain
_SAMPLE_RATIO = 0.75
_CHUNK_RATIO = 0.875


# --------------------------------------------------------------------------- errors


class TransferError(Exception):
    """A transfer from one source failed (see the subclasses)."""


class NotHere(TransferError):
    """The source does not hold the object (or no longer)."""


class TruncatedTransfer(TransferError):
    """The stream ended before the whole object arrived."""


class CorruptTransfer(TransferError):
    """Impossible lengths, a chunk that does not decompress, or a checksum mismatch."""


class TransferCancelled(TransferError):
    """The fetch was stopped by its :class:`Cancellation` (the node is shutting down)."""


class FetchFailed(TransferError):
    """Every source failed; ``failures`` lists (source, its last exception) in the order tried."""

    def __init__(self, message: str, failures: list[tuple[str, BaseException]]) -> None:
        super().__init__(message)
        self.failures = failures


# --------------------------------------------------------------------------- counters


class TransferCounters:
    """Running totals of one process's transfers, thread-safe.

    ``bytes_sent``/``bytes_received`` count every byte written to or read from transfer sockets
    (headers included); ``raw_bytes_*`` the object bytes those carried; ``objects_*`` complete
    objects; ``chunks_compressed`` chunks sent as lz4; ``fetch_failures`` failed attempts of one
    source, ``fetches_failed`` fetches for which every source failed; ``serve_failures`` streams
    this side could not finish; ``corrupt_chunks`` chunks received with impossible lengths,
    bad lz4 data or a wrong checksum.
    """

    FIELDS = ("bytes_sent", "bytes_received", "raw_bytes_sent", "raw_bytes_received",
              "objects_sent", "objects_received", "chunks_sent", "chunks_compressed",
              "fetch_failures", "fetches_failed", "serve_failures", "corrupt_chunks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            values = self._values
            for name, n in deltas.items():
                values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None


# --------------------------------------------------------------------------- cancellation


class Cancellation:
    """Stops fetches in flight from another thread: :meth:`cancel` shuts their sockets down,
    which wakes any blocked connect, send or receive; they raise :class:`TransferCancelled`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.cancelled:
                raise TransferCancelled("cancelled")
            self._socks.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:  # never shut down a socket whose fd may already be reused
            self._socks.discard(sock)
            sock.close()


# --------------------------------------------------------------------------- socket helpers


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        n = sock.recv_into(view)
        if not n:
            raise TruncatedTransfer("the connection closed")
        view = view[n:]


def _send_all(sock: socket.socket, buffers: list) -> None:
    """Write ``buffers`` in order with as few system calls as the kernel allows (no joining)."""
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        n = sock.sendmsg(views)
        while n:
            first = views[0]
            if n >= first.nbytes:
                n -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[n:]
                n = 0


def _tune(sock: socket.socket, timeout_s: float) -> None:
    sock.settimeout(timeout_s)
    if sock.family in (socket.AF_INET, socket.AF_INET6):  # headers go out at once
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _refuse(sock: socket.socket, why: str, counters: TransferCounters) -> None:
    """Answer an error and hang up gracefully: what the peer sent is drained first (briefly),
    so that closing does not reset the connection before it read the answer."""
    with contextlib.suppress(OSError):
        answer = _response(ERROR, 0, why)
        sock.sendall(answer)
        counters.add(bytes_sent=len(answer))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        drained = 0
        while drained < MAX_MESSAGE:
            n = len(sock.recv(65536))
            if not n:
                break
            drained += n


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) -> (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port transfer address: {address!r}")
    return host.strip("[]"), int(port)


# --------------------------------------------------------------------------- sending


def _encode(chunk: memoryview, compress: bool) -> tuple[int, memoryview | bytes]:
    """(encoding, wire bytes) of one chunk, by the compression rule."""
    n = chunk.nbytes
    if not compress or n < _MIN_COMPRESS:
        return RAW, chunk
    step = n // _SAMPLE_SLICES
    sample = b"".join(chunk[i * step:i * step + _SAMPLE_SLICE] for i in range(_SAMPLE_SLICES))
    if len(lz4.block.compress(sample, store_size=False)) > len(sample) * _SAMPLE_RATIO:
        return RAW, chunk
    packed = lz4.block.compress(chunk, store_size=False)
    if len(packed) > n * _CHUNK_RATIO:
        return RAW, chunk
    return LZ4, packed


def _response(status: int, size: int = 0, message: str = "") -> bytes:
    text = message.encode("utf-8", "replace")[:MAX_MESSAGE]
    return _RESPONSE.pack(MAGIC_RESPONSE, VERSION, status, size, len(text)) + text


def send_object(sock: socket.socket, view: memoryview, counters: TransferCounters, *,
                chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True) -> None:
    """Send an OK response and ``view`` as chunks (raw ones without a copy)."""
    header = _response(OK, view.nbytes)
    _send_all(sock, [header])
    counters.add(bytes_sent=len(header))
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    for pos in range(0, view.nbytes, chunk_size):
        chunk = view[pos:pos + chunk_size]
        encoding, wire = _encode(chunk, compress)
        head = _CHUNK.pack(encoding, chunk.nbytes, len(wire), xxhash.xxh3_64_intdigest(chunk))
        _send_all(sock, [head, wire])
        counters.add(bytes_sent=CHUNK_HEADER_SIZE + len(wire), raw_bytes_sent=chunk.nbytes,
                     chunks_sent=1, chunks_compressed=int(encoding == LZ4))
    counters.add(objects_sent=1)


#: ``open_object(object_id)`` -> a context manager holding a view of the object's bytes for the
#: duration of the stream; it raises :class:`NotHere` if the object is not held, any other
#: exception to answer an error (its text is sent to the peer).
OpenObject = Callable[[bytes], AbstractContextManager[memoryview]]


def serve_connection(sock: socket.socket, open_object: OpenObject, counters: TransferCounters, *,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True,
                     timeout_s: float = DEFAULT_TIMEOUT_S, peer: str = "?") -> None:
    """Answer requests on one accepted connection until the peer closes it (blocking; the
    caller closes ``sock``). A request that is not ours is answered with an error, then the
    connection is dropped."""
    _tune(sock, timeout_s)
    head = bytearray(REQUEST_HEADER_SIZE)
    while True:
        try:
            n = sock.recv_into(head)  # a clean end between requests is not a failure
            if not n:
                return
            _recv_exact(sock, memoryview(head)[n:])
        except (OSError, TransferError):
            return  # idle too long, or gone, between requests
        magic, version, id_len = _REQUEST.unpack(head)
        if magic != MAGIC_REQUEST or version != VERSION:
            why = (f"not a taskmesh transfer request (it starts with {bytes(head[:4])!r})"
                   if magic != MAGIC_REQUEST else
                   f"transfer protocol version {version} requested, this node speaks {VERSION}")
            log.warning("refused a transfer connection from %s: %s", peer, why)
            counters.add(bytes_received=REQUEST_HEADER_SIZE, serve_failures=1)
            _refuse(sock, why, counters)
            return
        if not 0 < id_len <= MAX_OBJECT_ID:
            counters.add(bytes_received=REQUEST_HEADER_SIZE, serve_failures=1)
            _refuse(sock, f"object ids have 1 to {MAX_OBJECT_ID} bytes, not {id_len}", counters)
            return
        raw_id = bytearray(id_len)
        try:
            _recv_exact(sock, memoryview(raw_id))
        except (OSError, TransferError):
            return
        counters.add(bytes_received=REQUEST_HEADER_SIZE + id_len)
        if not _serve_one(sock, bytes(raw_id), open_object, counters, chunk_size, compress, peer):
            return


def _serve_one(sock: socket.socket, object_id: bytes, open_object: OpenObject,
               counters: TransferCounters, chunk_size: int, compress: bool, peer: str) -> bool:
    """Answer one request; False if the connection is no longer usable."""
    try:
        holder = open_object(object_id)
        view = holder.__enter__()
    except Exception as exc:  # not held, or could not be read: tell the peer
        status = NOT_HERE if isinstance(exc, NotHere) else ERROR
        if status == ERROR:
            counters.add(serve_failures=1)
            log.warning("could not serve object %s to %s: %s", object_id.hex(), peer, exc)
        answer = _response(status, 0, str(exc))
        try:
            sock.sendall(answer)
        except OSError:
            return False
        counters.add(bytes_sent=len(answer))
        return True
    try:
        send_object(sock, view, counters, chunk_size=chunk_size, compress=compress)
        return True
    except OSError as exc:
        counters.add(serve_failures=1)
        log.info("sending object %s to %s stopped: %s", object_id.hex(), peer, _describe(exc))
        return False
    finally:
        del view
        holder.__exit__(None, None, None)


class TransferServer:
    """A TCP listener on ``(host, port)`` (port 0: any free one) serving objects that
    ``open_object`` provides, one thread per connection (blocking I/O releases the GIL)."""

    def __init__(self, host: str, open_object: OpenObject, counters: TransferCounters | None = None,
                 *, port: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.counters = counters if counters is not None else TransferCounters()
        self._open_object = open_object
        self._chunk_size = chunk_size
        self._compress = compress
        self._timeout_s = timeout_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
        except BaseException:
            self._listener.close()
            raise
        bound = self._listener.getsockname()
        self.address = f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._closing = False
        self._accepter = threading.Thread(target=self._accept_loop, name="taskmesh-transfer-accept",
                                          daemon=True)

    @property
    def active(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        self._accepter.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, addr = self._listener.accept()
            except OSError:
                if self._closing:
                    return
                continue  # e.g. ECONNABORTED, EMFILE: keep serving
            thread = threading.Thread(target=self._serve, args=(conn, addr), daemon=True,
                                      name="taskmesh-transfer-serve")
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._conns[thread] = conn
            thread.start()

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        try:
            serve_connection(conn, self._open_object, self.counters, chunk_size=self._chunk_size,
                             compress=self._compress, timeout_s=self._timeout_s,
                             peer=f"{addr[0]}:{addr[1]}")
        except Exception:  # a bug must not go unnoticed, nor take the node down
            log.exception("internal error while serving a transfer to %s", addr)
        finally:
            with self._lock:
                self._conns.pop(threading.current_thread(), None)
                conn.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, cut the connections being served, join the threads (bounded)."""
        with self._lock:
            self._closing = True
            conns = dict(self._conns)
            for conn in conns.values():
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        if self._accepter.is_alive():
            self._accepter.join(timeout_s)
        self._listener.close()
        for thread in conns:
            thread.join(timeout_s)
        if self._accepter.is_alive() or any(t.is_alive() for t in conns):
            log.warning("transfer threads did not finish within %g s", timeout_s)


# --------------------------------------------------------------------------- receiving

#: a source: ``"host:port"``, or ``(name, "host:port")`` (e.g. ``[node_id, address]``)
Source = str | Sequence[str]


def _label(source: Source) -> tuple[str, str]:
    """(address, how to name it in messages)."""
    if isinstance(source, str):
        return source, source
    name, address = source
    return address, f"node {name} at {address}"


def _connect(address: str, connect_timeout_s: float, cancel: Cancellation | None) -> socket.socket:
    host, port = split_address(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    if cancel is not None:
        try:
            cancel._add(sock)
        except TransferCancelled:
            sock.close()
            raise
    try:
        sock.settimeout(connect_timeout_s)
        sock.connect(sockaddr)
    except BaseException as exc:
        _close(sock, cancel)
        if cancel is not None and cancel.cancelled:
            raise TransferCancelled("cancelled") from None
        if isinstance(exc, TimeoutError):
            raise TransferError(f"could not connect within {connect_timeout_s:g} s") from None
        raise
    return sock


def _close(sock: socket.socket, cancel: Cancellation | None) -> None:
    if cancel is not None:
        cancel._close(sock)
    else:
        sock.close()


def _corrupt(counters: TransferCounters, message: str) -> CorruptTransfer:
    counters.add(corrupt_chunks=1)
    return CorruptTransfer(message)


def _recv_chunks(sock: socket.socket, dest: memoryview, counters: TransferCounters) -> None:
    total = dest.nbytes
    pos = 0
    head = bytearray(CHUNK_HEADER_SIZE)
    head_view = memoryview(head)
    scratch = bytearray()
    # the previous chunk's decompressed bytes: kept until the next one exists, so that malloc
    # does not hand the freed block back to the kernel and fault fresh pages for each chunk
    # (measured: 1.9 GB/s instead of 8 GB/s decompressing zeros)
    data = b""
    try:
        while pos < total:
            _recv_exact(sock, head_view)
            encoding, raw_len, wire_len, digest = _CHUNK.unpack(head)
            if not 0 < raw_len <= min(total - pos, MAX_CHUNK):
                raise _corrupt(counters, f"a chunk of {raw_len} bytes at offset {pos} of {total}")
            target = dest[pos:pos + raw_len]
            if encoding == RAW:
                if wire_len != raw_len:
                    raise _corrupt(counters, f"a raw chunk of {raw_len} bytes said it has {wire_len} "
                                             f"on the wire")
                _recv_exact(sock, target)
            elif encoding == LZ4:
                if not 0 < wire_len <= raw_len + raw_len // 255 + 16:  # lz4's worst case
                    raise _corrupt(counters, f"an lz4 chunk of {wire_len} bytes for {raw_len} raw bytes")
                if len(scratch) < wire_len:
                    scratch = bytearray(wire_len)
                packed = memoryview(scratch)[:wire_len]
                _recv_exact(sock, packed)
                try:
                    data = lz4.block.decompress(packed, uncompressed_size=raw_len)
                except lz4.block.LZ4BlockError as exc:
                    raise _corrupt(counters, f"the lz4 chunk at offset {pos} does not decompress "
                                             f"({exc})") from None
                if len(data) != raw_len:
                    raise _corrupt(counters, f"the lz4 chunk at offset {pos} gave {len(data)} "
                                             f"bytes, not {raw_len}")
                target[:] = data
            else:
                raise _corrupt(counters, f"unknown chunk encoding {encoding} at offset {pos}")
            if xxhash.xxh3_64_intdigest(target) != digest:
                raise _corrupt(counters, f"checksum mismatch in the chunk at offset {pos} "
                                         f"({raw_len} bytes)")
            counters.add(bytes_received=CHUNK_HEADER_SIZE + wire_len, raw_bytes_received=raw_len)
            pos += raw_len
    except TruncatedTransfer:
        raise TruncatedTransfer(f"the stream ended after {pos} of {total} bytes") from None


def _fetch_once(object_id: bytes, address: str, sink: Callable[[int], memoryview],
                counters: TransferCounters, connect_timeout_s: float, timeout_s: float,
                cancel: Cancellation | None) -> None:
    sock = _connect(address, connect_timeout_s, cancel)
    try:
        _tune(sock, timeout_s)
        request = _REQUEST.pack(MAGIC_REQUEST, VERSION, len(object_id)) + object_id
        sock.sendall(request)
        counters.add(bytes_sent=len(request))
        head = bytearray(RESPONSE_HEADER_SIZE)
        try:
            _recv_exact(sock, memoryview(head))
        except TruncatedTransfer:
            raise TruncatedTransfer("the connection closed before a response") from None
        magic, version, status, size, msg_len = _RESPONSE.unpack(head)
        if magic != MAGIC_RESPONSE:
            raise TransferError(f"not a taskmesh transfer endpoint (it answered {bytes(head[:4])!r})")
        if version != VERSION:
            raise TransferError(f"it speaks transfer protocol version {version}, this process {VERSION}")
        if msg_len > MAX_MESSAGE:
            raise _corrupt(counters, f"a response message of {msg_len} bytes")
        text = bytearray(msg_len)
        _recv_exact(sock, memoryview(text))
        counters.add(bytes_received=RESPONSE_HEADER_SIZE + msg_len)
        message = text.decode("utf-8", "replace")
        if status == NOT_HERE:
            raise NotHere(message or "it does not hold the object")
        if status == ERROR:
            raise TransferError(f"it answered with an error: {message}")
        if status != OK:
            raise _corrupt(counters, f"unknown response status {status}")
        dest = sink(size)
        _recv_chunks(sock, dest, counters)
        counters.add(objects_received=1)
    except TimeoutError:
        if cancel is not None and cancel.cancelled:
            raise TransferCancelled("cancelled") from None
        raise TransferError(f"nothing arrived for {timeout_s:g} s") from None
    except (OSError, TransferError):
        if cancel is not None and cancel.cancelled:
            raise TransferCancelled("cancelled") from None
        raise
    finally:
        _close(sock, cancel)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TransferError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _fetch(object_id: bytes, sources: Sequence[Source], sink: Callable[[int], memoryview],
           size_text: str, counters: TransferCounters | None, connect_timeout_s: float,
           timeout_s: float, cancel: Cancellation | None) -> str:
    counters = counters if counters is not None else TransferCounters()
    failures: list[tuple[str, BaseException]] = []
    for source in sources:
        try:
            address, label = _label(source)
        except (TypeError, ValueError):
            failures.append((repr(source), ValueError("not a source: expected 'host:port' or "
                                                      "(name, 'host:port')")))
            continue
        for attempt in (1, 2):  # a second try only after corruption
            try:
                _fetch_once(object_id, address, sink, counters, connect_timeout_s, timeout_s, cancel)
                return address
            except TransferCancelled:
                raise
            except (OSError, ValueError, TransferError) as exc:
                counters.add(fetch_failures=1)
                again = isinstance(exc, CorruptTransfer) and attempt == 1
                why = _describe(exc)
                log.warning("fetching object %s from %s failed: %s%s", object_id.hex(), label, why,
                            "; trying it once more" if again else "")
                if not again:
                    failures.append((label, exc))
                    break
    counters.add(fetches_failed=1)
    tried = "; ".join(f"{label}: {_describe(exc)}" for label, exc in failures) or "no source was given"
    raise FetchFailed(f"could not fetch object {object_id.hex()}{size_text} from any of its "
                      f"{len(failures)} source(s): {tried}", failures)


def fetch_into(object_id: bytes, dest: memoryview, sources: Sequence[Source], *,
               counters: TransferCounters | None = None,
               connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
               timeout_s: float = DEFAULT_TIMEOUT_S, cancel: Cancellation | None = None) -> str:
    """Fill ``dest`` (a writable view of exactly the object's size) with the object's bytes from
    the first of ``sources`` that delivers them whole; return that source's address.

    Raises :class:`FetchFailed` if every source failed (``dest`` then holds garbage), or
    :class:`TransferCancelled`. A source that reports another size than ``dest`` fails.
    """
    dest = memoryview(dest).cast("B")
    if dest.readonly:
        raise ValueError("fetch_into needs a writable destination")

    def sink(size: int) -> memoryview:
        if size != dest.nbytes:
            raise TransferError(f"it holds {size} bytes under this id, not {dest.nbytes}")
        return dest

    return _fetch(object_id, sources, sink, f" ({dest.nbytes} bytes)", counters,
                  connect_timeout_s, timeout_s, cancel)


def fetch(object_id: bytes, sources: Sequence[Source], *, size: int | None = None,
          counters: TransferCounters | None = None,
          connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, timeout_s: float = DEFAULT_TIMEOUT_S,
          cancel: Cancellation | None = None) -> memoryview:
    """The object's bytes in a fresh buffer (a writable view of a bytearray), for a process
    without a local store (e.g. a driver on a machine with no node). ``size``, if known, is
    checked against what the source says. Raises like :func:`fetch_into`."""
    if size is not None:
        dest = memoryview(bytearray(size))
        fetch_into(object_id, dest, sources, counters=counters,
                   connect_timeout_s=connect_timeout_s, timeout_s=timeout_s, cancel=cancel)
        return dest
    held: list[memoryview] = []

    def sink(n: int) -> memoryview:
        if not held or held[0].nbytes != n:
            held[:] = [memoryview(bytearray(n))]
        return held[0]

    _fetch(object_id, sources, sink, "", counters, connect_timeout_s, timeout_s, cancel)
    return held[0]

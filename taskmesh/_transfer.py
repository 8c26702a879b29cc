"""Object transfer between machines: who serves an object's bytes, who fetches them, and how.

    fetching side (fetch_into / fetch)                  serving side (TransferServer, a thread each)
      connect ──── client hello: version, flags, nonce ──▶ not ours, another version: refused
      check its proof ◀── server hello: flags, nonce, proof (it proves it holds the key first)
      proof, sealed request: object id ──────────────────▶ checks the proof (else refused); only then
                                                           open_object(id): pin it (wait for a restore)
      open it ◀─────── sealed response: status, size ───── (not here / error: status + message, done)
      recv_into(destination) ◀── chunk, chunk, chunk ... ─ sendmsg(header, view of the arena)
         ▲ decrypt (or checksum) each chunk                (encrypted: sealed into a scratch buffer)
         └ next source on a failure                        unpin when done, or when the peer went away

The receiving side never returns wrong bytes: a stream that ends early raises
:class:`TruncatedTransfer`, impossible lengths, a failed decompression, a checksum mismatch or a
chunk that fails authentication :class:`CorruptTransfer`. Sources are tried in order; a source
that cannot be reached, refuses or fails the handshake, does not have the object, times out,
truncates the stream or sends corrupt data twice in a row (one retry for corruption) is logged
in one line and the next one is tried; when all fail, :class:`FetchFailed` names the object and
each source's failure. Connect and inactivity time-outs (``DEFAULT_CONNECT_TIMEOUT_S``,
``DEFAULT_TIMEOUT_S``) bound every wait, so a silent dead source never hangs a fetch, and a
:class:`Cancellation` stops fetches in flight at once.

How the bytes travel (the handshake that admits a peer, the sealed session, chunks and their
compression, the wire format) is ``_transfer_stream.py``; this module is who serves and who
fetches: :class:`TransferServer` (a thread per connection), :func:`fetch_into` and
:func:`fetch` (sources in order, one retry after corruption, time-outs, :class:`Cancellation`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from ._ratelimit import RateLimitedLog
from ._secret import Security
from ._transfer_stream import (
    DEFAULT_CHUNK_SIZE, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S, ERROR, MAX_MESSAGE, MAX_OBJECT_ID, NOT_HERE, OK, RESPONSE_HEADER_SIZE,
    CorruptTransfer, FetchFailed, HandshakeFailed, NotHere, TransferCancelled, TransferCounters,
    TransferError, TruncatedTransfer, _client_handshake, _corrupt, _hang_up, _Refused, _response,
    _RESPONSE, _server_handshake, _Session, _tune, split_address,
)

__all__ = [
    "Cancellation", "CorruptTransfer", "FetchFailed", "HandshakeFailed", "NotHere",
    "TransferCancelled", "TransferCounters", "TransferError", "TransferServer",
    "TruncatedTransfer", "fetch", "fetch_into", "serve_connection",
]

log = logging.getLogger("taskmesh.node.transfer")


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


# --------------------------------------------------------------------------- serving


#: ``open_object(object_id)`` -> a context manager holding a view of the object's bytes for the
#: duration of the stream; it raises :class:`NotHere` if the object is not held, any other
#: exception to answer an error (its text is sent to the peer).
OpenObject = Callable[[bytes], AbstractContextManager[memoryview]]


class _SharedLog(RateLimitedLog):
    """A RateLimitedLog that the threads of one server share."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger)
        self._lock = threading.Lock()

    def event(self, kind: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        with self._lock:
            super().event(kind, msg, *args, level=level)


def serve_connection(sock: socket.socket, open_object: OpenObject, counters: TransferCounters, *,
                     security: Security, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     compress: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S,
                     handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S, peer: str = "?",
                     refusals: RateLimitedLog | None = None) -> None:
    """Authenticate the peer (``_transfer_stream.py``), then answer its requests until it closes
    the connection (blocking; the caller closes ``sock``). A refused peer is counted
    (``refused``) and logged in ``refusals`` (a server's threads share one, so that a peer
    refused in a loop makes one line per interval); a request that does not authenticate
    ends the connection."""
    _tune(sock, timeout_s)
    try:
        session = _server_handshake(sock, security, counters, min(handshake_timeout_s, timeout_s))
    except _Refused as refused:
        counters.add(refused=1)
        (refusals or RateLimitedLog(log)).event(
            refused.kind, "refused a transfer connection from %s: %s", peer, refused.why)
        if refused.answer:
            _hang_up(sock, refused.answer, counters)
        return
    sock.settimeout(timeout_s)
    while True:
        try:
            object_id = session.recv_request()
        except CorruptTransfer as exc:
            counters.add(serve_failures=1)
            log.warning("dropped the transfer connection from %s: %s", peer, exc)
            return
        except (OSError, TransferError):
            return  # idle too long, or gone, between requests
        if object_id is None:
            return
        if not object_id:
            counters.add(serve_failures=1)
            with contextlib.suppress(OSError):
                session.send_message(_response(ERROR, 0, "object ids have 1 to "
                                                         f"{MAX_OBJECT_ID} bytes, not 0"))
            return
        if not _serve_one(session, object_id, open_object, chunk_size, compress, peer):
            return


def _serve_one(session: _Session, object_id: bytes, open_object: OpenObject, chunk_size: int,
               compress: bool, peer: str) -> bool:
    """Answer one request; False if the connection is no longer usable."""
    counters = session.counters
    try:
        holder = open_object(object_id)
        view = holder.__enter__()
    except Exception as exc:  # not held, or could not be read: tell the peer
        status = NOT_HERE if isinstance(exc, NotHere) else ERROR
        if status == ERROR:
            counters.add(serve_failures=1)
            log.warning("could not serve object %s to %s: %s", object_id.hex(), peer, exc)
        try:
            session.send_message(_response(status, 0, str(exc)))
        except OSError:
            return False
        return True
    try:
        session.send_object(view, chunk_size=chunk_size, compress=compress)
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
    ``open_object`` provides to peers that prove they hold ``security``'s cluster key, one
    thread per connection (blocking I/O releases the GIL). ``refusals`` counts the refused
    connections by kind (``TransferCounters.refused`` is their total)."""

    def __init__(self, host: str, open_object: OpenObject, counters: TransferCounters | None = None,
                 *, security: Security, port: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 compress: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S,
                 handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S) -> None:
        self.counters = counters if counters is not None else TransferCounters()
        self.security = security
        self.refusals: RateLimitedLog = _SharedLog(log)
        self._open_object = open_object
        self._chunk_size = chunk_size
        self._compress = compress
        self._timeout_s = timeout_s
        self._handshake_timeout_s = handshake_timeout_s
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
            serve_connection(conn, self._open_object, self.counters, security=self.security,
                             chunk_size=self._chunk_size, compress=self._compress,
                             timeout_s=self._timeout_s, handshake_timeout_s=self._handshake_timeout_s,
                             peer=f"{addr[0]}:{addr[1]}", refusals=self.refusals)
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


def _fetch_once(object_id: bytes, address: str, sink: Callable[[int], memoryview],
                counters: TransferCounters, security: Security, connect_timeout_s: float,
                timeout_s: float, cancel: Cancellation | None) -> None:
    sock = _connect(address, connect_timeout_s, cancel)
    try:
        _tune(sock, timeout_s)
        session = _client_handshake(sock, security, counters, timeout_s)
        session.send_message(object_id)
        try:
            body = session.recv_message(RESPONSE_HEADER_SIZE + MAX_MESSAGE)
        except TruncatedTransfer:
            raise TruncatedTransfer("the connection closed before a response") from None
        if len(body) < RESPONSE_HEADER_SIZE:
            raise _corrupt(counters, f"a response of {len(body)} bytes")
        status, size = _RESPONSE.unpack_from(body)
        message = body[RESPONSE_HEADER_SIZE:].decode("utf-8", "replace")
        if status == NOT_HERE:
            raise NotHere(message or "it does not hold the object")
        if status == ERROR:
            raise TransferError(f"it answered with an error: {message}")
        if status != OK:
            raise _corrupt(counters, f"unknown response status {status}")
        dest = sink(size)
        session.recv_chunks(dest)
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
           size_text: str, counters: TransferCounters | None, security: Security,
           connect_timeout_s: float, timeout_s: float, cancel: Cancellation | None) -> str:
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
                _fetch_once(object_id, address, sink, counters, security, connect_timeout_s,
                            timeout_s, cancel)
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
               security: Security, counters: TransferCounters | None = None,
               connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
               timeout_s: float = DEFAULT_TIMEOUT_S, cancel: Cancellation | None = None) -> str:
    """Fill ``dest`` (a writable view of exactly the object's size) with the object's bytes from
    the first of ``sources`` that delivers them whole; return that source's address. Only a
    source that proves it holds ``security``'s cluster key is believed (and only it is asked).

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

    return _fetch(object_id, sources, sink, f" ({dest.nbytes} bytes)", counters, security,
                  connect_timeout_s, timeout_s, cancel)


def fetch(object_id: bytes, sources: Sequence[Source], *, security: Security,
          size: int | None = None, counters: TransferCounters | None = None,
          connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, timeout_s: float = DEFAULT_TIMEOUT_S,
          cancel: Cancellation | None = None) -> memoryview:
    """The object's bytes in a fresh buffer (a writable view of a bytearray), for a process
    without a local store (e.g. a driver on a machine with no node). ``size``, if known, is
    checked against what the source says. Raises like :func:`fetch_into`."""
    if size is not None:
        dest = memoryview(bytearray(size))
        fetch_into(object_id, dest, sources, security=security, counters=counters,
                   connect_timeout_s=connect_timeout_s, timeout_s=timeout_s, cancel=cancel)
        return dest
    held: list[memoryview] = []

    def sink(n: int) -> memoryview:
        if not held or held[0].nbytes != n:
            held[:] = [memoryview(bytearray(n))]
        return held[0]

    _fetch(object_id, sources, sink, "", counters, security, connect_timeout_s, timeout_s, cancel)
    return held[0]

"""The head's HTTP server: ``/metrics``, the dashboard's pages and their JSON endpoints, in
threads of its own; what it shows comes from snapshots and the state API, never HeadState.

    HTTP client ──GET──▶ handler thread ──auth.check──▶ 401 / 405 / go on
      /metrics:  SnapshotBox.get(): the latest snapshot if young enough, else ask for one and
                 wait (bounded) ◀──publish── head loop, between turns (Snapshotter.build)
                 └─ metrics.render(snapshot) ──▶ 200 text/plain
      /api/...:  api.answer ──HeadSource (a status connection to this head)──▶ head loop,
                 between turns, as any client ──▶ 200 JSON (400 bad parameter, 503 no answer)
      /, /tasks, ...: pages.page (a fixed shell); /static/...: pages.static_file

Why the standard library's ``ThreadingHTTPServer``: the head needs a few GET endpoints with a
token, a thread per connection keeps a slow client from holding up the others (a page's
question to the head waits in its own thread), and it adds no
dependency and no event loop to the head process. Each connection's socket has a time-out
(``REQUEST_TIMEOUT_S``), connections beyond ``MAX_CONNECTIONS`` are closed at once, and the
head's loop never waits for this server: it only looks at a flag between turns and hands
over a new dict. Rendering runs in the handler thread (it holds the GIL for a few
milliseconds per scrape of 100 nodes: see docs/monitoring.md).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from .._ratelimit import RateLimitedLog
from . import api, auth
from .metrics import render
from .pages import HEADERS as PAGE_HEADERS
from .pages import PAGES, page, static_file
from .source import HeadSource, SourceError

log = logging.getLogger("taskmesh.dashboard")

__all__ = ["SnapshotBox", "DashboardServer", "REQUEST_TIMEOUT_S", "MAX_CONNECTIONS"]

#: a connection that sends or takes nothing for this long is closed
REQUEST_TIMEOUT_S = 10.0
#: connections served at once; more are closed without an answer
MAX_CONNECTIONS = 32
#: how long a request waits for the head's loop to build a snapshot
SNAPSHOT_WAIT_S = 2.0
#: the loop keeps folding events this long after the last request (see HeadServer)
ACTIVE_S = 300.0


class SnapshotBox:
    """The handoff between the head's loop (the only writer) and the HTTP threads.

    Readers ask (``get``); the loop sees ``wanted`` between turns, builds a snapshot and
    ``publish``es it, which wakes them. A snapshot younger than ``max_age_s`` is served again
    without asking, so the head builds at most one per ``max_age_s`` however often it is
    scraped, and none while nobody asks."""

    def __init__(self, max_age_s: float, clock: Any = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._cond = threading.Condition()
        self._latest: tuple[float, dict] | None = None  # (when built, snapshot)
        #: set by a reader, cleared by publish: read by the loop without the lock (a bool)
        self.wanted = False
        #: when a reader last asked (the loop folds events only while this is recent)
        self.last_asked = float("-inf")

    def publish(self, snapshot: dict) -> None:
        """The loop's side: a new snapshot (never changed afterwards)."""
        with self._cond:
            self._latest = (self.clock(), snapshot)
            self.wanted = False
            self._cond.notify_all()

    def get(self, timeout: float = SNAPSHOT_WAIT_S) -> tuple[dict, float] | None:
        """A reader's side: a snapshot no older than ``max_age_s`` and its age, asked for if
        need be; after ``timeout`` (the loop is busy or stopped) the latest one, however old,
        or None if there is none."""
        with self._cond:
            now = self.clock()
            self.last_asked = now
            latest = self._latest
            if latest is not None and now - latest[0] < self.max_age_s:
                return latest[1], now - latest[0]
            self.wanted = True
            self._cond.wait_for(lambda: self._latest is not latest, timeout)
            latest = self._latest
            return None if latest is None else (latest[1], self.clock() - latest[0])


#: sent with every JSON answer: not to be rendered or framed by anyone
API_HEADERS = {"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
               "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def _plain(value: Any) -> Any:
    """JSON for what msgpack hands over that JSON lacks (ids as bytes: hex)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = REQUEST_TIMEOUT_S  # (StreamRequestHandler sets it on the connection's socket)
    protocol_version = "HTTP/1.1"
    server_version = "taskmesh"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s " + format, self.client_address[0], *args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # no access log: a request line may carry the token (?token=)

    def _verdict(self) -> auth.Verdict:
        dash = self.server.dashboard
        return auth.check(self.command, self.path, self.headers, dash.token, dash.cookie)

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        dash = self.server.dashboard
        verdict = self._verdict()
        if verdict.status != 200:
            dash.refused(verdict.why, self.client_address[0], self.command, self.path)
            if verdict.status == 405:
                self._reply(405, b"405 Method Not Allowed: every endpoint here is read-only "
                                 b"(GET)\n", headers={"Allow": ", ".join(auth.ALLOWED_METHODS)})
            else:
                self._reply(401, auth.HOW_TO_GET_IN.encode(),
                            headers={"WWW-Authenticate": 'Bearer realm="taskmesh"'})
            return
        headers = {}
        if verdict.set_cookie:
            headers["Set-Cookie"] = (f"{dash.cookie}={verdict.set_cookie}; Path=/; HttpOnly; "
                                     "SameSite=Strict")
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._metrics(headers)
        elif path.startswith("/api/"):
            self._api(path, query, headers)
        elif path.startswith("/static/"):
            found = static_file(path[len("/static/"):])
            if found is None:
                self._reply(404, b"404 Not Found\n", headers={**headers, **PAGE_HEADERS})
            else:
                self._reply(200, found[0], found[1], {**headers, **PAGE_HEADERS})
        else:
            body = page(path)
            if body is None:
                self._reply(404, b"404 Not Found: the dashboard's pages are " +
                            ", ".join(PAGES).encode() + b"; /api/... and /metrics\n",
                            headers={**headers, **PAGE_HEADERS})
            else:
                self._reply(200, body, "text/html; charset=utf-8", {**headers, **PAGE_HEADERS})

    def _metrics(self, headers: dict) -> None:
        dash = self.server.dashboard
        got = dash.box.get()
        if got is None:
            self._reply(503, b"503: the head has not published a snapshot yet; try again\n",
                        headers=headers)
            return
        snapshot, age = got
        body, content_type = render(snapshot, self.headers.get("Accept", ""),
                                    {"age_s": age, "refused_requests": dash.refusals()})
        self._reply(200, body, content_type, headers)

    def _api(self, path: str, query: str, headers: dict) -> None:
        """A JSON endpoint (api.py): asks the head through the dashboard's own connection."""
        dash = self.server.dashboard
        try:
            if dash.source is None:
                raise SourceError("this server has no connection to a head")
            status, body, extra = api.answer(path, parse_qs(query, keep_blank_values=True),
                                             dash.source, time.time())
        except SourceError as exc:
            status, body, extra = 503, {"error": f"the head did not answer: {exc}"}, {}
        except Exception:  # noqa: BLE001 - a bug answers 500 and is logged, once per 10 s
            dash.failed(path)
            status, body, extra = 500, {"error": "internal error (see the head's log)"}, {}
        data = json.dumps(body, default=_plain, separators=(",", ":")).encode()
        self._reply(status, data, "application/json", {**headers, **API_HEADERS, **extra})

    do_GET = do_HEAD = _serve

    def _not_allowed(self) -> None:
        self._serve()  # (the verdict is 405)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    dashboard: "DashboardServer"

    def __init__(self, address: tuple[str, int], handler: type, dashboard: "DashboardServer",
                 family: int) -> None:
        self.address_family = family
        self.dashboard = dashboard
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # full: close, do not queue
            self.dashboard.refused("too many connections", client_address[0], "", "")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a browser closing a kept-alive connection, a time-out)
        is no error of ours: logged at debug, not printed as a traceback on stderr."""
        log.debug("dashboard: connection from %s ended", client_address[0], exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class DashboardServer:
    """Binds ``host:port`` (0: a free port) and serves in a daemon thread until ``close``."""

    def __init__(self, host: str, port: int, token: str, box: SnapshotBox,
                 source: HeadSource | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.token = token
        self.box = box
        #: how the pages' /api/ endpoints ask the head (None: they answer 503)
        self.source = source
        self._refused = RateLimitedLog(log)
        self._errors = RateLimitedLog(log)  # (bugs met answering /api/: not refusals)
        self._lock = threading.Lock()  # (the counts are bumped from handler threads)
        self.httpd = _Server((host, port), _Handler, self, family)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.cookie = auth.cookie_name(self.port)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="taskmesh-dashboard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refused(self, why: str, client: str, method: str, path: str) -> None:
        """Count and log (rate-limited) a refused request; never the token it carried."""
        with self._lock:
            self._refused.event(why, "dashboard: refused %s %s from %s: %s", method,
                                path.split("?", 1)[0], client, why)

    def failed(self, path: str) -> None:
        """Log (rate-limited, with the traceback at debug) a bug met answering ``path``."""
        with self._lock:
            self._errors.event(path, "dashboard: internal error answering %s", path,
                               level=logging.ERROR)
        log.debug("the error", exc_info=True)

    def refusals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._refused.counts)

    def close(self) -> None:
        """Stop serving and close the listening socket (handler threads are daemons: one
        still writing to a slow client ends with its time-out or the process)."""
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=2)
        self.httpd.server_close()
        if self.source is not None:
            self.source.close()

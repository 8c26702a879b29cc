"""Where the dashboard's data comes from: the head itself, asked as any client asks it.

    handler thread ──HeadSource.info("state:tasks?...") / .logs(node, query)──▶ CoreClient
        ──local socket (kind "status")──▶ the same head's loop, between its turns
        ◀── InfoReply ──────────────────────┘

Why a client connection and not a look at the head's records: the pages then read exactly
what the state API reads (``InfoRequest("state:...")``, ``"status"``, ``"events:<seq>"``,
``LogRequest``), the head answers them between its turns from its own state (no lock is
shared with these threads), and a slow browser holds up only its own handler thread. One
connection serves every handler thread (``CoreClient`` is safe to share); it is opened on the
first dashboard request, opened again if it broke, and closed with the server.

However many browsers watch, the head answers each distinct question at most once per
``SHARE_S``: an answer is served again to whoever asks the same within that time (ten open
overview pages cost the head one ``status`` every half second, not ten).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["HeadSource", "SourceError"]

#: how long one question to the head may take (a log query waits up to 5 s for its nodes)
ASK_TIMEOUT_S = 15.0
#: an answer to InfoRequest(what) is shared with whoever asks the same for this long
SHARE_S = 0.5
#: distinct questions remembered at once (the oldest answers go first)
SHARE_MAX = 64


class SourceError(Exception):
    """The head could not be asked (not reachable, or it did not answer in time)."""


class HeadSource:
    """A lazily opened ``status`` connection from the head process to its own endpoint."""

    def __init__(self, connect: Callable[[], Any], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        #: makes a connected, handshaken client (see ``for_head``)
        self._connect = connect
        self._clock = clock
        self._core: Any = None
        self._lock = threading.Lock()
        self._closed = False
        #: what -> (when answered, the answer): shared within SHARE_S
        self._recent: dict[str, tuple[float, Any]] = {}

    @classmethod
    def for_head(cls, config: Any, endpoint: str, address: str, security: Any) -> "HeadSource":
        """The source of a head listening at ``endpoint`` (its local socket)."""

        def connect() -> Any:
            from .._state_client import open_status_client

            return open_status_client(config, endpoint, address, security)

        return cls(connect)

    def _client(self) -> Any:
        with self._lock:
            if self._closed:
                raise SourceError("the dashboard is shutting down")
            if self._core is None or self._core.closed:
                try:
                    self._core = self._connect()
                except Exception as exc:  # noqa: BLE001 - any failure is "cannot ask"
                    raise SourceError(f"cannot connect to the head: {exc}") from exc
            return self._core

    def _ask(self, make: Callable[[Any], Any]) -> Any:
        core = self._client()
        try:
            return make(core)
        except Exception as exc:  # noqa: BLE001 - time-outs, a connection that broke
            if getattr(core, "closed", False) or getattr(core.sock, "peer_closed", False):
                with self._lock:
                    if self._core is core:
                        self._core = None  # the next request connects again
            raise SourceError(str(exc) or type(exc).__name__) from exc

    def info(self, what: str) -> Any:
        """The head's answer to ``InfoRequest(what)`` (one given less than ``SHARE_S`` ago to
        the same question, if there is one: treat it as read-only)."""
        now = self._clock()
        with self._lock:
            if self._closed:
                raise SourceError("the dashboard is shutting down")
            recent = self._recent.get(what)
        if recent is not None and now - recent[0] < SHARE_S:
            return recent[1]
        answer = self._ask(lambda core: core.info(what, timeout=ASK_TIMEOUT_S))
        with self._lock:
            self._recent[what] = (self._clock(), answer)
            if len(self._recent) > SHARE_MAX:  # (dicts keep order: the oldest first)
                for key in list(self._recent)[:len(self._recent) - SHARE_MAX]:
                    del self._recent[key]
        return answer

    def logs(self, node: str, query: dict) -> Any:
        """The head's answer to ``LogRequest(node, query)``: ``{"replies", "missing"}``."""
        from .. import _protocol as P

        return self._ask(lambda core: core.request(lambda rid: P.LogRequest(rid, node, query),
                                                   timeout=ASK_TIMEOUT_S))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._recent.clear()
            core, self._core = self._core, None
        if core is not None:
            core.close()

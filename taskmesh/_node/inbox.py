"""Events that helper threads (spill I/O, transfers) hand to the node agent's loop.

    thread ──put(item)──▶ deque + one byte on a pipe ──▶ the loop polls ``wake_fd`` ──drain()──▶ items
"""

from __future__ import annotations

import collections
import os
import threading


class Inbox:
    """Events from a helper thread for the loop: a queue, announced by a byte on a pipe."""

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def put(self, item: tuple) -> None:
        with self._lock:  # never write to the pipe's fd number once closed (it may be reused)
            if self._closed:
                return
            self._items.append(item)
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the loop is already due to wake

    def drain(self) -> list[tuple]:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._items:
            out.append(self._items.popleft())
        return out

    def close(self) -> list[tuple]:
        """Stop taking events; return those not drained yet."""
        with self._lock:
            self._closed = True
            os.close(self.wake_fd)
            os.close(self._wake_w)
            left = list(self._items)
            self._items.clear()
        return left

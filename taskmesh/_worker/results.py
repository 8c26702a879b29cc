"""A worker's finished results on their way to the head: batched, never held behind a running task.

    task ends ──add()──▶ held (up to result_batch_s, at most 64) ──flush()──▶ TaskResults ──▶ head
    task starts ──arm()──▶ courier thread: sends held results a task outlives (see below)

A stream of short tasks costs one TaskResults message per batch: the worker's loop sends the
batch when it is full, when its oldest result is ``result_batch_s`` old, or when the queue is
empty. The loop only looks between tasks, so a result held while the next task runs would
wait for that task, however long. The courier thread prevents that: while tasks keep
starting, it wakes every ``COURIER_PERIOD_S`` and sends whatever has been held longer than
``result_batch_s``. A result therefore leaves at most about ``result_batch_s +
COURIER_PERIOD_S`` after it exists (plus the time the courier needs to get the GIL), whatever
runs next.

Why a period and not a deadline per batch: waking a thread for every batch of a stream of
short tasks (a notify, then a wake at the deadline) cost 10-15% of the throughput of a
stream of actor calls; a wake every 10 ms while busy costs nothing measurable. When no task
has started for ``COURIER_LINGER_S``, the courier parks, and the next ``arm()`` wakes it.

Batches are sent under the batch's lock, so they leave in the order they were made, and
:attr:`ResultBatch.holding` stays true until a batch is queued on the socket: a Release
queued after it cannot overtake a result whose value holds refs.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .. import _protocol as P

#: at most this many results in one TaskResults message
MAX_BATCH = 64
#: while tasks keep starting, the courier looks for results held too long this often
COURIER_PERIOD_S = 0.01
#: with no task started for this long, the courier parks until the next one
COURIER_LINGER_S = 0.5


class ResultBatch:
    """Held results of one worker, and the courier thread that bounds how long they wait."""

    def __init__(self, send: Callable[[Any], None], batch_s: float) -> None:
        self._send = send
        self.batch_s = batch_s
        self._cond = threading.Condition(threading.Lock())
        self._items: list[P.TaskResult] = []
        self._first = 0.0  # when the oldest held result was added
        self._last_arm = 0.0  # when a task last started with results held
        self._parked = True  # the courier waits for arm() (or has not started)
        self._courier: threading.Thread | None = None
        self._closed = False

    @property
    def holding(self) -> bool:
        """True while results are held back (read without the lock: a snapshot)."""
        return bool(self._items)

    def add(self, result: P.TaskResult) -> None:
        with self._cond:
            if not self._items:
                self._first = time.perf_counter()
            self._items.append(result)

    def due(self) -> bool:
        """The batch should go now: full, or its oldest result waited ``batch_s``."""
        items = self._items
        return bool(items) and (len(items) >= MAX_BATCH
                                or time.perf_counter() - self._first >= self.batch_s)

    def flush(self) -> None:
        """Send every held result now."""
        if self._items:
            with self._cond:
                self._send_locked()

    def arm(self) -> None:
        """A task is about to start: if results are held, the courier must be awake to send
        them should the task outlive their batch. Cheap when the courier is awake already."""
        if not self._items:
            return
        now = time.perf_counter()
        last, self._last_arm = self._last_arm, now
        # the courier parks only once COURIER_LINGER_S passed since the last arm it read: an
        # arm within half of that cannot race its decision; an older one takes the lock
        if self._parked or now - last > COURIER_LINGER_S / 2:
            with self._cond:
                if self._parked and not self._closed:
                    if self._courier is None:
                        self._courier = threading.Thread(target=self._run_courier,
                                                         name="taskmesh-results", daemon=True)
                        self._courier.start()
                    self._parked = False
                    self._cond.notify()

    def close(self) -> None:
        """Send what is held and stop the courier."""
        with self._cond:
            self._send_locked()
            self._closed = True
            self._cond.notify()

    def _send_locked(self) -> None:
        if self._items:
            # queued first, forgotten after: a cancel signal raised in between (they interrupt
            # a blocked get(), which flushes) at worst sends a batch twice, which the head
            # ignores, and never loses one
            self._send(P.TaskResults(list(self._items)))
            self._items = []

    def _run_courier(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                now = time.perf_counter()
                if self._items and now - self._first >= self.batch_s:
                    try:
                        self._send_locked()
                    except Exception:  # the connection is closing: the main loop will see it
                        pass
                if now - self._last_arm > COURIER_LINGER_S:
                    self._parked = True
                    while self._parked and not self._closed:
                        cond.wait()
                else:
                    cond.wait(COURIER_PERIOD_S)

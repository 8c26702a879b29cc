"""A worker's stdout and stderr: marked with whose output follows, and written out promptly
but in few writes.

    task code ──print()──▶ MarkedStream ──(marker line, once per task)──▶ fd 1 ──pipe──▶ node agent
                               └─ first write since the last flush: Flusher flushes FLUSH_AFTER_S later

The node agent reads the worker's fds 1 and 2 (``_node/output.py``). Before the first text a
task writes to a stream, that stream gets a context marker line (job, task, actor, label) so
the agent knows which driver to show the lines to. The marker is written lazily, on the first
write of each new task: a task that prints nothing costs nothing (one identity check per
write otherwise). Text that bypasses ``sys.stdout`` (C code writing to fd 1, a subprocess)
belongs to whoever was marked last.

Buffering: stdout behaves as line-buffered (each line written out as it ends, in order with
what C code and subprocesses write to fd 1) until a task writes more than ``FLOOD_LINES``
lines within ``FLOOD_WINDOW_S``; then, while that lasts, lines wait in the buffer and a
thread flushes them ``FLUSH_AFTER_S`` after the first (a task printing 100,000 lines a second
makes a few hundred writes a second instead of 100,000: line buffering cost the other tasks
on a 2-CPU machine 10%, docs/performance.md). A marker is flushed as it is written, and so is
what waits whenever the worker sends results. In such a flood, unless tasks run
concurrently in this worker, ``sys.stdout`` becomes the real stream until the task ends (no
Python-level step per write: 0.5 µs a line instead of 1.6), and the thread flushes every
``FLUSH_AFTER_S``. stderr stays line-buffered: its lines are errors and warnings, wanted
out even if the worker dies.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import Any, Callable

from .._context import CTX
from .._output_marks import Context, format_marker

#: what a worker says is running now: (job, task_id, actor_id, label)
Describe = Callable[[], Context]

#: a stream that ends more lines than this within FLOOD_WINDOW_S is flushed in batches
FLOOD_LINES, FLOOD_WINDOW_S = 20, 0.05
#: then what waits is flushed this long after the first line of a batch
FLUSH_AFTER_S = 0.05


class Flusher:
    """Decides when a block-buffered stream is flushed: at each line end, as line buffering
    would, except in a flood of lines (see the module's doc): then ``FLUSH_AFTER_S`` later,
    by a thread that sleeps otherwise. ``dirty`` (a timed flush is due) is read per line.

    In a flood, if the worker runs one task at a time (``allow_direct``), the marked stream
    also steps aside: ``sys.stdout`` is the real stream (C speed, no Python-level step per
    write) until the task ends (``task_ended``), and the thread flushes every
    ``FLUSH_AFTER_S`` meanwhile. The task's marker is written already; the next task's
    first write is marked again."""

    def __init__(self, stream: Any, after: float = FLUSH_AFTER_S) -> None:
        self.stream = stream
        self.after = after
        self.dirty = False
        self._since = 0.0  # the start of the current window
        self._lines = 0  # lines ended in it
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: the marked stream that is ``sys.stdout`` (None: never step it aside)
        self.marked: Any = None
        self.allow_direct = True  # False once tasks run concurrently (an async or threaded actor)
        self.direct = False  # ``sys.stdout`` is the real stream: a task floods it

    def line(self) -> None:
        """A line ended in what was just written."""
        if self.dirty:  # (a flood: the thread flushes soon)
            return
        now = time.monotonic()
        if now - self._since < FLOOD_WINDOW_S:
            self._lines += 1
            if self._lines > FLOOD_LINES:
                self._later()
                if self.allow_direct and self.marked is not None and sys.stdout is self.marked:
                    sys.stdout = self.stream
                    self.direct = True
                return
        else:
            self._since, self._lines = now, 1
        self.flush_now()

    def _later(self) -> None:
        self.dirty = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="taskmesh-stdout",
                                            daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.after)
            if not self.direct:  # (direct: every FLUSH_AFTER_S until the task ends)
                self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Flush now if lines wait for a timed flush (or may: the real stream is direct)."""
        if self.dirty or self.direct:
            self.flush_now()

    def task_ended(self) -> None:
        """The running task ended: the marked stream is ``sys.stdout`` again (if the real
        one still is), and what waits goes out."""
        if self.direct:
            self.direct = False
            if sys.stdout is self.stream:
                sys.stdout = self.marked
            self._since, self._lines = 0.0, 0  # (the flood was that task's)
            self.flush_now()

    def flush_now(self) -> None:
        """Write out whatever waits in the stream."""
        self.dirty = False
        try:
            self.stream.flush()
        except (OSError, ValueError):  # (a closed or broken stream: nothing to keep)
            pass


class MarkedStream:
    """``sys.stdout`` / ``sys.stderr`` of a worker: writes go to the real stream, after a
    context marker whenever the running task changed since the last write."""

    def __init__(self, real: Any, describe: Describe, flusher: Flusher | None = None) -> None:
        self._real = real
        self._describe = describe
        self._marked: Any = self  # the task id last marked (self: none yet)
        self._flusher = flusher  # None: the real stream is line-buffered

    def write(self, text: str) -> int:
        if CTX.current_task_id is not self._marked:
            self._mark()
        n = self._real.write(text)
        if "\n" in text:
            flusher = self._flusher
            if flusher is not None and not flusher.dirty:  # (dirty: a flood, flushed soon)
                flusher.line()
        return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _mark(self) -> None:
        self._marked = CTX.current_task_id
        self._real.write(format_marker(self._describe()))
        if self._flusher is not None:  # (before anything C code writes to the fd)
            self._flusher.flush_now()

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._real, name)


#: the worker's stdout flusher, once ``install`` ran
_stdout_flusher: Flusher | None = None


def install(describe: Describe) -> None:
    """Mark this worker's stdout and stderr; stdout flushed by a ``Flusher``, stderr
    line-buffered. For a worker whose fds 1 and 2 are pipes."""
    global _stdout_flusher
    for name in ("stdout", "stderr"):
        real = getattr(sys, name)
        if real is None:
            continue
        flusher = None
        if isinstance(real, io.TextIOWrapper):
            if name == "stdout":  # (buffered even under PYTHONUNBUFFERED or -u)
                real.reconfigure(line_buffering=False, write_through=False)
                flusher = _stdout_flusher = Flusher(real)
            else:
                real.reconfigure(line_buffering=True)
        marked = MarkedStream(real, describe, flusher)
        if flusher is not None:
            flusher.marked = marked
        setattr(sys, name, marked)


def flush() -> None:
    """Flush what waits in stdout for a timed flush (the worker calls this before it sends
    results: a task's output goes before its result)."""
    if _stdout_flusher is not None:
        _stdout_flusher.flush()


def task_ended() -> None:
    """The worker calls this when a task ends (see ``Flusher``: the marked stream comes
    back if a flood put it aside)."""
    if _stdout_flusher is not None and _stdout_flusher.direct:
        _stdout_flusher.task_ended()


def concurrent() -> None:
    """Tasks run concurrently from now on (an async or threaded actor): the marked stream
    stays in place whatever the flood, so each write is marked with its own task."""
    if _stdout_flusher is not None:
        _stdout_flusher.allow_direct = False

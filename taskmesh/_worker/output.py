"""A worker's stdout and stderr: line-buffered, and marked with whose output follows.

    task code ──print()──▶ MarkedStream ──(marker line, once per task)──▶ fd 1 ──pipe──▶ node agent

The node agent reads the worker's fds 1 and 2 (``_node/output.py``). Before the first text a
task writes to a stream, that stream gets a context marker line (job, task, actor, label) so
the agent knows which driver to show the lines to. The marker is written lazily, on the first
write of each new task: a task that prints nothing costs nothing (one identity check per
write otherwise). Text that bypasses ``sys.stdout`` (C code writing to fd 1, a subprocess)
belongs to whoever was marked last.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Callable

from .._context import CTX
from .._output_marks import Context, format_marker

#: what a worker says is running now: (job, task_id, actor_id, label)
Describe = Callable[[], Context]


class MarkedStream:
    """``sys.stdout`` / ``sys.stderr`` of a worker: writes go to the real stream, after a
    context marker whenever the running task changed since the last write."""

    def __init__(self, real: Any, describe: Describe) -> None:
        self._real = real
        self._describe = describe
        self._marked: Any = self  # the task id last marked (self: none yet)

    def write(self, text: str) -> int:
        if CTX.current_task_id is not self._marked:
            self._mark()
        return self._real.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _mark(self) -> None:
        self._marked = CTX.current_task_id
        self._real.write(format_marker(self._describe()))

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._real, name)


def install(describe: Describe) -> None:
    """Make this worker's stdout and stderr line-buffered (lines reach the agent as they
    are written: it forwards them) and marked. For a worker whose fds 1 and 2 are pipes."""
    for name in ("stdout", "stderr"):
        real = getattr(sys, name)
        if real is None:
            continue
        if isinstance(real, io.TextIOWrapper):
            real.reconfigure(line_buffering=True)
        setattr(sys, name, MarkedStream(real, describe))

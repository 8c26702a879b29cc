"""Progress of long waits, the way Python users expect it: ``as_completed(refs)`` for a
``tqdm`` loop on the driver, and ``tqdm`` bars made inside tasks drawn on the driver.

    task: tqdm(range(n)) ──state line (BAR + JSON) on stderr, at most every 0.1 s──▶ node agent
        ──▶ head ──▶ driver: BarManager ──▶ one tqdm bar per call site (all tasks' counts summed)

Inside a task, :func:`tqdm` returns a bar that draws nothing where it runs: it writes its state
(call site, description, count, total) as one line into the worker's stderr, which reaches the
driver with the task's other output (Ray's ``tqdm_ray`` idea). The driver folds the bars of
one call site (``file:line`` and description) from every task into one bar, so a map over 64
tasks shows one bar counting to the sum of their totals. On the driver itself, :func:`tqdm` is
``tqdm.tqdm``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any, Iterable, Iterator, Sequence

from .._context import CTX
from .._output_marks import BAR

__all__ = ["as_completed", "tqdm"]

#: a task's bar reports its count at most this often (and when it closes)
REPORT_S = 0.1


def as_completed(refs: Sequence[Any], timeout: float | None = None,
                 with_results: bool = False) -> Iterator[Any]:
    """Yield the refs as their tasks finish (first done, first out), like
    ``concurrent.futures.as_completed``; with ``with_results``, ``(ref, value)`` pairs.

    ``for ref in tqdm(as_completed(refs), total=len(refs))`` shows progress as results come.
    Raises ``GetTimeoutError`` if ``timeout`` seconds pass before all are done. A task that
    failed is yielded like any other; ``get`` (or ``with_results``) raises its error.
    """
    import taskmesh
    from ..errors import GetTimeoutError

    pending = list(refs)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = taskmesh.wait(pending, num_returns=1, timeout=left)
        if not ready:
            raise GetTimeoutError(f"as_completed: {len(pending)} of {len(refs)} tasks were not "
                                  f"done within {timeout:g} s")
        if pending:  # take every other one done by now in the same step
            more, pending = taskmesh.wait(pending, num_returns=len(pending), timeout=0)
            ready += more
        for ref in ready:
            yield (ref, taskmesh.get(ref)) if with_results else ref


def tqdm(iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
         **kwargs: Any) -> Any:
    """A progress bar: ``tqdm.tqdm`` on the driver; inside a task or actor, a bar drawn on the
    driver that started it (see the module docstring). Takes tqdm's arguments (``desc``,
    ``total``, ``unit``, ...; those that only shape the drawing are used on the driver)."""
    if not CTX.worker_id:
        import tqdm as _tqdm

        return _tqdm.tqdm(iterable, desc=desc, total=total, **kwargs)
    frame = sys._getframe(1)
    site = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    return RemoteBar(iterable, desc, total, site, str(kwargs.get("unit", "it")))


class RemoteBar:
    """A task's bar: counts here, is drawn on the driver."""

    def __init__(self, iterable: Iterable | None, desc: str | None, total: float | None,
                 site: str, unit: str = "it") -> None:
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.n: float = 0
        self.unit = unit
        self.site = site
        self.id = uuid.uuid4().hex[:16]
        self.closed = False
        self._reported = 0.0
        self._report(force=True)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this bar has no iterable: use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "RemoteBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        self._report()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        self._report(force=refresh)

    def refresh(self) -> None:
        self._report(force=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report(force=True)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported < REPORT_S:
            return
        self._reported = now
        state = {"id": self.id, "site": self.site, "desc": self.desc, "n": self.n,
                 "total": self.total, "unit": self.unit, "closed": self.closed}
        try:
            sys.stderr.write(BAR + json.dumps(state, separators=(",", ":")) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

"""Child process of the side-by-side runner: benchmarks ONE framework, then exits.

Started by :mod:`benchmarks.sidebyside` as::

    python -m benchmarks._child --framework ray --workloads noop_async,nested \\
        --repeat 3 --events /tmp/x/events.jsonl

It appends one JSON object per line to the ``--events`` file (never stdout,
which the frameworks are free to clutter):

* ``{"event": "fatal", "stage": "import"|"init", "error": ...}`` -- then exits 2;
* ``{"event": "cold_start", "import_s", "init_s", "first_task_s", "seconds", "versions"}``;
* per workload ``{"event": "start", "workload"}`` then
  ``{"event": "result", "workload", "ok", "seconds": [...], "warmup_s", "error", "info"}``
  (``info``: ``{"warmup": {...}, "timed": [{...}, ...]}`` from runners returning a
  :class:`benchmarks.workloads.Sample`, else ``null``);
* ``{"event": "workloads_done"}``, ``{"event": "shutdown", "seconds"|"error"}``.

Cold start is measured first thing, so the process is genuinely fresh; the
framework's import is timed separately (numpy and this package are already
loaded, equally for every framework).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

from benchmarks import workloads as wl
from benchmarks.adapters import DEFAULT_NUM_WORKERS, FRAMEWORKS


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``"ExcType: first line … last line"`` of the message, for tables.

    Remote-task errors usually carry the worker traceback in the message; its
    last line names the root cause, so it is kept next to the first line.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    msg = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    text = f"{type(exc).__name__}: {msg}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Events:
    """Append-only JSON-lines event sink, flushed after every event."""

    def __init__(self, path: str) -> None:
        self._f: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line and flush it so the parent sees it immediately."""
        self._f.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        self._f.flush()


def _info_or_none(info: dict[str, Any]) -> dict[str, Any] | None:
    """The collected iteration infos, or ``None`` if the runner returned bare floats."""
    if info["warmup"] is None and not any(info["timed"]):
        return None
    return info


def main(argv: list[str] | None = None) -> int:
    """Run the requested workloads on one framework; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", required=True, choices=sorted(FRAMEWORKS))
    p.add_argument(
        "--workloads",
        default="",
        help="comma-separated; may be empty (cold start only)",
    )
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--workers", type=int, default=DEFAULT_NUM_WORKERS)
    p.add_argument("--events", required=True)
    args = p.parse_args(argv)

    events = Events(args.events)
    fw = FRAMEWORKS[args.framework]
    names = [n for n in args.workloads.split(",") if n]

    # ---- cold start: import, init, first result of one trivial task.
    t0 = time.perf_counter()
    try:
        fw.import_modules()
    except BaseException as exc:  # noqa: BLE001 - report anything, including SystemExit
        traceback.print_exc()
        events.emit("fatal", stage="import", error=one_line(exc))
        return 2
    t1 = time.perf_counter()
    try:
        api = fw.init(args.workers)
        t2 = time.perf_counter()
        first = api.get(api.remote(wl.trivial)())
        t3 = time.perf_counter()
        wl.verify(first == 1, f"first task returned {first!r}, expected 1")
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        events.emit("fatal", stage="init", error=one_line(exc))
        with contextlib.suppress(
            BaseException
        ):  # best effort; the parent kills leftovers
            fw.shutdown()
        return 2
    try:
        versions = fw.versions(imported=True)
    except Exception:  # noqa: BLE001
        versions = {}
    events.emit(
        "cold_start",
        import_s=t1 - t0,
        init_s=t2 - t1,
        first_task_s=t3 - t2,
        seconds=t3 - t1,
        versions=versions,
        pid=os.getpid(),
    )

    # ---- workloads: one untimed warm-up, then `repeat` timed iterations each.
    for name in names:
        workload = wl.WORKLOADS[name]
        events.emit("start", workload=name)
        seconds: list[float] = []
        warmup_s: float | None = None
        # Extra facts the runner returned (wl.Sample.info), per iteration.
        info: dict[str, Any] = {"warmup": None, "timed": []}
        try:
            run = workload.runner(fw.name)
            if workload.warmup:
                gc.collect()
                sample = wl.as_sample(run(api))
                warmup_s, info["warmup"] = sample.seconds, sample.info or None
            for _ in range(args.repeat):
                gc.collect()
                sample = wl.as_sample(run(api))
                seconds.append(sample.seconds)
                info["timed"].append(sample.info)
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exc()
            events.emit(
                "result",
                workload=name,
                ok=False,
                error=one_line(exc),
                seconds=seconds,
                warmup_s=warmup_s,
                info=_info_or_none(info),
            )
            if isinstance(exc, KeyboardInterrupt):
                break
            continue
        events.emit(
            "result",
            workload=name,
            ok=True,
            seconds=seconds,
            warmup_s=warmup_s,
            info=_info_or_none(info),
        )

    events.emit("workloads_done")
    t4 = time.perf_counter()
    try:
        fw.shutdown()
        events.emit("shutdown", seconds=time.perf_counter() - t4)
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        events.emit("shutdown", error=one_line(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

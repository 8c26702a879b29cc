"""What the state view (``_head/views.py``) costs the head per task.

    python -m benchmarks.state_view            # CPU time: head_replay's flood, view on/off
    python -m benchmarks.state_view --consume  # the view's own pass over a task's 3 events

The flood is ``head_replay``'s (the head's state machine alone, messages decoded, nothing
encoded), run alternately with the view attached to the event stream and detached, 7 times
each; the medians are printed. For instruction counts run one side under callgrind:
``valgrind --tool=callgrind python -m benchmarks.state_view --only on`` (and ``off``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import head_replay


def _flood(view_on: bool, batches: int) -> float:
    """CPU seconds per task of a flood of no-op tasks, the view on or off."""
    original = head_replay._cluster

    def cluster(ring):  # type: ignore[no-untyped-def]
        c, fid = original(ring)
        if not view_on:
            c.state.events.view = None
        return c, fid

    head_replay._cluster = cluster
    try:
        return head_replay.flood(None, batches=batches)
    finally:
        head_replay._cluster = original


def _consume(n: int = 100_000) -> float:
    """Seconds per task of the view's pass alone: TaskSubmitted, TaskStarted, TaskFinished."""
    from taskmesh._head.views import StateView

    view = StateView(10_000)
    view.consume([("DriverJoined", 0.0, b"D1234567")])
    events = []
    for i in range(n):
        tid = i.to_bytes(16, "big")
        events += [("TaskSubmitted", 1.0, tid, "mod.f", b"", 0, b"D1234567", b"", 100),
                   ("TaskStarted", 1.0, tid, "n1", "w1"), ("TaskFinished", 1.0, tid, 0.001)]
    batches = [events[i:i + 256] for i in range(0, len(events), 256)]
    t0 = time.process_time()
    for b in batches:
        view.consume(b)
    return (time.process_time() - t0) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consume", action="store_true", help="time the view's pass alone")
    parser.add_argument("--only", choices=("on", "off"), help="one flood (for callgrind)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    from taskmesh._head.collector import Collector

    Collector(0.0).start()
    if args.consume:
        runs = sorted(_consume() * 1e6 for _ in range(args.repeat))
        print(f"consume: {statistics.median(runs):.3f} us/task (runs {runs[0]:.3f} .. {runs[-1]:.3f})")
        return 0
    if args.only:
        _flood(args.only == "on", 50)  # warm-up
        print(f"view {args.only}: {_flood(args.only == 'on', 200) * 1e6:.2f} us/task")
        return 0
    _flood(True, 50)
    on, off = [], []
    for _ in range(args.repeat):
        on.append(_flood(True, 400) * 1e6)
        off.append(_flood(False, 400) * 1e6)
    m_on, m_off = statistics.median(on), statistics.median(off)
    ratios = sorted(a / b for a, b in zip(on, off))
    print(f"flood: view on {m_on:.2f} us/task, off {m_off:.2f} us/task; paired on/off median "
          f"{statistics.median(ratios):.3f} (runs {ratios[0]:.3f} .. {ratios[-1]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

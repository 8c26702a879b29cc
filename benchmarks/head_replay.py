"""The head's state machine alone, in this process: CPU per task, with no sockets, no other
processes and no scheduler noise, so that two commits can be compared to a few percent.

    python -m benchmarks.head_replay                # both workloads, this checkout
    python -m benchmarks.head_replay --stream off   # with the event stream off

Two workloads, each run 7 times (the median is printed, and the spread):

- ``flood``: a driver submits no-op tasks in batches of 100; the results of what the head
  assigned in one round come back in the next, with the driver's releases. Per task: the
  head's share of a noop_async-like flood (messages arrive decoded; nothing is encoded).
- ``round_trip``: one task at a time: Submit, its TaskResults, its Release, one scheduling
  round each; the time of each round is what a sync round trip waits for at the head.

The head's own garbage-collection set-up is applied (young collections only; see
``_head/collector.py``). To compare with an older commit, run this file from a checkout of
that commit's tree (``git worktree add /tmp/old <commit>``; ``cd /tmp/old; python
/path/to/head_replay.py``): it also drives the head of before issue 14 (one ``HeadState``
with ``handle`` + ``schedule`` + an outbox), through that commit's own test harness.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.getcwd())  # the checkout this is run from

from taskmesh import _protocol as P  # noqa: E402

try:  # after issue 14: the state returns commands
    from tests.support.head import Cluster, Sent, value, wire

    SPLIT = True
except ImportError:  # before: one HeadState with an outbox
    from tests.unit.test_head_state import Cluster, Sent, value, wire  # type: ignore

    SPLIT = False

Step = Callable[[list, float], list]


def _stepper(cluster: Any) -> Step:
    """One scheduling round for a batch of (peer, message): what the head sends."""
    state = cluster.state
    if SPLIT:
        def step(pairs: list, now: float) -> list:
            commands = state.handle_all([(p, m, now) for p, m in pairs])
            if hasattr(state, "after_turn"):  # (the events the turn added, as the shell does)
                commands += state.after_turn()
            return [(c.peer, c.msg) for c in commands if hasattr(c, "peer")]
    else:
        def step(pairs: list, now: float) -> list:
            for p, m in pairs:
                state.handle(p, m, now)
            state.schedule()
            return list(state.out.drain())
    return step


def _cluster(ring: int | None) -> tuple[Any, bytes]:
    c = Cluster(**({} if ring is None else {"event_ring": ring}))
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.drain()
    return c, fid


def flood(ring: int | None, batches: int = 400, batch: int = 100) -> float:
    """CPU seconds per task of the head's state for a flood of no-op tasks."""
    c, fid = _cluster(ring)
    step = _stepper(c)
    spent, now, pending = 0.0, 1.0, []
    for _ in range(batches):
        msgs = [(c.driver, wire(P.Submit([c.spec(fid) for _ in range(batch)])))]
        by_worker: dict[bytes, list] = {}
        for w, t in pending:
            by_worker.setdefault(w, []).append(P.TaskResult(t, [value(b"r")], 0.0001))
        msgs += [(w, wire(P.TaskResults(rs))) for w, rs in by_worker.items()]
        if pending:
            msgs.append((c.driver, wire(P.Release([P.return_ids(t, 1)[0] for _, t in pending]))))
        now += 0.001
        t0 = time.process_time()
        out = step(msgs, now)
        spent += time.process_time() - t0
        pending = [(w, t) for t, w in Sent(out).assigned_to().items()]
    return spent / (batches * batch)


def round_trip(ring: int | None, n: int = 3000) -> dict[str, float]:
    """Median seconds of each round of a one-task round trip."""
    c, fid = _cluster(ring)
    step = _stepper(c)
    clock = time.perf_counter
    times: dict[str, list[float]] = {"submit": [], "result": [], "release": []}
    now = 1.0
    for _ in range(n):
        now += 0.001
        msg = wire(P.Submit([c.spec(fid)]))
        t0 = clock()
        out = step([(c.driver, msg)], now)
        times["submit"].append(clock() - t0)
        [(tid, worker)] = Sent(out).assigned_to().items()
        msg = wire(P.TaskResults([P.TaskResult(tid, [value(b"r")], 0.0001)]))
        t0 = clock()
        step([(worker, msg)], now)
        times["result"].append(clock() - t0)
        msg = wire(P.Release([P.return_ids(tid, 1)[0]]))
        t0 = clock()
        step([(c.driver, msg)], now)
        times["release"].append(clock() - t0)
    return {k: statistics.median(v[n // 6:]) for k, v in times.items()}  # (after warm-up)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", choices=("on", "off"), default="on",
                        help="the event stream (Config.event_ring: default, or 0)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    ring = 0 if args.stream == "off" else None
    try:  # as the head's Collector does
        from taskmesh._head.collector import Collector

        Collector(0.0).start()
    except ImportError:  # (an older checkout)
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, 2**31 - 1)
        gc.collect()
        gc.freeze()
    flood(ring, batches=50)  # warm-up
    floods = sorted(flood(ring) * 1e6 for _ in range(args.repeat))
    trips = [round_trip(ring) for _ in range(args.repeat)]
    label = ("split" if SPLIT else "single HeadState") + f", stream {args.stream}"
    print(f"head_replay ({label})")
    print(f"  flood: {statistics.median(floods):.2f} us/task "
          f"(runs {floods[0]:.2f} .. {floods[-1]:.2f})")
    rounds = {k: statistics.median(t[k] for t in trips) * 1e6 for k in trips[0]}
    print("  round_trip: " + ", ".join(f"{k} {v:.2f} us" for k, v in rounds.items())
          + f"; sum {sum(rounds.values()):.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

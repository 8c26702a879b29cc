"""What the metrics cost the head: one snapshot of a 100-node cluster, the event folds, and the
rendering that the HTTP thread does (in-process, the head's state alone, no sockets).

    python -m benchmarks.metrics_snapshot [--nodes 100] [--repeat 7]

The head, scraped once a second, builds one snapshot and folds events twice (every
``FOLD_S``) per second, on its own loop; the HTTP thread renders the text (holding the GIL,
so that time is taken from the head too). The cluster: ``--nodes`` nodes of 8 CPUs whose
heartbeats carry what a real agent's do (its stats and its store's ~30 figures), every CPU
busy, 2,000 tasks queued, and a second's worth of events of 500 tasks/s to fold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout this is run from

from taskmesh import _protocol as P  # noqa: E402
from taskmesh._dashboard.metrics import render  # noqa: E402
from taskmesh._head.snapshot import Snapshotter  # noqa: E402
from tests.support.head import Cluster  # noqa: E402

#: a real agent's heartbeat stats (their keys; the values do not matter)
STATS = {"workers": 8, "rss": 60 << 20, "load": 1.5, "cpu_percent": 42.0, "mem_used": 3 << 30,
         "mem_total": 16 << 30,
         **{f"store_{k}": 1000 for k in (
             "capacity", "used_bytes", "pinned_bytes", "largest_free", "disk_bytes",
             "num_objects", "num_in_memory", "num_pinned", "num_on_disk", "num_evictable",
             "num_waiting", "num_spilling", "num_restoring", "num_spill_failed", "num_lost",
             "total_created", "total_create_failed", "total_spills", "total_restores",
             "total_evicted_without_io", "total_freed", "total_spill_failures",
             "total_restore_failures", "transfer_bytes_sent", "transfer_bytes_received",
             "transfer_objects_sent", "transfer_objects_received", "fetches_in_flight",
             "transfer_connections", "io_errors")}}


def _cluster(nodes: int) -> tuple[Cluster, bytes]:
    c = Cluster()
    for i in range(nodes):
        c.add_node(f"n{i}", cpus=8, address=f"10.0.{i // 250}.{i % 250 + 1}")
        c.send(c.node_peer[f"n{i}"], P.Heartbeat(dict(STATS)))
    fid = c.register()
    c.submit(fid, nodes * 8 + 2000)  # every CPU busy, 2,000 queued
    c.drain()
    return c, fid


def _second_of_tasks(c: Cluster, fid: bytes, n: int = 500) -> None:
    """``n`` tasks end (and as many are submitted): about 3 events each."""
    running = [(t, w) for t, w in c.drain().assigned_to().items()]
    workers = [w for node in c.state.members.nodes.values() for w in node.workers.values()]
    done = 0
    for w in workers:
        if done >= n or not w.assigned:
            continue
        t = w.assigned[0]
        c.finish(w.peer, t.spec.task_id, duration=0.05)
        done += 1
    c.submit(fid, done)
    c.drain()
    del running


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    c, fid = _cluster(args.nodes)
    snapshotter = Snapshotter()
    snapshotter.fold(c.state, count_missed=False)
    builds, folds, renders, sizes = [], [], [], []
    for _ in range(args.repeat):
        _second_of_tasks(c, fid)
        t0 = time.process_time()
        half = snapshotter.fold(c.state)  # (the loop folds twice a second: about half each)
        folds.append((time.process_time() - t0, half))
        t0 = time.process_time()
        snap = snapshotter.build(c.state, c.now)
        builds.append(time.process_time() - t0)
        t0 = time.process_time()
        body, _ = render(snap)
        renders.append(time.process_time() - t0)
        sizes.append(len(body))
    build = statistics.median(builds) * 1e3
    fold = statistics.median(f for f, _ in folds) * 1e3
    events = statistics.median(n for _, n in folds)
    render_ms = statistics.median(renders) * 1e3
    print(f"metrics_snapshot ({args.nodes} nodes, {sum(len(n.workers) for n in c.state.members.nodes.values())} "
          f"workers, {len(c.state.table.tasks):,} unfinished tasks)")
    print(f"  build: {build:.2f} ms per snapshot (the head's loop)")
    print(f"  fold:  {fold:.2f} ms for {events:.0f} events ({fold / max(events, 1) * 1e3:.2f} us "
          "per event; the head's loop)")
    print(f"  render: {render_ms:.2f} ms, {statistics.median(sizes) / 1024:.0f} KiB of text "
          "(the HTTP thread, holding the GIL)")
    print(f"  at 1 scrape/s: {build + fold + render_ms:.2f} ms of the head process's CPU per "
          f"second ({(build + fold + render_ms) / 10:.2f}% of a core), of which "
          f"{build + fold:.2f} ms on its loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

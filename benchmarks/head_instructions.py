"""Instructions the head process executes per no-op task, counted by valgrind's callgrind:
the same count whatever else the machine is doing, so two settings (or two commits) can be
compared to a percent on a busy machine, where timings cannot.

    python -m benchmarks.head_instructions                   # this checkout, stream on
    TASKMESH_EVENT_RING=0 python -m benchmarks.head_instructions    # the event stream off
    python -m benchmarks.head_instructions --actor           # calls to one actor instead
    python -m benchmarks.head_instructions --cache           # also simulated cache misses

With ``--cache``, callgrind also simulates the caches (slower) and the line adds its
estimate of cycles, instructions + 10 x first-level misses + 100 x last-level misses
(callgrind's own rule of thumb): what keeping more memory alive costs, which instructions
alone do not show.

Starts a head under ``valgrind --tool=callgrind`` (about 50 times slower), a node agent with
two workers and this process as the driver, all on 127.0.0.1 with a secret of their own;
runs a warm-up, has callgrind dump its counts, runs ``--tasks`` no-op tasks in batches of
1,000, dumps again and prints the second dump's total divided by the tasks. The cluster's
time-outs are raised so that the slow head judges nobody. Needs valgrind (Debian:
``apt-get install valgrind``); not run by CI.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import taskmesh
from taskmesh._secret import ClusterKey


@taskmesh.remote
def noop() -> None:
    return None


@taskmesh.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _totals(path: str) -> dict[str, int]:
    """The dump's totals per event (Ir; with the cache simulation also I1mr, D1mr, ...)."""
    events: list[str] = []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                return dict(zip(events, map(int, line.split()[1:])))
    raise RuntimeError(f"no totals in {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--cache", action="store_true", help="simulate the caches too")
    parser.add_argument("--actor", action="store_true",
                        help="calls to one actor instead of no-op tasks")
    parser.add_argument("--keep", metavar="FILE",
                        help="keep the flood's callgrind dump here (for callgrind_annotate)")
    args = parser.parse_args(argv)
    out = tempfile.mkdtemp(prefix="taskmesh-callgrind-")
    env = dict(os.environ, **ClusterKey.generate().env(), TASKMESH_SPIN_S="0",
               TASKMESH_HEARTBEAT_TIMEOUT_S="120", TASKMESH_HEAD_TIMEOUT_S="300",
               TASKMESH_CONNECT_TIMEOUT_S="120")
    os.environ.update(env)
    port = _free_port()
    head = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/head.%p",
         *(["--cache-sim=yes"] if args.cache else []), sys.executable,
         "-m", "taskmesh._head", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError("the head under valgrind did not start") from None
                time.sleep(0.5)
        node = subprocess.Popen(
            [sys.executable, "-m", "taskmesh._node", "--head", f"127.0.0.1:{port}",
             "--node-ip", "127.0.0.1", "--num-cpus", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        taskmesh.init(address=f"127.0.0.1:{port}")
        while taskmesh.cluster_resources().get("CPU", 0) < 2:  # the node joins (slowly)
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError("the node agent did not join the head under valgrind")
            time.sleep(0.5)

        def dump() -> None:
            time.sleep(1.0)  # (the head is idle: what is counted next is the flood)
            subprocess.run(["callgrind_control", "-d", str(head.pid)], timeout=600,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

        if args.actor:
            counter = Counter.remote()

            def batch() -> None:
                taskmesh.get([counter.add.remote(1) for _ in range(1000)])
        else:
            def batch() -> None:
                taskmesh.get([noop.remote() for _ in range(1000)])

        batch()  # warm-up
        dump()
        started = time.monotonic()
        for _ in range(max(1, args.tasks // 1000)):
            batch()
        took = time.monotonic() - started
        dump()
        tasks = max(1, args.tasks // 1000) * 1000
        last = max(glob.glob(f"{out}/head.*"), key=os.path.getmtime)
        ring = os.environ.get("TASKMESH_EVENT_RING", "default")
        t = _totals(last)
        what = "actor call" if args.actor else "no-op task"
        line = f"head instructions per {what}: {t['Ir'] / tasks:,.0f}"
        if "D1mr" in t:
            first = t["I1mr"] + t["D1mr"] + t["D1mw"]
            last_level = t["ILmr"] + t["DLmr"] + t["DLmw"]
            line += (f", first-level misses {first / tasks:,.0f}, last-level {last_level / tasks:,.0f}"
                     f", estimated cycles {(t['Ir'] + 10 * first + 100 * last_level) / tasks:,.0f}")
        if args.keep:
            shutil.copyfile(last, args.keep)
        print(f"{line} ({tasks} tasks in {took:.1f} s under valgrind; event ring {ring})")
        taskmesh.shutdown()
    finally:
        for proc in (node, head):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for f in glob.glob(f"{out}/head.*"):
            os.remove(f)
        os.rmdir(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

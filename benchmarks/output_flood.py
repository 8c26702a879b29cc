"""Does a worker that prints a flood slow the other tasks? (issue 15: "a worker printing 10 MB/s
does not slow other tasks by more than 5%").

An embedded cluster of 2 CPUs: one CPU holds a background task, the other runs rounds of
no-op tasks (``--tasks`` each, submitted at once, then got). The background task either
prints ``--rate`` MB/s of 100-byte lines (the flood: read by the node agent, kept in the
worker's log file, forwarded to this driver within the node's limit, printed here to
``--sink``), prints the same to /dev/null (quiet: the task's own work without taskmesh's),
or sleeps. Rounds take the three in turn, in rotating order; the figures are paired medians:
flood over quiet is what taskmesh's handling of the output costs the other tasks, flood over
sleep adds the printing task's own work. Run from the repository root:

    python -m benchmarks.output_flood [--rounds 10] [--rate 10] [--tasks 2000] [--sink /dev/null]
    python -m benchmarks.output_flood --cpu     # CPU per process during 5 s of the flood alone
                                                # (and of the quiet printer alone)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import taskmesh


@taskmesh.remote(num_cpus=1)
def background(mode: str, seconds: float, rate_mb: float) -> int:
    """Print ``rate_mb`` MB/s of lines for ``seconds`` (mode "flood"), the same to
    /dev/null (mode "quiet": the printing task's own work, none of taskmesh's), or sleep."""
    if mode == "sleep":
        time.sleep(seconds)
        return 0
    quiet = open(os.devnull, "w") if mode == "quiet" else None  # noqa: SIM115
    line = "x" * 99
    per_tick = int(rate_mb * 1e6 / 100 / 100)  # lines per 10 ms
    start = time.monotonic()
    written = 0
    tick = 0
    while time.monotonic() - start < seconds:
        for _ in range(per_tick):
            print(line, file=quiet)  # (None: sys.stdout, looked up per call as users do)
        written += per_tick * 100
        tick += 1
        pause = start + tick * 0.01 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return written


@taskmesh.remote(num_cpus=1)
def noop() -> None:
    return None


@taskmesh.remote(num_cpus=1)
def busy(ms: float) -> None:
    """Compute for ``ms`` milliseconds of CPU (a task that does work)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def one_round(mode: str, tasks: int, rate: float, work_ms: float = 0.0) -> float:
    bg = background.remote(mode, 3600, rate)
    time.sleep(0.5)  # the flood is under way
    start = time.perf_counter()
    if work_ms:
        taskmesh.get([busy.remote(work_ms) for _ in range(tasks)])
    else:
        taskmesh.get([noop.remote() for _ in range(tasks)])
    took = time.perf_counter() - start
    taskmesh.cancel(bg, force=True)
    try:
        taskmesh.get(bg, timeout=30)
    except (taskmesh.TaskCancelledError, taskmesh.WorkerCrashedError):
        pass
    return took


def cpu_per_process(rate: float, mode: str = "flood",
                    seconds: float = 5.0) -> list[tuple[float, str]]:
    """Share of one core each process of the cluster (and this driver) uses while a task
    prints ``rate`` MB/s (``mode`` "flood": to its stdout; "quiet": to /dev/null) and
    nothing else runs."""
    import psutil

    bg = background.remote(mode, 3600, rate)
    time.sleep(1.0)
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    before = {p.pid: p.cpu_times() for p in procs}
    start = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - start
    out = []
    for p in procs:
        try:
            a, b = before[p.pid], p.cpu_times()
            name = " ".join(p.cmdline()[1:4]) if p.pid != os.getpid() else "this driver"
        except psutil.Error:
            continue
        out.append(((b.user + b.system - a.user - a.system) / took, name))
    taskmesh.cancel(bg, force=True)
    return sorted(out, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rate", type=float, default=10.0, help="MB/s the flood prints")
    ap.add_argument("--tasks", type=int, default=2000, help="no-op tasks per round")
    ap.add_argument("--cpu", action="store_true", help="measure CPU per process instead")
    ap.add_argument("--work-ms", type=float, default=0.0,
                    help="tasks that compute this long each instead of no-op tasks")
    ap.add_argument("--sink", default=os.devnull,
                    help="where this driver's stdout/stderr go (default /dev/null)")
    args = ap.parse_args()
    report = sys.stdout
    sink = open(args.sink, "w")  # noqa: SIM115 - for the whole run
    sys.stdout = sys.stderr = sink
    taskmesh.init(num_cpus=2)
    if args.cpu:
        try:
            shares = {mode: cpu_per_process(args.rate, mode) for mode in ("flood", "quiet")}
        finally:
            taskmesh.shutdown()
            sys.stdout, sys.stderr = report, sys.__stderr__
            sink.close()
        for mode, where in (("flood", "to its stdout"), ("quiet", "to /dev/null")):
            print(f"a task printing {args.rate:g} MB/s {where}: CPU per process, % of a core")
            for share, name in shares[mode]:
                if share >= 0.005:
                    print(f"{share * 100:5.1f}%  {name}")
        return 0
    try:
        one_round("sleep", args.tasks, args.rate, args.work_ms)  # warm-up: workers, code
        times: dict[str, list[float]] = {"sleep": [], "quiet": [], "flood": []}
        orders = [("sleep", "quiet", "flood"), ("flood", "quiet", "sleep"),
                  ("quiet", "flood", "sleep"), ("sleep", "flood", "quiet")]
        for i in range(args.rounds):
            for mode in orders[i % len(orders)]:
                times[mode].append(one_round(mode, args.tasks, args.rate, args.work_ms))
    finally:
        taskmesh.shutdown()
        sys.stdout, sys.stderr = report, sys.__stderr__
        sink.close()
    med = {mode: statistics.median(t) for mode, t in times.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    what = f"tasks of {args.work_ms:g} ms" if args.work_ms else "no-op tasks"
    print(f"{args.tasks} {what}, medians of {args.rounds} rounds each: beside a task that "
          f"sleeps {med['sleep'] * 1e3:.1f} ms; beside one printing {args.rate:g} MB/s to "
          f"/dev/null {med['quiet'] * 1e3:.1f} ms; beside one printing it to its stdout "
          f"{med['flood'] * 1e3:.1f} ms")
    print(f"flood / quiet (what taskmesh's handling of the output costs the other tasks): "
          f"paired median {paired('flood', 'quiet'):.3f}")
    print(f"flood / sleep (that and the printing task's own work): paired median "
          f"{paired('flood', 'sleep'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

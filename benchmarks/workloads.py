"""Workload definitions and registry for the side-by-side benchmark.

Each workload is one Python function written against :class:`benchmarks.adapters.Api`
that runs a single timed iteration, verifies its results (raising
:class:`VerificationError` on any wrong value) and returns the elapsed wall-clock
seconds of the timed region.  A :class:`Workload` record adds the unit the result
is reported in, whether lower or higher is better, and optional per-framework
overrides for work that cannot be expressed through the common API.

Adding a workload (e.g. ``actor_calls_async``) means: write a
``run_<name>(api) -> float`` function (plus any module-level task functions it
submits) and call :func:`register`.  Task functions must live at module level in
this module so worker processes can import them by reference.  A runner that has
more to say than its time returns a :class:`Sample` (seconds plus a JSON-able
``info`` dict); the runner collects the info of every iteration into the JSON
output, and the workload's ``note`` turns it into one line for the log and the
table footer.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from benchmarks.adapters import Api, in_task


@dataclass(frozen=True)
class Sample:
    """A runner's result when it reports more than its time.

    ``seconds`` is the timed region, exactly like a bare ``float`` return;
    ``info`` holds extra facts about the iteration (JSON-serialisable values
    only), e.g. whether ``get`` returned a zero-copy view.
    """

    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def as_sample(result: float | Sample) -> Sample:
    """A runner's return value as a :class:`Sample` (a bare float has no info)."""
    if isinstance(result, Sample):
        return result
    return Sample(float(result))


#: One timed iteration on an initialised framework -> elapsed seconds (or a :class:`Sample`).
Runner = Callable[[Api], "float | Sample"]
#: ``{"warmup": info or None, "timed": [info, ...]}`` -> one line for the log and table footer.
NoteFn = Callable[[dict[str, Any]], "str | None"]


class VerificationError(AssertionError):
    """A workload produced a wrong result: the benchmark must fail, not report a time."""


def verify(condition: bool, message: str) -> None:
    """Raise :class:`VerificationError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise VerificationError(message)


@dataclass(frozen=True)
class Workload:
    """A named benchmark workload and how to report it."""

    name: str
    description: str
    #: Unit of the reported metric, e.g. ``"tasks/s"``, ``"ms/round trip"``, ``"s"``.
    unit: str
    #: Which direction of the *metric* is better.
    better: Literal["lower", "higher"]
    #: Converts elapsed seconds of one iteration into the reported metric.
    metric: Callable[[float], float]
    #: Generic implementation (via the adapter); ``None`` for special workloads.
    run: Runner | None = None
    #: Framework name -> implementation replacing :attr:`run` for that framework.
    overrides: Mapping[str, Runner] = field(default_factory=dict)
    #: Run one untimed iteration before the timed ones.
    warmup: bool = True
    #: Per-iteration budget; the runner kills a child exceeding it.
    timeout_s: float = 300.0
    #: ``"cold_start"`` is measured by the child around framework init, not by a runner.
    special: str | None = None
    #: If set, the untimed warm-up iteration is also shown as its own table row
    #: under this label (e.g. a cold first ``put``); it stays out of best/median.
    warmup_label: str | None = None
    #: Builds a one-line note from the iterations' :attr:`Sample.info`.
    note: NoteFn | None = None
    #: Extra table rows, ``(label, key)``: the best (median) over the timed iterations of
    #: ``info[key]``, a duration shown in seconds (e.g. the two runs whose difference is
    #: the workload's time).
    info_rows: tuple[tuple[str, str], ...] = ()
    #: If set, a table row under this label with each framework's best time divided by
    #: Ray's best (and median by median); :attr:`ratio_target` is the goal for taskmesh.
    ratio_label: str | None = None
    ratio_target: float | None = None
    #: Runs only when named in ``--workloads`` (too long for the default run).
    opt_in: bool = False

    def runner(self, framework: str) -> Runner:
        """The implementation to use for ``framework``."""
        fn = self.overrides.get(framework, self.run)
        if fn is None:
            raise ValueError(f"workload {self.name!r} has no runner for {framework!r}")
        return fn


#: Registry, in default run (and table) order.
WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` (names must be unique)."""
    if workload.name in WORKLOADS:
        raise ValueError(f"duplicate workload {workload.name!r}")
    WORKLOADS[workload.name] = workload
    return workload


def _seconds(s: float) -> float:
    return s


# =========================================================================== task functions
# Executed in worker processes; keep them at module level and side-effect free.

NOOP_RESULT = 42


def noop() -> int:
    """A task doing nothing; returns a constant so results can still be checked."""
    return NOOP_RESULT


def trivial() -> int:
    """The first task of a cold start."""
    return 1


def make_leaf(i: int, size: int) -> np.ndarray:
    """Leaf of the tree reduction: ``arange(size) + i`` as float64."""
    return np.arange(size, dtype=np.float64) + i


def add_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner node of the tree reduction (arguments arrive resolved)."""
    return a + b


def nested_child(i: int, j: int) -> int:
    """Child task of the nested workload."""
    return i * 1000 + j


def nested_parent(i: int, children: int, framework: str) -> int:
    """Submit ``children`` child tasks from inside a task, get them, return their sum."""
    with in_task(framework) as api:
        submit = api.remote(nested_child)
        refs = [submit(i, j) for j in range(children)]
        values = api.get(refs)
    return int(sum(values))


def array_sum(a: np.ndarray) -> float:
    """Sum of an array passed as a top-level ref argument (``big_arg_fanout``)."""
    return float(a.sum())


def sleep_square(i: int, seconds: float) -> tuple[int, int, int, float, float]:
    """Sleep ``seconds``; return ``(i, i * i, pid, start, end)`` (``failure``).

    The pid tells which worker process ran the task; the wall-clock start and
    end (``time.time()``, comparable between processes of one machine) show
    when the replacement of a killed worker began to work.
    """
    start = time.time()
    time.sleep(seconds)
    return i, i * i, os.getpid(), start, time.time()


# =========================================================================== expected values


def expected_tree_result(leaves: int, size: int) -> np.ndarray:
    """Exact sum of ``make_leaf(i, size)`` for ``i < leaves`` (all values are small integers)."""
    return np.arange(size, dtype=np.float64) * leaves + leaves * (leaves - 1) // 2


def expected_nested(i: int, children: int) -> int:
    """Exact result of ``nested_parent(i, children, ...)``."""
    return children * i * 1000 + children * (children - 1) // 2


# =========================================================================== workloads

NOOP_ASYNC_TASKS = 5000
NOOP_SYNC_ROUND_TRIPS = 500
ACTOR_ASYNC_CALLS = 2000
ACTOR_SYNC_CALLS = 500
ACTOR_CREATIONS = 3
TREE_LEAVES = 1024
TREE_LEAF_SIZE = 10_000
NESTED_PARENTS = 50
NESTED_CHILDREN = 10
#: 12.5M float64 = 100 MB (decimal: 100_000_000 bytes) for the object-store workloads.
BIG_FLOATS = 12_500_000
BIG_SEED = 20261127
FANOUT_TASKS = 16
#: Values of the fan-out array are random integers below 2**20 stored as float64, so
#: every partial sum stays below 2**53 and ``a.sum()`` is exact in any order (SIMD,
#: alignment): the tasks' sums can be checked with ``==``.
FANOUT_MAX_VALUE = 1 << 20

#: Arrays built once per process, outside every timed region: (kind, n) -> array.
_BIG_ARRAYS: dict[tuple[str, int], np.ndarray] = {}
#: Large puts done by this process so far (a "cold" put is the first of the session).
_big_puts = 0


def big_random_array(n: int = BIG_FLOATS) -> np.ndarray:
    """``n`` uniform random float64 in [0, 1) from a fixed seed, created once per process."""
    key = ("random", n)
    if key not in _BIG_ARRAYS:
        _BIG_ARRAYS[key] = np.random.default_rng(BIG_SEED).random(n)
    return _BIG_ARRAYS[key]


def big_integer_array(n: int = BIG_FLOATS) -> tuple[np.ndarray, float]:
    """``n`` random integer-valued float64 (fixed seed) and their exact sum, created once."""
    key = ("integer", n)
    if key not in _BIG_ARRAYS:
        ints = np.random.default_rng(BIG_SEED + 1).integers(0, FANOUT_MAX_VALUE, n)
        _BIG_ARRAYS[key] = ints.astype(np.float64)
        _BIG_ARRAYS[("integer-sum", n)] = np.array(float(int(ints.sum(dtype=np.int64))))
    return _BIG_ARRAYS[key], float(_BIG_ARRAYS[("integer-sum", n)])


def _same_array(result: Any, expected: np.ndarray, what: str) -> None:
    """Raise :class:`VerificationError` unless ``result`` equals ``expected`` bit for bit."""
    verify(
        isinstance(result, np.ndarray)
        and result.dtype == expected.dtype
        and result.shape == expected.shape,
        f"{what}: got {type(result).__name__} {getattr(result, 'dtype', '')} "
        f"{getattr(result, 'shape', '')}, expected float64 {expected.shape}",
    )
    if not np.array_equal(result, expected):
        k = int(np.flatnonzero(result != expected)[0])
        raise VerificationError(
            f"{what}: result[{k}]={result[k]!r}, expected {expected[k]!r}"
        )


class BenchCounter:
    """The actor of the actor workloads: a counter, so results show the order calls ran in."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def ping(self) -> int:
        return NOOP_RESULT


def run_actor_calls_async(api: Api, n: int = ACTOR_ASYNC_CALLS) -> Sample:
    """``n`` calls to one actor, then get all (the actor is started and warm, untimed)."""
    actor = api.actor(BenchCounter)
    verify(api.get_calls([api.method(actor, "ping")()]) == [NOOP_RESULT], "actor_calls: ping")
    add = api.method(actor, "add")
    t0 = time.perf_counter()
    refs = [add(1) for _ in range(n)]
    results = api.get_calls(refs)
    elapsed = time.perf_counter() - t0
    api.kill(actor)
    verify(sorted(results) == list(range(1, n + 1)),
           f"actor_calls_async: the counter's values are not 1..{n}")
    return Sample(elapsed, {"in_order": results == list(range(1, n + 1))})


def run_actor_calls_sync(api: Api, n: int = ACTOR_SYNC_CALLS) -> float:
    """``n`` sequential call-then-get round trips to one warm actor."""
    actor = api.actor(BenchCounter)
    add = api.method(actor, "add")
    verify(api.get_calls([add(0)]) == [0], "actor_calls_sync: first call")
    results = []
    t0 = time.perf_counter()
    for _ in range(n):
        results.extend(api.get_calls([add(1)]))
    elapsed = time.perf_counter() - t0
    api.kill(actor)
    verify(results == list(range(1, n + 1)), "actor_calls_sync: wrong counter values")
    return elapsed


def run_actor_create(api: Api, n: int = ACTOR_CREATIONS) -> float:
    """Start ``n`` actors one after another, each until its first call returned."""
    actors = []
    t0 = time.perf_counter()
    for _ in range(n):
        a = api.actor(BenchCounter)
        verify(api.get_calls([api.method(a, "ping")()]) == [NOOP_RESULT], "actor_create: ping")
        actors.append(a)
    elapsed = time.perf_counter() - t0
    for a in actors:
        api.kill(a)
    return elapsed


def note_actor_order(collected: dict[str, Any]) -> str | None:
    """Whether the calls ran in the order they were made (Dask's actors do not promise it)."""
    infos = [i for i in [collected.get("warmup"), *(collected.get("timed") or [])] if i]
    out_of_order = sum(1 for i in infos if not i.get("in_order", True))
    if not infos:
        return None
    if not out_of_order:
        return "calls ran in submission order in every iteration"
    return f"calls ran out of submission order in {out_of_order} of {len(infos)} iterations"


MILLION_TASKS = int(os.environ.get("TASKMESH_BENCH_MILLION_TASKS", "1000000"))


def _head_process(framework: str) -> Any:
    """The process holding the framework's scheduler state: taskmesh's head, Ray's GCS
    server; Dask's scheduler runs inside this process (LocalCluster)."""
    import psutil

    me = psutil.Process()
    needle = {"taskmesh": "taskmesh._head", "ray": "gcs_server"}.get(framework)
    if needle is None:
        return me
    for p in me.children(recursive=True):
        try:
            if needle in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


def run_million_tasks(api: Api, n: int = MILLION_TASKS) -> Sample:
    """Submit ``n`` no-op tasks in a loop (keeping the refs), then get them all; sample the
    peak RSS of the head (taskmesh) / GCS (Ray) / scheduler (Dask: this process)."""
    import threading

    head = _head_process(api.name)
    base = head.memory_info().rss if head is not None else 0
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            try:
                peak[0] = max(peak[0], head.memory_info().rss)
            except Exception:  # noqa: BLE001 - the sample is best effort
                return

    sampler = threading.Thread(target=sample, daemon=True)
    if head is not None:
        sampler.start()
    submit = api.remote(noop)
    t0 = time.perf_counter()
    refs = [submit() for _ in range(n)]
    results = api.get(refs)
    elapsed = time.perf_counter() - t0
    done.set()
    bad = sum(1 for r in results if r != NOOP_RESULT)
    verify(len(results) == n and bad == 0, f"million_tasks: {bad} of {n} results wrong")
    info = {"head_rss_peak_mb": round(peak[0] / 2**20),
            "head_rss_growth_mb": round((peak[0] - base) / 2**20),
            "head": None if head is None else " ".join(head.cmdline())[:40]}
    if api.name == "taskmesh":  # the head loop's lag over the run (its status counts it)
        from taskmesh._context import CTX

        info["loop_lag"] = CTX.core.info("status")["loop_lag"]
    return Sample(elapsed, info)


def note_million(collected: dict[str, Any]) -> str | None:
    infos = [i for i in (collected.get("timed") or []) if i]
    if not infos:
        return None
    note = ("head peak RSS " + ", ".join(f"{i['head_rss_peak_mb']} MB (+{i['head_rss_growth_mb']})"
                                         for i in infos) + f" [{infos[0]['head']}]")
    lags = [i["loop_lag"] for i in infos if i.get("loop_lag")]
    if lags:
        note += "; head loop lag p50/p99/max " + ", ".join(
            f"{x['p50_ms']}/{x['p99_ms']}/{x['max_ms']} ms" for x in lags)
    return note


def run_noop_async(api: Api, n: int = NOOP_ASYNC_TASKS) -> float:
    """Submit ``n`` no-op tasks, then get all of them."""
    submit = api.remote(noop)
    t0 = time.perf_counter()
    refs = [submit() for _ in range(n)]
    results = api.get(refs)
    elapsed = time.perf_counter() - t0
    verify(len(results) == n, f"noop_async: got {len(results)} results, expected {n}")
    bad = sum(1 for r in results if r != NOOP_RESULT)
    verify(bad == 0, f"noop_async: {bad} of {n} results differ from {NOOP_RESULT}")
    return elapsed


def run_noop_sync(api: Api, n: int = NOOP_SYNC_ROUND_TRIPS) -> float:
    """``n`` sequential submit-then-get round trips of a no-op task."""
    submit = api.remote(noop)
    get = api.get
    results = []
    t0 = time.perf_counter()
    for _ in range(n):
        results.append(get(submit()))
    elapsed = time.perf_counter() - t0
    bad = sum(1 for r in results if r != NOOP_RESULT)
    verify(len(results) == n and bad == 0, f"noop_sync: {bad} of {n} results wrong")
    return elapsed


def run_tree_reduce(
    api: Api, leaves: int = TREE_LEAVES, size: int = TREE_LEAF_SIZE
) -> float:
    """``leaves`` array-producing tasks reduced pairwise by tasks taking two refs."""
    leaf = api.remote(make_leaf)
    add = api.remote(add_arrays)
    t0 = time.perf_counter()
    level: list[Any] = [leaf(i, size) for i in range(leaves)]
    while len(level) > 1:
        nxt = [add(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    result = api.get(level[0])
    elapsed = time.perf_counter() - t0
    verify(
        isinstance(result, np.ndarray) and result.shape == (size,),
        f"tree_reduce: got {type(result).__name__} {getattr(result, 'shape', '')}",
    )
    expected = expected_tree_result(leaves, size)
    if not np.array_equal(result, expected):
        k = int(np.flatnonzero(result != expected)[0])
        raise VerificationError(
            f"tree_reduce: result[{k}]={result[k]!r}, expected {expected[k]!r}"
        )
    return elapsed


def run_nested(
    api: Api, parents: int = NESTED_PARENTS, children: int = NESTED_CHILDREN
) -> float:
    """``parents`` tasks that each submit and get ``children`` tasks."""
    parent = api.remote(nested_parent)
    t0 = time.perf_counter()
    refs = [parent(i, children, api.name) for i in range(parents)]
    results = api.get(refs)
    elapsed = time.perf_counter() - t0
    expected = [expected_nested(i, children) for i in range(parents)]
    verify(
        list(results) == expected,
        f"nested: results {list(results)[:5]}... != {expected[:5]}...",
    )
    return elapsed


def run_put_get_100MB(api: Api, n: int = BIG_FLOATS) -> Sample:
    """``put`` a 100 MB float64 array, then ``get`` it back; time put + get.

    Outside the timed region a second ``get`` of the same ref tells whether
    ``get`` is zero-copy (the two results share memory: both are views of the
    stored object) or a copy, and the first result's ``writeable`` flag whether
    it is read-only.  The ref and results are dropped before returning, so the
    next iteration puts again after the previous object was freed.
    """
    global _big_puts
    data = big_random_array(n)
    puts_before = _big_puts
    t0 = time.perf_counter()
    ref = api.put(data)
    t1 = time.perf_counter()
    got = api.get(ref)
    t2 = time.perf_counter()
    _big_puts += 1
    _same_array(got, data, "put_get_100MB")
    again = api.get(ref)
    _same_array(again, data, "put_get_100MB (second get)")
    info = {
        "framework": api.name,
        "bytes": int(data.nbytes),
        "put_s": t1 - t0,
        "get_s": t2 - t1,
        "large_puts_before": puts_before,
        "two_gets_share_memory": bool(np.shares_memory(got, again)),
        "get_shares_memory_with_input": bool(np.shares_memory(got, data)),
        "get_read_only": not got.flags.writeable,
    }
    del ref, got, again
    return Sample(t2 - t0, info)


def run_big_arg_fanout(
    api: Api, n: int = BIG_FLOATS, tasks: int = FANOUT_TASKS
) -> Sample:
    """``put`` 100 MB once, ``tasks`` tasks take the ref as a top-level argument and sum it.

    Timed from the ``put`` to the last sum (the put alone is also recorded).
    """
    global _big_puts
    data, expected = big_integer_array(n)
    work = api.remote(array_sum)
    t0 = time.perf_counter()
    ref = api.put(data)
    t1 = time.perf_counter()
    sums = api.get([work(ref) for _ in range(tasks)])
    t2 = time.perf_counter()
    _big_puts += 1
    verify(
        len(sums) == tasks, f"big_arg_fanout: got {len(sums)} sums, expected {tasks}"
    )
    bad = [s for s in sums if s != expected]
    verify(
        not bad,
        f"big_arg_fanout: {len(bad)} of {tasks} sums wrong, e.g. {bad[:1]!r} != {expected!r}",
    )
    del ref
    return Sample(
        t2 - t0,
        {"framework": api.name, "put_s": t1 - t0, "tasks_s": t2 - t1, "tasks": tasks},
    )


# --------------------------------------------------------------------------- failure

FAILURE_TASKS = 200
FAILURE_TASK_S = 0.05
FAILURE_KILL_AT_S = 0.5
#: Probe tasks hold their worker this long, so that probes submitted together
#: run on distinct workers when the pool is complete.
PROBE_HOLD_S = 0.1
#: The pool must be back to full size within this long after a kill (untimed).
POOL_TIMEOUT_S = 60.0
#: Quiet time once the pool is back, before the next timed run: the start-up of a
#: replacement worker (imports, registration, logging) must not overlap a timed run.
FAILURE_SETTLE_S = 1.0


class _Killer:
    """SIGKILLs one process ``delay_s`` after :meth:`arm`, from a thread of its own.

    The thread is started before the timed region, so arming it costs nothing there.
    """

    def __init__(self, pid: int, delay_s: float) -> None:
        self.pid = pid
        self.delay_s = delay_s
        #: seconds from :meth:`arm` to the kill; the kill on the wall clock and on
        #: CLOCK_BOOTTIME (the clock of a process's start time in /proc/<pid>/stat)
        self.after_s: float | None = None
        self.wall: float | None = None
        self.boot: float | None = None
        self.error: str | None = None
        self._t0 = 0.0
        self._armed = threading.Event()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="failure-killer", daemon=True
        )
        self._thread.start()

    def arm(self, t0: float) -> None:
        """Kill ``delay_s`` after ``t0`` (a ``time.perf_counter()`` value)."""
        self._t0 = t0
        self._armed.set()

    def stop(self) -> None:
        """Cancel the kill if it has not happened yet; wait for the thread."""
        self._cancelled.set()
        self._armed.set()
        self._thread.join()

    def _run(self) -> None:
        self._armed.wait()
        if self._cancelled.wait(
            max(0.0, self._t0 + self.delay_s - time.perf_counter())
        ):
            return
        wall, boot = time.time(), _boottime()
        after = time.perf_counter() - self._t0
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.after_s, self.wall, self.boot = after, wall, boot


def _boottime() -> float | None:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return None


def _proc_cmdline(pid: int, limit: int = 100) -> str | None:
    """A process's command line (argv[0] without its directory), from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    argv[0] = os.path.basename(argv[0])
    text = " ".join(a for a in argv if a)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """``(parent pid, start time in seconds since boot)`` from /proc/<pid>/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def pool_pids(api: Api, n: int, timeout: float = POOL_TIMEOUT_S) -> list[int]:
    """The pids of the ``n`` processes that run tasks, once the pool has ``n`` of them.

    Submits ``n`` probe tasks at once, each holding its worker for :data:`PROBE_HOLD_S`,
    until one round of probes ran in ``n`` distinct processes: while a worker is missing
    (a replacement still starting), the probes share the workers that are there.
    """
    verify(n > 0, "failure: the number of workers is unknown (Api.num_workers is 0)")
    probe = api.remote(sleep_square)
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(
            {r[2] for r in api.get([probe(-1, PROBE_HOLD_S) for _ in range(n)])}
        )
        if len(pids) == n:
            return pids
        if time.monotonic() > deadline:
            raise VerificationError(
                f"failure: the pool did not get back to {n} workers within {timeout:g} s "
                f"(the last probes ran in pids {pids})"
            )
        time.sleep(0.05)


def _sleep_squares(
    api: Api, tasks: int, task_s: float, killer: _Killer | None, what: str
) -> tuple[float, list[Any]]:
    """Timed: submit ``tasks`` tasks of ``task_s`` and get all; the killer armed at submission.

    Returns the elapsed seconds and the results, verified: result ``k`` is
    ``(k, k * k, pid, start, end)``, so every index came back exactly once with its value.
    """
    try:
        submit = api.remote(sleep_square)
        t0 = time.perf_counter()
        if killer is not None:
            killer.arm(t0)
        results = api.get([submit(i, task_s) for i in range(tasks)])
        elapsed = time.perf_counter() - t0
    finally:
        if killer is not None:
            killer.stop()
    results = list(results)
    verify(
        len(results) == tasks, f"{what}: got {len(results)} results, expected {tasks}"
    )
    bad = [
        (k, r)
        for k, r in enumerate(results)
        if not (
            isinstance(r, (tuple, list))
            and len(r) == 5
            and r[0] == k
            and r[1] == k * k
            and isinstance(r[2], int)
        )
    ]
    if bad:
        k, r = bad[0]
        raise VerificationError(
            f"{what}: {len(bad)} of {tasks} results wrong, e.g. #{k}: {r!r}, "
            f"expected ({k}, {k * k}, pid, start, end)"
        )
    return elapsed, results


def run_failure(
    api: Api,
    tasks: int = FAILURE_TASKS,
    task_s: float = FAILURE_TASK_S,
    kill_at_s: float = FAILURE_KILL_AT_S,
    settle_s: float = FAILURE_SETTLE_S,
) -> Sample:
    """The cost of losing a worker: ``tasks`` tasks of ``task_s`` without, then with, a kill.

    Untimed, probe tasks find the pids of the pool's worker processes. Then the same
    batch runs twice: (a) undisturbed, (b) with one of those workers SIGKILLed
    ``kill_at_s`` after the first submission. The reported time is (b) - (a). Every
    result of both runs is checked, and the killed worker must have been one of the
    workers running the batch. Afterwards (untimed) the runner waits until the
    replacement worker has joined (probes run in ``num_workers`` distinct processes)
    and then ``settle_s`` more, so the next iteration again starts with a full,
    warm and quiet pool.
    """
    n = api.num_workers
    before = pool_pids(api, n)
    no_failure_s, _ = _sleep_squares(api, tasks, task_s, None, "failure (no kill)")
    victim = before[0]
    stat = _proc_stat(victim)
    killed = {
        "killed_pid": victim,
        "killed_process": _proc_cmdline(victim),
        "killed_parent": _proc_cmdline(stat[0]) if stat else None,
    }
    killer = _Killer(victim, kill_at_s)
    with_failure_s, results = _sleep_squares(
        api, tasks, task_s, killer, "failure (kill)"
    )
    if killer.error is not None:
        raise VerificationError(
            f"failure: could not kill worker pid {victim}: {killer.error}"
        )
    if killer.after_s is None or killer.wall is None:
        raise VerificationError(
            f"failure: the run ended ({with_failure_s:.2f} s) before the kill at {kill_at_s:g} s"
        )
    on_victim = sum(1 for r in results if r[2] == victim)
    # Ray and taskmesh send each small result to the driver as soon as it is ready, so the
    # killed worker's finished tasks show its pid. Dask keeps results in the worker's memory
    # until they are gathered: those died with it and ran again elsewhere.
    if api.name != "dask":
        verify(
            on_victim > 0,
            f"failure: the killed worker (pid {victim}) returned none of the results: it "
            "was not running the batch, so nothing was lost",
        )
    t_end = time.perf_counter()
    after = pool_pids(api, n)
    pool_back_s = time.perf_counter() - t_end
    verify(
        victim not in after,
        f"failure: the killed worker (pid {victim}) still runs tasks",
    )
    time.sleep(settle_s)
    new = [r for r in results if r[2] not in before]
    # When the replacement process was started (10 ms resolution): splits the time to its
    # first task into noticing the death and spawning, then the new process's start-up.
    starts = [st[1] for pid in {r[2] for r in new} if (st := _proc_stat(pid))]
    info = {
        "framework": api.name,
        "no_failure_s": no_failure_s,
        "with_failure_s": with_failure_s,
        "kill_after_s": killer.after_s,
        **killed,
        "pool_before": before,
        "pool_after": after,
        "results_from_killed": on_victim,
        # Both workers finish about kill_at_s / task_s tasks each before the kill; fewer
        # here means results finished before the kill were lost and computed again.
        "results_started_before_kill": sum(1 for r in results if r[3] < killer.wall),
        "results_from_replacement": len(new),
        "replacement_spawned_after_kill_s": (
            min(starts) - killer.boot if starts and killer.boot is not None else None
        ),
        "replacement_first_start_after_kill_s": (
            min(r[3] for r in new) - killer.wall if new else None
        ),
        "pool_back_after_s": pool_back_s,
    }
    return Sample(with_failure_s - no_failure_s, info)


def _fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def note_put_get(collected: dict[str, Any]) -> str | None:
    """``get``: zero-copy or copy, read-only or writable; put/get split; what 'cold' was."""
    cold = collected.get("warmup")
    timed = collected.get("timed") or []
    everything = [i for i in [cold, *timed] if i]
    if not everything:
        return None
    first = everything[0]
    shared = {i["two_gets_share_memory"] for i in everything}
    readonly = {i["get_read_only"] for i in everything}
    if shared == {True}:
        parts = ["get zero-copy (two gets share memory)"]
    elif shared == {False}:
        parts = ["get copies (two gets do not share memory)"]
    else:
        parts = ["get sometimes zero-copy (two gets share memory in some iterations)"]
    parts[0] += (
        ", read-only"
        if readonly == {True}
        else ", writable"
        if readonly == {False}
        else ", read-only in some iterations"
    )
    if any(i["get_shares_memory_with_input"] for i in everything):
        parts.append("get result shares memory with the put's input array")
    if first["framework"] == "dask":
        parts.append(
            "object kept in a worker's memory (client.scatter), result() fetches it"
        )
    if first["framework"] == "taskmesh":
        parts.append(
            "put writes into the node's shared-memory store, get reads it in place"
        )
    if cold:
        kind = (
            "first large put of the session"
            if cold["large_puts_before"] == 0
            else f"after {cold['large_puts_before']} earlier large put(s), not truly cold"
        )
        parts.append(
            f"cold ({kind}): put {_fmt_s(cold['put_s'])} + get {_fmt_s(cold['get_s'])}"
        )
    timed = [i for i in timed if i]
    if timed:
        parts.append(
            f"warm ({len(timed)}x): put {_span(i['put_s'] for i in timed)}"
            f" + get {_span(i['get_s'] for i in timed)}"
        )
    return "; ".join(parts)


def _span(values: Iterable[float]) -> str:
    """``"12 ms"`` or ``"12-48 ms"``: the range of some durations."""
    lo_hi = sorted(values)
    lo, hi = _fmt_s(lo_hi[0]), _fmt_s(lo_hi[-1])
    if lo == hi:
        return lo
    if lo.endswith(" ms") and hi.endswith(" ms"):
        return f"{lo[:-3]}-{hi}"
    return f"{lo}-{hi}"


def note_fanout(collected: dict[str, Any]) -> str | None:
    """Split of the best iteration into the put and the tasks."""
    timed = collected.get("timed") or []
    timed = [i for i in timed if i]
    if not timed:
        return None
    best = min(timed, key=lambda i: i["put_s"] + i["tasks_s"])
    return (
        f"best = put {_fmt_s(best['put_s'])} + {best['tasks']} tasks and their gets "
        f"{_fmt_s(best['tasks_s'])}"
    )


def _span_s(values: Iterable[float]) -> str:
    """``"0.52 s"`` or ``"0.52-0.61 s"``: the range of some durations, in seconds."""
    lo_hi = sorted(values)
    lo, hi = f"{lo_hi[0]:.2f}", f"{lo_hi[-1]:.2f}"
    return f"{lo} s" if lo == hi else f"{lo}-{hi} s"


def note_failure(collected: dict[str, Any]) -> str | None:
    """The two runs, the kill, and how soon the replacement worker took over."""
    timed = [i for i in collected.get("timed") or [] if i]
    if not timed:
        return None
    with_median = statistics.median(i["with_failure_s"] for i in timed)
    parts = [
        (
            f"no failure {_span_s(i['no_failure_s'] for i in timed)}, "
            f"with failure {_span_s(i['with_failure_s'] for i in timed)} "
            f"(median {with_median:.2f} s)"
        ),
        (
            f"SIGKILL {_span_s(i['kill_after_s'] for i in timed)} after the first "
            f"submission to {_killed_what(timed[0])}"
        ),
    ]
    before = _span_n(i["results_started_before_kill"] for i in timed)
    parts.append(
        f"{_span_n(i['results_from_killed'] for i in timed)} results came from the "
        f"killed worker, {before} from tasks started before the kill"
    )
    first = [i["replacement_first_start_after_kill_s"] for i in timed]
    spawned = [i.get("replacement_spawned_after_kill_s") for i in timed]
    if all(f is not None for f in first):
        parts.append(
            "its replacement "
            + (
                # /proc start times have a 10 ms resolution: clamp the rounding below 0
                f"process started {_span(max(0.0, s) for s in spawned)} after the kill, "
                if all(s is not None for s in spawned)
                else ""
            )
            + f"began its first task {_span_s(first)} after the kill "
            f"and ran {_span_n(i['results_from_replacement'] for i in timed)} tasks"
        )
    else:
        parts.append("in some iterations no replacement ran any task of the batch")
    parts.append(
        f"pool back to full size {_span_s(i['pool_back_after_s'] for i in timed)} "
        "after the run ended"
    )
    negative = sum(1 for i in timed if i["with_failure_s"] <= i["no_failure_s"])
    if negative:
        parts.append(
            f"overhead <= 0 in {negative} iteration(s): noise made the run without "
            "a kill the slower one"
        )
    return "; ".join(parts)


def _killed_what(info: dict[str, Any]) -> str:
    """``'"ray::IDLE" (child of "raylet ...")'``: which kind of process was killed."""
    what = (
        f'"{info["killed_process"][:50]}"' if info.get("killed_process") else "a worker"
    )
    parent = info.get("killed_parent")
    return f'{what} (child of "{parent[:40]}")' if parent else what


def _span_n(values: Iterable[int]) -> str:
    """``"9"`` or ``"9-11"``: the range of some counts."""
    lo_hi = sorted(values)
    return str(lo_hi[0]) if lo_hi[0] == lo_hi[-1] else f"{lo_hi[0]}-{lo_hi[-1]}"


register(
    Workload(
        name="noop_async",
        description=f"submit {NOOP_ASYNC_TASKS} no-op tasks, then get all",
        unit="tasks/s",
        better="higher",
        metric=lambda s: NOOP_ASYNC_TASKS / s,
        run=run_noop_async,
    )
)
register(
    Workload(
        name="noop_sync",
        description=f"{NOOP_SYNC_ROUND_TRIPS} sequential submit-then-get round trips",
        unit="ms/round trip",
        better="lower",
        metric=lambda s: s * 1000.0 / NOOP_SYNC_ROUND_TRIPS,
        run=run_noop_sync,
    )
)
register(
    Workload(
        name="tree_reduce",
        description=f"{TREE_LEAVES} leaves of {TREE_LEAF_SIZE} float64, pairwise sum by tasks",
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_tree_reduce,
    )
)
register(
    Workload(
        name="nested",
        description=f"{NESTED_PARENTS} tasks each submitting and getting {NESTED_CHILDREN} children",
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_nested,
    )
)
register(
    Workload(
        name="put_get_100MB",
        description=(
            "put 100 MB of float64, then get it (warm: after the previous ref was freed);"
            " notes zero-copy / read-only"
        ),
        unit="GB/s",
        better="higher",
        metric=lambda s: BIG_FLOATS * 8 / 1e9 / s,
        run=run_put_get_100MB,
        timeout_s=120.0,
        warmup_label="  (cold: 1st put)",
        note=note_put_get,
    )
)
register(
    Workload(
        name="big_arg_fanout",
        description=(
            f"put 100 MB once; {FANOUT_TASKS} tasks take the ref as an argument"
            " and return its sum"
        ),
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_big_arg_fanout,
        timeout_s=120.0,
        note=note_fanout,
    )
)
register(
    Workload(
        name="failure",
        description=(
            f"{FAILURE_TASKS} tasks of {FAILURE_TASK_S * 1000:.0f} ms with one worker SIGKILLed "
            f"{FAILURE_KILL_AT_S:g} s in; its wall time minus that of the same run without a kill"
        ),
        unit="s overhead",
        better="lower",
        metric=_seconds,
        run=run_failure,
        timeout_s=120.0,
        note=note_failure,
        info_rows=(
            ("  (no failure)", "no_failure_s"),
            ("  (with failure)", "with_failure_s"),
        ),
        ratio_label="  (overhead / Ray's)",
        ratio_target=0.5,
    )
)
register(
    Workload(
        name="actor_calls_async",
        description=f"{ACTOR_ASYNC_CALLS} calls to one actor, then get all",
        unit="calls/s",
        better="higher",
        metric=lambda s: ACTOR_ASYNC_CALLS / s,
        run=run_actor_calls_async,
        note=note_actor_order,
    )
)
register(
    Workload(
        name="actor_calls_sync",
        description=f"{ACTOR_SYNC_CALLS} sequential call-then-get round trips to one actor",
        unit="ms/call",
        better="lower",
        metric=lambda s: s * 1000.0 / ACTOR_SYNC_CALLS,
        run=run_actor_calls_sync,
    )
)
register(
    Workload(
        name="actor_create",
        description=f"start {ACTOR_CREATIONS} actors one by one, each until its first call returned",
        unit="s/actor",
        better="lower",
        metric=lambda s: s / ACTOR_CREATIONS,
        run=run_actor_create,
    )
)
register(
    Workload(
        name="million_tasks",
        description=f"submit {MILLION_TASKS:,} no-op tasks in a loop, then get all (opt-in)",
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_million_tasks,
        warmup=False,
        timeout_s=3600.0,
        note=note_million,
        opt_in=True,
    )
)
register(
    Workload(
        name="cold_start",
        description="fresh process: init + first result of a trivial task (import timed apart)",
        unit="s",
        better="lower",
        metric=_seconds,
        warmup=False,
        timeout_s=180.0,
        special="cold_start",
    )
)

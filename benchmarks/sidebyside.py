"""Side-by-side benchmark of taskmesh against Ray and Dask distributed.

Method: the same workloads (defined once in :mod:`benchmarks.workloads` against
a tiny common API, :mod:`benchmarks.adapters`) run on every framework with two
single-threaded worker processes.  Each framework runs in its own fresh child
process (:mod:`benchmarks._child`), strictly one after the other, so their
runtimes never coexist and cold start is measured honestly: the child times the
framework import, then ``init`` plus the first result of a trivial task.  Every
other workload gets one untimed warm-up and ``--repeat`` timed iterations; the
table reports the best (min) time and the median, converted into the
workload's unit.  Every iteration verifies its results and a wrong value fails
the workload.  The parent collects the child's JSON-lines events, enforces
per-workload timeouts (killing the child's whole process group), restarts a
fresh child for the remaining workloads after a crash or timeout, and reports a
missing or failing framework in the table instead of aborting.

Usage::

    python -m benchmarks.sidebyside [--frameworks taskmesh,ray,dask]
        [--workloads noop_async,noop_sync,tree_reduce,nested,put_get_100MB,big_arg_fanout,failure,cold_start]
        [--repeat N] [--json out.json]

``--workloads transfer_100MB`` (named explicitly; it is not in the default list) runs
:mod:`benchmarks.transfer_netcluster` instead: a cluster of its own across netcluster
hosts (network namespaces, so it needs root), reported in a table of its own, or as
skipped with the reason.

Speed-up columns are ``other_time / taskmesh_time``: above 1.00x taskmesh is
faster, below 1.00x it is slower.  A workload may add rows of its own: facts of
each iteration shown like times (``failure``: the runs without and with the kill),
and each framework's time as a multiple of Ray's, with taskmesh's target printed
under the table (``failure``: overhead / Ray's overhead, target <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.adapters import DEFAULT_NUM_WORKERS, FRAMEWORKS, installed_version
from benchmarks.workloads import WORKLOADS

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Budget for a child to import + init + return its first result.
INIT_TIMEOUT_S = 180.0
#: Budget between events outside a workload (e.g. result -> next start).
EVENT_GAP_TIMEOUT_S = 60.0
#: Grace period for the framework's shutdown before the child is killed.
SHUTDOWN_GRACE_S = 60.0
#: Frameworks we compare taskmesh against, in table order.
BASELINES = ("ray", "dask")


#: Workloads that bring up their own multi-host cluster (netcluster network namespaces,
#: so root) instead of running in a framework's child; name -> (description, frameworks
#: it has drivers for). They run only when named in --workloads: the default run must
#: not need root.
MULTIHOST: dict[str, tuple[str, tuple[str, ...]]] = {
    "transfer_100MB": (
        (
            "100 MB from one netcluster host's store to a task on another, beside raw TCP "
            "copies in the same run (needs root; benchmarks/transfer_netcluster.py)"
        ),
        ("taskmesh", "ray"),
    ),
}
#: Budget for a whole multi-host workload (hosts up, every framework, teardown).
MULTIHOST_TIMEOUT_S = 900.0


# =========================================================================== results


@dataclass
class WorkloadResult:
    """Outcome of one workload on one framework."""

    status: str = "pending"  # ok | failed | not installed | pending
    seconds: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    error: str | None = None
    #: cold_start only: framework import time of each sample.
    import_s: list[float] = field(default_factory=list)
    #: Extra facts from the runner: ``{"warmup": {...}, "timed": [{...}, ...]}``.
    info: dict[str, Any] | None = None
    #: One line built from :attr:`info` by the workload's ``note`` (log and table footer).
    note: str | None = None

    @property
    def best_s(self) -> float | None:
        """Minimum time over the timed iterations."""
        return min(self.seconds) if self.status == "ok" and self.seconds else None

    @property
    def median_s(self) -> float | None:
        """Median time over the timed iterations."""
        return (
            statistics.median(self.seconds)
            if self.status == "ok" and self.seconds
            else None
        )


@dataclass
class FrameworkReport:
    """Everything measured for one framework."""

    name: str
    status: str = "ok"  # ok | not installed | failed
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    workloads: dict[str, WorkloadResult] = field(default_factory=dict)
    cold_start_breakdown: list[dict[str, float]] = field(default_factory=list)
    shutdown_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


@dataclass
class ChildOutcome:
    """What one child process reported before it exited or was killed."""

    events: list[dict[str, Any]]
    returncode: int | None
    #: Set when the child died or was killed before reporting everything.
    failure: str | None = None
    #: Workload that was running when the child failed, if any.
    failed_in: str | None = None
    log_path: str = ""


# =========================================================================== child control


def _child_env(framework: str) -> dict[str, str]:
    env = os.environ.copy()
    # Workers of every framework must be able to import benchmarks.workloads.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(FRAMEWORKS[framework].env)
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Terminate the child and anything left in its process group (SIGTERM, then SIGKILL)."""
    pgid = proc.pid  # the child leads its own session/group (start_new_session=True)
    if proc.poll() is None or _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed processes do exit
        pass


def _last_log_line(path: str) -> str:
    """Last non-empty line of a child's log (for crash reasons)."""
    try:
        lines = [
            ln.strip()
            for ln in Path(path).read_text(errors="replace").splitlines()
            if ln.strip()
        ]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def run_child(
    framework: str,
    workloads: list[str],
    repeat: int,
    workers: int,
    log_dir: Path,
    tag: str,
    iteration_timeout: float | None,
    progress: bool = True,
) -> ChildOutcome:
    """Run one fresh child process for ``framework`` and collect its events.

    The child's stdout/stderr go to a log file; its events to a JSON-lines file
    polled here.  Deadlines: :data:`INIT_TIMEOUT_S` until the cold-start event,
    ``(warm-up + repeat) * per-iteration timeout`` for each workload, and a
    grace period for shutdown.  On timeout, crash or interrupt the child's whole
    process group is killed.
    """
    events_path = log_dir / f"{framework}-{tag}.events.jsonl"
    log_path = log_dir / f"{framework}-{tag}.log"
    events_path.write_text("")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._child",
        "--framework",
        framework,
        "--workloads",
        ",".join(workloads),
        "--repeat",
        str(repeat),
        "--workers",
        str(workers),
        "--events",
        str(events_path),
    ]
    events: list[dict[str, Any]] = []
    outcome = ChildOutcome(events=events, returncode=None, log_path=str(log_path))
    current: str | None = None  # workload in progress
    stage = "init"
    budget = INIT_TIMEOUT_S
    deadline = time.monotonic() + budget
    buf = ""
    offset = 0

    def drain() -> list[dict[str, Any]]:
        nonlocal buf, offset
        with open(events_path, encoding="utf-8") as f:
            f.seek(offset)
            chunk = f.read()
            offset = f.tell()
        buf += chunk
        *lines, buf = buf.split("\n")
        return [json.loads(ln) for ln in lines if ln.strip()]

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_child_env(framework),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                exited = proc.poll() is not None
                for ev in drain():
                    events.append(ev)
                    kind = ev["event"]
                    now = time.monotonic()
                    if kind == "cold_start":
                        stage, budget = "between workloads", EVENT_GAP_TIMEOUT_S
                        deadline = now + budget
                        if progress:
                            _progress(
                                f"[{framework}] cold start {ev['seconds']:.2f} s (import {ev['import_s']:.2f} s)"
                            )
                    elif kind == "start":
                        current = ev["workload"]
                        stage = f"workload {current}"
                        w = WORKLOADS[current]
                        per_iter = iteration_timeout or w.timeout_s
                        budget = per_iter * (repeat + (1 if w.warmup else 0))
                        deadline = now + budget
                    elif kind == "result":
                        current = None
                        stage, budget = "between workloads", EVENT_GAP_TIMEOUT_S
                        deadline = now + budget
                        if progress:
                            _progress(_describe_result(framework, ev))
                    elif kind == "workloads_done":
                        stage, budget = "shutdown", SHUTDOWN_GRACE_S
                        deadline = now + budget
                    elif kind == "fatal" and progress:
                        _progress(
                            f"[{framework}] failed during {ev['stage']}: {ev['error']}"
                        )
                if exited:
                    break
                if time.monotonic() > deadline:
                    if stage != "shutdown":
                        outcome.failure = (
                            f"timeout ({budget:g} s) during {stage}; child killed"
                        )
                        outcome.failed_in = current
                    else:
                        outcome.failure = "shutdown hung; child killed"
                    break
                time.sleep(0.05)
        except BaseException:
            _kill_group(proc)
            raise
        _kill_group(proc)
    outcome.returncode = proc.returncode
    kinds = {e["event"] for e in events}
    if (
        outcome.failure is None
        and "workloads_done" not in kinds
        and "fatal" not in kinds
    ):
        last = _last_log_line(str(log_path))
        outcome.failure = f"child exited with code {proc.returncode} during {stage}" + (
            f": {last}" if last else ""
        )
        outcome.failed_in = current
    return outcome


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _note(name: str, info: dict[str, Any] | None) -> str | None:
    """The workload's one-line note about ``info`` (never raises: it is only a note)."""
    w = WORKLOADS[name]
    if w.note is None or not info:
        return None
    try:
        return w.note(info)
    except Exception as exc:  # noqa: BLE001
        return f"(note unavailable: {type(exc).__name__}: {exc})"


def _describe_result(framework: str, ev: dict[str, Any]) -> str:
    name = ev["workload"]
    if not ev["ok"]:
        return f"[{framework}] {name}: FAILED {ev['error']}"
    secs = ev["seconds"]
    w = WORKLOADS[name]
    text = f"[{framework}] {name}: best {_fmt(w.metric(min(secs)))} {w.unit} ({', '.join(f'{s:.3f}' for s in secs)} s)"
    if w.warmup_label and ev.get("warmup_s"):
        text += f"; {w.warmup_label.strip()} {_fmt(w.metric(ev['warmup_s']))} {w.unit} ({ev['warmup_s']:.3f} s)"
    note = _note(name, ev.get("info"))
    return f"{text}\n    {note}" if note else text


# =========================================================================== orchestration


def run_framework(
    framework: str,
    names: list[str],
    repeat: int,
    workers: int,
    log_dir: Path,
    iteration_timeout: float | None = None,
) -> FrameworkReport:
    """Benchmark ``names`` on ``framework`` in fresh child process(es).

    The first child runs all non-cold-start workloads and also yields the first
    cold-start sample.  After a crash or timeout a new child continues with the
    workloads not yet reported.  Extra cold-start-only children run until
    ``repeat`` cold-start samples exist.
    """
    fw = FRAMEWORKS[framework]
    report = FrameworkReport(
        name=framework, versions=fw.versions() if fw.is_installed() else {}
    )
    report.workloads = {n: WorkloadResult() for n in names}
    if not fw.is_installed():
        report.status = "not installed"
        for r in report.workloads.values():
            r.status = "not installed"
        return report

    want_cold = "cold_start" in names
    cold = report.workloads.get("cold_start")
    remaining = [n for n in names if WORKLOADS[n].special is None]
    child_no = 0
    fatal: str | None = None

    def absorb(out: ChildOutcome) -> None:
        nonlocal fatal
        report.logs.append(out.log_path)
        for ev in out.events:
            kind = ev["event"]
            if kind == "fatal":
                fatal = f"{ev['error']} (during {ev['stage']})"
            elif kind == "cold_start":
                report.versions.update(ev.get("versions") or {})
                report.cold_start_breakdown.append(
                    {
                        k: ev[k]
                        for k in ("import_s", "init_s", "first_task_s", "seconds")
                    }
                )
                if cold is not None and len(cold.seconds) < repeat:
                    cold.seconds.append(ev["seconds"])
                    cold.import_s.append(ev["import_s"])
                    cold.status = "ok"
            elif kind == "result":
                r = report.workloads[ev["workload"]]
                r.seconds, r.warmup_s = ev["seconds"], ev.get("warmup_s")
                r.status = "ok" if ev["ok"] else "failed"
                r.error = ev.get("error")
                r.info = ev.get("info")
                r.note = _note(ev["workload"], r.info)
            elif kind == "shutdown" and "seconds" in ev:
                report.shutdown_s.append(ev["seconds"])
        if out.failure:
            if out.failed_in is not None:
                r = report.workloads[out.failed_in]
                r.status, r.error = "failed", out.failure
            elif fatal is None and not any(
                e["event"] == "cold_start" for e in out.events
            ):
                fatal = out.failure
            else:
                report.notes.append(out.failure)

    # Main child(ren): all regular workloads.
    while True:
        out = run_child(
            framework,
            remaining,
            repeat,
            workers,
            log_dir,
            f"main{child_no}",
            iteration_timeout,
        )
        child_no += 1
        absorb(out)
        if fatal is not None:
            break
        remaining = [n for n in remaining if report.workloads[n].status == "pending"]
        if not remaining or not out.failure or child_no > len(names) + 1:
            break
        _progress(f"[{framework}] restarting a fresh child for: {', '.join(remaining)}")

    # Extra children for the remaining cold-start samples.
    extra = 0
    while (
        fatal is None
        and want_cold
        and cold is not None
        and len(cold.seconds) < repeat
        and extra < repeat + 2
    ):
        extra += 1
        absorb(
            run_child(
                framework,
                [],
                repeat,
                workers,
                log_dir,
                f"cold{extra}",
                iteration_timeout,
            )
        )

    for r in report.workloads.values():
        if r.status == "pending":
            r.status = "failed"
            r.error = fatal or "no result reported"
    if fatal is not None:
        report.status, report.error = "failed", fatal
    elif any(r.status == "failed" for r in report.workloads.values()):
        report.status = "failed"
    return report


# =========================================================================== multi-host


@dataclass
class MultihostReport:
    """Outcome of one multi-host workload (all its frameworks in one run)."""

    status: str  # ok | failed | skipped
    reason: str | None = None
    #: The figures from :func:`benchmarks.transfer_netcluster.run`.
    result: dict[str, Any] | None = None


def run_transfer_netcluster(
    frameworks: list[str], repeat: int, timeout_s: float = MULTIHOST_TIMEOUT_S
) -> MultihostReport:
    """``transfer_100MB`` in a child process (its progress goes to our stderr); skipped,
    with the reason, when this machine cannot run netcluster or no framework has a driver."""
    from benchmarks import transfer_netcluster as tn

    fws = [f for f in frameworks if f in MULTIHOST["transfer_100MB"][1]]
    if not fws:
        return MultihostReport("skipped", "no driver for " + ", ".join(frameworks))
    try:
        tn.check_available()
    except tn.Unavailable as exc:
        return MultihostReport("skipped", str(exc))
    fd, json_path = tempfile.mkstemp(prefix="taskmesh-xfer-", suffix=".json")
    os.close(fd)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.transfer_netcluster",
        "--repeat",
        str(repeat),
        "--frameworks",
        ",".join(fws),
        "--json",
        json_path,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    try:
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # it tears its hosts down on SIGTERM
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return MultihostReport("failed", f"timeout ({timeout_s:g} s); stopped")
        except BaseException:
            proc.terminate()
            proc.wait(timeout=120)
            raise
        if code == 2:
            return MultihostReport("skipped", "cannot run here (see the message above)")
        try:
            result = json.loads(Path(json_path).read_text())
        except (OSError, ValueError):
            return MultihostReport("failed", f"exited with code {code} and no figures")
    finally:
        Path(json_path).unlink(missing_ok=True)
    failed = [f for f, r in result["frameworks"].items() if r.get("status") != "ok"]
    if failed:
        return MultihostReport("failed", "failed on " + ", ".join(failed), result)
    return MultihostReport("ok", None, result)


def print_multihost(reports: dict[str, MultihostReport], frameworks: list[str]) -> None:
    """Each multi-host workload's own table, or why it did not run."""
    from benchmarks import transfer_netcluster as tn

    print("\nMulti-host workloads (netcluster hosts):")
    for name, rep in reports.items():
        if rep.result is not None:
            print(tn.render(rep.result))
        if rep.status != "ok":
            print(f"  {name}: {rep.status}: {rep.reason}")
        missing = [f for f in frameworks if f not in MULTIHOST[name][1]]
        if missing and rep.status != "skipped":
            print(f"  {name}: not run on {', '.join(missing)} (no driver)")


# =========================================================================== reporting


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS, Python and framework versions of this machine."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    mem_gb: float | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {
        d: installed_version(d)
        for d in ("taskmesh", "ray", "dask", "distributed", "numpy")
    }
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": _cpu_model(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _fmt(v: float) -> str:
    """Compact number: 3 significant digits-ish, thousands separators for large values."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cell(
    r: WorkloadResult | None, w_metric: Callable[[float], float], max_err: int = 72
) -> str:
    if r is None:
        return "-"
    if r.status == "ok" and r.best_s is not None and r.median_s is not None:
        best = _fmt(w_metric(r.best_s))
        if len(r.seconds) > 1:
            return f"{best} (med {_fmt(w_metric(r.median_s))})"
        return best
    if r.status == "not installed":
        return "not installed"
    err = (r.error or r.status).replace("\n", " ")
    text = f"failed: {err}"
    return text if len(text) <= max_err else text[: max_err - 1] + "…"


def _speedup_value(
    tm: WorkloadResult | None, other: WorkloadResult | None
) -> float | None:
    """``other_best / taskmesh_best`` in seconds (>1: taskmesh faster), or None."""
    tm_s = tm.best_s if tm is not None else None
    other_s = other.best_s if other is not None else None
    if tm_s is None or other_s is None or tm_s <= 0:
        return None
    return other_s / tm_s


def _speedup(tm: WorkloadResult | None, other: WorkloadResult | None) -> str:
    v = _speedup_value(tm, other)
    return "n/a" if v is None else f"{v:.2f}x"


def _seconds(s: float) -> float:
    return s


def _info_result(r: WorkloadResult | None, key: str) -> WorkloadResult | None:
    """``info[key]`` of each timed iteration of ``r`` as a result of its own (a table row)."""
    if r is None or r.status != "ok":
        return r
    timed = (r.info or {}).get("timed") or []
    values = [i[key] for i in timed if i and i.get(key) is not None]
    if not values:
        return WorkloadResult(status="failed", error=f"no {key} reported")
    return WorkloadResult(status="ok", seconds=values)


def ratios_to_ray(
    reports: dict[str, FrameworkReport], name: str
) -> dict[str, dict[str, float | None]]:
    """Each framework's best time of ``name`` over Ray's best, and median over median.

    A ratio is ``None`` where either side is missing or Ray's time is not positive (an
    overhead can come out at zero or below in a noisy run).
    """
    ray = reports.get("ray")
    base = ray.workloads.get(name) if ray is not None else None
    out: dict[str, dict[str, float | None]] = {}
    for f, rep in reports.items():
        r = rep.workloads.get(name)
        pair: dict[str, float | None] = {}
        for kind in ("best", "median"):
            mine = getattr(r, f"{kind}_s") if r is not None else None
            theirs = getattr(base, f"{kind}_s") if base is not None else None
            pair[kind] = (
                mine / theirs
                if mine is not None and theirs is not None and theirs > 0
                else None
            )
        out[f] = pair
    return out


def _ratio_text(pair: dict[str, float | None] | None) -> str:
    if not pair or pair["best"] is None:
        return "n/a"
    med = pair["median"]
    return f"{pair['best']:.2f}x" + (f" (med {med:.2f}x)" if med is not None else "")


def build_rows(
    reports: dict[str, FrameworkReport], names: list[str]
) -> list[dict[str, Any]]:
    """Table rows: one per workload, plus an informational import-time row under cold_start."""
    rows: list[dict[str, Any]] = []
    for n in names:
        w = WORKLOADS[n]
        rows.append(
            {
                "label": n,
                "unit": w.unit,
                "better": w.better,
                "metric": w.metric,
                "results": {f: rep.workloads.get(n) for f, rep in reports.items()},
            }
        )
        if w.warmup_label:
            # The untimed warm-up as its own row (e.g. the cold first put); one sample.
            warm: dict[str, WorkloadResult | None] = {}
            for f, rep in reports.items():
                r = rep.workloads.get(n)
                if r is not None and r.status == "ok" and r.warmup_s:
                    warm[f] = WorkloadResult(status="ok", seconds=[r.warmup_s])
                else:
                    warm[f] = r
            rows.append(
                {
                    "label": w.warmup_label,
                    "unit": w.unit,
                    "better": w.better,
                    "metric": w.metric,
                    "results": warm,
                }
            )
        for label, key in w.info_rows:
            rows.append(
                {
                    "label": label,
                    "unit": "s",
                    "better": "lower",
                    "metric": _seconds,
                    "results": {
                        f: _info_result(rep.workloads.get(n), key)
                        for f, rep in reports.items()
                    },
                }
            )
        if w.ratio_label:
            ratios = ratios_to_ray(reports, n)
            rows.append(
                {
                    "label": w.ratio_label,
                    "unit": f"x Ray (target <= {w.ratio_target:g})"
                    if w.ratio_target is not None
                    else "x Ray",
                    "better": "lower",
                    "texts": {f: _ratio_text(ratios.get(f)) for f in reports},
                }
            )
        if n == "cold_start":
            imp: dict[str, WorkloadResult | None] = {}
            for f, rep in reports.items():
                c = rep.workloads.get(n)
                if c is not None and c.status == "ok" and c.import_s:
                    imp[f] = WorkloadResult(status="ok", seconds=list(c.import_s))
                else:
                    imp[f] = c
            rows.append(
                {
                    "label": "  (import)",
                    "unit": "s",
                    "better": "lower",
                    "metric": lambda s: s,
                    "results": imp,
                }
            )
    return rows


def render_table(reports: dict[str, FrameworkReport], names: list[str]) -> str:
    """The human-readable comparison table (best, with median in parentheses)."""
    frameworks = list(reports)
    compare = "taskmesh" in reports
    baselines = [b for b in BASELINES if b in reports] if compare else []
    header = (
        ["workload", "unit"]
        + frameworks
        + [f"speed-up vs {_pretty(b)}" for b in baselines]
    )
    body: list[list[str]] = []
    for row in build_rows(reports, names):
        unit = f"{row['unit']} ({row['better']} better)"
        if "texts" in row:  # already a comparison: no speed-up of its own
            cells = [row["texts"].get(f, "-") for f in frameworks]
            ups = ["" for _ in baselines]
        else:
            cells = [_cell(row["results"].get(f), row["metric"]) for f in frameworks]
            ups = [
                _speedup(row["results"].get("taskmesh"), row["results"].get(b))
                for b in baselines
            ]
        body.append([row["label"], unit] + cells + ups)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def _pretty(framework: str) -> str:
    return {"ray": "Ray", "dask": "Dask"}.get(framework, framework)


def print_header(
    info: dict[str, Any],
    frameworks: list[str],
    names: list[str],
    repeat: int,
    workers: int,
) -> None:
    """Machine and configuration summary printed before the run."""
    v = info["versions"]
    print("taskmesh side-by-side benchmark")
    print(
        f"  machine : {info['cpu_count']} CPUs ({info['usable_cpus']} usable), {info['cpu_model']}, "
        f"{info['memory_gb']} GB RAM"
    )
    print(f"  os      : {info['platform']}")
    print(f"  python  : {info['python']}")
    print(
        f"  versions: taskmesh {_src_version('taskmesh', v['taskmesh'])}, ray {v['ray']}, "
        f"dask {v['dask']}, distributed {v['distributed']}, numpy {v['numpy']}"
    )
    print(
        f"  config  : frameworks={','.join(frameworks)} workloads={','.join(names)} "
        f"repeat={repeat} workers={workers}"
    )
    print(flush=True)


def _src_version(dist: str, version: str) -> str:
    if version != "?":
        return version
    return (
        "(source tree, not pip-installed)"
        if (REPO_ROOT / dist).is_dir()
        else "(not installed)"
    )


def print_summary(
    reports: dict[str, FrameworkReport], names: list[str], repeat: int
) -> None:
    """Table, legend, cold-start breakdown and failures."""
    print()
    how = (
        f"best of {repeat}, median in parentheses" if repeat > 1 else "single timed run"
    )
    print(f"Results ({how}; every workload had one untimed warm-up except cold_start):")
    print(render_table(reports, names))
    print()
    if "taskmesh" in reports and any(b in reports for b in BASELINES):
        print(
            "speed-up vs X = X time / taskmesh time (best runs): >1.00x means taskmesh is faster,"
            " <1.00x means taskmesh is slower."
        )
    for n in names:
        w = WORKLOADS[n]
        if w.ratio_target is None or "taskmesh" not in reports or "ray" not in reports:
            continue
        pair = ratios_to_ray(reports, n)["taskmesh"]
        best, median = pair["best"], pair["median"]
        if best is None or median is None:
            print(f"{n}: taskmesh / Ray = n/a (target <= {w.ratio_target:g})")
            continue
        # A time at or below zero (an overhead, in a noisy run) says nothing: judge
        # by the median alone then.
        judged = {"median": median}
        if (reports["taskmesh"].workloads[n].best_s or 0) > 0:
            judged = {"best": best, **judged}
        met = [k for k, v in judged.items() if v <= w.ratio_target]
        verdict = (
            "not met"
            if not met
            else f"met by the {met[0]} only"
            if len(met) < len(judged)
            else "met (" + " and ".join(judged) + ")"
        )
        if "best" not in judged:
            verdict += "; taskmesh's best is <= 0 (noise), so it is not judged"
        print(
            f"{n}: taskmesh / Ray ({w.unit}) = {best:.2f} best, "
            f"{median:.2f} median; target <= {w.ratio_target:g}: {verdict}"
        )
    for f, rep in reports.items():
        if rep.cold_start_breakdown:
            parts = ", ".join(
                f"init {c['init_s']:.2f} s + first task {c['first_task_s']:.3f} s"
                for c in rep.cold_start_breakdown
            )
            sd = f"; shutdown {min(rep.shutdown_s):.2f} s" if rep.shutdown_s else ""
            print(f"  {f} cold start: {parts}{sd}")
    failures: list[str] = []
    for f, rep in reports.items():
        if rep.error:  # the framework never got going: one line for all its workloads
            failures.append(f"  {f} (all workloads): {rep.error}")
            continue
        failures += [
            f"  {f}/{n}: {r.error}"
            for n, r in rep.workloads.items()
            if r.status == "failed"
        ]
    if failures:
        print("\nFailures:")
        print("\n".join(failures))
        logs = sorted(
            {
                lg
                for rep in reports.values()
                if rep.status == "failed"
                for lg in rep.logs
            }
        )
        if logs:
            print("  child logs: " + " ".join(logs))
    workload_notes = [
        f"  {n} ({f}): {r.note}"
        for n in names
        for f, rep in reports.items()
        if (r := rep.workloads.get(n)) is not None and r.note
    ]
    if workload_notes:
        print("\nNotes:")
        print("\n".join(workload_notes))
    for f, rep in reports.items():
        for note in rep.notes:
            print(f"  note ({f}): {note}")


def to_json(
    info: dict[str, Any],
    reports: dict[str, FrameworkReport],
    names: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Machine-readable results (raw seconds plus derived metrics and speed-ups)."""
    fw_out: dict[str, Any] = {}
    for f, rep in reports.items():
        d = asdict(rep)
        for n, r in rep.workloads.items():
            w = WORKLOADS[n]
            d["workloads"][n].update(
                unit=w.unit,
                better=w.better,
                best_s=r.best_s,
                median_s=r.median_s,
                metric_best=w.metric(r.best_s) if r.best_s else None,
                metric_median=w.metric(r.median_s) if r.median_s else None,
            )
            if w.warmup_label:
                d["workloads"][n].update(
                    warmup_label=w.warmup_label.strip(),
                    metric_warmup=w.metric(r.warmup_s) if r.warmup_s else None,
                )
            for label, key in w.info_rows:
                ir = _info_result(r, key)
                d["workloads"][n].setdefault("rows", {})[key] = {
                    "label": label.strip(),
                    "best_s": ir.best_s if ir is not None else None,
                    "median_s": ir.median_s if ir is not None else None,
                }
            if w.ratio_label:
                d["workloads"][n]["ratio_to_ray"] = ratios_to_ray(reports, n)[f]
                d["workloads"][n]["ratio_target"] = w.ratio_target
        fw_out[f] = d
    speedups: dict[str, dict[str, float | None]] = {}
    if "taskmesh" in reports:
        for n in names:
            tm = reports["taskmesh"].workloads.get(n)
            for b in BASELINES:
                if b in reports:
                    o = reports[b].workloads.get(n)
                    speedups.setdefault(n, {})[f"vs_{b}"] = _speedup_value(tm, o)
    return {
        "machine": info,
        "config": {
            "frameworks": list(reports),
            "workloads": names,
            "repeat": args.repeat,
            "workers": args.workers,
        },
        "speedup_definition": "other_best_seconds / taskmesh_best_seconds (>1 means taskmesh faster)",
        "frameworks": fw_out,
        "speedups": speedups,
        "workload_info": {
            n: {
                "description": WORKLOADS[n].description,
                "unit": WORKLOADS[n].unit,
                "better": WORKLOADS[n].better,
            }
            for n in names
        },
    }


# =========================================================================== CLI


def _split(value: str, known: Iterable[str], what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise SystemExit(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return items


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every framework in turn, print the table; exit 1 on any failure."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sidebyside",
        description="Run the same workloads on taskmesh, Ray and Dask distributed, side by side.",
        epilog="Speed-up columns are other_time / taskmesh_time: >1 means taskmesh is faster.",
    )
    p.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--workloads",
        default=",".join(n for n, w in WORKLOADS.items() if not w.opt_in),
        help="comma-separated (default: %(default)s); also "
        + ", ".join(MULTIHOST)
        + " (multi-host, needs root), "
        + ", ".join(n for n, w in WORKLOADS.items() if w.opt_in) + " (long: opt-in)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed iterations per workload; best and median reported",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_NUM_WORKERS,
        help="worker processes per framework",
    )
    p.add_argument("--json", metavar="PATH", help="also write results as JSON")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per-iteration timeout in s (default: per workload)",
    )
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep child logs even if everything passed",
    )
    p.add_argument("--list", action="store_true", help="list workloads and exit")
    args = p.parse_args(argv)

    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:<14} {w.unit:<14} {w.better:<6} {w.description}")
        for name, (desc, _) in MULTIHOST.items():
            print(f"{name:<14} {'GB/s':<14} {'higher':<6} {desc}; only when named")
        return 0
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    frameworks = _split(args.frameworks, FRAMEWORKS, "framework")
    requested = _split(args.workloads, [*WORKLOADS, *MULTIHOST], "workload")
    names = [n for n in requested if n in WORKLOADS]
    multihost = [n for n in requested if n in MULTIHOST]

    info = machine_info()
    print_header(info, frameworks, requested, args.repeat, args.workers)
    log_dir = Path(tempfile.mkdtemp(prefix="taskmesh-bench-"))
    reports: dict[str, FrameworkReport] = {}
    mh_reports: dict[str, MultihostReport] = {}
    t0 = time.monotonic()
    try:
        for f in frameworks if names else []:
            _progress(f"== {f}")
            reports[f] = run_framework(
                f, names, args.repeat, args.workers, log_dir, args.timeout
            )
            if reports[f].status == "not installed":
                _progress(f"[{f}] not installed; skipped")
        for n in multihost:
            _progress(f"== {n} (multi-host)")
            mh_reports[n] = run_transfer_netcluster(frameworks, args.repeat)
            if mh_reports[n].status != "ok":
                _progress(f"[{n}] {mh_reports[n].status}: {mh_reports[n].reason}")
    finally:
        failed = any(r.status == "failed" for r in reports.values())
        if failed or args.keep_logs:
            _progress(f"child logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    if names:
        print_summary(reports, names, args.repeat)
    if mh_reports:
        print_multihost(mh_reports, frameworks)
    print(f"\ntotal wall time {time.monotonic() - t0:.0f} s")
    if args.json:
        out = to_json(info, reports, names, args)
        out["multihost"] = {n: asdict(r) for n, r in mh_reports.items()}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    failed = any(
        r.status == "failed" for r in [*reports.values(), *mh_reports.values()]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

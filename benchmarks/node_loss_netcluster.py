"""``node_loss``: how soon a cluster notices that a machine died, and re-runs its tasks elsewhere.

    controller (this process, root namespace)          driver (on h0, beside the head)
      BATCH (no fault) ------------------------------>  2 tasks of 3 s; every result checked
      BATCH (fault) ---------------------------------->  submit; a task has started on h1 and
      <------------------------------------- RUNNING     on h2 (the attempt files say so)
      t_inject = time.time(); netcluster kill|crash h1   poll nodes() every 20 ms until h1's
                                                         node is reported dead -> t_dead
      (<------------------------------------- STUCK      no verdict within the budget:
       heal h1, as a rebooted machine)                   keep waiting for the results)
      <---------------------------------------- DONE     the results: the lost task re-ran
      heal h1 (crash), start its node again              on h2, from its start time
      READY ------------------------------------------>  wait for 2 live nodes, warm them up

    h0: head (--num-cpus 0) + driver    h1: node, 2 CPUs (fails)    h2: node, 2 CPUs

Each task appends ``<host address> <start time>`` to a file of its own in a directory that every
host sees (the hosts share the filesystem; only the network is separated), then sleeps and
returns its index squared, its host, its start time and its attempt number (the lines in its
file). The files tell the driver where tasks run while they run, and afterwards which tasks were
running on h1 when it failed. All namespaces share one clock, so times taken in different hosts
compare directly.

Figures per iteration (``iteration_figures``), from the fault's injection (``time.time()`` just
before the ``netcluster`` command, so they include the command's first milliseconds):

- **detection**: until the head reports h1's node dead (``nodes()``, ``Alive``);
- **recovery**: until the earliest start, on h2, of a re-run of a task that was running on h1;
- **overhead**: the batch's wall time (submit to last result) minus that of the same batch
  without a fault, run just before it.

The batch is no larger than what the surviving node can take at once (2 tasks on 2 + 2 CPUs),
so a re-run never waits for a free CPU: recovery measures how the framework handles the failure,
not the queue. ``--tasks 8`` runs a saturated batch instead (recovery then waits for h2's tasks
to end). If only h2 got tasks (Ray packs them), h2 fails instead of h1. After each iteration the
failed host is restored (healed if crashed, its node started again) and the cluster warmed up,
so iterations do not depend on each other. Kill and crash alternate within each iteration
number, to share the machine's noise.

taskmesh runs with its defaults (heartbeat every 0.25 s, a node silent for 1.5 s is dead), Ray
with its own; ``max_retries=3`` for both (the default of both).

Usage (as root, from the repository root)::

    python -m benchmarks.node_loss_netcluster [--repeat N] [--json PATH]
        [--frameworks taskmesh,ray] [--fault kill,crash] [--tasks N] [--task-seconds S]
        [--budget S] [--keep-logs]

Exit status: 0 ok, 1 failed, 2 cannot run here (not root, no netcluster). :func:`run` returns
the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.transfer_netcluster import (
    _Hosts,
    _ray_env,
    _start_ray,
    _start_ray_node,
    _start_taskmesh,
    _start_taskmesh_node,
    _stop_ray,
    _stop_taskmesh,
    _tear_down,
    check_available,
    run_main,
)

FRAMEWORKS = ("taskmesh", "ray")
FAULTS = ("kill", "crash")
#: worker nodes: (host index, CPUs, custom resources as JSON); h1 is the one that fails
NODES: tuple[tuple[int, int, str], ...] = ((1, 2, "{}"), (2, 2, "{}"))
VICTIM, SURVIVOR = 1, 2
#: the store is not what this measures; Ray wants at least 75 MiB
OBJECT_STORE_MEMORY = 128 << 20
TASKS = 2
TASK_S = 3.0
MAX_RETRIES = 3
#: the driver asks the head for the node list this often while it waits for the verdict
POLL_S = 0.02
#: per iteration, fault to verdict (the node seen dead and every result in); past it the figures
#: are reported as "> budget". Ray's health checks take far longer than taskmesh's heartbeats.
BUDGET_S = {"taskmesh": 30.0, "ray": 120.0}
#: past the budget, a crashed host comes back and the driver waits this much longer for results
AFTER_BUDGET_S = 120.0
#: the issue's target: node loss detected and its tasks re-running within this
TARGET_S = 2.0


# =========================================================================== the task


def sleeper(k: int, seconds: float, log_dir: str) -> dict[str, Any]:
    """Note the start in this task's attempt log, sleep, return ``k * k`` and where and when it
    ran. The attempt number is the count of starts in the log, this one included."""
    start = time.time()
    host = os.environ.get("NETCLUSTER_ADDR", "")
    path = os.path.join(log_dir, str(k))
    with open(path, "a") as f:
        f.write(f"{host} {start!r}\n")
    with open(path) as f:
        attempt = sum(1 for _ in f)
    time.sleep(seconds)
    return {"k": k, "value": k * k, "host": host, "start": start, "end": time.time(),
            "attempt": attempt, "pid": os.getpid()}


def read_starts(log_dir: str) -> dict[int, list[tuple[str, float]]]:
    """task index -> its starts so far, (host address, wall time), oldest first."""
    out: dict[int, list[tuple[str, float]]] = {}
    for name in os.listdir(log_dir):
        with open(os.path.join(log_dir, name)) as f:
            lines = [ln.split() for ln in f.read().splitlines()]
        # a line still being written has no time yet: it is read again on the next poll
        out[int(name)] = [(ln[0], float(ln[1])) for ln in lines if len(ln) == 2]
    return out


# =========================================================================== the driver (on h0)


class _Driver:
    """taskmesh or Ray from the driver's side (they share the API; the node lists differ)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.framework = cfg["framework"]
        self.hosts: list[str] = cfg["hosts"]  # [h1, h2]: h1 fails, unless it got no task
        self.cpus: int = cfg["cpus"]
        self.log_root = Path(cfg["log_root"])
        if self.framework == "taskmesh":
            import taskmesh as mod

            mod.init(address=cfg["address"])
        else:
            import ray as mod

            mod.init(address=cfg["address"], _node_ip_address=cfg["driver_ip"],
                     logging_level="ERROR", log_to_driver=False)
        self.mod = mod
        # the driver runs as __main__: take the task from the module by name, so that workers
        # import it by reference and logs name it benchmarks.node_loss_netcluster.sleeper
        from benchmarks.node_loss_netcluster import sleeper as task

        self.sleeper = mod.remote(max_retries=MAX_RETRIES)(task)
        self.batches = 0

    def alive(self, warm: bool = False) -> dict[str, set[str]]:
        """host address -> ids of the nodes the head reports alive there; ``warm``: only
        taskmesh nodes whose whole pool of workers is up (Ray does not say)."""
        out: dict[str, set[str]] = {}
        for n in self.mod.nodes():
            if not n["Alive"]:
                continue
            if (warm and self.framework == "taskmesh"
                    and n["Workers"] < n["Resources"].get("CPU", 0)):
                continue
            out.setdefault(n["NodeManagerAddress"], set()).add(n["NodeID"])
        return out

    def ready(self, timeout_s: float) -> dict[str, Any]:
        """Wait for a live node on each host, then run short batches until tasks have run on
        both: the next batch starts on warm workers."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while not all(self.alive(warm=True).get(h) for h in self.hosts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no live node on each of {self.hosts} after {timeout_s:.0f} s "
                                   f"(alive: {self.alive()})")
            time.sleep(0.1)
        joined = time.monotonic() - t0
        for _ in range(10):
            out = self.batch(tasks=2 * self.cpus, seconds=0.3, fault=False,
                             timeout_s=max(30.0, deadline - time.monotonic()))
            if {r["host"] for r in out["results"] if r} >= set(self.hosts):
                break
        else:
            raise RuntimeError(f"warm-up tasks never ran on all of {self.hosts}")
        return {"joined_s": joined, "ready_s": time.monotonic() - t0}

    def batch(self, tasks: int, seconds: float, fault: bool, timeout_s: float,
              budget_s: float = 0.0) -> dict[str, Any]:
        """Run ``tasks`` sleepers of ``seconds``. With ``fault``, say RUNNING once a task runs
        on each host (or all have started), then watch for the victim's node to be declared
        dead while the results come in; if that takes over ``budget_s``, say STUCK (the
        controller then brings the host back) and keep waiting until ``timeout_s`` has passed
        since the submission. Returns the raw observations."""
        self.batches += 1
        log_dir = self.log_root / f"batch-{self.batches}"
        log_dir.mkdir(parents=True)
        deadline = time.monotonic() + timeout_s
        submitted = time.time()
        t0 = time.perf_counter()
        refs = [self.sleeper.remote(k, seconds, str(log_dir)) for k in range(tasks)]
        out: dict[str, Any] = {"tasks": tasks, "seconds": seconds, "submitted": submitted,
                               "victim": None, "victim_node_ids": [], "dead_seen": None,
                               "alive_seen": None, "stuck": None, "timed_out": False}
        watched: set[str] = set()
        if fault:
            while True:
                starts = read_starts(str(log_dir))
                on = {host for runs in starts.values() for host, _ in runs}
                if set(self.hosts) <= on or (on and len(starts) == tasks):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the batch did not start within {timeout_s:.0f} s")
                time.sleep(0.005)
            out["victim"] = victim = self.hosts[0] if self.hosts[0] in on else self.hosts[1]
            watched = self.alive().get(victim, set())
            out["victim_node_ids"] = sorted(watched)
            _say("RUNNING", {"victim": victim})
            stuck_at = time.monotonic() + budget_s
        pending = list(refs)
        while pending or (watched and out["dead_seen"] is None):
            now = time.monotonic()
            if now > deadline:
                out["timed_out"] = True
                break
            if fault and out["stuck"] is None and now > stuck_at:
                out["stuck"] = time.time()
                _say("STUCK", {"pending": len(pending), "dead": out["dead_seen"] is not None})
            if watched and out["dead_seen"] is None:
                asked = time.time()
                if watched & self.alive().get(out["victim"], set()):
                    out["alive_seen"] = asked
                else:
                    out["dead_seen"] = time.time()
            if pending:
                _, pending = self.mod.wait(pending, num_returns=len(pending), timeout=POLL_S)
                if not pending:
                    out["wall_s"] = time.perf_counter() - t0
            else:
                time.sleep(POLL_S)
        results: list[dict[str, Any] | None] = []
        errors: list[str] = []
        for i, ref in enumerate(refs):
            ready, _ = self.mod.wait([ref], timeout=0)
            if not ready:
                results.append(None)
                continue
            try:
                results.append(self.mod.get(ref))
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                results.append(None)
                errors.append(f"task {i}: {type(exc).__name__}: {str(exc)[:300]}")
        out.update(results=results, errors=errors,
                   starts={str(k): v for k, v in sorted(read_starts(str(log_dir)).items())})
        return out

    def shutdown(self) -> None:
        self.mod.shutdown()


def _say(tag: str, value: Any) -> None:
    print(f"{tag} {json.dumps(value)}", flush=True)


def _driver_main(cfg: dict[str, Any]) -> int:
    """On h0: answer the controller's commands, one line in, one line out, until QUIT or EOF."""
    driver = _Driver(cfg)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "QUIT":
            break
        try:
            args = json.loads(arg) if arg else {}
            if cmd == "READY":
                _say("OK", driver.ready(**args))
            elif cmd == "BATCH":
                _say("DONE", driver.batch(**args))
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as exc:  # noqa: BLE001 - the controller reports it
            _say("ERROR", f"{type(exc).__name__}: {exc}")
    driver.shutdown()
    return 0


# =========================================================================== figures


def check_batch(out: dict[str, Any]) -> list[str]:
    """What is wrong with one batch's results: missing, failed or wrong values."""
    problems = list(out.get("errors", []))
    if out.get("timed_out"):
        problems.append("timed out")
    for k, r in enumerate(out["results"]):
        if r is None:
            if not any(p.startswith(f"task {k}:") for p in problems):
                problems.append(f"task {k}: no result")
        elif r["k"] != k or r["value"] != k * k:
            problems.append(f"task {k}: returned {r['k']}, {r['value']} (expected {k}, {k * k})")
    return problems


def iteration_figures(baseline: dict[str, Any], faulted: dict[str, Any], injected: float,
                      healed: float | None = None) -> dict[str, Any]:
    """One iteration's figures from the two batches' raw observations, the wall time at which
    the fault was injected and, if the host came back before the verdict, when.

    ``ok`` is False, with ``problems``, when a result is missing or wrong, the node was never
    seen dead, or the fault hit no running task. A figure the budget cut short (the driver said
    STUCK) is None and named in ``censored``: it is more than ``bound_s``; what was seen after
    the bound is kept in ``after_bound``."""
    problems = [f"without fault: {p}" for p in check_batch(baseline)]
    problems += [f"with fault: {p}" for p in check_batch(faulted)]
    victim = faulted["victim"]
    lost: list[int] = []
    reruns: list[float] = []
    for key, runs in faulted["starts"].items():
        k = int(key)
        if not any(host == victim and t < injected for host, t in runs):
            continue
        r = faulted["results"][k]
        if r is not None and r["start"] < injected:
            continue  # it had ended on the victim before the fault: nothing lost
        lost.append(k)
        if r is None:
            continue  # already counted by check_batch
        if r["host"] == victim or r["attempt"] < 2:
            problems.append(f"task {k} was running on the victim, yet its result comes from "
                            f"attempt {r['attempt']} on {r['host']}")
        reruns.append(r["start"] - injected)
    if not lost:
        problems.append("the fault hit no running task")
    dead = faulted["dead_seen"]
    if dead is None:
        problems.append("the victim's node was never reported dead")
    walls = baseline.get("wall_s"), faulted.get("wall_s")
    raw = {"detection_s": None if dead is None else dead - injected,
           "recovery_s": min(reruns) if reruns else None,
           "overhead_s": None if None in walls else walls[1] - walls[0]}
    bound = None if faulted.get("stuck") is None else faulted["stuck"] - injected
    censored = [] if bound is None else [
        name for name, v in raw.items() if name == "overhead_s" or v is None or v > bound]
    return {
        "ok": not problems, "problems": problems, "victim": victim, "lost_tasks": sorted(lost),
        **{name: None if name in censored else v for name, v in raw.items()},
        "censored": censored, "bound_s": bound,
        "after_bound": {name: raw[name] for name in censored},
        "rerun_starts_s": sorted(reruns),
        "rerun_after_heal_s": (None if healed is None or not reruns
                               else min(reruns) + injected - healed),
        "baseline_s": walls[0], "fault_s": walls[1],
        "attempts": [None if r is None else r["attempt"] for r in faulted["results"]],
    }


FIGURES = ("detection_s", "recovery_s", "overhead_s", "baseline_s")


def summarize(iterations: list[dict[str, Any]]) -> dict[str, Any]:
    """Best (min) and median of each figure over the iterations that passed. A censored
    figure counts as larger than any measured one; a best or median that is censored is None,
    meaning more than ``bound_s`` (the smallest bound among the censored)."""
    good = [it["figures"] for it in iterations if it["figures"]["ok"]]
    out: dict[str, Any] = {"ok": len(good), "iterations": len(iterations)}
    for name in FIGURES:
        values = [math.inf if name in f["censored"] else f[name] for f in good
                  if name in f["censored"] or f[name] is not None]
        bounds = [f["bound_s"] for f in good if name in f["censored"]]
        if not values:
            out[name] = None
            continue
        best, median = min(values), statistics.median(values)
        out[name] = {"best": None if best == math.inf else best,
                     "median": None if median == math.inf else median,
                     "censored": len(bounds), "bound_s": min(bounds) if bounds else None}
    after = [f["rerun_after_heal_s"] for f in good if f["rerun_after_heal_s"] is not None]
    out["rerun_after_heal_s"] = statistics.median(after) if after else None
    return out


def _cell(s: dict[str, Any] | None) -> str:
    """``best (median)`` of a summarized figure; ``> N`` where the budget of N s ran out."""
    if s is None:
        return "n/a"

    def one(v: float | None) -> str:
        return f"> {s['bound_s']:.0f}" if v is None else f"{v:.2f}"

    return f"{one(s['best'])} ({one(s['median'])})"


def render(result: dict[str, Any]) -> str:
    """The short table: one row per framework and fault, then notes and the verdict."""
    cfg = result["config"]
    lines = [
        (f"node_loss: {cfg['tasks']} tasks of {cfg['task_s']:g} s on 2 nodes of "
         f"{cfg['cpus']} CPUs (h1, h2); the node running them (h1 unless only h2 got some) "
         f"is killed or crashed; {result['repeat']} iterations per fault"),
        (f"machine: {result['machine']['cpus']} CPUs, load average at start "
         f"{result['machine']['load_average_at_start'][0]:.2f}; "
         + ", ".join(f"{k} {v}" for k, v in result["machine"]["versions"].items())),
        ("seconds from the fault, best (median) of the iterations that passed: detection = "
         "until the head reports the node dead (polled every 20 ms); recovery = until a lost "
         "task re-runs on the other node; overhead = the batch's wall time minus the same "
         "batch's without the fault"),
    ]
    header = ["framework", "fault", "ok", "detection", "recovery", "overhead",
              "batch without fault"]
    rows = [header]
    for fw, r in result["frameworks"].items():
        for fault, f in r["faults"].items():
            s = f["summary"]
            rows.append([fw, fault, f"{s['ok']}/{s['iterations']}", _cell(s["detection_s"]),
                         _cell(s["recovery_s"]), _cell(s["overhead_s"]),
                         _cell(s["baseline_s"])])
        if r.get("status") != "ok":
            rows.append([fw, f"{r.get('status')}: {r.get('error', '')}"[:110]])
    widths = [max(len(r[i]) for r in rows if i < len(r) and len(r) > 2)
              for i in range(len(header))]
    for n, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for fw, r in result["frameworks"].items():
        for fault, f in r["faults"].items():
            s = f["summary"]
            if any(s[n] and s[n]["censored"] for n in FIGURES):
                budget = cfg["budget_s"][fw]
                note = (f"  {fw} {fault}: '> {budget:.0f}' = not within the {budget:.0f} s "
                        f"budget, in {max(s[n]['censored'] for n in FIGURES if s[n])} of "
                        f"{s['ok']} iterations")
                if s["rerun_after_heal_s"] is not None:
                    note += (f"; the crashed host was then brought back (heal), and the lost "
                             f"tasks re-ran {s['rerun_after_heal_s']:.1f} s after that (median)")
                lines.append(note)
            for n, it in enumerate(f["iterations"]):
                if not it["figures"]["ok"]:
                    lines.append(f"  {fw} {fault} iteration {n + 1} failed: "
                                 f"{'; '.join(it['figures']['problems'])[:200]}")
    tm = result["frameworks"].get("taskmesh", {})
    verdicts, met = [], True
    for fault, f in tm.get("faults", {}).items():
        det, rec = f["summary"]["detection_s"], f["summary"]["recovery_s"]
        if not det or not rec or det["median"] is None or rec["median"] is None:
            verdicts.append(f"{fault}: no figures")
            met = False
            continue
        met = met and max(det["median"], rec["median"]) <= TARGET_S
        verdicts.append(f"{fault}: detected in {det['median']:.2f} s, re-running in "
                        f"{rec['median']:.2f} s")
    if verdicts:
        lines.append(f"  target (taskmesh): node loss detected and its tasks re-running within "
                     f"{TARGET_S:g} s (medians): {'met' if met else 'NOT met'} "
                     f"({'; '.join(verdicts)})")
    lines.append(f"  wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


# =========================================================================== the controller


class _Session:
    """The driver process on h0, spoken to in lines: a command in, one reply out (a reader
    thread queues the replies, so every wait has a deadline)."""

    def __init__(self, hosts: _Hosts, cfg: dict[str, Any], env: dict[str, str]) -> None:
        self.hosts = hosts
        self.name = f"driver-{cfg['framework']}"
        self.proc = hosts.spawn(0, self.name, sys.executable, "-m",
                                "benchmarks.node_loss_netcluster", "--driver", json.dumps(cfg),
                                env=env, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.split(" ", 1)[0] in ("OK", "RUNNING", "STUCK", "DONE", "ERROR"):
                self.replies.put(line)
        self.replies.put(None)

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {json.dumps(args or {})}\n".encode())
        self.proc.stdin.flush()

    def expect(self, tag: str, timeout_s: float) -> Any:
        return self.expect_one((tag,), timeout_s)[1]

    def expect_one(self, tags: tuple[str, ...], timeout_s: float) -> tuple[str, Any]:
        """The driver's next reply, which must carry one of ``tags``: (tag, value)."""
        try:
            line = self.replies.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"the driver did not answer {'/'.join(tags)} within "
                               f"{timeout_s:.0f} s") from None
        if line is None:
            self.proc.wait(timeout=10)
            log = (self.hosts.log_dir / f"{self.name}.log").read_text(errors="replace").strip()
            raise RuntimeError(f"the driver exited with {self.proc.returncode}: "
                               f"{log.splitlines()[-1] if log else '(no output)'}")
        got, _, value = line.partition(" ")
        if got == "ERROR":
            raise RuntimeError(f"the driver failed: {json.loads(value)}")
        if got not in tags:
            raise RuntimeError(f"expected {'/'.join(tags)} from the driver, got {line[:200]!r}")
        return got, json.loads(value)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("QUIT")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass  # _Hosts.close terminates it


class _Cluster:
    """One framework's processes on the hosts: start, start a lost node again, stop."""

    def __init__(self, framework: str, hosts: _Hosts, run_dir: Path) -> None:
        self.framework, self.hosts, self.run_dir = framework, hosts, run_dir
        self.address = ""

    def start(self) -> str:
        if self.framework == "taskmesh":
            # env {}: taskmesh's default heartbeats, which is what this measures
            self.address = _start_taskmesh(self.hosts, self.run_dir, NODES, env={},
                                           object_store_memory=OBJECT_STORE_MEMORY)
        else:
            self.address = _start_ray(self.hosts, self.run_dir, NODES, OBJECT_STORE_MEMORY)
        return self.address

    def restart_node(self, i: int) -> None:
        cpus, res = next((c, r) for n, c, r in NODES if n == i)
        if self.framework == "taskmesh":
            _start_taskmesh_node(self.hosts, self.run_dir, i, self.address, cpus, res, {},
                                 OBJECT_STORE_MEMORY)
        else:
            _start_ray_node(self.hosts, self.run_dir, i, self.address, cpus, res,
                            OBJECT_STORE_MEMORY)

    def stop(self) -> None:
        order = (*(n for n, _, _ in reversed(NODES)), 0)
        if self.framework == "taskmesh":
            _stop_taskmesh(self.hosts, self.run_dir, order)
        else:
            _stop_ray(self.hosts, self.run_dir, order)


def _iteration(session: _Session, cluster: _Cluster, fault: str, tasks: int, task_s: float,
               budget_s: float) -> dict[str, Any]:
    """One batch without a fault, the same batch with ``fault`` on the host running a task
    (h1 unless only h2 got one), then that host restored; the raw observations and figures.
    A crashed host stays down until the verdict, or until ``budget_s`` has passed without
    one (the driver says STUCK): then it comes back, as a rebooted machine would, and the
    driver waits up to ``AFTER_BUDGET_S`` more for the results."""
    hosts = cluster.hosts
    batch = {"tasks": tasks, "seconds": task_s}
    work_s = 2 * task_s * tasks
    session.send("BATCH", {**batch, "fault": False, "timeout_s": 60 + work_s})
    baseline = session.expect("DONE", 120 + work_s)
    session.send("BATCH", {**batch, "fault": True, "budget_s": budget_s,
                           "timeout_s": budget_s + AFTER_BUDGET_S + work_s})
    victim = session.expect("RUNNING", 120)["victim"]
    i = hosts.addrs.index(victim)
    healed = None
    injected = time.time()
    try:
        hosts.nc(fault, hosts.names[i])
        command_s = time.time() - injected
        tag, faulted = session.expect_one(("STUCK", "DONE"),
                                          budget_s + AFTER_BUDGET_S + work_s + 60)
        if tag == "STUCK":
            if fault == "crash":
                hosts.nc("heal", hosts.names[i])
                healed = time.time()
            faulted = session.expect("DONE", AFTER_BUDGET_S + work_s + 60)
    finally:  # restore the host whatever happened, so the next iteration has two nodes
        if fault == "crash" and healed is None:
            hosts.nc("heal", hosts.names[i])
    restart0 = time.monotonic()
    cluster.restart_node(i)
    session.send("READY", {"timeout_s": 120})
    ready = session.expect("OK", 180)
    return {"fault": fault, "injected": injected, "inject_command_s": command_s,
            "healed_early": healed, "restore_s": time.monotonic() - restart0, "ready": ready,
            "baseline": baseline, "faulted": faulted,
            "figures": iteration_figures(baseline, faulted, injected, healed)}


def run(repeat: int = 5, frameworks: tuple[str, ...] = ("taskmesh",),
        faults: tuple[str, ...] = FAULTS, tasks: int = TASKS, task_s: float = TASK_S,
        budget_s: float | None = None, progress: Callable[[str], None] | None = None,
        keep_logs: bool = False) -> dict[str, Any]:
    """Bring up the hosts, run each framework's iterations, tear everything down; the figures.
    Raises :class:`Unavailable` when the machine cannot run it."""
    check_available()
    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="taskmesh-nodeloss-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    cpus = NODES[0][1]
    budgets = {fw: budget_s or BUDGET_S[fw] for fw in frameworks}
    result: dict[str, Any] = {
        "repeat": repeat, "machine": _machine(frameworks),
        "config": {"tasks": tasks, "task_s": task_s, "cpus": cpus, "faults": list(faults),
                   "max_retries": MAX_RETRIES, "poll_s": POLL_S,
                   "budget_s": budgets},
        "frameworks": {}}
    hosts = _Hosts(3, log_dir, tag="nl", label="node_loss_netcluster")
    failed = False
    try:
        hosts.start()
        result["hosts"] = {"head_and_driver": hosts.addrs[0], "victim": hosts.addrs[VICTIM],
                           "survivor": hosts.addrs[SURVIVOR]}
        say(f"netcluster {hosts.prefix}: h0 {hosts.addrs[0]} (head, driver), h1 "
            f"{hosts.addrs[1]} (node, fails), h2 {hosts.addrs[2]} (node)")
        for fw in frameworks:
            entry: dict[str, Any] = {"faults": {f: {"iterations": []} for f in faults}}
            result["frameworks"][fw] = entry
            t0 = time.monotonic()
            cluster = _Cluster(fw, hosts, tmp)
            session: _Session | None = None
            try:
                address = cluster.start()
                cfg = {"framework": fw, "address": address, "driver_ip": hosts.addrs[0],
                       "hosts": [hosts.addrs[VICTIM], hosts.addrs[SURVIVOR]], "cpus": cpus,
                       "log_root": str(tmp / f"attempts-{fw}")}
                session = _Session(hosts, cfg, _ray_env(tmp, 0) if fw == "ray" else {})
                session.send("READY", {"timeout_s": 120})
                session.expect("OK", 180)
                say(f"[{fw}] cluster up and warm in {time.monotonic() - t0:.1f} s")
                for n in range(repeat):
                    for fault in faults:
                        it = _iteration(session, cluster, fault, tasks, task_s, budgets[fw])
                        entry["faults"][fault]["iterations"].append(it)
                        say(f"[{fw}] {fault} {n + 1}/{repeat}: {_brief(it['figures'])}")
                for f in entry["faults"].values():
                    f["summary"] = summarize(f["iterations"])
                entry["status"] = "ok"
                if not all(f["summary"]["ok"] == repeat for f in entry["faults"].values()):
                    failed = True
                    entry["status"] = "failed"
                    entry["error"] = "some iterations failed (see below)"
            except Exception as exc:  # noqa: BLE001 - reported in the table, the rest still runs
                failed = True
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                for f in entry["faults"].values():
                    f["summary"] = summarize(f["iterations"])
                say(f"[{fw}] failed: {entry['error']}")
            finally:
                if session is not None:
                    session.close()
                cluster.stop()
                entry["wall_s"] = time.monotonic() - t0
    finally:
        _tear_down(hosts, tmp, log_dir, failed or keep_logs, say, result)
    result["wall_s"] = time.monotonic() - t_start
    return result


def _machine(frameworks: tuple[str, ...]) -> dict[str, Any]:
    """What the figures depend on besides the code: CPUs, load, versions."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in frameworks:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
            "python": sys.version.split()[0], "versions": versions}


def _brief(fig: dict[str, Any]) -> str:
    """One iteration's figures in a line of progress."""
    def v(name: str) -> str:
        if name in fig["censored"]:
            return f"> {fig['bound_s']:.0f} s"
        return "n/a" if fig[name] is None else f"{fig[name]:.2f} s"

    text = (f"detection {v('detection_s')}, recovery {v('recovery_s')}, overhead "
            f"{v('overhead_s')} (victim {fig['victim']}, lost tasks {fig['lost_tasks']})")
    if fig["rerun_after_heal_s"] is not None:
        text += f"; re-ran {fig['rerun_after_heal_s']:.2f} s after the host came back"
    return text if fig["ok"] else f"FAILED: {'; '.join(fig['problems'])[:300]} -- {text}"


def _list(value: str, allowed: tuple[str, ...], what: str,
          p: argparse.ArgumentParser) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if bad := [v for v in items if v not in allowed]:
        p.error(f"unknown {what}: {', '.join(bad)} (choose from {','.join(allowed)})")
    if not items:
        p.error(f"no {what} given")
    return items


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:
        return _driver_main(json.loads(argv[1]))
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.node_loss_netcluster",
        description="Node-loss recovery time: a netcluster host killed or crashed while it runs "
                    "tasks (needs root and ../shared/netcluster).")
    p.add_argument("--repeat", type=int, default=5, help="iterations per fault kind")
    p.add_argument("--frameworks", default="taskmesh",
                   help=f"comma-separated, from {','.join(FRAMEWORKS)} (default: %(default)s)")
    p.add_argument("--fault", default=",".join(FAULTS),
                   help=f"comma-separated, from {','.join(FAULTS)} (default: %(default)s)")
    p.add_argument("--tasks", type=int, default=TASKS,
                   help="tasks per batch (default %(default)s: as many as h2 can take at once)")
    p.add_argument("--task-seconds", type=float, default=TASK_S,
                   help="each task's sleep (default %(default)s)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="per iteration, from the fault to the verdict; later figures show as "
                        "'> budget' (default: taskmesh 30, ray 120)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    args = p.parse_args(argv)
    frameworks = _list(args.frameworks, FRAMEWORKS, "framework", p)
    faults = _list(args.fault, FAULTS, "fault", p)
    if args.repeat < 1 or args.tasks < 1 or args.task_seconds <= 0 or (
            args.budget is not None and args.budget <= 0):
        p.error("--repeat and --tasks must be >= 1, --task-seconds and --budget positive")
    return run_main("node_loss_netcluster", lambda progress: run(
        args.repeat, frameworks, faults, args.tasks, args.task_seconds, args.budget,
        progress=progress, keep_logs=args.keep_logs), render, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""The chaos controller: brings up a taskmesh cluster on netcluster hosts, runs the workload's
driver, executes the seeded fault schedule against the worker hosts while it runs (playing the
operator: it restarts node agents that died), then tears everything down and looks for leaks.

    tm-h0: head (--num-cpus 0), driver (workload.py)   tm-h1..h3: node agents, 2 CPUs each
           ▲  READY / WAVE / SUMMARY lines                  ▲ kill, crash, cut/heal,
           │                                                │ SIGKILL worker or agent,
    run_chaos() ── FaultRunner.step() every 50 ms ──────────┘ agent restarts

The hosts, their faults and their cleanup are tests/support/netcluster.py's ``Hosts``; what is
chaos here is the decision of which fault, when, and the repairs. Everything a failure needs
is kept: the executed events with their times (``RunReport.events``), the driver's summary, and
each host's run directory (``run<i>/logs``) under ``workdir``. Whatever a run leaves, the
hosts' ``reset()`` removes after the leak check has seen it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..support.netcluster import Hosts
from ..support.procs import cmdline
from ..support.wait import until
from . import faults as F

WORKLOAD = Path(__file__).resolve().with_name("workload.py")
MB = 1 << 20
SHM = "/dev/shm"
ARENA = re.compile(r"^taskmesh-arena-(\d+)-")


@dataclass
class Settings:
    seed: int = 1
    tasks: int = 3000
    soak_s: float = 0.0
    deadline_s: float = 180.0  # the driver gives up (and reports a hang) after this
    port: int = 7400
    num_cpus: int = 2
    store_bytes: int = 96 * MB  # small enough that nodes spill to disk under this workload
    gap: tuple[float, float] = (1.0, 3.0)

    @classmethod
    def from_env(cls) -> Settings:
        s = cls()
        s.seed = int(os.environ.get("TASKMESH_CHAOS_SEED", str(s.seed)))
        s.soak_s = float(os.environ.get("TASKMESH_CHAOS_SOAK") or 0)
        s.tasks = int(os.environ.get("TASKMESH_CHAOS_TASKS", str(s.tasks)))
        store_mb = os.environ.get("TASKMESH_CHAOS_STORE_MB", str(s.store_bytes // MB))
        s.store_bytes = int(store_mb) * MB
        if s.soak_s:
            s.deadline_s = s.soak_s + 180
        s.deadline_s = float(os.environ.get("TASKMESH_CHAOS_DEADLINE", str(s.deadline_s)))
        return s


#: the taskmesh command line, run on a host
_CLI = (sys.executable, "-m", "taskmesh._cli")


class Cluster:
    """A head on host 0 (no node: --num-cpus 0) and one node agent on each of hosts 1..n-1,
    started with the CLI as an operator would, each host with its own run directory."""

    def __init__(self, hosts: Hosts, workdir: Path, settings: Settings) -> None:
        self.hosts = hosts
        self.workdir = workdir
        self.s = settings
        self.spill_dir = workdir / "spill"
        self.head_ip = hosts.addr(0)
        self.address = f"{self.head_ip}:{settings.port}"
        self.agent_pids: set[int] = set()  # every node agent started, for the leak check
        self.drivers: list[subprocess.Popen] = []  # from driver(); killed by stop()

    def run_dir(self, i: int) -> Path:
        return self.workdir / f"run{i}"

    def _env(self) -> dict[str, str]:
        return {"TASKMESH_SPILL_DIR": str(self.spill_dir)}

    def _taskmesh(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The ``taskmesh`` command on host i, waited for."""
        return self.hosts.taskmesh(i, *args, run_dir=str(self.run_dir(i)), env=self._env(),
                                   timeout=timeout)

    def _spawn(self, i: int, *args: str, **kw: Any) -> subprocess.Popen:
        """The ``taskmesh`` command on host i, started (the hosts' reset stops it)."""
        env = {**self._env(), "TASKMESH_RUN_DIR": str(self.run_dir(i))}
        return self.hosts.popen(i, *_CLI, *args, env=env, **kw)

    def start_head(self) -> None:
        r = self._taskmesh(0, "start", "--head", "--port", str(self.s.port), "--num-cpus", "0",
                           "--node-ip", self.head_ip)
        if r.returncode != 0:
            raise RuntimeError(f"the head did not start on h0: {r.stderr.strip()}")

    def spawn_node(self, i: int, resources: str = "{}") -> subprocess.Popen:
        """``taskmesh start --worker`` on host i; it exits once the agent joined the head."""
        return self._spawn(i, "start", "--worker", "--address", self.address,
                           "--num-cpus", str(self.s.num_cpus), "--resources", resources,
                           "--object-store-memory", str(self.s.store_bytes),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_node(self, i: int, resources: str = "{}") -> None:
        p = self.spawn_node(i, resources)
        p.wait(timeout=60)
        ok, out = self.node_started(p)
        if not ok:
            raise RuntimeError(f"the node agent did not start on h{i}: {out}")

    def node_started(self, proc: subprocess.Popen) -> tuple[bool, str]:
        """After ``spawn_node``'s process ended: whether the agent joined, and its output. The
        agent it names is noted here (the leak check) and by the hosts (their reset)."""
        out, err = proc.communicate()
        self.agent_pids.update(self.hosts.record_agents(out, self._env()))
        return proc.returncode == 0, (out + err).strip()

    def start(self) -> None:
        self.start_head()
        procs = {i: self.spawn_node(i) for i in range(1, len(self.hosts.names))}
        for i, p in procs.items():
            p.wait(timeout=60)
            ok, out = self.node_started(p)
            if not ok:
                raise RuntimeError(f"the node agent did not start on h{i}: {out}")

    def driver(self, i: int, script: Path, *args: str) -> subprocess.Popen:
        """A driver script on host i, stdin and stdout piped (text)."""
        proc = self.hosts.popen(i, sys.executable, str(script), *args,
                                env={"PYTHONUNBUFFERED": "1"}, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.drivers.append(proc)
        return proc

    def status(self) -> str:
        r = self._taskmesh(0, "status", "--address", self.address, timeout=30)
        return (r.stdout + r.stderr).strip()

    def live_nodes(self) -> set[str]:
        """Addresses of the nodes the head takes as alive."""
        return set(re.findall(r"^\s+\S+\s+(\S+)\s+alive\b", self.status(), re.MULTILINE))

    def stop(self) -> list[str]:
        """``taskmesh stop`` on every host (nodes first); return what is still running after
        10 s (then killed, so that the next run starts clean)."""
        for p in self.drivers:
            if p.poll() is None:
                p.kill()
                p.wait()
        nodes = [self._spawn(i, "stop", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(1, len(self.hosts.names))]
        for p in nodes:
            p.wait(timeout=60)
        self._taskmesh(0, "stop")
        left: list[str] = []

        def none_left() -> bool:
            left[:] = [f"h{i} pid {pid}: {cmdline(pid)[:160]}"
                       for i in range(len(self.hosts.names)) for pid in self.hosts.pids(i)]
            return not left

        until(none_left, timeout=10, interval=0.1, check=False)
        return left

    def leaks(self) -> list[str]:
        """Shared-memory arenas of our agents, spill directories, and processes that carry
        one of our run directories, left after ``stop``."""
        out = []
        for name in sorted(os.listdir(SHM)):
            m = ARENA.match(name)
            if m and int(m.group(1)) in self.agent_pids:
                out.append(f"shared-memory arena {SHM}/{name} (agent pid {m.group(1)})")
        if self.spill_dir.exists():
            out += [f"spill directory {self.spill_dir / n}"
                    for n in sorted(os.listdir(self.spill_dir))]
        for p in psutil.process_iter(["pid"]):
            try:
                run_dir = p.environ().get("TASKMESH_RUN_DIR", "")
            except psutil.Error:
                continue
            if run_dir.startswith(str(self.workdir)) and p.pid != os.getpid():
                out.append(f"process {p.pid} ({cmdline(p.pid)[:160]}) with "
                           f"TASKMESH_RUN_DIR={run_dir}")
        return out

    def logs(self) -> list[Path]:
        # (each daemon logs into its node's directory: logs/<node id>/agent.log,
        # logs/head-<port>/head.log, rotated as *.log.1 ...)
        return sorted(self.workdir.glob("run*/logs/*/*.log*"))


#: `taskmesh start --worker` is tried this often, this far apart, before the run fails
_RESTART_TRIES = 40
_RESTART_PAUSE_S = 0.5


@dataclass
class _HostState:
    down: bool = False  # a fault took its node away and its repair is not finished
    free_at: float = 0.0  # no new fault before this (relative time)
    repairs: list = field(default_factory=list)  # [(due, action)], in order
    restart: subprocess.Popen | None = None
    restart_tries: int = 0
    fault: int = -1  # index of the fault in progress


class FaultRunner:
    """Executes a fault schedule, step by step, keeping the planner's two promises at run
    time: a fault waits for its host to be repaired and settled, and for another host to come
    back if two are down. Faults run in planned order; each one's delay is recorded."""

    def __init__(self, cluster: Cluster, faults: list[F.Fault]) -> None:
        self.cluster = cluster
        self.faults = faults
        self.next = 0
        self.hosts = {h: _HostState() for h in range(1, len(cluster.hosts.names))}
        self.events: list[dict] = []  # what was done, when
        self.done: list[F.Fault] = []  # faults injected
        self.errors: list[str] = []  # what the controller itself could not do
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _log(self, fault: int, what: str, **extra) -> None:
        self.events.append({"t": round(self.now(), 3), "time": time.time(), "fault": fault,
                            "what": what, **extra})

    def _nc(self, fault: int, verb: str, host: int) -> None:
        """netcluster's fault ``verb`` (kill, crash, cut, heal) on ``host``, logged."""
        getattr(self.cluster.hosts, verb)(host)
        self._log(fault, f"{verb} h{host}")

    def _sigkill(self, fault: int, host: int, needle: str, pick: float) -> bool:
        pids = self.cluster.hosts.processes(host, needle)
        if not pids:
            self._log(fault, f"no {needle} process on h{host} to kill")
            return False
        pid = pids[min(len(pids) - 1, int(pick * len(pids)))]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self._log(fault, f"{needle} pid {pid} on h{host} was already gone")
            return False
        self._log(fault, f"SIGKILL {needle} pid {pid} on h{host}")
        return True

    def _restart(self, fault: int, host: int) -> None:
        st = self.hosts[host]
        st.restart = self.cluster.spawn_node(host)
        st.restart_tries += 1
        self._log(fault, f"start the agent on h{host}", attempt=st.restart_tries)

    def _inject(self, i: int, f: F.Fault) -> None:
        st = self.hosts[f.host]
        planned = f.at
        self._log(i, f"fault {i}: {f.describe()}", planned=round(planned, 3),
                  late_s=round(self.now() - planned, 3))
        if f.kind == "worker":
            self._sigkill(i, f.host, "taskmesh._worker", f.pick)
            st.free_at = self.now() + 0.5
            self.done.append(f)
            return
        st.down, st.fault, st.restart_tries = True, i, 0
        now = self.now()
        if f.kind == "kill":
            self._nc(i, "kill", f.host)
            st.repairs = [(now + f.down_s, "restart")]
        elif f.kind == "agent":
            if not self._sigkill(i, f.host, "taskmesh._node", 0.0):
                st.down = False
                return
            st.repairs = [(now + f.down_s, "restart")]
        elif f.kind == "crash":
            self._nc(i, "crash", f.host)
            st.repairs = [(now + f.down_s, "heal"), (now + f.down_s + f.restart_s, "restart")]
        elif f.kind == "cut":
            self._nc(i, "cut", f.host)
            st.repairs = [(now + f.down_s, "heal")]
        self.done.append(f)

    def _repair(self, host: int) -> None:
        st = self.hosts[host]
        if st.restart is not None:
            if st.restart.poll() is None:
                return
            ok, out = self.cluster.node_started(st.restart)
            st.restart = None
            if ok:
                self._log(st.fault, f"the agent on h{host} joined", output=out.splitlines()[0])
                self._settle(host)
            elif st.restart_tries < _RESTART_TRIES:
                # e.g. `taskmesh start` still sees the killed agent: an unreaped zombie
                self._log(st.fault, f"the agent on h{host} did not start; again in "
                          f"{_RESTART_PAUSE_S} s", output=out)
                st.repairs.insert(0, (self.now() + _RESTART_PAUSE_S, "restart"))
            else:
                self.errors.append(f"the agent on h{host} did not start after "
                                   f"{st.restart_tries} tries: {out}")
                self._settle(host)
            return
        while st.repairs and st.repairs[0][0] <= self.now():
            _, action = st.repairs.pop(0)
            if action == "heal":
                self._nc(st.fault, "heal", host)
                if not st.repairs:
                    self._settle(host)
            else:
                self._restart(st.fault, host)
                return

    def _settle(self, host: int) -> None:
        st = self.hosts[host]
        st.down = False
        st.free_at = self.now() + F.SETTLE_S

    def step(self) -> None:
        for h in self.hosts:
            self._repair(h)
        if self.next >= len(self.faults):
            return
        f = self.faults[self.next]
        st = self.hosts[f.host]
        if f.at > self.now() or st.down or st.free_at > self.now():
            return
        if f.kind in F.DOWN_KINDS and sum(s.down for s in self.hosts.values()) >= 2:
            return
        self._inject(self.next, f)
        self.next += 1

    def finish(self, timeout: float = 60) -> None:
        """Repair everything now (heal, restart agents) and wait for the restarts."""
        self._log(-1, "the workload ended: repairing every host")
        for st in self.hosts.values():
            st.repairs = [(min(due, self.now()), action) for due, action in st.repairs]

        def repaired() -> bool:
            for h in self.hosts:
                self._repair(h)
            return not any(s.down or s.repairs or s.restart for s in self.hosts.values())

        if not until(repaired, timeout, check=False):
            self.errors.append("hosts still not repaired after the workload: " + ", ".join(
                f"h{h}" for h, s in self.hosts.items() if s.down))

    def fault_before(self, wall: float) -> dict | None:
        """The last fault injected before wall-clock time ``wall``."""
        before = [e for e in self.events if e["what"].startswith("fault ") and e["time"] <= wall]
        return before[-1] if before else None


@dataclass
class RunReport:
    settings: Settings
    workdir: Path
    address: str = ""
    summary: dict | None = None
    driver_rc: int | None = None
    driver_stderr: str = ""
    driver_lines: list = field(default_factory=list)
    events: list = field(default_factory=list)
    faults_planned: int = 0
    faults_by_kind: dict = field(default_factory=dict)
    controller_errors: list = field(default_factory=list)
    hung_driver: bool = False
    recovered: bool = True
    status_after: str = ""
    left_running: list = field(default_factory=list)
    leaks: list = field(default_factory=list)
    wall_s: float = 0.0
    setup_s: float = 0.0
    teardown_s: float = 0.0
    runner: FaultRunner | None = None
    logs: list = field(default_factory=list)

    def figures(self) -> dict:
        s = self.summary or {}
        return {"seed": self.settings.seed, "tasks": s.get("tasks"), "waves": s.get("waves"),
                "objects_checked": s.get("objects_checked"),
                "big_objects_checked": s.get("big_objects_checked"),
                "results_lost": len(s.get("errors", [])) if s else None,
                "mismatches": len(s.get("mismatches", [])) if s else None,
                "faults": sum(self.faults_by_kind.values()), "faults_by_kind": self.faults_by_kind,
                "workload_s": s.get("wall_s"), "total_s": round(self.wall_s, 1),
                "setup_s": round(self.setup_s, 1), "teardown_s": round(self.teardown_s, 1),
                "slowest_get_s": max((g["took_s"] for g in s.get("slow_gets", [])), default=None),
                "hung": bool(s.get("hung")) or self.hung_driver, "leaks": len(self.leaks)}

    def save(self) -> Path:
        path = self.workdir / "chaos-report.json"
        path.write_text(json.dumps({
            "figures": self.figures(), "summary": self.summary, "events": self.events,
            "controller_errors": self.controller_errors, "leaks": self.leaks,
            "left_running": self.left_running, "status_after": self.status_after,
            "driver_lines": [s for s in self.driver_lines if not s.startswith("SUMMARY")],
            "driver_stderr": self.driver_stderr[-5000:]}, indent=1, default=str))
        return path

    def explain(self, wall: float | None = None, tail: int = 25) -> str:
        """Everything needed to understand a failure: the fault before it, the schedule as
        executed, and where the logs are (with their tails)."""
        lines = [(f"seed {self.settings.seed} (reproduce: TASKMESH_CHAOS_SEED="
                  f"{self.settings.seed} pytest tests/chaos/test_chaos.py); report: "
                  f"{self.workdir / 'chaos-report.json'}"),
                 f"figures: {json.dumps(self.figures())}"]
        if wall is not None and self.runner is not None:
            before = self.runner.fault_before(wall)
            lines.append("the last fault before it: " + (json.dumps(before) if before else "none"))
        lines.append("events (t = seconds after the workload started):")
        lines += [f"  {e['t']:8.2f}  {e['what']}" for e in self.events]
        if self.controller_errors:
            lines.append("controller errors: " + "; ".join(self.controller_errors))
        if self.driver_stderr.strip():
            lines.append("driver stderr (tail):")
            lines += ["  " + s for s in self.driver_stderr.strip().splitlines()[-tail:]]
        lines.append(f"logs: {self.workdir}/run<i>/logs/")
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines()
            notable = [s for s in text if re.search(r"ERROR|Traceback|CRITICAL", s)]
            lines.append(f"--- {path} ({len(text)} lines; {len(notable)} ERROR/Traceback lines)")
            lines += ["  " + s for s in notable[-8:]]
            lines += ["  " + s for s in text[-(tail if "head" in path.name else 6):]]
        return "\n".join(lines)


#: every run of this process, for the end-of-session summary (conftest.py)
REPORTS: list[RunReport] = []


def run_chaos(hosts: Hosts, workdir: Path, settings: Settings) -> RunReport:
    """One chaos run, from an empty set of hosts back to an empty set of hosts."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = RunReport(settings, workdir)
    REPORTS.append(report)
    t_begin = time.monotonic()
    cluster = Cluster(hosts, workdir, settings)
    report.address = cluster.address
    try:
        cluster.start()
        with open(workdir / "driver.stderr", "w+") as stderr:
            _drive(cluster, settings, report, stderr, t_begin)
        # every host repaired: each must have a live node again (fenced ones re-joined)
        want = {hosts.addr(i) for i in range(1, len(hosts.names))}
        report.recovered = until(lambda: cluster.live_nodes() == want, timeout=30, interval=0.5,
                                 check=False)
        report.status_after = cluster.status()
    finally:
        t_down = time.monotonic()
        try:
            report.left_running = cluster.stop()
            if report.left_running:
                hosts.kill_everything()
            report.leaks = cluster.leaks()  # what taskmesh left: seen before reset() removes it
        finally:
            hosts.reset()
            report.logs = cluster.logs()
            report.teardown_s = time.monotonic() - t_down
            report.wall_s = time.monotonic() - t_begin
            report.save()
    return report


def _drive(cluster: Cluster, settings: Settings, report: RunReport, stderr, t_begin: float) -> None:
    """Run the workload's driver on h0 and the fault schedule beside it, until the driver
    ends (or overruns its deadline by 30 s); then repair every host."""
    hosts = cluster.hosts
    driver = hosts.popen(
        0, sys.executable, str(WORKLOAD), cluster.address, "--seed", str(settings.seed),
        "--tasks", str(settings.tasks), "--soak", str(settings.soak_s),
        "--deadline", str(settings.deadline_s), "--nodes", str(len(hosts.names) - 1),
        env={"PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=stderr, text=True)
    cluster.drivers.append(driver)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_read_lines, args=(driver.stdout, lines), daemon=True)
    reader.start()

    def ready() -> bool:
        return any(s.startswith("READY") for _, s in lines)

    until(lambda: ready() or driver.poll() is not None, timeout=90, check=False)
    if not ready():
        raise RuntimeError("the driver did not get ready: " + " ".join(s for _, s in lines)
                           + _tail(Path(stderr.name)))
    report.setup_s = time.monotonic() - t_begin
    plan = F.plan(settings.seed, settings.deadline_s, gap=settings.gap)
    report.faults_planned = len(plan)
    runner = report.runner = FaultRunner(cluster, plan)

    def ended() -> bool:
        runner.step()
        return driver.poll() is not None

    if not until(ended, timeout=settings.deadline_s + 30, check=False):
        report.hung_driver = True  # the driver's own deadline did not end it
        driver.kill()
    driver.wait(timeout=30)
    reader.join(timeout=10)
    runner.finish()
    report.driver_rc = driver.returncode
    report.driver_lines = [s for _, s in lines]
    for _, s in lines:
        if s.startswith("SUMMARY "):
            report.summary = json.loads(s.split(" ", 1)[1])
    stderr.seek(0)
    report.driver_stderr = stderr.read()
    report.events = runner.events
    report.faults_by_kind = F.counts(runner.done)
    report.controller_errors = runner.errors


def _read_lines(stream, out: list) -> None:
    for line in stream:
        out.append((time.time(), line.rstrip("\n")))


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""

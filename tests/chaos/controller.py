"""The chaos controller: brings up a taskmesh cluster on netcluster hosts, runs the workload's
driver, executes the seeded fault schedule against the worker hosts while it runs (playing the
operator: it restarts node agents that died), then tears everything down and looks for leaks.

    tm-h0: head (--num-cpus 0), driver (workload.py)   tm-h1..h3: node agents, 2 CPUs each
           ▲  READY / WAVE / SUMMARY lines                  ▲ kill, crash, cut/heal,
           │                                                │ SIGKILL worker or agent,
    run_chaos() ── FaultRunner.step() every 50 ms ──────────┘ agent restarts

Everything a failure needs is kept: the executed events with their times (``RunReport.events``),
the driver's summary, and each host's run directory (``run<i>/logs``) under ``workdir``.
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

import psutil

from . import faults as F

REPO = Path(__file__).resolve().parents[2]
NETCLUSTER = os.environ.get("NETCLUSTER") or str(REPO.parent / "shared" / "netcluster")
WORKLOAD = Path(__file__).resolve().with_name("workload.py")
MB = 1 << 20
SHM = "/dev/shm"
ARENA = re.compile(r"^taskmesh-arena-(\d+)-")


class Hosts:
    """netcluster hosts ``<prefix>-h0`` ... : run commands in them, inject network faults."""

    def __init__(self, prefix: str, n: int) -> None:
        self.env = {**os.environ, "NETCLUSTER_PREFIX": prefix}
        self.names = [f"{prefix}-h{i}" for i in range(n)]

    def nc(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run([NETCLUSTER, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"netcluster {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def addr(self, i: int) -> str:
        return self.nc("addr", self.names[i])

    def cmd(self, i: int, *argv: str) -> list[str]:
        return [NETCLUSTER, "exec", self.names[i], *argv]

    def pids(self, i: int) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True,
                           text=True, timeout=10, check=False)
        return [int(p) for p in r.stdout.split()]

    def processes(self, i: int, needle: str) -> list[int]:
        """Pids in host i whose command line contains ``needle``, sorted."""
        out = []
        for pid in self.pids(i):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and needle in " ".join(p.cmdline()):
                    out.append(pid)
            except psutil.Error:
                pass
        return sorted(out)

    def wipe(self) -> None:
        """Heal every host and kill whatever still runs in them."""
        self.nc("join")
        for h in self.names:
            self.nc("heal", h)
            self.nc("kill", h)


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

    def _env(self, i: int) -> dict[str, str]:
        return {**self.hosts.env, "TASKMESH_RUN_DIR": str(self.run_dir(i)),
                "TASKMESH_SPILL_DIR": str(self.spill_dir)}

    def _cli(self, i: int, *args: str) -> list[str]:
        return self.hosts.cmd(i, sys.executable, "-m", "taskmesh._cli", *args)

    def start_head(self) -> None:
        cmd = self._cli(0, "start", "--head", "--port", str(self.s.port), "--num-cpus", "0",
                        "--node-ip", self.head_ip)
        r = subprocess.run(cmd, env=self._env(0), capture_output=True, text=True, timeout=60,
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"the head did not start on h0: {r.stderr.strip()}")

    def spawn_node(self, i: int, resources: str = "{}") -> subprocess.Popen:
        """``taskmesh start --worker`` on host i; it exits once the agent joined the head."""
        return subprocess.Popen(
            self._cli(i, "start", "--worker", "--address", self.address,
                      "--num-cpus", str(self.s.num_cpus), "--resources", resources,
                      "--object-store-memory", str(self.s.store_bytes)),
            env=self._env(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_node(self, i: int, resources: str = "{}") -> None:
        p = self.spawn_node(i, resources)
        p.wait(timeout=60)
        ok, out = self.node_started(p)
        if not ok:
            raise RuntimeError(f"the node agent did not start on h{i}: {out}")

    def node_started(self, proc: subprocess.Popen) -> tuple[bool, str]:
        """After ``spawn_node``'s process ended: whether the agent joined, and its output."""
        out, err = proc.communicate()
        m = re.search(r"pid (\d+)\) joined", out)
        if m:
            self.agent_pids.add(int(m.group(1)))
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
        proc = subprocess.Popen(self.hosts.cmd(i, sys.executable, str(script), *args),
                                env={**self.hosts.env, "PYTHONUNBUFFERED": "1"},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.drivers.append(proc)
        return proc

    def status(self) -> str:
        r = subprocess.run(self._cli(0, "status", "--address", self.address), env=self._env(0),
                           capture_output=True, text=True, timeout=30, check=False)
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
        nodes = [subprocess.Popen(self._cli(i, "stop"), env=self._env(i),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(1, len(self.hosts.names))]
        for p in nodes:
            p.wait(timeout=60)
        subprocess.run(self._cli(0, "stop"), env=self._env(0), capture_output=True, timeout=60,
                       check=False)
        deadline = time.monotonic() + 10
        left: list[str] = []
        while time.monotonic() < deadline:
            left = [f"h{i} pid {pid}: {_cmdline(pid)}" for i in range(len(self.hosts.names))
                    for pid in self.hosts.pids(i)]
            if not left:
                break
            time.sleep(0.1)
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
                out.append(f"process {p.pid} ({_cmdline(p.pid)}) with TASKMESH_RUN_DIR={run_dir}")
        return out

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("run*/logs/*.log"))


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:160]
    except psutil.Error:
        return "?"


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
        self.cluster.hosts.nc(verb, self.cluster.hosts.names[host])
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
        deadline = time.monotonic() + timeout
        for st in self.hosts.values():
            st.repairs = [(min(due, self.now()), action) for due, action in st.repairs]
        while any(s.down or s.repairs or s.restart for s in self.hosts.values()):
            for h in self.hosts:
                self._repair(h)
            if time.monotonic() > deadline:
                self.errors.append("hosts still not repaired after the workload: " + ", ".join(
                    f"h{h}" for h, s in self.hosts.items() if s.down))
                break
            time.sleep(0.05)

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
        until = time.monotonic() + 30
        while cluster.live_nodes() != want and time.monotonic() < until:
            time.sleep(0.5)
        report.status_after = cluster.status()
        report.recovered = cluster.live_nodes() == want
    finally:
        t_down = time.monotonic()
        try:
            report.left_running = cluster.stop()
        finally:
            if report.left_running:
                hosts.wipe()
            report.leaks = cluster.leaks()
            report.logs = cluster.logs()
            report.teardown_s = time.monotonic() - t_down
            report.wall_s = time.monotonic() - t_begin
            report.save()
    return report


def _drive(cluster: Cluster, settings: Settings, report: RunReport, stderr, t_begin: float) -> None:
    """Run the workload's driver on h0 and the fault schedule beside it, until the driver
    ends (or overruns its deadline by 30 s); then repair every host."""
    hosts = cluster.hosts
    driver = subprocess.Popen(
        hosts.cmd(0, sys.executable, str(WORKLOAD), cluster.address, "--seed", str(settings.seed),
                  "--tasks", str(settings.tasks), "--soak", str(settings.soak_s),
                  "--deadline", str(settings.deadline_s), "--nodes", str(len(hosts.names) - 1)),
        env={**hosts.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=stderr,
        text=True)
    cluster.drivers.append(driver)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_read_lines, args=(driver.stdout, lines), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while not any(s.startswith("READY") for _, s in lines):
        if driver.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the driver did not get ready: " + " ".join(s for _, s in lines)
                               + _tail(Path(stderr.name)))
        time.sleep(0.05)
    report.setup_s = time.monotonic() - t_begin
    plan = F.plan(settings.seed, settings.deadline_s, gap=settings.gap)
    report.faults_planned = len(plan)
    runner = report.runner = FaultRunner(cluster, plan)
    hard_stop = time.monotonic() + settings.deadline_s + 30
    while driver.poll() is None:
        runner.step()
        if time.monotonic() > hard_stop:  # the driver's own deadline did not end it
            report.hung_driver = True
            driver.kill()
            break
        time.sleep(0.05)
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

"""``transfer_100MB``: 100 MB between two netcluster hosts, beside raw TCP copies in the same run.

    h0: head (--num-cpus 0)
    h1: node (1 CPU, store) + this driver: put(100 MB) -> h1's store
    h2: node (1 CPU, {"side": 1}, store)
        get(touch.options(resources={"side": 1}).remote(ref))         <- timed: submit to result
          h2's node pulls the 100 MB from h1's store over TCP into its own store;
          the task reads a[0] and a[-1]
    raw TCP: the driver on h1 -- connect, sendall --> receiver on h2 (recv_into a reused,
             pre-touched 100 MB bytearray) -- 1-byte ack -->          <- timed: connect to ack

Each emulated host is a network namespace with its own address (``../shared/netcluster``), so
every copy goes h1 -> veth -> bridge -> veth -> h2 through the kernel's TCP stack. The hosts
share /dev/shm, so h2's transfer byte counters (from heartbeats, ``nodes()[i]["ObjectStore"]``)
must show every byte arriving over TCP; an object that did not cross the network fails the run.

Before the iterations, the task runs three times on a tiny argument (h2's worker is up and the
function registered). Iteration 0 is the **cold** transfer, into h2's never-written arena pages;
it is reported apart and left out of best and median. Each iteration:

1. ``put`` the array on h1 (untimed), then time ``get(touch.remote(ref))``;
2. untimed checks: the values the task read, an xxh3 of h2's whole copy (a second task on h2),
   and h2's ``store_transfer_raw_bytes_received`` grew by the object's size, exactly once;
3. drop the refs and wait for heartbeats sent after the transfer to show both stores empty (so
   the next pull reuses warm pages);
4. two raw TCP copies of the same bytes: one ``sendall`` of the whole memoryview, and
   ``sendall`` of 512 KiB slices (faster here); the receiver checks an xxh3 of what it got;
5. five runs of the same task on a 16-byte argument: the scheduling overhead, subtracted for the
   "net" figures (what moving the bytes costs).

Interleaving exposes the transfer and the raw copies to the same noise. The ratio compares the
transfer with the faster raw copy of the run (by median). ``--frameworks taskmesh,ray`` also
runs the same driver on a Ray cluster of the same shape on the same hosts.

The taskmesh processes share a cluster secret made for the run (a file in the run's temporary
directory, named by ``$TASKMESH_SECRET_FILE``: root's own ``~/.taskmesh`` is left alone). Its
transfers are encrypted (AES-256-GCM, a cluster's default); ``--encrypt off`` sets
``TASKMESH_ENCRYPT=0`` for every taskmesh process (authenticated, chunks in the clear).

Usage (as root, from the repository root)::

    python -m benchmarks.transfer_netcluster [--repeat N] [--json PATH] [--frameworks taskmesh,ray]
                                             [--encrypt on|off]

Exit status: 0 ok, 1 failed, 2 cannot run here (not root, no netcluster). :func:`run` returns
the figures as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NETCLUSTER = os.environ.get("NETCLUSTER") or str(REPO_ROOT.parent / "shared" / "netcluster")
SIZE = 100_000_000  # bytes: 12.5M float64
OBJECT_STORE_MEMORY = 1 << 30
TASKMESH_PORT = 7300
RAY_PORT = 6379
RAW_PORT = 7399
#: the second raw copy ``sendall``s slices of this size (the transfer's chunk size); on these
#: hosts that was 25-40% faster than one ``sendall`` of the whole 100 MB
RAW_SLICE = 512 << 10
FRAMEWORKS = ("taskmesh", "ray")
#: runs of the tiny-argument task per iteration (scheduling overhead)
OVERHEAD_RUNS = 5
#: the worker nodes of this benchmark: (host index, CPUs, custom resources as JSON)
NODES: tuple[tuple[int, int, str], ...] = ((1, 1, "{}"), (2, 1, '{"side": 1}'))
#: environment of its taskmesh processes: heartbeats faster than the 0.25 s default
TASKMESH_ENV = {"TASKMESH_HEARTBEAT_INTERVAL_S": "0.1"}


class Unavailable(Exception):
    """This machine cannot run the benchmark (not root, no netcluster): exit status 2."""


# =========================================================================== tasks (run on h2)


def touch(a: Any) -> tuple[float, float, int]:
    """Read the array's ends only: the time is the transfer, not a pass over 100 MB."""
    return float(a[0]), float(a[-1]), int(a.nbytes)


def digest(a: Any) -> int:
    """xxh3-64 of the whole array, for the untimed check of h2's copy."""
    import xxhash

    return xxhash.xxh3_64_intdigest(memoryview(a).cast("B"))


# =========================================================================== raw TCP


def _receiver_main(host: str, port: int, size: int) -> int:
    """On h2: accept one connection after another; read ``size`` bytes into one reused,
    pre-touched buffer, ack with one byte, then send the xxh3 of what arrived (untimed)."""
    import xxhash

    buf = bytearray(size)
    buf[:] = b"\1" * size  # fault every page in now, not during the first copy
    whole = memoryview(buf)
    with socket.create_server((host, port), backlog=4) as listener:
        print("READY", flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                view = whole
                while view.nbytes:
                    n = conn.recv_into(view)
                    if not n:
                        break
                    view = view[n:]
                if view.nbytes:  # the sender went away early: not a copy
                    continue
                conn.sendall(b"k")
                conn.sendall(xxhash.xxh3_64_intdigest(whole).to_bytes(8, "little"))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("the raw TCP receiver closed the connection early")
        out += chunk
    return out


def raw_copy(address: tuple[str, int], src: memoryview, expected: int,
             slice_bytes: int | None = None) -> float:
    """Seconds from connect to the receiver's ack of ``src`` in full; checks its xxh3 after.
    ``slice_bytes``: ``sendall`` the data in slices of that size instead of in one call."""
    t0 = time.perf_counter()
    with socket.create_connection(address, timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if slice_bytes:
            for off in range(0, src.nbytes, slice_bytes):
                sock.sendall(src[off:off + slice_bytes])
        else:
            sock.sendall(src)
        if _recv_exact(sock, 1) != b"k":
            raise RuntimeError("the raw TCP receiver sent a bad ack")
        dt = time.perf_counter() - t0
        got = int.from_bytes(_recv_exact(sock, 8), "little")
    if got != expected:
        raise AssertionError("the raw TCP copy differs from the source (xxh3)")
    return dt


# =========================================================================== the driver (on h1)


class _Runtime:
    """What the driver needs from taskmesh or Ray (they share the API; the stats differ)."""

    def __init__(self, framework: str, address: str, h1: str, h2: str) -> None:
        self.framework = framework
        self.h1, self.h2 = h1, h2
        if framework == "taskmesh":
            import taskmesh as mod

            mod.init(address=address)
        else:
            import ray as mod

            mod.init(address=address, _node_ip_address=h1, logging_level="ERROR",
                     log_to_driver=False)
        self.mod = mod
        side = {"resources": {"side": 1}}
        self.touch = mod.remote(touch).options(**side)
        self.digest = mod.remote(digest).options(**side)

    def stores(self) -> dict[str, dict[str, int]] | None:
        """host address -> its store figures from the latest heartbeat (taskmesh only)."""
        if self.framework != "taskmesh":
            return None
        return {n["NodeManagerAddress"]: n.get("ObjectStore") or {}
                for n in self.mod.nodes() if n["Alive"]}

    def wait_nodes(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = {n["NodeManagerAddress"] for n in self.mod.nodes() if n["Alive"]}
            if {self.h1, self.h2} <= alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes on {self.h1} and {self.h2} did not join "
                                   f"(alive: {sorted(alive)})")
            time.sleep(0.1)

    def counters(self) -> tuple[int, int] | None:
        """(bytes h1's store sent, bytes h2's store received) over transfer streams, object
        bytes only, from the latest heartbeats; None for Ray (not reported to a driver)."""
        s = self.stores()
        if s is None:
            return None
        return (s[self.h1].get("store_transfer_raw_bytes_sent", 0),
                s[self.h2].get("store_transfer_raw_bytes_received", 0))

    def wait_freed(self, before: tuple[int, int] | None, size: int,
                   timeout_s: float = 30) -> tuple[float, tuple[int, int] | None]:
        """Wait until heartbeats sent after this iteration's transfer (the counters grew by at
        least ``size``) show both stores empty; (seconds waited, counters then). A heartbeat
        from before the transfer would also show empty stores, hence the counters. Ray reports
        neither to a driver, so there it only waits a fixed second (its frees are async)."""
        t0 = time.monotonic()
        if before is None:
            time.sleep(1.0)
            return time.monotonic() - t0, None
        deadline = t0 + timeout_s
        while True:
            s = self.stores() or {}
            now = self.counters()
            fresh = now is not None and all(n - b >= size for n, b in zip(now, before))
            empty = all(s.get(h, {}).get("store_num_objects", 1) == 0 for h in (self.h1, self.h2))
            if fresh and empty:
                return time.monotonic() - t0, now
            if time.monotonic() > deadline:
                raise TimeoutError(f"no heartbeat showed the transfer done and both stores empty "
                                   f"within {timeout_s:.0f} s: {s}")
            time.sleep(0.02)

    def shutdown(self) -> None:
        self.mod.shutdown()


def _driver_main(cfg: dict[str, Any]) -> int:
    """On h1: the interleaved iterations; prints ``RESULT <json>`` as its last line."""
    import gc

    import numpy as np
    import xxhash

    size, repeat = cfg["size"], cfg["repeat"]
    rt = _Runtime(cfg["framework"], cfg["address"], cfg["h1"], cfg["h2"])
    rt.wait_nodes()
    a = np.random.default_rng(0).random(size // 8)
    expected = xxhash.xxh3_64_intdigest(a)
    ends = (float(a[0]), float(a[-1]), a.nbytes)
    tiny = np.arange(2.0)
    raw_address = (cfg["h2"], cfg["raw_port"])
    src = memoryview(a).cast("B")

    for _ in range(3):  # h2's worker started, the function registered: not part of "cold"
        rt.mod.get(rt.touch.remote(tiny))
    seconds: list[float] = []
    raw: dict[str, list[float]] = {"one_sendall": [], "sliced": []}
    overhead: list[float] = []
    received: list[int] = []
    freed_wait: list[float] = []
    for i in range(repeat + 1):
        gc.collect()
        ref = rt.mod.put(a)
        before = rt.counters()
        t0 = time.perf_counter()
        got = rt.mod.get(rt.touch.remote(ref))
        seconds.append(time.perf_counter() - t0)
        if tuple(got) != ends:
            raise AssertionError(f"iteration {i}: the task on h2 read {got}, expected {ends}")
        if rt.mod.get(rt.digest.remote(ref)) != expected:
            raise AssertionError(f"iteration {i}: h2's copy differs from the array put on h1")
        del ref, got
        waited, after = rt.wait_freed(before, size)
        freed_wait.append(waited)
        if before is not None and after is not None:
            got_bytes = after[1] - before[1]
            received.append(got_bytes)
            if not size <= got_bytes < size + (1 << 20):
                raise AssertionError(
                    f"iteration {i}: h2 received {got_bytes} object bytes over TCP, "
                    f"expected about {size}: the object did not cross the network exactly once")
        raw["one_sendall"].append(raw_copy(raw_address, src, expected))
        raw["sliced"].append(raw_copy(raw_address, src, expected, RAW_SLICE))
        for _ in range(OVERHEAD_RUNS):
            t0 = time.perf_counter()
            got = rt.mod.get(rt.touch.remote(tiny))
            overhead.append(time.perf_counter() - t0)
            if tuple(got) != (0.0, 1.0, 16):
                raise AssertionError(f"the tiny task returned {got}")
    rt.shutdown()
    print("RESULT " + json.dumps({
        "seconds": seconds, "raw_seconds": raw, "overhead_seconds": overhead,
        "h2_raw_bytes_received": received, "freed_wait_s": freed_wait}), flush=True)
    return 0


# =========================================================================== figures


def summarize(size: int, out: dict[str, Any]) -> dict[str, Any]:
    """GB/s (1e9 bytes/s) from the driver's seconds; iteration 0 is the cold one, left out of
    best and median. The ratio compares with the faster raw variant (by median) of this run."""
    secs = out["seconds"]
    warm = secs[1:] or secs
    ovh = statistics.median(out["overhead_seconds"])

    def gbps(s: float) -> float:
        return size / s / 1e9

    def net(s: float) -> float | None:
        return gbps(s - ovh) if s > ovh else None

    raw: dict[str, dict[str, float]] = {}
    for kind, times in out["raw_seconds"].items():
        w = times[1:] or times
        raw[kind] = {"gbps_best": gbps(min(w)), "gbps_median": gbps(statistics.median(w)),
                     "first_gbps": gbps(times[0])}
    ref = max(raw, key=lambda k: raw[k]["gbps_median"])
    best, med = gbps(min(warm)), gbps(statistics.median(warm))
    net_best, net_med = net(min(warm)), net(statistics.median(warm))
    rb, rm = raw[ref]["gbps_best"], raw[ref]["gbps_median"]
    return {
        "gbps_best": best, "gbps_median": med,
        "net_gbps_best": net_best, "net_gbps_median": net_med,
        "raw": raw, "raw_reference": ref,
        "raw_tcp_gbps_best": rb, "raw_tcp_gbps_median": rm,
        "ratio_best": best / rb, "ratio_median": med / rm,
        "net_ratio_best": None if net_best is None else net_best / rb,
        "net_ratio_median": None if net_med is None else net_med / rm,
        "cold_gbps": gbps(secs[0]), "cold_net_gbps": net(secs[0]),
        "overhead_ms_median": ovh * 1e3, "overhead_ms_min": min(out["overhead_seconds"]) * 1e3,
    }


def render(result: dict[str, Any]) -> str:
    """The short table: one row per framework, then the verdict."""
    size, repeat = result["size"], result["repeat"]
    lines = [
        (f"transfer_100MB: {size / 1e6:.0f} MB of random float64 from h1's store to a task on h2, "
         f"beside raw TCP copies h1 -> h2 in the same run; taskmesh's transfers "
         f"{'encrypted' if result.get('encrypt', True) else 'in the clear (authenticated only)'}"),
        (f"GB/s = 1e9 bytes/s; best (median) of {repeat} warm runs; net = minus the median time "
         f"of the same task on a 16-byte argument; ratio = transfer / the faster raw copy (by "
         f"median)"),
    ]
    header = ["framework", "GB/s", "net GB/s", "raw TCP: 1 sendall",
              f"{RAW_SLICE >> 10} KiB sendalls", "ratio", "net ratio", "cold GB/s (net)",
              "overhead ms"]
    rows = [header]

    def f2(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0%}"

    for fw, r in result["frameworks"].items():
        if r.get("status") != "ok":
            rows.append([fw, f"{r.get('status')}: {r.get('error', '')}"[:110]])
            continue
        s = r["summary"]
        rawc = {k: f"{f2(v['gbps_best'])} ({f2(v['gbps_median'])})"
                   + ("*" if k == s["raw_reference"] else "")
                for k, v in s["raw"].items()}
        rows.append([
            fw,
            f"{f2(s['gbps_best'])} ({f2(s['gbps_median'])})",
            f"{f2(s['net_gbps_best'])} ({f2(s['net_gbps_median'])})",
            rawc["one_sendall"], rawc["sliced"],
            f"{pct(s['ratio_best'])} ({pct(s['ratio_median'])})",
            f"{pct(s['net_ratio_best'])} ({pct(s['net_ratio_median'])})",
            f"{f2(s['cold_gbps'])} ({f2(s['cold_net_gbps'])})",
            f"{s['overhead_ms_median']:.1f}",
        ])
    widths = [max(len(r[i]) for r in rows if i < len(r) and len(r) > 2) for i in range(len(header))]
    for n, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    lines.append("  * the raw copy the ratio compares with")
    tm = result["frameworks"].get("taskmesh", {})
    if tm.get("status") == "ok":
        s = tm["summary"]
        verdict = "met" if s["ratio_median"] >= 0.6 else "NOT met"
        lines.append(f"  target transfer >= 60% of raw TCP (medians): {verdict} "
                     f"({s['ratio_median']:.0%})")
    lines.append(f"  wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


# =========================================================================== the cluster


class _Hosts:
    """A netcluster of our own (unique prefix: ``tag`` and our pid) and every process started
    on it; ``close`` stops them all and deletes the namespaces, whatever happened. ``label``
    names the benchmark in messages."""

    def __init__(self, n: int, log_dir: Path, tag: str = "bx",
                 label: str = "transfer_netcluster") -> None:
        self.label = label
        self.prefix = f"{tag}{os.getpid() % 100000}"
        self.env = {**os.environ, "NETCLUSTER_PREFIX": self.prefix,
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
                    "PYTHONUNBUFFERED": "1"}
        self.names = [f"{self.prefix}-h{i}" for i in range(n)]
        self.log_dir = log_dir
        # every process started on the hosts (they share this filesystem) finds this run's
        # cluster secret, next to the logs; root's own ~/.taskmesh is left alone
        from taskmesh._secret import ENV_SECRET_FILE, write_secret_file

        secret = log_dir.parent / f"cluster-secret-{self.prefix}"
        self.env[ENV_SECRET_FILE] = str(write_secret_file(str(secret)).source)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addrs: list[str] = []
        self.up = False

    def start(self) -> None:
        self.up = True  # from here on, close() runs `down` (safe even if `up` failed halfway)
        self.nc("up", str(len(self.names)))
        self.addrs = [self.nc("addr", h) for h in self.names]

    def nc(self, *args: str) -> str:
        r = subprocess.run([NETCLUSTER, *args], env=self.env, capture_output=True, text=True,
                           timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"netcluster {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def run(self, i: int, *cmd: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on host ``i`` to completion; fail with its stderr."""
        r = subprocess.run([NETCLUSTER, "exec", self.names[i], *cmd],
                           env={**self.env, **(env or {})}, capture_output=True, text=True,
                           timeout=timeout, cwd=REPO_ROOT, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"on {self.names[i]}: {' '.join(cmd[:4])} ... exited with "
                               f"{r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def spawn(self, i: int, name: str, *cmd: str, env: dict[str, str] | None = None,
              stdout: int | None = None, stdin: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` on host ``i`` in the background; stderr (and stdout, unless piped)
        go to ``<log_dir>/<name>.log``; stdin is empty unless piped."""
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        p = subprocess.Popen([NETCLUSTER, "exec", self.names[i], *cmd], cwd=REPO_ROOT,
                             env={**self.env, **(env or {})},
                             stdin=subprocess.DEVNULL if stdin is None else stdin,
                             stdout=log if stdout is None else stdout, stderr=log)
        log.close()
        self.procs.append(p)
        return p

    def kill_daemons(self, i: int, timeout_s: float = 10) -> None:
        """SIGKILL every process on host ``i`` (in its network namespace) that :meth:`spawn`
        did not start: daemons a framework's CLI left there. Waits until they are gone."""
        ours = {p.pid for p in self.procs if p.poll() is None}
        r = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True,
                           text=True, timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"ip netns pids {self.names[i]} failed: {r.stderr.strip()}")
        victims = [pid for pid in map(int, r.stdout.split()) if pid not in ours]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while victims and time.monotonic() < deadline:
            victims = [pid for pid in victims if os.path.exists(f"/proc/{pid}")
                       and not _is_zombie(pid)]
            time.sleep(0.05)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.up:  # kills whatever is left in the hosts (TERM, then KILL) and deletes them
            subprocess.run([NETCLUSTER, "down"], env=self.env, capture_output=True, timeout=120,
                           check=False)
            self.up = False


def _start_taskmesh(hosts: _Hosts, run_dir: Path,
                    nodes: tuple[tuple[int, int, str], ...] = NODES,
                    env: dict[str, str] | None = None,
                    object_store_memory: int = OBJECT_STORE_MEMORY) -> str:
    """The head on h0 (no CPUs), then a node on each host of ``nodes``; the head's address.
    ``env``: for every process (default :data:`TASKMESH_ENV`; ``{}`` keeps taskmesh's
    defaults)."""
    env = TASKMESH_ENV if env is None else env
    head = hosts.addrs[0]
    hosts.run(0, sys.executable, "-m", "taskmesh._cli", "start", "--head", "--port",
              str(TASKMESH_PORT), "--num-cpus", "0", "--node-ip", head,
              env={**env, "TASKMESH_RUN_DIR": f"{run_dir}/h0"})
    address = f"{head}:{TASKMESH_PORT}"
    for i, cpus, res in nodes:
        _start_taskmesh_node(hosts, run_dir, i, address, cpus, res, env, object_store_memory)
    return address


def _start_taskmesh_node(hosts: _Hosts, run_dir: Path, i: int, address: str, cpus: int,
                         resources: str, env: dict[str, str], object_store_memory: int) -> None:
    """A node agent on host ``i`` that joins the head at ``address`` (also to start one again
    on a host that lost its own)."""
    hosts.run(i, sys.executable, "-m", "taskmesh._cli", "start", "--worker", "--address",
              address, "--num-cpus", str(cpus), "--node-ip", hosts.addrs[i],
              "--object-store-memory", str(object_store_memory), "--resources", resources,
              env={**env, "TASKMESH_RUN_DIR": f"{run_dir}/h{i}"})


def _stop_taskmesh(hosts: _Hosts, run_dir: Path, order: tuple[int, ...] = (2, 1, 0)) -> None:
    """``taskmesh stop`` on each host of ``order``: the nodes first, then the head (h0)."""
    for i in order:
        try:
            hosts.run(i, sys.executable, "-m", "taskmesh._cli", "stop",
                      env={"TASKMESH_RUN_DIR": f"{run_dir}/h{i}"}, timeout=30)
        except Exception as exc:  # noqa: BLE001 - `netcluster down` kills what is left
            print(f"{hosts.label}: taskmesh stop on h{i}: {exc}", file=sys.stderr)


_RAY = str(Path(sys.executable).with_name("ray"))


def _ray_env(run_dir: Path, i: int) -> dict[str, str]:
    # RAY_AUTH_MODE: unset, Ray 2.x turns token auth on in the head when ~/.ray/auth_token
    # exists, and the other nodes then fail to join; these private hosts need none
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": f"{run_dir}/ray{i}",
            "RAY_AUTH_MODE": "disabled"}


def _start_ray(hosts: _Hosts, run_dir: Path, nodes: tuple[tuple[int, int, str], ...] = NODES,
               object_store_memory: int = OBJECT_STORE_MEMORY) -> str:
    """``ray start`` on each host: every host its own --temp-dir (the hosts share the
    filesystem, and Ray's unix sockets live there) and an explicit --node-ip-address (Ray's
    autodetection needs a default route, which netcluster hosts lack)."""
    head = hosts.addrs[0]
    hosts.run(0, _RAY, "start", "--head", "--port", str(RAY_PORT), "--num-cpus", "0",
              "--node-ip-address", head, "--temp-dir", f"{run_dir}/ray0", "--include-dashboard",
              "false", "--object-store-memory", str(object_store_memory),
              "--disable-usage-stats", env=_ray_env(run_dir, 0), timeout=180)
    address = f"{head}:{RAY_PORT}"
    for i, cpus, res in nodes:
        _start_ray_node(hosts, run_dir, i, address, cpus, res, object_store_memory)
    return address


def _start_ray_node(hosts: _Hosts, run_dir: Path, i: int, address: str, cpus: int,
                    resources: str, object_store_memory: int) -> None:
    """A Ray node (raylet and its store) on host ``i`` that joins the head at ``address``."""
    hosts.run(i, _RAY, "start", "--address", address, "--num-cpus", str(cpus),
              "--node-ip-address", hosts.addrs[i], "--temp-dir", f"{run_dir}/ray{i}",
              "--resources", resources, "--object-store-memory", str(object_store_memory),
              "--disable-usage-stats", env=_ray_env(run_dir, i), timeout=180)


def _stop_ray(hosts: _Hosts, run_dir: Path, order: tuple[int, ...] = (2, 1, 0)) -> None:
    """SIGKILL Ray's daemons on each host of ``order``, as ``ray stop --force`` would, but only
    on our hosts: ``ray stop`` picks its victims by name from the machine's one process table
    (the hosts share it), so it would also kill every other Ray cluster on the machine."""
    for i in order:
        try:
            hosts.kill_daemons(i)
        except Exception as exc:  # noqa: BLE001 - `netcluster down` kills what is left
            print(f"{hosts.label}: ray stop on h{i}: {exc}", file=sys.stderr)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _run_driver(hosts: _Hosts, cfg: dict[str, Any], timeout_s: float,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    p = hosts.spawn(1, f"driver-{cfg['framework']}", sys.executable, "-m",
                    "benchmarks.transfer_netcluster", "--driver", json.dumps(cfg),
                    env=env, stdout=subprocess.PIPE)
    try:
        stdout, _ = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise TimeoutError(f"the {cfg['framework']} driver did not finish within {timeout_s:.0f} s")
    text = stdout.decode(errors="replace")
    if p.returncode != 0 or "RESULT " not in text:
        log = (hosts.log_dir / f"driver-{cfg['framework']}.log").read_text(errors="replace")
        raise RuntimeError(f"the {cfg['framework']} driver exited with {p.returncode}: "
                           f"{log.strip().splitlines()[-1] if log.strip() else '(no output)'}")
    return json.loads(text.rsplit("RESULT ", 1)[1])


def check_available() -> None:
    """Raise :class:`Unavailable` with the reason if this machine cannot run the benchmark."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (netcluster creates network namespaces); run it with sudo")
    if not os.path.exists(NETCLUSTER):
        raise Unavailable(f"netcluster not found at {NETCLUSTER} (set $NETCLUSTER)")
    r = subprocess.run([NETCLUSTER, "check"], capture_output=True, text=True, timeout=60,
                       check=False)
    if r.returncode != 0:
        raise Unavailable(f"this machine cannot run netcluster: {(r.stderr or r.stdout).strip()}")


def run(repeat: int = 5, frameworks: tuple[str, ...] = ("taskmesh",), size: int = SIZE,
        progress: Callable[[str], None] | None = None, keep_logs: bool = False,
        encrypt: bool = True) -> dict[str, Any]:
    """Bring up the hosts, run each framework's driver, tear everything down; the figures.
    ``encrypt``: taskmesh's transfers encrypted (its default) or only authenticated. Raises
    :class:`Unavailable` when the machine cannot run it."""
    check_available()
    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="taskmesh-xfer-"))  # mode 0700, as a secret's directory
    log_dir = tmp / "logs"
    log_dir.mkdir()
    result: dict[str, Any] = {"size": size, "repeat": repeat, "encrypt": encrypt, "frameworks": {}}
    hosts = _Hosts(3, log_dir)
    if not encrypt:
        hosts.env["TASKMESH_ENCRYPT"] = "0"
    failed = False
    try:
        hosts.start()
        result["hosts"] = {"head": hosts.addrs[0], "source": hosts.addrs[1], "dest": hosts.addrs[2]}
        say(f"netcluster {hosts.prefix}: h0 {hosts.addrs[0]} (head), h1 {hosts.addrs[1]} "
            f"(driver, source), h2 {hosts.addrs[2]} (destination)")
        hosts.spawn(2, "raw-receiver", sys.executable, "-m", "benchmarks.transfer_netcluster",
                    "--receiver", hosts.addrs[2], str(RAW_PORT), str(size),
                    stdout=subprocess.PIPE)
        if hosts.procs[-1].stdout.readline().strip() != b"READY":  # type: ignore[union-attr]
            raise RuntimeError("the raw TCP receiver on h2 did not start")
        for fw in frameworks:
            start, stop = ((_start_taskmesh, _stop_taskmesh) if fw == "taskmesh"
                           else (_start_ray, _stop_ray))
            entry: dict[str, Any] = {}
            result["frameworks"][fw] = entry
            t0 = time.monotonic()
            try:
                address = start(hosts, tmp)
                say(f"[{fw}] cluster up in {time.monotonic() - t0:.1f} s; "
                    f"{repeat} + 1 iterations")
                cfg = {"framework": fw, "address": address, "h1": hosts.addrs[1],
                       "h2": hosts.addrs[2], "raw_port": RAW_PORT, "size": size, "repeat": repeat}
                out = _run_driver(hosts, cfg, timeout_s=120 + 30 * (repeat + 1),
                                  env=_ray_env(tmp, 1) if fw == "ray" else None)
                entry.update(status="ok", **out, summary=summarize(size, out))
                s = entry["summary"]
                say(f"[{fw}] {s['gbps_best']:.2f} ({s['gbps_median']:.2f}) GB/s, raw TCP "
                    f"{s['raw_tcp_gbps_best']:.2f} ({s['raw_tcp_gbps_median']:.2f}) GB/s, cold "
                    f"{s['cold_gbps']:.2f} GB/s, overhead {s['overhead_ms_median']:.1f} ms")
            except Exception as exc:  # noqa: BLE001 - reported in the table, the rest still runs
                failed = True
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                say(f"[{fw}] failed: {entry['error']}")
            finally:
                stop(hosts, tmp)
                entry["wall_s"] = time.monotonic() - t0
    finally:
        _tear_down(hosts, tmp, log_dir, failed or keep_logs, say, result)
    result["wall_s"] = time.monotonic() - t_start
    return result


def _tear_down(hosts: _Hosts, tmp: Path, log_dir: Path, keep: bool,
               say: Callable[[str], None], result: dict[str, Any]) -> None:
    """The end of a netcluster benchmark's run: the hosts go (a second Ctrl-C cannot cut
    that short), and the run's directory with them unless its logs are to be ``keep``."""
    with _signals_held():
        hosts.close()
    if keep:
        say(f"logs kept in {log_dir}")
        result["logs"] = str(log_dir)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through run()'s finally: processes and hosts go


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:
        return _driver_main(json.loads(argv[1]))
    if argv[:1] == ["--receiver"]:
        return _receiver_main(argv[1], int(argv[2]), int(argv[3]))
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.transfer_netcluster",
        description="transfer_100MB between two netcluster hosts, beside a raw TCP copy "
                    "(needs root and ../shared/netcluster).")
    p.add_argument("--repeat", type=int, default=5, help="timed iterations after the cold one")
    p.add_argument("--frameworks", default="taskmesh",
                   help=f"comma-separated, from {','.join(FRAMEWORKS)} (default: %(default)s)")
    p.add_argument("--size", type=int, default=SIZE, help="bytes (a multiple of 8)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    p.add_argument("--encrypt", choices=("on", "off"), default="on",
                   help="taskmesh's transfers encrypted (default) or only authenticated")
    args = p.parse_args(argv)
    frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    if bad := [f for f in frameworks if f not in FRAMEWORKS]:
        p.error(f"unknown framework(s): {', '.join(bad)}")
    if args.repeat < 1 or args.size % 8 or args.size <= 0:
        p.error("--repeat must be >= 1 and --size a positive multiple of 8")
    return run_main("transfer_netcluster", lambda progress: run(
        args.repeat, frameworks, args.size, progress=progress, keep_logs=args.keep_logs,
        encrypt=args.encrypt == "on"),
        render, args.json)


def run_main(name: str, run_it: Callable[[Callable[[str], None]], dict[str, Any]],
             render_it: Callable[[dict[str, Any]], str], json_path: str | None) -> int:
    """The end of a netcluster benchmark's ``main``: run it (progress to stderr), print the
    table, write the JSON; exit status 0 ok, 1 failed, 2 cannot run here, 130 interrupted."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run_it(lambda m: print(m, file=sys.stderr, flush=True))
    except Unavailable as exc:
        print(f"{name}: skipped: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; the hosts were torn down", file=sys.stderr)
        return 130
    print(render_it(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON written to {json_path}")
    return 0 if all(r.get("status") == "ok" for r in result["frameworks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

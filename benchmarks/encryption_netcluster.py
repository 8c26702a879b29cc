"""``encryption``: what encrypting the traffic between machines costs, on and off in turns.

    h0: head (--num-cpus 0)      h1: node, 2 CPUs        h2: this benchmark's driver (no node)

    noop_async  the driver on h2 submits N empty tasks and gets all results: every task and
                result crosses h2 <-> h0 <-> h1 over CurveZMQ (or PLAIN, encryption off)
    get_100MB   a task on h1 returns 100 MB of random bytes; the driver on h2 gets it: h2
                pulls it from h1's store over the transfer stream (AES-256-GCM, or clear)

The cluster is started once per mode and round, with ``TASKMESH_ENCRYPT=1`` or ``0`` for every
process; rounds alternate the modes so both see the same noise. Each round's driver warms up
(workers started, function registered), then takes the best of ``--batches`` batches of each
measurement. The table gives best and median over rounds, and the ratio encrypted / clear.

Usage (as root, from the repository root)::

    python -m benchmarks.encryption_netcluster [--repeat N] [--tasks N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.transfer_netcluster import (
    _Hosts,
    _start_taskmesh,
    _stop_taskmesh,
    _tear_down,
    check_available,
    run_main,
)

SIZE = 100_000_000
MODES = ("encrypted", "clear")


def _driver_main(cfg: dict[str, Any]) -> int:
    import numpy as np

    import taskmesh

    taskmesh.init(address=cfg["address"])

    @taskmesh.remote
    def noop() -> None:
        return None

    @taskmesh.remote
    def blob(size: int) -> Any:
        return np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)

    taskmesh.get([noop.remote() for _ in range(2000)])  # workers up, function registered
    taskmesh.get(blob.remote(1 << 20))
    out: dict[str, Any] = {"noop_tasks_per_s": [], "get_100MB_s": []}
    for _ in range(cfg["batches"]):
        t = time.perf_counter()
        taskmesh.get([noop.remote() for _ in range(cfg["tasks"])])
        out["noop_tasks_per_s"].append(cfg["tasks"] / (time.perf_counter() - t))
    for _ in range(cfg["batches"]):
        ref = blob.remote(SIZE)
        taskmesh.wait([ref], fetch_local=False)  # made on h1; now time only the pull
        t = time.perf_counter()
        a = taskmesh.get(ref)
        out["get_100MB_s"].append(time.perf_counter() - t)
        assert a.nbytes == SIZE
        del a, ref
    taskmesh.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _round(hosts: _Hosts, tmp: Path, mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    env = {"TASKMESH_ENCRYPT": "1" if mode == "encrypted" else "0"}
    address = _start_taskmesh(hosts, tmp, nodes=((1, 2, "{}"),), env=env)
    try:
        r = hosts.run(2, sys.executable, "-m", "benchmarks.encryption_netcluster", "--driver",
                      json.dumps({**cfg, "address": address}), env=env, timeout=600)
        return json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    finally:
        _stop_taskmesh(hosts, tmp, order=(1, 0))


def run(repeat: int = 3, tasks: int = 10_000, batches: int = 3,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    check_available()
    say = progress or (lambda msg: None)
    tmp = Path(tempfile.mkdtemp(prefix="taskmesh-enc-"))
    (tmp / "logs").mkdir()
    hosts = _Hosts(3, tmp / "logs", tag="be", label="encryption_netcluster")
    result: dict[str, Any] = {"repeat": repeat, "tasks": tasks, "batches": batches,
                              "frameworks": {"taskmesh": {"status": "ok"}},
                              "rounds": {m: [] for m in MODES}}
    try:
        hosts.start()
        for i in range(repeat):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                out = _round(hosts, tmp, mode, {"tasks": tasks, "batches": batches})
                best = {"noop_tasks_per_s": max(out["noop_tasks_per_s"]),
                        "get_100MB_gbps": SIZE / min(out["get_100MB_s"]) / 1e9}
                result["rounds"][mode].append(best)
                say(f"round {i + 1} {mode}: noop_async {best['noop_tasks_per_s']:,.0f} tasks/s, "
                    f"get 100 MB {best['get_100MB_gbps']:.2f} GB/s")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        result["frameworks"]["taskmesh"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        _tear_down(hosts, tmp, tmp / "logs", result["frameworks"]["taskmesh"]["status"] != "ok",
                   say, result)
    return result


def render(result: dict[str, Any]) -> str:
    fw = result["frameworks"]["taskmesh"]
    if fw["status"] != "ok":
        return f"encryption_netcluster failed: {fw['error']}"
    lines = [f"encryption on vs off between netcluster hosts ({result['repeat']} rounds each, "
             "best of each round; best (median) over rounds)",
             "| measurement | encrypted | clear | encrypted / clear |", "|---|---|---|---|"]
    for key, label, unit in (("noop_tasks_per_s", "noop_async", "tasks/s"),
                             ("get_100MB_gbps", "get 100 MB (h1 -> h2)", "GB/s")):
        vals = {m: [r[key] for r in result["rounds"][m]] for m in MODES}
        best = {m: max(v) for m, v in vals.items()}
        med = {m: statistics.median(v) for m, v in vals.items()}
        lines.append(f"| {label} | {best['encrypted']:,.2f} ({med['encrypted']:,.2f}) {unit} | "
                     f"{best['clear']:,.2f} ({med['clear']:,.2f}) {unit} | "
                     f"{best['encrypted'] / best['clear']:.2f} ({med['encrypted'] / med['clear']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.encryption_netcluster")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--driver", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.driver:
        return _driver_main(json.loads(args.driver))
    return run_main("encryption_netcluster",
                    lambda say: run(args.repeat, args.tasks, args.batches, say), render, args.json)


if __name__ == "__main__":
    sys.exit(main())

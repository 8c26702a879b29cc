"""How long the first task of a runtime environment waits (issue 16: "the first-task latency
with a cached environment"), against a task of the default environment, on taskmesh and, with
``--ray``, on Ray the same way. One session of a 2-CPU local cluster each:

  default              a no-op task on the warm default pool (the round trip)
  env_vars             the first task of a new env_vars environment (a worker started for it),
                       ``--rounds`` environments, each new
  its next task        the next task of such an environment (its worker reused)
  pip, made            the first task of a pip environment nobody made yet (pip runs)
  pip, cached          the first task of a new environment whose pip requirements were made
                       already (the environment differs by an env_var: a worker starts in the
                       pip environment made before), ``--rounds`` of them

The pip requirement is one the machine already has (``msgpack``, with ``--no-index``): pip
installs nothing and needs no network, so the figures are the frameworks' own. Medians. Run
from the repository root:

    python -m benchmarks.runtime_env_latency [--rounds 5] [--ray]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

PIP = ["msgpack", "--no-index"]


def measure(fw: Any, remote: Any, rounds: int) -> dict[str, float]:
    @remote
    def noop() -> None:
        return None

    def timed(opts: dict) -> float:
        f = noop.options(**opts) if opts else noop
        start = time.perf_counter()
        fw.get(f.remote(), timeout=600)
        return time.perf_counter() - start

    fw.get([noop.remote() for _ in range(20)])  # the default pool is up and warm
    out: dict[str, list[float]] = {k: [] for k in ("default", "env_vars", "again", "cached")}
    for i in range(rounds):
        out["default"].append(timed({}))
        env = {"runtime_env": {"env_vars": {"ROUND": str(i)}}}
        out["env_vars"].append(timed(env))
        out["again"].append(timed(env))
    made = timed({"runtime_env": {"pip": PIP}})
    for i in range(rounds):
        out["cached"].append(timed({"runtime_env": {"pip": PIP, "env_vars": {"R": str(i)}}}))
    med = {k: statistics.median(v) for k, v in out.items()}
    med["made"] = made
    return med


def run_taskmesh(rounds: int) -> dict[str, float]:
    import taskmesh

    with tempfile.TemporaryDirectory() as cache:  # (an empty runtime_env cache)
        taskmesh.init(num_cpus=2, runtime_env_dir=cache)
        try:
            return measure(taskmesh, taskmesh.remote, rounds)
        finally:
            taskmesh.shutdown()


def run_ray(rounds: int) -> dict[str, float]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return measure(ray, ray.remote, rounds)
    finally:
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ray", action="store_true", help="also measure Ray the same way")
    args = ap.parse_args()
    results = {"taskmesh": run_taskmesh(args.rounds)}
    if args.ray:
        results["ray"] = run_ray(args.rounds)
    names = list(results)
    print(f"first-task latency, ms (medians of {args.rounds}; 'made' is one task):")
    print(f"  {'':34s}" + "".join(f"{n:>12s}" for n in names))
    for key, label in (("default", "default environment, warm pool"),
                       ("env_vars", "first task, new env_vars env"),
                       ("again", "its next task (worker reused)"),
                       ("made", "first task, pip env made"),
                       ("cached", "first task, pip env cached")):
        print(f"  {label:34s}" + "".join(f"{results[n][key] * 1e3:12.1f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

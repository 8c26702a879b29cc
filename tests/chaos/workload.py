"""The chaos workload: waves of seeded task DAGs whose every result the driver can compute
itself, so it checks each one for exact equality while the controller injects faults.

    python workload.py ADDRESS --seed S --tasks N [--soak SECONDS] --deadline SECONDS

    plan_wave(seed, w) ─▶ [TaskPlan] ─submit─▶ cluster ─get─▶ results ──┐
                       └─evaluate() (here, after)─▶ expected ───────────┴─ == ─▶ WAVE, SUMMARY

A wave is a DAG in layers: leaves first, then tasks that each take one to three results of
earlier layers (mostly the layer just before). A quarter of the tasks return 2 MiB arrays of
seeded random words (kept in the node stores, so they move between nodes, are lost with
their host and rebuilt from lineage); some return a pair (a digest and an array, two refs);
some submit and wait for a nested task; a few take the wave's 2 MiB ``put()`` (made by this
driver, which runs on a host without a node: it travels inline through the head and cannot be
lost). Most tasks sleep a few milliseconds, some a few hundred, so faults hit running tasks.
Every task has ``max_retries=-1``: worker and node deaths must never surface as errors.

Two waves are in flight at a time. Output, one JSON object per line: ``READY`` once the three
nodes have their workers, ``WAVE`` per checked wave, ``SUMMARY`` at the end (also after a
hang: a wave whose results do not all arrive before the deadline ends the run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import deque
from dataclasses import dataclass

# run as a script on a host, this still finds tests.support: the hosts' PYTHONPATH has this checkout
from tests.support.wait import until

#: uint64 words of a large result: 2 MiB + 512 bytes (> 1 MB, far over the 100 KiB threshold)
BIG_WORDS = (1 << 18) + 64
WAVE_TASKS = 200
LAYERS = 5
#: a get of a result that wait() already called ready, slower than this, is reported
SLOW_GET_S = 20.0


@dataclass(frozen=True)
class TaskPlan:
    """One task of a wave. ``deps`` name objects: (task index, return index), or (-1, 0) for
    the wave's put."""

    index: int
    kind: str  # small | big | pair | nested
    seed: int
    deps: tuple[tuple[int, int], ...]
    sleep_s: float

    @property
    def returns(self) -> int:
        return 2 if self.kind == "pair" else 1


def plan_wave(seed: int, wave: int, size: int = WAVE_TASKS) -> list[TaskPlan]:
    rng = random.Random(f"chaos-workload/{seed}/{wave}")
    per_layer = [size * 2 // 5] + [size * 3 // 5 // (LAYERS - 1)] * (LAYERS - 1)
    per_layer[-1] += size - sum(per_layer)
    out: list[TaskPlan] = []
    layers: list[list[tuple[int, int]]] = []  # objects made by each layer
    for layer, count in enumerate(per_layer):
        made: list[tuple[int, int]] = []
        for _ in range(count):
            i = len(out)
            r = rng.random()
            kind = "big" if r < 0.25 else "pair" if r < 0.30 else "nested" if r < 0.33 else "small"
            deps: list[tuple[int, int]] = []
            if layer:
                for _ in range(rng.choice((1, 1, 2, 2, 3))):
                    pool = layers[-1] if rng.random() < 0.6 else rng.choice(layers)
                    deps.append(rng.choice(pool))
            if rng.random() < 0.05:
                deps.append((-1, 0))
            sleep_s = rng.uniform(0.1, 0.4) if rng.random() < 0.1 else rng.uniform(0, 0.02)
            t = TaskPlan(i, kind, rng.getrandbits(62), tuple(dict.fromkeys(deps)), sleep_s)
            out.append(t)
            made.extend((i, k) for k in range(t.returns))
        layers.append(made)
    return out


def put_seed(seed: int, wave: int) -> int:
    return random.Random(f"chaos-put/{seed}/{wave}").getrandbits(62)


# -- the task bodies: pure functions of (seed, inputs), run remotely and locally -------------

def words(seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 1 << 63, BIG_WORDS, dtype=np.uint64)


def digest(seed: int, *inputs) -> int:
    h = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=8)
    for x in inputs:
        h.update(x.tobytes() if hasattr(x, "tobytes") else int(x).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little")


def big_value(seed: int, *inputs):
    import numpy as np

    a = words(seed)
    for x in inputs:
        if hasattr(x, "tobytes"):
            a ^= x
        else:
            a += np.uint64(x)  # wraps around: exact
    return a


def body(kind: str, seed: int, inputs: tuple, nested=None):
    """A task's value(s). ``nested(seed)`` gives the nested child's value."""
    if kind == "small":
        return digest(seed, *inputs)
    if kind == "big":
        return big_value(seed, *inputs)
    if kind == "pair":
        return digest(seed, *inputs), big_value(seed ^ 1, *inputs)
    child = nested(seed + 1) if nested else digest(seed + 1)
    return digest(seed, child, *inputs)


def evaluate(seed: int, wave: int, plans: list[TaskPlan]) -> dict[tuple[int, int], object]:
    """Every object of the wave, computed here: (task index, return index) -> value."""
    values: dict[tuple[int, int], object] = {(-1, 0): words(put_seed(seed, wave))}
    for t in plans:
        out = body(t.kind, t.seed, tuple(values[d] for d in t.deps))
        if t.returns == 1:
            out = (out,)
        for k, v in enumerate(out):
            values[(t.index, k)] = v
    return values


def same(got, want) -> bool:
    if hasattr(want, "tobytes"):
        import numpy as np

        return (isinstance(got, np.ndarray) and got.dtype == want.dtype
                and got.shape == want.shape and bool(np.array_equal(got, want)))
    return type(got) is int and got == want


# -- the driver ------------------------------------------------------------------------------

def say(tag: str, value: dict) -> None:
    print(tag, json.dumps(value), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--soak", type=float, default=0.0, help="go on with waves this long (s)")
    ap.add_argument("--deadline", type=float, required=True, help="give up after this (s)")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)

    import numpy as np

    import taskmesh

    taskmesh.init(address=args.address)
    if not until(lambda: sum(1 for n in taskmesh.nodes() if n["Alive"] and n["Workers"] >= 2)
                 >= args.nodes, timeout=60, interval=0.1, check=False):
        say("SUMMARY", {"error": f"the cluster did not come up: {taskmesh.nodes()}"})
        return 1

    @taskmesh.remote(max_retries=-1)
    def child(seed):
        return digest(seed)

    def run_task(kind, seed, sleep_s, *inputs):
        time.sleep(sleep_s)
        if kind == "nested":
            return body(kind, seed, inputs,
                        nested=lambda s: taskmesh.get(child.remote(s), timeout=300))
        return body(kind, seed, inputs)

    one = taskmesh.remote(max_retries=-1)(run_task)
    two = one.options(num_returns=2)

    t0 = time.monotonic()
    deadline = t0 + args.deadline
    say("READY", {"time": time.time()})

    summary = {"seed": args.seed, "waves": 0, "tasks": 0, "objects_checked": 0,
               "big_objects_checked": 0, "bytes_checked": 0, "mismatches": [], "errors": [],
               "hung": None, "slow_gets": [], "per_wave_s": []}
    in_flight: deque = deque()
    wave = 0

    def submit(w: int) -> None:
        plans = plan_wave(args.seed, w)
        refs: dict[tuple[int, int], object] = {(-1, 0): taskmesh.put(words(put_seed(args.seed, w)))}
        for t in plans:
            fn = two if t.returns == 2 else one
            out = fn.remote(t.kind, t.seed, t.sleep_s, *(refs[d] for d in t.deps))
            for k, r in enumerate(out if t.returns == 2 else (out,)):
                refs[(t.index, k)] = r
        in_flight.append((w, plans, refs, time.monotonic(), time.time()))

    def more() -> bool:
        if wave * WAVE_TASKS < args.tasks:
            return True
        return args.soak > 0 and time.monotonic() - t0 < args.soak

    while len(in_flight) < 2 and more():
        submit(wave)
        wave += 1
    while in_flight:
        w, plans, refs, started, started_wall = in_flight.popleft()
        keys = [k for k in refs if k[0] >= 0]
        order = [refs[k] for k in keys]
        ready, pending = taskmesh.wait(order, num_returns=len(order),
                                       timeout=max(0.0, deadline - time.monotonic()))
        if pending:
            waiting = {id(r) for r in pending}
            stuck = sorted({k[0] for k in keys if id(refs[k]) in waiting})
            summary["hung"] = {
                "wave": w, "time": time.time(), "pending_objects": len(pending),
                "pending_tasks": [{"index": i, "kind": plans[i].kind, "deps": plans[i].deps}
                                  for i in stuck[:20]],
                "nodes": [{k: n[k] for k in ("NodeID", "NodeManagerAddress", "Alive", "Workers",
                                              "TasksRunning")} for n in taskmesh.nodes()],
            }
            break
        expected = evaluate(args.seed, w, plans)
        bad = 0
        for k in keys:
            asked = time.monotonic()
            try:
                got = taskmesh.get(refs[k], timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - any error is a lost result, reported
                bad += 1
                summary["errors"].append({"wave": w, "task": k[0], "return": k[1],
                                          "kind": plans[k[0]].kind, "time": time.time(),
                                          "error": f"{type(exc).__name__}: {str(exc)[-4000:]}"})
                continue
            took = time.monotonic() - asked
            if took > SLOW_GET_S:  # its value was ready (wait() said so): why so long?
                summary["slow_gets"].append({"wave": w, "task": k[0], "return": k[1],
                                             "kind": plans[k[0]].kind, "took_s": round(took, 2),
                                             "time": time.time()})
            want = expected[k]
            if not same(got, want):
                bad += 1
                summary["mismatches"].append({
                    "wave": w, "task": k[0], "return": k[1], "kind": plans[k[0]].kind,
                    "time": time.time(), "got": repr(got)[:200], "want": repr(want)[:200]})
            summary["objects_checked"] += 1
            if isinstance(want, np.ndarray):
                summary["big_objects_checked"] += 1
                summary["bytes_checked"] += want.nbytes
        del expected, refs, order, ready
        took = time.monotonic() - started
        summary["waves"] += 1
        summary["tasks"] += len(plans)
        summary["per_wave_s"].append(round(took, 2))
        say("WAVE", {"wave": w, "tasks": len(plans), "bad": bad, "took_s": round(took, 2),
                     "started": started_wall, "time": time.time()})
        if more():
            submit(wave)
            wave += 1
        if time.monotonic() > deadline:
            summary["hung"] = {"wave": w, "time": time.time(), "pending_objects": 0,
                               "why": "the deadline passed while results were checked"}
            break
    summary["wall_s"] = round(time.monotonic() - t0, 2)
    summary["dead_node_records"] = sum(1 for n in taskmesh.nodes() if not n["Alive"])
    say("SUMMARY", summary)
    taskmesh.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The chaos suite: a seeded storm of machine, network and process faults on three worker
hosts while a workload of 3000 DAG tasks with 2 MiB results runs (CI size); every result
must be exact, nothing may hang, and nothing may be left behind. See docs/chaos.md.

    TASKMESH_CHAOS_SEED=7 pytest tests/chaos/test_chaos.py       # another seed (CI uses 1)
    TASKMESH_CHAOS_SOAK=600 pytest tests/chaos/test_chaos.py --basetemp=/tmp/soak  # 10 minutes

The planner and workload tests below need no root; the run itself is ``multihost``.
"""

from __future__ import annotations

import itertools
import json

import pytest

from . import faults as F
from . import workload as W
from .controller import Settings, run_chaos

SETTINGS = Settings.from_env()


# -- the plan: pure, no processes -------------------------------------------------------------

def test_a_seed_gives_the_same_fault_schedule_and_workload():
    assert F.plan(5, 120) == F.plan(5, 120)
    assert F.plan(5, 120) != F.plan(6, 120)
    assert W.plan_wave(5, 3) == W.plan_wave(5, 3)
    assert W.plan_wave(5, 3) != W.plan_wave(5, 4)


@pytest.mark.parametrize("seed", range(20))
def test_the_schedule_never_takes_every_worker_host_down(seed):
    faults = F.plan(seed, 600)
    down = [(f.at, f.at + f.repaired_after() + F.SETTLE_S, f.host) for f in faults
            if f.kind in F.DOWN_KINDS]
    for at, _, _ in down:
        hosts = {h for a, b, h in down if a <= at < b}
        assert len(hosts) <= 2, (seed, at, hosts)
    for f, g in itertools.pairwise(faults):
        assert g.at - f.at >= 1.0  # one every 1-3 s (later when no host is free)
    assert set(F.counts(faults)) == set(F.KINDS) and all(F.counts(faults).values())


def test_the_ci_workload_has_2000_tasks_with_large_results_and_dependencies():
    waves = [W.plan_wave(1, w) for w in range(-(-SETTINGS.tasks // W.WAVE_TASKS))]
    tasks = [t for wave in waves for t in wave]
    assert len(tasks) >= 2000
    assert sum(t.kind in ("big", "pair") for t in tasks) >= 400
    assert sum(bool(t.deps) for t in tasks) >= 1000
    values = W.evaluate(1, 0, waves[0])
    bigs = [v for v in values.values() if hasattr(v, "nbytes")]
    assert bigs and min(v.nbytes for v in bigs) > 2 * (1 << 20)
    again = W.evaluate(1, 0, waves[0])
    assert all(W.same(again[k], v) for k, v in values.items())


# -- the run: once per session, then one test per promise ------------------------------------

#: a get of a result that wait() already called ready may take this long (rebuild chains
#: under continuing faults), no longer
STALL_S = 60.0


def _chaos(fn):
    """A check of the chaos run: needs root (multihost); the first one pays for the run."""
    for mark in (pytest.mark.multihost, pytest.mark.chaos,
                 pytest.mark.timeout(SETTINGS.deadline_s + 300)):
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def chaos(chaos_hosts, tmp_path_factory):
    report = run_chaos(chaos_hosts, tmp_path_factory.mktemp("chaos"), SETTINGS)
    print("\nCHAOS " + json.dumps(report.figures()))
    return report


def _fail(report, problems: list[tuple[str, float | None]]) -> None:
    if problems:
        first = next((t for _, t in problems if t is not None), None)
        pytest.fail("\n".join(p for p, _ in problems) + "\n\n" + report.explain(first),
                    pytrace=False)


def _summary(report) -> dict:
    s = report.summary
    if s is None:
        _fail(report, [((f"the driver printed no summary (exit code {report.driver_rc}, killed "
                         f"as hung: {report.hung_driver}); its last lines: "
                         f"{report.driver_lines[-5:]}"), None)])
    if s.get("error"):
        _fail(report, [(s["error"], None)])
    return s


@_chaos
def test_no_result_is_wrong(chaos):
    s = _summary(chaos)
    problems = [(f"a result was wrong: {json.dumps(m)}", m["time"]) for m in s["mismatches"][:5]]
    if len(s["mismatches"]) > 5:
        problems.append((f"... {len(s['mismatches'])} wrong results in all", None))
    _fail(chaos, problems)


@_chaos
def test_no_result_is_lost(chaos):
    s = _summary(chaos)
    problems = [(f"a result was lost: {json.dumps(e)}", e["time"]) for e in s["errors"][:5]]
    if len(s["errors"]) > 5:
        problems.append((f"... {len(s['errors'])} lost results in all", None))
    _fail(chaos, problems)


@_chaos
def test_nothing_hangs(chaos):
    s = _summary(chaos)
    problems = []
    if s.get("hung"):
        problems.append(((f"the results did not all arrive before the deadline "
                          f"({SETTINGS.deadline_s:.0f} s): {json.dumps(s['hung'])[:3000]}"),
                         s["hung"].get("time")))
    for g in s["slow_gets"]:
        if g["took_s"] > STALL_S:
            problems.append((f"a get of a ready result took {g['took_s']} s: {json.dumps(g)}",
                             g["time"] - g["took_s"]))
    _fail(chaos, problems)


@_chaos
def test_every_host_has_a_live_node_after_its_repair(chaos):
    problems = [(f"controller: {e}", None) for e in chaos.controller_errors]
    if not chaos.recovered:
        problems.append(((f"after every host was repaired, not every host had a live node "
                          f"again within 30 s:\n{chaos.status_after}"), None))
    _fail(chaos, problems)


@_chaos
def test_nothing_is_left_behind(chaos):
    problems = []
    if chaos.left_running:
        problems.append(("processes still ran 10 s after `taskmesh stop` on every host: "
                         + "; ".join(chaos.left_running), None))
    problems += [(f"left behind: {leak}", None) for leak in chaos.leaks]
    _fail(chaos, problems)


@_chaos
def test_the_run_was_big_and_chaotic_enough(chaos):
    s = _summary(chaos)
    problems = []
    if not s.get("hung") and s["tasks"] < SETTINGS.tasks:
        problems.append((f"only {s['tasks']} tasks ran, not {SETTINGS.tasks}", None))
    kinds = {k for k, n in chaos.faults_by_kind.items() if n}
    if sum(chaos.faults_by_kind.values()) < 10 or len(kinds) < 3:
        problems.append((f"too few faults were injected: {chaos.faults_by_kind}", None))
    _fail(chaos, problems)

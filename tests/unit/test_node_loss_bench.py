"""The node-loss benchmark's pure parts: its figures, summary and table, on made-up observations
(the benchmark itself needs root and netcluster; see benchmarks/node_loss_netcluster.py)."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks.node_loss_netcluster import (
    check_batch,
    iteration_figures,
    read_starts,
    render,
    sleeper,
    summarize,
)

H1, H2 = "198.18.0.11", "198.18.0.12"
T0 = 1_000_000.0  # submission time of every made-up batch


def result(k: int, host: str, start: float, attempt: int = 1) -> dict:
    return {"k": k, "value": k * k, "host": host, "start": start, "end": start + 3.0,
            "attempt": attempt, "pid": 100 + k}


def baseline(wall: float = 3.0) -> dict:
    return {"results": [result(0, H1, T0), result(1, H2, T0)], "errors": [], "timed_out": False,
            "wall_s": wall, "starts": {"0": [[H1, T0]], "1": [[H2, T0]]}}


def faulted(rerun_at: float = 1.6, dead_at: float = 1.55, stuck: float | None = None,
            wall: float = 4.7) -> dict:
    """Task 0 ran on h1, which failed at T0 + 0.1; it re-ran on h2 ``rerun_at`` s later."""
    return {"victim": H1, "dead_seen": T0 + 0.1 + dead_at, "stuck": stuck,
            "results": [result(0, H2, T0 + 0.1 + rerun_at, attempt=2), result(1, H2, T0)],
            "errors": [], "timed_out": False, "wall_s": wall,
            "starts": {"0": [[H1, T0], [H2, T0 + 0.1 + rerun_at]], "1": [[H2, T0]]}}


def iteration(fig: dict) -> dict:
    return {"figures": fig}


def test_a_clean_iteration_gives_detection_recovery_and_overhead():
    fig = iteration_figures(baseline(3.0), faulted(1.6, 1.55, wall=4.7), T0 + 0.1)
    assert fig["ok"], fig["problems"]
    assert fig["lost_tasks"] == [0]
    assert fig["detection_s"] == pytest.approx(1.55)
    assert fig["recovery_s"] == pytest.approx(1.6)
    assert fig["overhead_s"] == pytest.approx(1.7)
    assert fig["censored"] == [] and fig["bound_s"] is None
    assert fig["attempts"] == [2, 1]


def test_a_wrong_or_missing_result_fails_the_iteration():
    bad = faulted()
    bad["results"][1] = dict(bad["results"][1], value=7)
    fig = iteration_figures(baseline(), bad, T0 + 0.1)
    assert not fig["ok"]
    assert any("task 1: returned 1, 7" in p for p in fig["problems"])
    gone = faulted()
    gone["results"][0] = None
    gone["errors"] = ["task 0: NodeLostError: no retries left"]
    fig = iteration_figures(baseline(), gone, T0 + 0.1)
    assert not fig["ok"] and fig["recovery_s"] is None
    assert "with fault: task 0: NodeLostError: no retries left" in fig["problems"]


def test_a_fault_that_hit_nothing_or_was_never_seen_fails_the_iteration():
    quiet = faulted()
    quiet["starts"]["0"] = [[H2, T0]]  # nothing ran on the victim
    quiet["results"][0] = result(0, H2, T0)
    assert "the fault hit no running task" in iteration_figures(baseline(), quiet, T0 + 0.1)[
        "problems"]
    unseen = dict(faulted(), dead_seen=None)
    fig = iteration_figures(baseline(), unseen, T0 + 0.1)
    assert "the victim's node was never reported dead" in fig["problems"]


def test_a_result_from_the_victim_after_the_fault_is_a_problem():
    odd = faulted()
    odd["results"][0] = result(0, H1, T0 + 2.0, attempt=1)
    fig = iteration_figures(baseline(), odd, T0 + 0.1)
    assert not fig["ok"]
    assert any("task 0 was running on the victim" in p for p in fig["problems"])


def test_figures_past_the_budget_are_censored_not_failed():
    # detected in time, but the lost task re-ran only after the host came back
    slow = faulted(rerun_at=125.0, dead_at=65.0, stuck=T0 + 0.1 + 120.0, wall=128.2)
    fig = iteration_figures(baseline(), slow, T0 + 0.1, healed=T0 + 0.1 + 120.5)
    assert fig["ok"], fig["problems"]
    assert fig["detection_s"] == pytest.approx(65.0)
    assert fig["recovery_s"] is None and fig["overhead_s"] is None
    assert set(fig["censored"]) == {"recovery_s", "overhead_s"}
    assert fig["bound_s"] == pytest.approx(120.0)
    assert fig["after_bound"]["recovery_s"] == pytest.approx(125.0)
    assert fig["rerun_after_heal_s"] == pytest.approx(4.5)


def test_summary_takes_best_and_median_of_the_passed_iterations():
    its = [iteration(iteration_figures(baseline(3.0), faulted(r, r - 0.05, wall=3.0 + r),
                                       T0 + 0.1))
           for r in (1.6, 1.4, 1.5)]
    broken = faulted()
    broken["results"][1] = None
    its.append(iteration(iteration_figures(baseline(), broken, T0 + 0.1)))
    s = summarize(its)
    assert (s["ok"], s["iterations"]) == (3, 4)
    assert s["recovery_s"]["best"] == pytest.approx(1.4)
    assert s["recovery_s"]["median"] == pytest.approx(1.5)
    assert s["detection_s"]["median"] == pytest.approx(1.45)
    assert s["recovery_s"]["censored"] == 0 and s["rerun_after_heal_s"] is None


def test_a_censored_median_is_reported_as_more_than_the_budget():
    fast = iteration(iteration_figures(baseline(), faulted(), T0 + 0.1))
    slow = [iteration(iteration_figures(baseline(), faulted(125.0, 65.0, T0 + 0.1 + b, 128.0),
                                        T0 + 0.1, healed=T0 + 0.1 + b + 0.5))
            for b in (120.0, 121.0)]
    s = summarize([fast, *slow])
    rec = s["recovery_s"]
    assert rec["best"] == pytest.approx(1.6)
    assert rec["median"] is None  # two of three are "> 120"
    assert rec["censored"] == 2 and rec["bound_s"] == pytest.approx(120.0)
    assert s["rerun_after_heal_s"] == pytest.approx(4.0)  # of 4.5 and 3.5
    assert s["detection_s"]["median"] == pytest.approx(65.0)


def synthetic_result() -> dict:
    good = [iteration(iteration_figures(baseline(), faulted(1.6, 1.55), T0 + 0.1))]
    slow = [iteration(iteration_figures(baseline(), faulted(125.0, 65.0, T0 + 0.1 + 120.0, 128.0),
                                        T0 + 0.1, healed=T0 + 0.1 + 120.5))]
    return {
        "repeat": 1, "wall_s": 321.0,
        "machine": {"cpus": 2, "load_average_at_start": [0.5, 0.4, 0.3], "python": "3.11.7",
                    "versions": {"taskmesh": "0.1.0", "ray": "2.60.0"}},
        "config": {"tasks": 2, "task_s": 3.0, "cpus": 2, "budget_s": {"taskmesh": 30.0,
                                                                       "ray": 120.0}},
        "frameworks": {
            "taskmesh": {"status": "ok", "faults": {
                "kill": {"iterations": good, "summary": summarize(good)},
                "crash": {"iterations": good, "summary": summarize(good)}}},
            "ray": {"status": "ok", "faults": {
                "crash": {"iterations": slow, "summary": summarize(slow)}}},
        },
    }


def cells(text: str, framework: str, fault: str) -> list[str]:
    """The cells of one row of the table (columns are two or more spaces apart)."""
    for line in text.splitlines():
        row = re.split(r"\s{2,}", line.strip())
        if row[:2] == [framework, fault]:
            return row[2:]
    raise AssertionError(f"no row for {framework} {fault} in:\n{text}")


def test_the_table_shows_each_framework_and_fault_and_the_verdict():
    text = render(synthetic_result())
    assert cells(text, "taskmesh", "kill") == ["1/1", "1.55 (1.55)", "1.60 (1.60)",
                                               "1.70 (1.70)", "3.00 (3.00)"]
    assert cells(text, "ray", "crash") == ["1/1", "65.00 (65.00)", "> 120 (> 120)",
                                           "> 120 (> 120)", "3.00 (3.00)"]
    assert "re-ran 4.5 s after that" in text
    assert "within 2 s (medians): met" in text
    assert "wall time 321 s" in text
    json.dumps(synthetic_result())  # the figures are plain JSON


def test_the_verdict_is_not_met_past_the_target_and_failures_are_listed():
    res = synthetic_result()
    slow = [iteration(iteration_figures(baseline(), faulted(2.4, 2.3), T0 + 0.1))]
    broken = faulted()
    broken["results"][0] = None
    slow.append(iteration(iteration_figures(baseline(), broken, T0 + 0.1)))
    res["frameworks"]["taskmesh"]["faults"]["kill"] = {"iterations": slow,
                                                       "summary": summarize(slow)}
    res["frameworks"]["taskmesh"]["status"] = "failed"
    res["frameworks"]["taskmesh"]["error"] = "some iterations failed (see below)"
    text = render(res)
    assert "(medians): NOT met" in text
    assert "taskmesh kill iteration 2 failed: with fault: task 0: no result" in text
    assert "taskmesh   failed: some iterations failed" in text


def test_check_batch_names_every_problem():
    out = {"results": [result(0, H1, T0), None, result(1, H1, T0)], "errors": [],
           "timed_out": True}
    assert check_batch(out) == ["timed out", "task 1: no result",
                                "task 2: returned 1, 1 (expected 2, 4)"]


def test_the_task_logs_its_attempts_and_the_driver_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NETCLUSTER_ADDR", H1)
    first = sleeper(3, 0.0, str(tmp_path))
    monkeypatch.setenv("NETCLUSTER_ADDR", H2)
    second = sleeper(3, 0.0, str(tmp_path))
    assert (first["value"], first["attempt"], second["attempt"]) == (9, 1, 2)
    (tmp_path / "4").write_text(f"{H1}")  # a line still being written
    starts = read_starts(str(tmp_path))
    assert [h for h, _ in starts[3]] == [H1, H2]
    assert starts[3][0][1] == first["start"] and starts[4] == []

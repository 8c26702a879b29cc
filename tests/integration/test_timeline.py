"""``taskmesh.timeline()`` on a real embedded cluster: a Chrome trace of the tasks that ran,
a slice per run on its worker's row, with the run time the worker measured."""

from __future__ import annotations

import json
import time

import pytest

import taskmesh

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def nap(s):
    time.sleep(s)
    return s


@taskmesh.remote
def fails():
    raise ValueError("no")


def test_the_timeline_draws_each_task_on_its_workers_row(fresh_cluster, tmp_path):
    taskmesh.get([nap.remote(0.05) for _ in range(12)])
    with pytest.raises(taskmesh.TaskError):
        taskmesh.get(fails.remote())
    path = tmp_path / "trace.json"
    assert taskmesh.timeline(str(path)) is None
    trace = json.loads(path.read_text())
    assert trace == taskmesh.timeline()  # (nothing ran since: the same events)
    slices = [e for e in trace if e["ph"] == "X"]
    naps = [e for e in slices if e["name"].endswith("nap")]
    assert len(naps) == 12
    assert all(45_000 <= e["dur"] < 2_000_000 for e in naps), [e["dur"] for e in naps]
    assert all(e["args"]["state"] == "FINISHED" for e in naps)
    assert all(0 < e["args"]["args_bytes"] < 1000 for e in naps)  # (one float, pickled)
    [failed] = [e for e in slices if e["name"].endswith("fails")]
    assert failed["args"]["state"] == "FAILED" and failed["args"]["error"] == "TaskError"
    # rows are named; a worker runs one task at a time: its slices do not overlap
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in slices} <= set(names)
    assert 1 <= len({(e["pid"], e["tid"]) for e in naps}) <= 2  # (2 CPUs)
    by_row: dict = {}
    for e in sorted(slices, key=lambda e: e["ts"]):
        row = by_row.setdefault((e["pid"], e["tid"]), [])
        if row:
            # slack: a slice ends when the head heard of the run, and a worker may hold a
            # result up to result_batch_s + its courier's period (~12 ms) while the next runs
            assert row[-1]["ts"] + row[-1]["dur"] <= e["ts"] + 25_000, (row[-1], e)
        row.append(e)

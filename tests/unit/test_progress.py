"""Bars made in tasks, drawn on the driver: what a task's bar writes (throttled state lines)
and how the driver folds the bars of one call site into one."""

from __future__ import annotations

import io
import json

import pytest

from taskmesh._client.output import DriverOutput
from taskmesh._client.progress import LINGER_S, BarManager
from taskmesh._context import CTX
from taskmesh._output_marks import BAR
from taskmesh.util import progress


@pytest.fixture
def in_a_worker(monkeypatch, capsys):
    """As if this process were a worker: what it writes to stderr (capsys) is read back."""
    monkeypatch.setattr(CTX, "worker_id", "w-1")
    return capsys


def _states(capsys) -> list[dict]:
    lines = [line for line in capsys.readouterr().err.split("\n") if line]
    assert all(line.startswith(BAR) for line in lines)
    return [json.loads(line[len(BAR):]) for line in lines]


def test_a_tasks_bar_reports_its_state_a_few_times_not_per_step(in_a_worker, monkeypatch):
    clock = iter(x * 0.01 for x in range(10_000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    items = list(progress.tqdm(range(100), desc="load"))  # 1 s of steps, 0.01 s each
    assert items == list(range(100))
    states = _states(in_a_worker)
    assert 5 <= len(states) <= 15  # created, about every 0.1 s, closed
    assert states[0]["n"] == 0 and states[0]["total"] == 100 and not states[0]["closed"]
    assert states[-1]["n"] == 100 and states[-1]["closed"] and states[-1]["desc"] == "load"
    assert states[0]["site"].startswith("test_progress.py:")
    assert len({s["id"] for s in states}) == 1


def test_update_and_context_manager_work_like_tqdm(in_a_worker):
    with progress.tqdm(total=10, desc="manual") as bar:
        bar.update(4)
        bar.set_description("renamed")
        bar.update(6)
    last = _states(in_a_worker)[-1]
    assert last == {**last, "n": 10, "total": 10, "closed": True, "desc": "renamed"}


def test_on_the_driver_it_is_tqdm_itself():
    import tqdm

    bar = progress.tqdm(range(3), file=io.StringIO())
    assert isinstance(bar, tqdm.tqdm)
    bar.close()


def test_the_driver_draws_one_bar_per_call_site_summing_every_tasks_bar():
    out = io.StringIO()
    bars = BarManager(out)
    for pid in (1, 2, 3):
        assert bars.feed(("10.0.0.1", pid), json.dumps(
            {"id": "a", "site": "job.py:7", "desc": "load", "n": 5, "total": 10,
             "closed": False}), now=0.0)
    assert bars.feed(("10.0.0.1", 1), json.dumps(
        {"id": "b", "site": "job.py:9", "desc": "save", "n": 1, "total": 2, "closed": False}), 0.0)
    assert not bars.feed(("10.0.0.1", 1), "not json", 0.0)
    assert len(bars.groups) == 2
    load = bars.groups[("job.py:7", "load")].bar
    assert (load.n, load.total) == (15, 30)
    for pid in (1, 2, 3):
        bars.feed(("10.0.0.1", pid), json.dumps(
            {"id": "a", "site": "job.py:7", "desc": "load", "n": 10, "total": 10,
             "closed": True}), now=1.0)
    assert (load.n, load.total) == (30, 30)
    bars.tick(1.0 + LINGER_S)
    assert list(bars.groups) == [("job.py:9", "save")]  # the finished one is closed
    assert "load: 100%" in out.getvalue().replace("\r", "\n")
    bars.tick(0, everything=True)
    assert not bars.groups


def test_state_lines_are_drawn_not_printed():
    out, err = io.StringIO(), io.StringIO()
    d = DriverOutput(out, err)
    state = {"id": "a", "site": "t.py:1", "desc": "x", "n": 1, "total": 2, "closed": False}
    d.feed([["10.0.0.1", "f", 5, 2, [BAR + json.dumps(state), "real text"]]], now=0.0)
    assert BAR not in err.getvalue() and "real text" in err.getvalue()
    assert "x:  50%" in err.getvalue().replace("\r", "\n")
    d.flush(0, everything=True)

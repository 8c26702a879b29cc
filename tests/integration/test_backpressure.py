"""Backpressure: a driver cannot pile up more than max_pending_tasks unfinished tasks."""

from __future__ import annotations

import pytest

import taskmesh

pytestmark = pytest.mark.timeout(120)


def test_backpressure_bounds_the_tasks_a_driver_has_pending():
    """With max_pending_tasks=20, a driver submitting 300 tasks in a loop waits for credit:
    the head never holds more than 20 of its unfinished tasks, and every result arrives."""
    import time as _time

    if taskmesh.is_initialized():
        taskmesh.shutdown()
    taskmesh.init(num_cpus=1, max_pending_tasks=20)
    try:
        @taskmesh.remote
        def slow(i):
            _time.sleep(0.002)
            return i

        core = taskmesh._context.CTX.core
        refs, worst = [], 0
        for i in range(300):
            refs.append(slow.remote(i))
            if i % 25 == 0:
                t = core.info("status")["tasks"]
                worst = max(worst, t["queued"] + t["running"] + t["waiting_for_deps"])
        assert taskmesh.get(refs, timeout=120) == list(range(300))
        assert 0 < worst <= 20
    finally:
        taskmesh.shutdown()


def test_remote_says_why_it_waits_at_most_every_ten_seconds(caplog):
    """A driver held back by max_pending_tasks says so in its log, with why, once per 10 s
    however many times .remote() waits."""
    import logging
    import time as _time

    if taskmesh.is_initialized():
        taskmesh.shutdown()
    taskmesh.init(num_cpus=1, max_pending_tasks=10)
    try:
        @taskmesh.remote
        def slow(i):
            _time.sleep(0.01)
            return i

        with caplog.at_level(logging.WARNING, logger="taskmesh.client"):
            refs = [slow.remote(i) for i in range(200)]  # waits about 190 times
            assert taskmesh.get(refs, timeout=120) == list(range(200))
        said = [r.getMessage() for r in caplog.records if ".remote() waits" in r.getMessage()]
        assert len(said) == 1, said  # (the loop took about 2 s: one message)
        assert "max_pending_tasks" in said[0] and "10 of this driver's tasks" in said[0]
    finally:
        taskmesh.shutdown()

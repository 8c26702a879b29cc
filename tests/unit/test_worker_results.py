"""A worker's result batch (taskmesh/_worker/results.py): batching, and results never held
behind the task that runs next."""

from __future__ import annotations

import threading
import time

from taskmesh import _protocol as P
from taskmesh._worker import results
from taskmesh._worker.results import MAX_BATCH, ResultBatch

from ..support.wait import until


class Sink:
    def __init__(self) -> None:
        self.sent: list = []
        self.event = threading.Event()

    def __call__(self, msg) -> None:
        self.sent.append([r.task_id for r in msg.results])
        self.event.set()


def _result(i: int) -> P.TaskResult:
    return P.TaskResult(bytes([i]) * 16, [], 0.0)


def test_results_wait_for_their_batch_and_leave_together():
    sink = Sink()
    batch = ResultBatch(sink, batch_s=10.0)
    batch.add(_result(1))
    batch.add(_result(2))
    assert batch.holding and not batch.due() and sink.sent == []
    batch.flush()
    assert sink.sent == [[bytes([1]) * 16, bytes([2]) * 16]] and not batch.holding


def test_a_full_batch_is_due():
    batch = ResultBatch(Sink(), batch_s=10.0)
    for i in range(MAX_BATCH):
        batch.add(_result(i))
    assert batch.due()


def test_held_results_leave_by_their_deadline_while_the_next_task_runs():
    sink = Sink()
    batch = ResultBatch(sink, batch_s=0.01)
    batch.add(_result(1))
    batch.arm()  # the worker starts a task that runs far longer than the batch may wait
    assert sink.event.wait(5.0), "the courier did not send the held result"
    assert sink.sent == [[bytes([1]) * 16]] and not batch.holding
    batch.close()


def test_an_armed_batch_flushed_by_the_worker_is_not_sent_twice():
    sink = Sink()
    batch = ResultBatch(sink, batch_s=0.05)
    batch.add(_result(1))
    batch.arm()
    batch.flush()
    time.sleep(0.15)  # past the deadline the courier was armed with
    assert sink.sent == [[bytes([1]) * 16]]
    batch.close()
    assert sink.sent == [[bytes([1]) * 16]]


def test_the_courier_parks_when_idle_and_the_next_task_wakes_it(monkeypatch):
    monkeypatch.setattr(results, "COURIER_LINGER_S", 0.05)
    sink = Sink()
    batch = ResultBatch(sink, batch_s=0.01)
    batch.add(_result(1))
    batch.arm()
    assert sink.event.wait(5.0)
    until(lambda: batch._parked, timeout=5, interval=0.01,  # no task started for a while
          what="the courier to park")
    sink.event.clear()
    batch.add(_result(2))
    batch.arm()  # a long task starts: the parked courier wakes and sends the held result
    assert sink.event.wait(5.0) and sink.sent[-1] == [bytes([2]) * 16]
    batch.close()

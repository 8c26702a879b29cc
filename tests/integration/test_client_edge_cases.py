"""Client edge cases found in review: threads sharing one connection, timeouts of 0, snapshots of put values, read-only results, leaks over many tasks."""

from __future__ import annotations

import contextlib
import gc
import threading
import time

import numpy as np
import pytest

import taskmesh
from taskmesh.errors import GetTimeoutError, TaskError

from ..support.wait import until


@contextlib.contextmanager
def cluster(n=2, **cfg):
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    taskmesh.init(num_cpus=n, **cfg)
    try:
        yield
    finally:
        taskmesh.shutdown()


@taskmesh.remote
def sleepy(s, v=None):
    time.sleep(s)
    return s if v is None else v


@taskmesh.remote
def big_after(s, n=50_000):
    time.sleep(s)
    return np.ones(n)  # 400 KB: not pushed inline, only "ready"


@taskmesh.remote
def slow_fn(s):
    time.sleep(s)
    return s


@taskmesh.remote
def ident(x):
    return x


@taskmesh.remote
def boom():
    raise KeyError("nope")


def _status():
    return taskmesh._context.CTX.core.info("status")


# --------------------------------------------------------------------------- suspected bugs


@pytest.mark.timeout(20)
def test_get_timeout_zero_returns_a_value_that_already_arrived():
    """get(ref, timeout=0) on a finished task must return the value, not time out."""
    with cluster(1):
        ref = sleepy.remote(0, 7)
        time.sleep(1.0)  # long finished; its value sits in our socket
        assert taskmesh.get(ref, timeout=0) == 7


@pytest.mark.timeout(30)
def test_two_threads_get_same_large_ref_one_with_timeout():
    """A timed-out get() in one thread must not make another thread's get() of the same
    large (not pushed) object hang."""
    with cluster(1):
        ref = big_after.remote(1.0)
        errors = []
        out = {}

        def short():
            try:
                taskmesh.get(ref, timeout=0.2)
            except GetTimeoutError:
                pass

        def long():
            try:
                out["v"] = taskmesh.get(ref, timeout=10)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t2 = threading.Thread(target=long)
        t2.start()
        time.sleep(0.05)
        t1 = threading.Thread(target=short)
        t1.start()
        t1.join(15)
        t2.join(15)
        assert not errors, errors
        assert out["v"].shape == (50_000,)


@pytest.mark.timeout(30)
def test_waiting_thread_takes_over_when_the_io_leader_leaves():
    """When the I/O leader thread's wait ends (here by its timeout), a thread waiting on the
    condition must take over the socket at once, not sleep out its 0.5 s step while its
    value sits unread."""
    with cluster(2):
        taskmesh.get([sleepy.remote(0) for _ in range(4)])  # workers warm
        lat = []
        for _ in range(3):
            slow = slow_fn.remote(2)
            b = sleepy.remote(0.15)
            done = {}

            def leader():
                with contextlib.suppress(GetTimeoutError):
                    taskmesh.get(slow, timeout=0.05)

            def follower():
                t0 = time.monotonic()
                taskmesh.get(b)
                done["t"] = time.monotonic() - t0

            x = threading.Thread(target=leader)
            x.start()
            time.sleep(0.01)  # x is the I/O leader
            y = threading.Thread(target=follower)
            y.start()
            x.join(10)
            y.join(10)
            lat.append(done["t"])
            taskmesh.get(slow)
        # b ends ~0.14 s after y starts; a 0.5 s step shows up as ~0.5 s
        assert max(lat) < 0.35, lat


@pytest.mark.timeout(20)
def test_put_numpy_snapshot_is_not_changed_by_later_writes():
    """put() must store the value as it was: writing to the array afterwards must not
    change what get(ref) returns."""
    with cluster(1):
        a = np.zeros(100_000)
        ref = taskmesh.put(a)
        a[0] = 5.0
        assert taskmesh.get(ref)[0] == 0.0


@pytest.mark.timeout(20)
def test_mutating_a_got_array_does_not_change_the_next_get():
    """Two get()s of one ref: mutating the first result must not corrupt the second."""
    with cluster(1):
        ref = big_after.remote(0)
        x = taskmesh.get(ref)
        try:
            x[0] = 42.0
        except ValueError:
            return  # read-only result, as in Ray: fine
        y = taskmesh.get(ref)
        assert y[0] == 1.0


@taskmesh.remote(num_cpus=0.5)
def half(s):
    time.sleep(s)
    return s


@taskmesh.remote
def starts_background_get(s):
    """Starts a thread that waits in get() for longer than this task runs."""
    child = half.remote(s)
    threading.Thread(target=taskmesh.get, args=(child,), daemon=True).start()
    time.sleep(0.3)
    return 1


@pytest.mark.timeout(30)
def test_get_in_a_thread_that_outlives_its_task_does_not_leak_the_cpu():
    """A task may leave a thread blocked in get(). Tasks the head then sends to that worker
    are handed back; the worker's lease must not be lost for good."""
    with cluster(1):
        assert taskmesh.get(starts_background_get.remote(2.0), timeout=10) == 1
        # the worker is idle for the head but still "blocked" for itself
        assert taskmesh.get([half.remote(0.01) for _ in range(6)], timeout=10) == [0.01] * 6
        time.sleep(2.5)  # the background get() has ended
        until(lambda: taskmesh.available_resources().get("CPU") == 1.0, timeout=5, interval=0.1,
              what=lambda: f"the CPU to be free: {taskmesh.available_resources()}")
        assert taskmesh.nodes()[0]["CPUsInUse"] == 0
        assert taskmesh.get([sleepy.remote(0, i) for i in range(4)], timeout=10) == list(range(4))


# --------------------------------------------------------------------------- leaks


@taskmesh.remote
def parent_of(n):
    return sum(taskmesh.get([ident.remote(i) for i in range(n)]))


@pytest.mark.timeout(60)
def test_head_and_client_forget_objects_once_refs_are_dropped():
    """After many tasks of every kind whose refs are dropped, the head's object directory and
    the driver's tables are empty again (no growth per task in long runs)."""
    with cluster(2):
        core = taskmesh._context.CTX.core
        for _ in range(3):
            refs = [ident.remote(i) for i in range(300)]
            assert taskmesh.get(refs) == list(range(300))
            big = [big_after.remote(0) for _ in range(5)]
            taskmesh.get(big)
            p = taskmesh.put(np.arange(100_000))
            assert taskmesh.get(ident.remote(p)).shape == (100_000,)
            bad = boom.remote()
            with pytest.raises(KeyError):
                taskmesh.get(bad)
            dropped = [sleepy.remote(0.01) for _ in range(20)]  # dropped before they finish
            nested = parent_of.remote(10)
            assert taskmesh.get(nested) == 45
            chained = ident.remote(ident.remote(1))
            assert taskmesh.get(chained) == 1
            ready, _ = taskmesh.wait(big, num_returns=5)
            del refs, big, p, bad, dropped, nested, chained, ready
            gc.collect()
        time.sleep(0.5)

        def released() -> bool:
            taskmesh.get(ident.remote(0))  # a send flushes batched releases
            time.sleep(0.3)  # (and their Release reaches the head)
            return _status()["objects"] == 0

        until(released, timeout=5, interval=0, what=lambda: f"no objects left: {_status()}")
        assert _status()["objects"] == 0
        refs = core.refs
        assert not refs.counts and not refs.values
        assert not refs.pending_owned and not refs.ready_remote and not refs.wanted
        assert not refs.subscribed and not refs.dead
        refs.check_invariants()


# --------------------------------------------------------------------------- passing checks


@pytest.mark.timeout(20)
def test_get_of_a_failed_ref_twice_raises_the_same_error_both_times():
    with cluster(1):
        ref = boom.remote()
        for _ in range(2):
            with pytest.raises(KeyError) as ei:
                taskmesh.get(ref)
            assert isinstance(ei.value, TaskError)
        ready, not_ready = taskmesh.wait([ref], timeout=0)
        assert ready == [ref]
        with pytest.raises(KeyError):  # a dependent fails with the root cause, twice too
            d = ident.remote(ref)
            taskmesh.get(d)


@pytest.mark.timeout(20)
def test_num_returns_zero_runs_and_returns_none(tmp_path):
    mark = tmp_path / "ran"

    @taskmesh.remote(num_returns=0)
    def side_effect(path):
        open(path, "w").write("x")

    with cluster(1):
        assert side_effect.remote(str(mark)) is None
        assert taskmesh.get(sleepy.remote(0, 3)) == 3
        until(mark.exists, timeout=5, what="the task's file")


@pytest.mark.timeout(20)
def test_wait_timeout_zero_is_immediate_and_splits_correctly():
    with cluster(1):
        done = sleepy.remote(0, 1)
        taskmesh.get(done)
        slow = slow_fn.remote(3)
        t0 = time.monotonic()
        ready, not_ready = taskmesh.wait([slow, done], num_returns=2, timeout=0)
        assert time.monotonic() - t0 < 0.1
        assert ready == [done] and not_ready == [slow]
        with pytest.raises(ValueError, match="num_returns"):  # as in Ray: at least 1
            taskmesh.wait([slow, done], num_returns=0, timeout=0)


@taskmesh.remote
def sum_dict(d):
    return sum(taskmesh.get(list(d.values())))


@pytest.mark.timeout(20)
def test_refs_inside_dicts_and_large_args_and_large_deps():
    with cluster(2):
        refs = {"a": ident.remote(1), "b": taskmesh.put(2), "c": big_after.remote(0, 10)}
        assert taskmesh.get(sum_dict.remote({"a": refs["a"], "b": refs["b"]})) == 3
        big_arg = np.arange(200_000)
        assert taskmesh.get(ident.remote(big_arg)).sum() == big_arg.sum()
        big_dep = big_after.remote(0, 100_000)
        assert taskmesh.get(ident.remote(big_dep)).shape == (100_000,)
        assert taskmesh.get(ident.remote(x=big_dep)).shape == (100_000,)
        assert taskmesh.get(ident.remote(b"x" * 300_000)) == b"x" * 300_000


@taskmesh.remote
def as_completed_parent(n):
    pending = [sleepy.remote(0.01, i) for i in range(n)]
    total = 0
    while pending:
        ready, pending = taskmesh.wait(pending, num_returns=1, timeout=30)
        total += taskmesh.get(ready[0])
    return total


@pytest.mark.timeout(40)
def test_nested_wait_one_at_a_time_on_one_cpu():
    with cluster(1):
        assert taskmesh.get(as_completed_parent.remote(8), timeout=30) == sum(range(8))
        assert taskmesh.get([as_completed_parent.remote(4) for _ in range(3)], timeout=30) == [6] * 3
        time.sleep(0.3)
        assert taskmesh.available_resources().get("CPU") == 1.0


@pytest.mark.timeout(40)
def test_get_is_not_starved_by_a_thread_that_submits_in_a_loop():
    """One thread submits tasks in a loop while another waits in get(): the sender holds the
    I/O lock without reading, the waiter sleeps on a condition nobody notifies, so nothing
    reads the socket and the get() ends in a false 'head has not answered' error."""
    with cluster(2):
        stop = threading.Event()

        def producer():  # a burst far faster than two workers run them, then it stops
            for _ in range(20_000):
                if stop.is_set():
                    return
                ident.remote(0)

        t = threading.Thread(target=producer, daemon=True)
        t.start()
        try:
            for k in range(3):
                assert taskmesh.get(ident.remote(k), timeout=30) == k
        finally:
            stop.set()
            t.join(10)


@pytest.mark.timeout(40)
def test_refs_dying_in_other_threads_while_submitting():
    """ObjectRef.__del__ running in other threads (and inside GC) while the main thread
    submits and gets: every result is right and no ref is released early."""
    import queue

    with cluster(2):
        q: queue.Queue = queue.Queue()

        def churn():
            while (item := q.get()) is not None:
                cyc = [item]
                cyc.append(cyc)
                del item, cyc
                gc.collect()  # the refs die here, in this thread, inside the GC

        ts = [threading.Thread(target=churn) for _ in range(2)]
        for t in ts:
            t.start()
        try:
            for k in range(40):
                keep = [ident.remote(k * 100 + i) for i in range(30)]
                q.put([ident.remote(i) for i in range(20)] + [taskmesh.put(k)])
                q.put(list(keep))  # extra refs to `keep`, dropped in another thread
                assert taskmesh.get(keep, timeout=20) == [k * 100 + i for i in range(30)]
                assert taskmesh.get(ident.remote(keep[0]), timeout=20) == k * 100
        finally:
            for _ in ts:
                q.put(None)
            for t in ts:
                t.join(10)
        core = taskmesh._context.CTX.core
        del keep
        gc.collect()
        taskmesh.get(ident.remote(0))
        time.sleep(0.3)
        taskmesh.get(ident.remote(0))
        assert len(core.refs.counts) <= 1

"""A head that dies under a waiting driver: a clear error naming it, never a hang."""

from __future__ import annotations

import time

import pytest

import taskmesh


def test_dead_head_gives_a_clear_error_not_a_hang():
    from taskmesh._context import CTX

    taskmesh.init(num_cpus=1, head_timeout_s=3.0)
    try:
        @taskmesh.remote
        def slow():
            time.sleep(30)

        ref = slow.remote()
        address = taskmesh.get_runtime_context().gcs_address
        CTX.cluster.head.kill()
        CTX.cluster.head.wait(5)
        t = time.monotonic()
        with pytest.raises(taskmesh.HeadConnectionError, match=address):
            taskmesh.get(ref)
        assert time.monotonic() - t < 10
    finally:
        taskmesh.shutdown()


def test_long_quiet_driver_is_no_false_alarm():
    taskmesh.init(num_cpus=1, head_timeout_s=3.0)
    try:
        @taskmesh.remote
        def takes(s):
            time.sleep(s)
            return s

        assert taskmesh.get(takes.remote(0)) == 0
        time.sleep(4)  # the driver hears nothing for longer than head_timeout_s ...
        assert taskmesh.get(takes.remote(5), timeout=30) == 5  # ... and a long get is fine
    finally:
        taskmesh.shutdown()

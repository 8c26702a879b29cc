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

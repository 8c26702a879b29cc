"""The node's shared-memory arena: it exists while the node runs, goes at shutdown, and a new
node agent sweeps the arena of one that was SIGKILLed."""

from __future__ import annotations

import os

import taskmesh
from taskmesh._context import CTX


def arenas() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("taskmesh-arena-")}


def test_arena_lifecycle_and_sweep_after_sigkill():
    before = arenas()
    taskmesh.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        node_pid = CTX.cluster.node.pid
        mine = {a for a in arenas() - before if a.startswith(f"taskmesh-arena-{node_pid}-")}
        assert len(mine) == 1
        assert os.path.getsize(f"/dev/shm/{next(iter(mine))}") == 64 << 20
        CTX.cluster.node.kill()  # the agent dies without cleaning up
        CTX.cluster.node.wait(10)
        assert mine <= arenas()
    finally:
        taskmesh.shutdown()
    assert mine <= arenas()  # nobody was left to remove it ...
    taskmesh.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        assert not (mine & arenas())  # ... until the next node agent on this machine swept it
    finally:
        taskmesh.shutdown()
    assert arenas() - before == set()

"""The node's shared-memory arena and spill files: they exist while the node runs, go at
shutdown, and a new node agent sweeps those of one that was SIGKILLed."""

from __future__ import annotations

import os

import numpy as np

import taskmesh

from ..support.store import spill_dirs
from taskmesh._context import CTX


def arenas() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("taskmesh-arena-")}


def test_arena_and_spill_files_lifecycle_and_sweep_after_sigkill(tmp_path):
    before = arenas()
    spill = str(tmp_path / "spill")
    taskmesh.init(num_cpus=1, object_store_memory=64 << 20, spill_dir=spill)
    try:
        node_pid = CTX.cluster.node.pid
        mine = {a for a in arenas() - before if a.startswith(f"taskmesh-arena-{node_pid}-")}
        assert len(mine) == 1
        assert os.path.getsize(f"/dev/shm/{next(iter(mine))}") == 64 << 20
        # three 30 MB objects in a 64 MB store: at least one is spilled to disk
        refs = [taskmesh.put(np.full(30 << 17, i, dtype=np.float64)) for i in range(3)]
        [spilled] = spill_dirs(spill)
        assert os.listdir(os.path.join(spill, spilled)), "nothing was spilled"
        assert [float(taskmesh.get(r)[0]) for r in refs] == [0.0, 1.0, 2.0]  # restored on get
        CTX.cluster.node.kill()  # the agent dies without cleaning up
        CTX.cluster.node.wait(10)
        assert mine <= arenas() and spill_dirs(spill) == {spilled}
        del refs
    finally:
        taskmesh.shutdown()
    assert mine <= arenas()  # nobody was left to remove them ...
    assert spill_dirs(spill) == {spilled}
    taskmesh.init(num_cpus=1, object_store_memory=64 << 20, spill_dir=spill)
    try:
        assert not (mine & arenas())  # ... until the next node agent on this machine swept them
        assert spilled not in spill_dirs(spill)
    finally:
        taskmesh.shutdown()
    assert arenas() - before == set()
    assert spill_dirs(spill) == set()


def test_a_put_waits_for_room_then_fails_naming_the_sizes_when_everything_is_in_use():
    before = arenas()
    taskmesh.init(num_cpus=1, object_store_memory=64 << 20, store_create_timeout_s=1.0)
    try:
        views = [taskmesh.get(taskmesh.put(np.full(20 << 17, i, dtype=np.float64)))
                 for i in range(3)]  # 60 MB, all being read: nothing can be spilled
        try:
            taskmesh.put(np.zeros(20 << 17))
        except taskmesh.ObjectStoreFullError as exc:
            message = str(exc)
        else:
            raise AssertionError("the put did not fail")
        assert "20971" in message and "67108864" in message, message  # the request and the store
        del views  # once the readers let go, the same put fits
        ref = taskmesh.put(np.zeros(20 << 17))
        assert taskmesh.get(ref).sum() == 0
    finally:
        taskmesh.shutdown()
    assert arenas() - before == set()

"""The store service's spill directories: private, per agent, and swept when their agent died;
its spill thread, which reports failed file I/O with the error.
(The service itself runs in a node agent: tests/integration/test_store_service.py.)"""

from __future__ import annotations

import os
import select
import uuid

import pytest

from taskmesh._node.spill import SpillThread, make_spill_dir, sweep_dead_spill_dirs
from taskmesh._node.store_service import store_socket_name
from taskmesh._store.shm import Arena, unlink


def test_spill_dir_is_private_and_named_by_pid_and_node(tmp_path):
    path = make_spill_dir(str(tmp_path / "base"), "node1", lambda pid: True)
    assert os.path.basename(path) == f"taskmesh-spill-{os.getpid()}-node1"
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert store_socket_name("node1") == "taskmesh-node-node1"


def test_dead_agents_spill_dirs_are_swept_and_nothing_else(tmp_path):
    (tmp_path / "taskmesh-spill-111-dead").mkdir()
    (tmp_path / "taskmesh-spill-111-dead" / "abcd").write_bytes(b"x")
    (tmp_path / "taskmesh-spill-222-alive").mkdir()
    (tmp_path / "unrelated-333").mkdir()
    (tmp_path / "taskmesh-spill-444-file").write_bytes(b"not ours to judge")
    removed = sweep_dead_spill_dirs(str(tmp_path), lambda pid: pid == 222)
    assert removed == ["taskmesh-spill-111-dead"]
    assert sorted(os.listdir(tmp_path)) == ["taskmesh-spill-222-alive", "taskmesh-spill-444-file",
                                            "unrelated-333"]


@pytest.fixture
def spill_thread(tmp_path):
    name = f"taskmesh-test-{uuid.uuid4().hex[:12]}"
    arena = Arena.create(name, 1 << 16)
    thread = SpillThread(arena, str(tmp_path))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop(timeout_s=5.0)
        arena.close()
        unlink(name)


def reports(thread: SpillThread, n: int) -> list:
    out: list = []
    while len(out) < n:
        assert select.select([thread.wake_fd], [], [], 5.0)[0], "no report from the spill thread"
        out += thread.completed()
    return out


def test_spill_thread_reports_failures_with_the_error_and_leaves_no_partial_file(spill_thread, tmp_path):
    spill_thread.arena.writable(0, 4)[:] = b"abcd"
    os.mkdir(tmp_path / b"bad".hex())  # a directory where the file should go: the rename fails
    (tmp_path / b"bad".hex() / "x").write_bytes(b"")
    spill_thread.submit("spill", b"bad", 0, 4)
    spill_thread.submit("spill", b"good", 0, 4)
    spill_thread.submit("restore", b"missing", 0, 4)
    spill_thread.submit("delete", b"missing")  # no file: nothing to say
    spill_thread.submit("restore", b"good", 8, 4)
    [bad, good, missing, restored] = reports(spill_thread, 4)
    assert bad[:2] == ("spill", b"bad") and bad[2].startswith("IsADirectoryError")
    assert good == ("spill", b"good", None) and restored == ("restore", b"good", None)
    assert missing[:2] == ("restore", b"missing") and missing[2].startswith("FileNotFoundError")
    assert bytes(spill_thread.arena.readonly(8, 4)) == b"abcd"
    assert sorted(os.listdir(tmp_path)) == sorted([b"bad".hex(), b"good".hex()]), "no .part file left"

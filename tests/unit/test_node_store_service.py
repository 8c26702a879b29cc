"""The store service's spill directories: private, per agent, and swept when their agent died.
(The service itself runs in a node agent: tests/integration/test_store_service.py.)"""

from __future__ import annotations

import os

from taskmesh._node.store_service import (
    make_spill_dir,
    store_socket_name,
    sweep_dead_spill_dirs,
)


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

"""taskmesh.cluster_utils.Cluster: several real node agents on this machine, joined to one head,
as users' tests would use it: resources add up, placement sees every node, a removed node's
tasks run elsewhere, a node added mid-run takes work, and shutdown leaves nothing behind."""

from __future__ import annotations

import os
import re
import time

import psutil
import pytest

import taskmesh
from taskmesh._transport import port_is_free
from taskmesh.cluster_utils import Cluster
from taskmesh.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..support.clients import run_python
from ..support.procs import descendants, kill_all, shm_entries, wait_gone
from ..support.store import spill_dirs
from ..support.wait import until

pytestmark = pytest.mark.timeout(45)


@taskmesh.remote
def node_of(delay: float = 0.0) -> str:
    time.sleep(delay)
    return taskmesh.get_runtime_context().get_node_id()


@taskmesh.remote(max_retries=3)
def long_on(victim: str, marker: str) -> str:
    """Runs for a long time on ``victim`` (after saying so in ``marker``), at once elsewhere."""
    here = taskmesh.get_runtime_context().get_node_id()
    if here == victim:
        with open(marker, "w") as f:
            f.write(here)
        time.sleep(60)
    return here


def leaked_shm(before: set[str]) -> set[str]:
    """Shared-memory files made since ``before`` whose creator is gone (files of processes
    still running belong to someone else's cluster on this machine, e.g. a parallel run)."""
    left = set()
    for name in shm_entries() - before:
        m = re.match(r"taskmesh-arena-(\d+)-", name)
        if m is None or not psutil.pid_exists(int(m.group(1))):
            if os.path.exists(os.path.join("/dev/shm", name)):
                left.add(name)
    return left


def _describe(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.append(f"{pid} {p.status()} {' '.join(p.cmdline()[:4])}")
        except psutil.Error:
            out.append(f"{pid} gone")
    return out


def _leaks_after(stop, before_shm: set[str]) -> None:
    """Run ``stop`` and check that no process it should have stopped and no shared memory
    is left (killing what is, so one failure does not spill into the next test)."""
    procs = descendants()
    try:
        stop()
    finally:
        left = wait_gone(procs)
        kill_all(left)
    assert not left, f"processes left after shutdown: {_describe(left)}"
    assert leaked_shm(before_shm) == set()


@pytest.fixture
def clusters():
    """Make Clusters with ``clusters(**kwargs)``; all are shut down and checked afterwards."""
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    before_shm = shm_entries()
    made: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        c = Cluster(**kwargs)
        made.append(c)
        return c

    def stop() -> None:
        taskmesh.shutdown()
        for c in made:
            c.shutdown()

    try:
        yield make
    finally:
        _leaks_after(stop, before_shm)


class TestThreeNodes:
    """One cluster for these tests, shut down (and checked) before the next tests start."""

    @pytest.fixture(scope="class")
    def three_nodes(self):
        """A head node of 1 CPU, a node of 1 CPU with {"special": 1, "gizmo": 2} and a node of
        2 CPUs with {"gizmo": 1}; this process connected (connect=True)."""
        if taskmesh.is_initialized():
            taskmesh.shutdown()
        before_shm = shm_entries()
        cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
        try:
            special = cluster.add_node(num_cpus=1, resources={"special": 1, "gizmo": 2})
            cluster.add_node(num_cpus=2, resources={"gizmo": 1}, wait=False)
            cluster.wait_for_nodes()
            yield cluster, special
        finally:
            _leaks_after(cluster.shutdown, before_shm)

    def test_three_nodes_are_alive_and_their_resources_add_up(self, three_nodes):
        cluster, _ = three_nodes
        assert taskmesh.is_initialized()
        nodes = [n for n in taskmesh.nodes() if n["Alive"]]
        assert sorted(n["NodeID"] for n in nodes) == sorted(
            n.node_id for n in cluster.list_all_nodes())
        assert len(nodes) == 3 and cluster.head_node.is_head and len(cluster.worker_nodes) == 2
        total = taskmesh.cluster_resources()
        assert total["CPU"] == 4 and total["special"] == 1 and total["gizmo"] == 3
        assert total["node:127.0.0.1"] == 3

    def test_a_custom_resource_of_one_node_takes_its_tasks_there(self, three_nodes):
        _, special = three_nodes
        where = node_of.options(resources={"special": 1})
        assert set(taskmesh.get([where.remote() for _ in range(4)])) == {special.node_id}

    def test_spread_puts_tasks_on_different_nodes(self, three_nodes):
        cluster, _ = three_nodes
        spread = node_of.options(scheduling_strategy="SPREAD")
        taskmesh.get([spread.remote() for _ in range(6)])  # every node's workers are up
        seen = taskmesh.get([spread.remote(0.5) for _ in range(3)])
        assert sorted(seen) == sorted(n.node_id for n in cluster.list_all_nodes())


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "sigkill"])
def test_a_removed_nodes_running_task_is_retried_on_another_node(clusters, tmp_path, graceful):
    cluster = clusters(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    victim = cluster.add_node(num_cpus=1)
    marker = str(tmp_path / "started")
    # a soft preference holds only for a node with a worker ready: wait for the victim's
    here = NodeAffinitySchedulingStrategy(victim.node_id, soft=False)
    assert taskmesh.get(node_of.options(scheduling_strategy=here).remote()) == victim.node_id
    ref = long_on.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        victim.node_id, soft=True)).remote(victim.node_id, marker)
    until(lambda: os.path.exists(marker), timeout=20, interval=0.02,
          what="the task to start on the node to remove")
    tree = {p.pid for p in psutil.Process(victim.pid).children(recursive=True)}
    cluster.remove_node(victim, allow_graceful=graceful)
    assert victim.process.poll() is not None and not wait_gone(tree, 5)
    assert cluster.worker_nodes == []
    assert taskmesh.get(ref, timeout=20) == cluster.head_node.node_id
    assert {n["NodeID"]: n["Alive"] for n in taskmesh.nodes()}[victim.node_id] is False
    with pytest.raises(ValueError, match="not a node of this cluster"):
        cluster.remove_node(victim)


def test_a_node_added_mid_run_takes_work(clusters):
    cluster = clusters(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.connect()
    refs = [node_of.remote(0.25) for _ in range(16)]  # 4 s of work for the head node alone
    late = cluster.add_node(num_cpus=1)
    seen = taskmesh.get(refs, timeout=30)
    assert late.node_id in seen and cluster.head_node.node_id in seen


def test_init_finds_the_clusters_secret_with_none_set_up(clusters, monkeypatch, tmp_path):
    monkeypatch.delenv("TASKMESH_SECRET", raising=False)
    monkeypatch.setenv("TASKMESH_SECRET_FILE", str(tmp_path / "no-such-secret"))
    cluster = clusters(initialize_head=True)
    info = taskmesh.init(address=cluster.address)
    assert info["address"] == cluster.address
    assert taskmesh.get(node_of.remote()) == cluster.head_node.node_id
    taskmesh.shutdown()
    with pytest.raises(taskmesh.SecretError):  # any other address: the usual lookup, no secret
        taskmesh.init(address="127.0.0.1:1")


def test_shutdown_leaves_no_process_socket_or_shared_memory(clusters):
    before_shm = shm_entries()
    cluster = clusters(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    kept, killed = cluster.add_node(), cluster.add_node()
    ref = taskmesh.put(b"x" * (1 << 20))  # into the head node's store
    assert taskmesh.get(node_of.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        killed.node_id, soft=False)).remote()) == killed.node_id
    cluster.remove_node(killed, allow_graceful=False)  # its agent could not remove its arena ...
    assert not [f for f in shm_entries() | spill_dirs() if killed.node_id in f]  # ... the Cluster did
    nodes, port = cluster.list_all_nodes(), int(cluster.address.rsplit(":", 1)[1])
    procs = descendants()
    del ref
    cluster.shutdown()
    assert not taskmesh.is_initialized()  # the driver was disconnected first
    assert not wait_gone(procs)
    assert leaked_shm(before_shm) == set()
    ours = [n.node_id for n in nodes + [killed]]
    assert not [f for f in shm_entries() | spill_dirs() if any(i in f for i in ours)]
    assert port_is_free("127.0.0.1", port)
    with open("/proc/net/unix") as f:
        names = f.read()
    assert f"@taskmesh-head-{port}" not in names
    assert not [n for n in nodes + [killed] if f"@taskmesh-node-{n.node_id}" in names]
    cluster.shutdown()  # again: nothing to do
    with pytest.raises(RuntimeError, match="no head"):
        cluster.address
    with pytest.raises(RuntimeError, match="shut down"):
        cluster.add_node()
    assert kept.process.poll() is not None


def test_processes_stop_at_interpreter_exit(tmp_path):
    before_shm = shm_entries()
    r = run_python("from taskmesh.cluster_utils import Cluster\n"
                   "c = Cluster(initialize_head=True)\n"
                   "c.add_node(num_cpus=1)\n"
                   "print(c.head_node.head_process.pid)\n"
                   "for n in c.list_all_nodes():\n"
                   "    print(n.pid, n.node_id)\n", timeout=40)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    pids = {int(line[0]) for line in lines}
    assert len(pids) == 3
    left = wait_gone(pids)
    kill_all(left)
    assert not left
    assert leaked_shm(before_shm) == set()
    assert not [f for f in shm_entries() | spill_dirs() if any(line[-1] in f for line in lines[1:])]


@pytest.mark.parametrize("args, name", [
    ({"num_cpu": 1}, "num_cpu"),
    ({"num_cpus": -1}, "num_cpus"),
    ({"num_cpus": 1.5}, "num_cpus"),
    ({"num_gpus": "2"}, "num_gpus"),
    ({"resources": {"CPU": 2}}, "num_cpus"),
    ({"resources": {"special": -1}}, "special"),
    ({"resources": [("special", 1)]}, "resources"),
    ({"object_store_memory": 1000}, "object_store_memory"),
])
def test_bad_node_arguments_are_named_before_anything_starts(args, name):
    procs = descendants()
    with pytest.raises(ValueError, match=name):
        Cluster(initialize_head=True, head_node_args=args, shutdown_at_exit=False)
    cluster = Cluster(shutdown_at_exit=False)
    try:
        with pytest.raises(ValueError, match=name):
            cluster.add_node(**args)
        assert cluster.head_node is None and descendants() == procs
    finally:
        cluster.shutdown()
    with pytest.raises(ValueError, match="initialize_head"):
        Cluster(connect=True, shutdown_at_exit=False)

"""A cluster of several nodes on this one machine, for testing code that uses taskmesh.

    Cluster ──spawn──▶ head          python -m taskmesh._head, 127.0.0.1:PORT
            ──spawn──▶ head node     python -m taskmesh._node ──▶ its workers and object store
            ──spawn──▶ node (add_node), one more agent per node ──▶ its workers and object store
    driver: taskmesh.init(address=cluster.address), in this process: no secret to set up

The names and the behaviour follow Ray's ``ray.cluster_utils.Cluster``. Every node is a real
node agent process with its own node id, resources, workers and object store, joined to the
head as a node on another machine would be, so resources, placement strategies, work taken
by a node that joins, and node loss (``remove_node``) can be tested on one machine. A node on
this machine talks to the head over the local socket, so the head learns at once that a
removed node is gone, however it was stopped; across machines a killed node is found by its
missing heartbeats instead (1.5 s).

Like the embedded cluster of ``init()``, a Cluster makes a secret for itself alone and hands
it to its processes in their environment; ``init()`` in this process finds it by the head's
port. Every process holds a lifeline pipe whose write end only this process holds, so nothing
outlives the test that started it, even after ``kill -9``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import api
from ._client.core import CoreClient
from ._context import CTX
from ._launch import (StartError, node_argv, process_tree, remove_agent_leftovers, spawn,
                      stop_session, wait_ready)
from ._secret import SECRET_BYTES, ClusterKey, Security
from ._transport import connect_endpoint, free_port, is_local_address, split_address
from .config import DEFAULT_PORT, Config
from .errors import HeadConnectionError

__all__ = ["Cluster", "ClusterNode"]

_IP = "127.0.0.1"
#: seconds a node agent (or the head) gets to report that it started
_START_TIMEOUT_S = 30.0
#: seconds a node agent gets to stop cleanly (say goodbye, stop its workers) before SIGKILL
_GRACE_S = 10.0
#: a node's shared memory when not given: small, since one machine holds every node's
_DEFAULT_STORE_BYTES = 128 << 20
_RESERVED = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


@dataclass(frozen=True)
class _NodeArgs:
    """A node's validated arguments (as ``add_node`` and ``head_node_args`` take them)."""

    num_cpus: int = 1
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = _DEFAULT_STORE_BYTES
    memory: int | None = None

    @classmethod
    def check(cls, given: dict[str, Any], where: str) -> "_NodeArgs":
        """The arguments of ``where``, or a ValueError naming the one that is wrong."""
        known = [f.name for f in dataclasses.fields(cls)]
        for name in given:
            if name not in known:
                raise ValueError(f"{where}: unknown node argument {name!r}; a node takes "
                                 f"{', '.join(known)}")
        values = {k: v for k, v in given.items() if v is not None}
        for name in ("num_cpus", "num_gpus", "memory"):
            v = values.get(name)
            if v is not None and (type(v) is not int or v < 0):
                raise ValueError(f"{where}: {name} must be a non-negative integer, got {v!r}")
        store = values.get("object_store_memory")
        if store is not None and (type(store) is not int or store < (1 << 20)):
            raise ValueError(f"{where}: object_store_memory must be an integer of at least "
                             f"1048576 bytes (1 MiB), got {store!r}")
        resources = values.get("resources", {})
        if not isinstance(resources, dict):
            raise ValueError(f"{where}: resources must be a dict of name -> amount, e.g. "
                             f"{{'special': 1}}, got {type(resources).__name__}")
        for name, amount in resources.items():
            if not isinstance(name, str) or not name or name.startswith("node:"):
                raise ValueError(f"{where}: resources has a bad name {name!r} (a non-empty "
                                 "string; node:<ip> is added by the head)")
            if name in _RESERVED:
                raise ValueError(f"{where}: give {name} as {_RESERVED[name]}=, not in resources")
            if (type(amount) not in (int, float) or not math.isfinite(amount) or amount < 0):
                raise ValueError(f"{where}: resources[{name!r}] must be a non-negative "
                                 f"number, got {amount!r}")
        values["resources"] = {k: float(v) for k, v in resources.items()}
        return cls(**values)


@dataclass(eq=False)
class ClusterNode:
    """One node of a :class:`Cluster`: a node agent process with its workers and object store.

    As in Ray, ``address`` is the address of the cluster's head (what ``init()`` takes) and
    ``node_ip_address`` the node's own IP; ``node_id`` is what ``taskmesh.nodes()`` and
    ``get_runtime_context().get_node_id()`` show for it.
    """

    #: the node's id at the head
    node_id: str
    #: the head's address, "127.0.0.1:PORT"
    address: str
    #: the node's IP (every node of a Cluster is on 127.0.0.1)
    node_ip_address: str
    #: the node agent process (its fork server and workers are its descendants)
    process: subprocess.Popen = field(repr=False)
    num_cpus: int
    num_gpus: int
    #: custom resources, e.g. ``{"special": 1.0}``
    resources: dict[str, float]
    object_store_memory: int
    #: the head process, on the head node only
    head_process: subprocess.Popen | None = field(default=None, repr=False)
    _ready_fd: int | None = field(default=None, repr=False)

    @property
    def is_head(self) -> bool:
        """True for the head node (it runs the head and a node agent with workers)."""
        return self.head_process is not None

    @property
    def pid(self) -> int:
        """The node agent's process id."""
        return self.process.pid


class Cluster:
    """A head and node agents on this machine, for tests: Ray's ``ray.cluster_utils.Cluster``.

    ::

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        node = cluster.add_node(num_cpus=2, resources={"special": 1})
        taskmesh.init(address=cluster.address)
        ...
        cluster.remove_node(node, allow_graceful=False)    # as if its machine died
        cluster.shutdown()

    Args:
        initialize_head: start the head and the head node now (with ``head_node_args``);
            otherwise the first :meth:`add_node` does.
        connect: call ``taskmesh.init(address=self.address)`` once the head is up (needs
            ``initialize_head``).
        head_node_args: the head node's arguments, as :meth:`add_node` takes them. The head
            node runs workers as every other node does (``num_cpus=0``: none).
        shutdown_at_exit: call :meth:`shutdown` when the interpreter exits.
    """

    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict[str, Any] | None = None,
                 shutdown_at_exit: bool = True) -> None:
        if not initialize_head and (connect or head_node_args):
            raise ValueError("connect and head_node_args need initialize_head=True (or start "
                             "the head with add_node(**args), then call connect())")
        head_args = _NodeArgs.check(head_node_args or {}, "head_node_args")
        # the processes use the cluster's own secret (in their environment), not a file
        self._config = dataclasses.replace(Config.from_env(), secret_file="")
        self._life_r, self._life_w = os.pipe()  # the lifeline: every daemon holds the read end
        self._head: subprocess.Popen | None = None
        self._port: int | None = None
        self._security: Security | None = None
        self._ports: set[int] = set()  # every head this Cluster ran (a removed head node's too)
        self._head_node: ClusterNode | None = None
        self._worker_nodes: list[ClusterNode] = []
        self._shut_down = False
        self._at_exit = shutdown_at_exit
        if shutdown_at_exit:
            atexit.register(self.shutdown)
        if initialize_head:
            try:
                self._start_head(head_args)
                if connect:
                    self.connect()
            except BaseException:
                self.shutdown()
                raise

    # ------------------------------------------------------------------ what it holds

    @property
    def address(self) -> str:
        """The head's address, "127.0.0.1:PORT", for ``taskmesh.init(address=...)``."""
        if self._port is None:
            raise RuntimeError("this Cluster has no head: create it with initialize_head=True "
                               "or call add_node() first")
        return f"{_IP}:{self._port}"

    @property
    def head_node(self) -> ClusterNode | None:
        """The head node (the head and a node agent), or None before it is started."""
        return self._head_node

    @property
    def worker_nodes(self) -> list[ClusterNode]:
        """The nodes added with :meth:`add_node` after the head, not removed, in order."""
        return list(self._worker_nodes)

    def list_all_nodes(self) -> list[ClusterNode]:
        """The head node (if any), then the worker nodes."""
        head = [self._head_node] if self._head_node is not None else []
        return head + self._worker_nodes

    def __repr__(self) -> str:
        where = self.address if self._port is not None else "no head"
        return f"Cluster({where}, {len(self.list_all_nodes())} nodes)"

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ nodes

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start one more node agent, joined to the head. With no head yet, start the head
        and the head node instead (always waiting for them), as ``initialize_head`` does.

        Args:
            wait: return once the head lists the node as alive (the agent reports ready when
                the head has welcomed it); otherwise at once (see :meth:`wait_for_nodes`).
            **node_args: ``num_cpus`` (default 1; workers), ``num_gpus`` (default 0),
                ``resources`` (custom resources, e.g. ``{"special": 1}``),
                ``object_store_memory`` (bytes of shared memory, default 128 MiB) and
                ``memory`` (bytes tasks may reserve). Anything else is a ValueError.

        Returns:
            The new :class:`ClusterNode`.
        """
        args = _NodeArgs.check(node_args, "add_node()")
        self._check_open()
        if self._head_node is None:
            return self._start_head(args)
        assert self._security is not None
        node, ready = self._spawn_agent(args, self._security)
        self._worker_nodes.append(node)
        if not wait:
            node._ready_fd = ready
            return node
        try:
            self._await_start(node, ready, _START_TIMEOUT_S)
        except BaseException:
            self._worker_nodes.remove(node)
            self._stop_node(node, graceful=False)
            raise
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node, to test what node loss does to your code.

        With ``allow_graceful`` the agent gets SIGTERM: it tells the head it is leaving and
        stops its workers, as ``taskmesh stop`` does. Without, the agent and its workers get
        SIGKILL, as if the machine died; the head then declares the node dead on its own
        (at once here, through the closed local connection). Either way the head runs the
        node's tasks again elsewhere (``max_retries``) and rebuilds lost results.

        Removing the head node stops the whole cluster (every node, then the head); the
        next :meth:`add_node` starts a new head, at a new address.
        """
        if node is self._head_node:
            for other in list(self._worker_nodes):
                self._stop_node(other, allow_graceful)
            self._worker_nodes.clear()
            self._stop_node(node, allow_graceful)
            assert self._head is not None and self._port is not None
            stop_session(self._head, grace=_GRACE_S if allow_graceful else None)
            CTX.test_clusters.pop(self._port, None)
            self._head_node = self._head = self._port = self._security = None
            return
        if node not in self._worker_nodes:
            raise ValueError(f"node {getattr(node, 'node_id', node)!r} is not a node of this "
                             "cluster (already removed, or another cluster's)")
        self._worker_nodes.remove(node)
        self._stop_node(node, allow_graceful)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Wait until the head lists every node added and not removed as alive.

        Raises:
            TimeoutError: some node is not alive at the head after ``timeout`` seconds.
            RuntimeError: a node added with ``wait=False`` failed to start (with its reason).
        """
        deadline = time.monotonic() + timeout
        for node in self.list_all_nodes():
            if node._ready_fd is not None:
                ready, node._ready_fd = node._ready_fd, None
                self._await_start(node, ready, max(0.01, deadline - time.monotonic()))
        expected = {n.node_id for n in self.list_all_nodes()}
        if not expected:
            return
        with self._status_client() as core:
            while True:
                alive = {n["NodeID"] for n in core.info("nodes") if n["Alive"]}
                missing = sorted(expected - alive)
                if not missing:
                    return
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"node(s) {', '.join(missing)} not alive at the head "
                                       f"{self.address} after {timeout:g} s")
                time.sleep(0.05)

    # ------------------------------------------------------------------ the driver

    def connect(self) -> dict[str, Any]:
        """``taskmesh.init(address=self.address)`` for this process; returns what it returns."""
        return api.init(address=self.address)

    def shutdown(self) -> None:
        """Stop every process this Cluster started and remove their shared memory and spill
        files. If this process is connected to the cluster, it disconnects first
        (``taskmesh.shutdown()``). Safe to call twice; also runs at interpreter exit when
        ``shutdown_at_exit`` was given."""
        if self._shut_down:
            return
        self._shut_down = True
        if self._at_exit:
            atexit.unregister(self.shutdown)
        if self._connected_here():
            api.shutdown()
        nodes = self.list_all_nodes()
        daemons = [n.process for n in nodes] + ([self._head] if self._head is not None else [])
        trees = [process_tree(p) for p in daemons]  # before they exit and orphan their workers
        for node in nodes:
            if node._ready_fd is not None:
                os.close(node._ready_fd)
                node._ready_fd = None
        os.close(self._life_w)  # every daemon sees EOF and stops; the head tells the nodes
        deadline = time.monotonic() + _GRACE_S
        for proc, tree in zip(daemons, trees):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            stop_session(proc, tree=tree)  # SIGKILL whatever did not stop
        for node in nodes:
            remove_agent_leftovers(node.pid, node.node_id, self._config.spill_dir)
        os.close(self._life_r)
        if self._port is not None:
            CTX.test_clusters.pop(self._port, None)
        self._head_node = self._head = self._port = self._security = None
        self._worker_nodes.clear()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._shut_down:
            raise RuntimeError("this Cluster was shut down; make a new one")

    def _start_head(self, args: _NodeArgs) -> ClusterNode:
        """Start the head and the head node's agent together (the agent retries its connect
        until the head listens); a port taken meanwhile means a new one."""
        key = ClusterKey(secrets.token_bytes(SECRET_BYTES), "a secret made for this test cluster")
        security = Security(key, self._config.encrypt)
        last_error: Exception | None = None
        for _attempt in range(3):
            port = free_port()
            head, head_ready = spawn("taskmesh._head", ["--host", _IP, "--port", str(port),
                                                        "--dashboard-port", "0",
                                                        "--log-level", "WARNING"],
                                     self._config, lifeline_fd=self._life_r,
                                     secret_env=key.env())
            node, node_ready = self._spawn_agent(args, security, port)
            try:
                try:
                    wait_ready(head, head_ready, "the test cluster's head", _START_TIMEOUT_S)
                except StartError:
                    os.close(node_ready)
                    raise
                wait_ready(node.process, node_ready, "the head node's agent", _START_TIMEOUT_S)
            except StartError as exc:
                last_error = exc
                self._stop_node(node, graceful=False)
                stop_session(head)
                if "already in use" not in str(exc):
                    break
                continue
            node.head_process = head
            self._head, self._port, self._security, self._head_node = head, port, security, node
            self._ports.add(port)
            CTX.test_clusters[port] = security  # init(address=...) here finds the secret
            return node
        raise HeadConnectionError(f"could not start the test cluster's head: {last_error}")

    def _spawn_agent(self, args: _NodeArgs, security: Security,
                     port: int | None = None) -> tuple[ClusterNode, int]:
        """Start a node agent (not waiting for it); return the node and its ready pipe."""
        address = f"{_IP}:{port if port is not None else self._port}"
        node_id = uuid.uuid4().hex[:12]
        config = dataclasses.replace(self._config, object_store_memory=args.object_store_memory)
        argv = node_argv(address, args.num_cpus, json.dumps(args.resources), args.num_gpus,
                         memory=args.memory, node_id=node_id)
        proc, ready = spawn("taskmesh._node", argv, config, lifeline_fd=self._life_r,
                            secret_env=security.key.env())
        node = ClusterNode(node_id, address, _IP, proc, args.num_cpus, args.num_gpus,
                           dict(args.resources), args.object_store_memory)
        return node, ready

    def _await_start(self, node: ClusterNode, ready: int, timeout: float) -> None:
        """Wait for the agent's READY (the head has welcomed it) or say why it did not come."""
        try:
            wait_ready(node.process, ready, f"node {node.node_id}", timeout)
        except StartError as exc:
            if node.process.poll() is None:
                raise TimeoutError(f"node {node.node_id} did not join the head at "
                                   f"{node.address} within {timeout:g} s") from None
            raise RuntimeError(f"node {node.node_id} could not start: {exc}") from None

    def _stop_node(self, node: ClusterNode, graceful: bool) -> None:
        if node._ready_fd is not None:
            os.close(node._ready_fd)
            node._ready_fd = None
        stop_session(node.process, grace=_GRACE_S if graceful else None)
        remove_agent_leftovers(node.pid, node.node_id, self._config.spill_dir)

    @contextlib.contextmanager
    def _status_client(self) -> Iterator[CoreClient]:
        """A connection to the head as ``taskmesh status`` makes one (not a driver)."""
        assert self._security is not None
        core = CoreClient(self._config, connect_endpoint(_IP, self._port or 0), "status",
                          self.address, self._security)
        try:
            core.handshake({"pid": os.getpid()})
            yield core
        finally:
            core.close()

    def _connected_here(self) -> bool:
        """True if this process's driver is connected to a head of this Cluster."""
        core = CTX.core
        if core is None or CTX.cluster is not None:  # not connected, or to its embedded cluster
            return False
        try:
            host, port = split_address(core.address, DEFAULT_PORT)
        except ValueError:
            return False
        return port in self._ports and is_local_address(host)

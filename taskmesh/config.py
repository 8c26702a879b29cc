"""The one frozen runtime configuration, built from arguments and ``TASKMESH_*`` environment variables.

Every process (driver, head, node agent, worker) builds its :class:`Config` once and passes it
explicitly; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field

DEFAULT_PORT = 7300
#: the head's HTTP endpoints (/metrics, the dashboard): Ray's port
DASHBOARD_PORT = 8265


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def _env_int(name: str, default: int) -> int:
    return int(_env_float(name, default))


def default_run_dir() -> str:
    """Where CLI-started processes record themselves (``taskmesh stop`` and ``address="auto"`` read it)."""
    env = os.environ.get("TASKMESH_RUN_DIR")
    if env:
        return env
    return os.path.join(tempfile.gettempdir(), f"taskmesh-{os.getuid()}")


@dataclass(frozen=True)
class Config:
    """Tunables shared by all taskmesh processes. Defaults suit a laptop or a lab cluster."""

    #: seconds between node-agent heartbeats to the head
    heartbeat_interval_s: float = 0.25
    #: a node silent for this long is declared dead by the head (its tasks run elsewhere, its
    #: lost objects are rebuilt); it joins again as a new incarnation if it comes back
    heartbeat_timeout_s: float = 1.5
    #: how long a driver or node waits for the head to answer the handshake
    connect_timeout_s: float = 5.0
    #: a head silent this long is taken for dead: a driver waiting in get()/wait() raises
    #: HeadConnectionError; a node agent says so in its log and keeps trying (see below)
    head_timeout_s: float = 3.0
    #: the head holds at most this many bytes of one driver's (or worker's) objects inline
    #: (small puts and results, and any put from a machine without a node); a put beyond
    #: it is refused: readers of the object get ObjectStoreFullError
    max_head_bytes_per_client: int = 2 << 30
    #: a driver waits in .remote() while this many of its tasks are submitted and not yet
    #: finished (backpressure: the head's memory for pending tasks stays bounded)
    max_pending_tasks: int = 100_000
    #: node agents fork workers from a pre-imported fork server (about 1 ms each) instead of
    #: starting a new interpreter (0.1-0.2 s of CPU each)
    worker_fork_server: bool = True
    #: a node agent whose head stays silent this long shuts itself down
    head_lost_exit_s: float = 60.0
    #: results up to this size are pushed to their owner eagerly; larger ones on request
    inline_push_bytes: int = 64 * 1024
    #: a pickle buffer larger than this travels as its own ZeroMQ frame (no copy into the header)
    frame_threshold_bytes: int = 64 * 1024
    #: the head queues at most this many tasks on one worker (short tasks only; see policy.py)
    max_pipeline: int = 64
    #: head and workers busy-wait up to this long for the next message before sleeping, while
    #: messages keep arriving that quickly (see _spin.py); 0 turns spinning off
    spin_s: float = 0.0003
    #: a worker keeps results of fast tasks back at most this long to send them in one batch
    result_batch_s: float = 0.002
    #: extra idle workers (started to cover blocked ones) exit after this long idle
    idle_worker_timeout_s: float = 10.0
    #: values larger than this go to the node's shared-memory object store (put() and task
    #: results); smaller ones travel inline in messages
    store_threshold_bytes: int = 100 * 1024
    #: bytes of shared memory per node for the object store (0: 30% of RAM, within /dev/shm)
    object_store_memory: int = 0
    #: a create (or a restore from disk) that finds no room waits this long for spills and
    #: released pins, then fails with ObjectStoreFullError
    store_create_timeout_s: float = 10.0
    #: where node agents spill objects: each makes its own directory in it
    #: (``taskmesh-spill-<pid>-<node_id>``, mode 0700, removed at exit); "": the system temp dir
    spill_dir: str = ""
    #: the cluster secret file ("": $TASKMESH_SECRET, $TASKMESH_SECRET_FILE or
    #: ~/.taskmesh/cluster-secret, in that order; see _secret.py). Not read from the
    #: environment here: _secret.find_secret reads $TASKMESH_SECRET_FILE in its turn
    secret_file: str = ""
    #: encrypt traffic between machines (CurveZMQ; AES-GCM for object transfers). Off still
    #: authenticates every connection, but anyone on the network can read and, on the head's
    #: port, replay what is sent: only for a network nobody else can reach (docs/security.md)
    encrypt: bool = True
    #: the largest message frame a daemon accepts; a larger one is dropped (and, over TCP,
    #: the connection that sent it is closed by ZeroMQ)
    max_message_bytes: int = 1 << 30
    #: the head keeps this many recent events (task, actor, object, node, driver state
    #: changes: _head/events.py) for metrics, the dashboard and the timeline; 0: no stream
    event_ring: int = 10_000
    #: where each node keeps its log files (its workers' output, in ``<log_dir>/<node id>/``);
    #: "": ``<run_dir>/logs``
    log_dir: str = ""
    #: a worker's output file is rotated at this size; this many old ones are kept
    log_rotate_bytes: int = 64 << 20
    log_rotate_backups: int = 3
    #: bytes a second of its workers' output a node forwards to drivers (beyond it: counted,
    #: kept only in the files); 0 forwards none
    log_forward_rate: int = 1 << 20
    #: the state API (``taskmesh list tasks``, ``taskmesh.util.state``) keeps the rows of this
    #: many ended tasks (the unfinished ones all, counts by function forever); 0 turns the
    #: head's state view off. It is fed by the event stream: with ``event_ring`` 0 it is off
    state_finished_tasks: int = 10_000
    #: directory of state files for CLI-started processes
    run_dir: str = field(default_factory=default_run_dir)
    #: where nodes keep runtime environments (pip environments, unpacked packages), shared
    #: by the nodes of one machine; "": ``<run_dir>/runtime_env``
    runtime_env_dir: str = ""

    def runtime_env_cache(self) -> str:
        """The directory of this machine's runtime environments."""
        return self.runtime_env_dir or os.path.join(self.run_dir, "runtime_env")

    def node_log_dir(self, node_id: str) -> str:
        """The directory of one node's log files (the head's: ``head-<port>``)."""
        return os.path.join(self.log_dir or os.path.join(self.run_dir, "logs"), node_id)

    @classmethod
    def from_env(cls, **overrides: object) -> "Config":
        """Defaults, then ``TASKMESH_<FIELD>`` environment variables, then ``overrides``."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            env_name = "TASKMESH_" + f.name.upper()
            # run_dir reads its variable in its default; the secret's variables are read by
            # _secret.find_secret, which ranks $TASKMESH_SECRET above $TASKMESH_SECRET_FILE
            if env_name in os.environ and f.name not in ("run_dir", "secret_file"):
                if f.type in ("str", str):
                    values[f.name] = os.environ[env_name]
                elif f.type in ("bool", bool):
                    values[f.name] = os.environ[env_name].strip().lower() in ("1", "true", "yes", "on")
                elif f.type in ("int", int):
                    values[f.name] = _env_int(env_name, 0)
                else:
                    values[f.name] = _env_float(env_name, 0.0)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Environment variables that make a child process build the same Config."""
        env = {}
        for f in dataclasses.fields(self):
            if f.name == "secret_file" and not self.secret_file:
                continue  # the child finds the secret as this process did
            env["TASKMESH_" + f.name.upper()] = str(getattr(self, f.name))
        return env

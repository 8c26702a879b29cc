"""Actors at the head: one record per actor, and the decisions about its life.

    CreateActor ──▶ PENDING: the constructor waits for its inputs, then for a node
                      │ placed: an idle pool worker (or a fresh one) is dedicated to it
                      ▼
                  CREATING ──constructor returned──▶ ALIVE ──calls, in submission order──▶ its worker
                      │ raised                          │ its process or node died
                      ▼                                 ▼
                    DEAD ◀────no restarts left──── RESTARTING: constructor again on a new worker

An actor's worker leaves its node's pool (``NodeRec.actor_workers``), and the node starts a
replacement, so actors never eat the task pool. Calls are queued per actor in the order the
head received them (each caller's messages arrive in order, so each caller's calls run in
its order); a call leaves the queue only when every call before it was sent. The worker runs
them in that order (or up to ``max_concurrency`` at once). The head owns all of this in
``HeadState``; what lives here is the record and the pure decisions.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .. import _protocol as P

PENDING, CREATING, ALIVE, RESTARTING, DEAD = "pending", "creating", "alive", "restarting", "dead"

#: the fields of ``CreateActor.options`` a handle needs, sent back in ``ActorReply``
HANDLE_FIELDS = ("class_name", "methods", "is_async", "max_task_retries")

#: the value of an actor's handle object (P.actor_handle_id): a pickled None, never read; the
#: object exists to be counted
HANDLE_VALUE = P.SerializedObject(P.SerializedObject.VALUE, b"\x80\x05N.", ())


class ActorRec:
    __slots__ = ("actor_id", "spec", "owner", "options", "state", "worker", "node", "calls",
                 "restarts_left", "restarts", "cause", "no_restart", "ctor",
                 "name_key", "warned", "gpu_alloc", "out_of_scope")

    def __init__(self, spec: Any, owner: bytes, options: dict) -> None:
        self.actor_id: bytes = spec.task_id
        self.spec = spec  # the constructor's TaskSpec, run again on each restart
        self.owner = owner
        self.options = options
        self.state = PENDING
        self.worker: Any = None  # WorkerRec while placed
        self.node: Any = None  # NodeRec while placed
        self.calls: deque = deque()  # TaskRecs of calls not sent yet, in submission order
        self.restarts_left: int = options.get("max_restarts") or 0  # (checked: an int)
        self.restarts = 0
        self.cause = ""  # why it died (or last died)
        self.no_restart = False  # killed by taskmesh.kill(no_restart=True)
        self.ctor: Any = None  # the TaskRec of the running constructor
        self.warned = False  # its owner was told that no node can hold it
        self.gpu_alloc: dict | None = None  # GPU device -> units, while placed
        self.out_of_scope = False  # no handle is left: it ends once its calls are done
        name = options.get("name") or ""
        self.name_key = (str(options.get("namespace") or ""), name) if name else None

    @property
    def resources(self) -> dict:
        """What it holds on its node while placed."""
        return self.spec.resources

    @property
    def class_name(self) -> str:
        return str(self.options.get("class_name", "actor"))

    @property
    def detached(self) -> bool:
        return bool(self.options.get("detached"))

    def label(self) -> str:
        """How errors and logs name the actor."""
        name = f" {self.name_key[1]!r}" if self.name_key else ""
        return f"actor {self.class_name}{name} ({self.actor_id.hex()})"

    def handle_info(self) -> dict:
        info = {k: self.options[k] for k in HANDLE_FIELDS if k in self.options}
        info["actor_id"] = self.actor_id
        info["function_id"] = self.spec.function_id
        return info


#: CreateActor options the head reads, and the type each must have when present
_OPTION_TYPES = {"class_name": str, "name": str, "namespace": str, "max_restarts": int,
                 "max_task_retries": int, "max_concurrency": int}


def options_problem(options: dict) -> str | None:
    """Why ``CreateActor.options`` cannot be used (an option of the wrong type), or None."""
    for key, kind in _OPTION_TYPES.items():
        value = options.get(key)
        if value is not None and type(value) is not kind:
            return f"option {key} must be {kind.__name__}, not {type(value).__name__}"
    return None


def will_restart(actor: ActorRec) -> bool:
    """After its worker died: run the constructor again (True) or die (False)."""
    return not actor.no_restart and actor.state != DEAD and actor.restarts_left != 0


def split_in_flight(calls: list) -> tuple[list, list]:
    """Calls that were sent to a worker that died: (retry, fail). A call is retried while its
    retries last (its ``max_task_retries``, the method's or else the actor's: -1 forever, 0
    never, as in Ray); those retried go back to the front of the actor's queue, in order."""
    retry, fail = [], []
    for t in calls:
        if t.retries_left != 0:
            if t.retries_left > 0:
                t.retries_left -= 1
            retry.append(t)
        else:
            fail.append(t)
    return retry, fail


def died_message(actor: ActorRec, call_name: str | None = None) -> str:
    """The ActorDiedError text for a call (or for the actor itself)."""
    what = f"call {call_name} failed: " if call_name else ""
    return f"{what}{actor.label()} died: {actor.cause}"

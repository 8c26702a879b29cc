"""The actor table: every actor's whole flow at the head, from CreateActor to its end.

    CreateActor ──▶ PENDING ──inputs ready──▶ placed on a node ──worker──▶ CREATING
        ──constructor returned──▶ ALIVE ──calls, in order per actor──▶ its worker
        worker or node lost ──▶ RESTARTING (restarts left) or DEAD (calls fail: ActorDiedError)
        last handle freed / owner gone / kill() ──▶ DEAD

An actor takes a worker out of its node's pool for its life (and the resources it asked for),
so its calls never wait behind other tasks. Its calls are task records (the task table's)
queued in the actor's own list and sent one by one as each is ready and all before it were
sent. The pure decisions (restart or die, which lost calls to retry, option checks) live in
``actors.py`` with ``ActorRec``; this table applies them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .. import _protocol as P
from .._protocol import actor_handle_id, return_ids
from .._resources import GPU, assign_gpus, describe
from . import actors as A
from .actors import ActorRec
from .context import ERR, Context
from .policy import fits
from .records import ASSIGNED, DONE, READY, NodeRec, TaskRec, WorkerRec, add_to, require, sub_from

if TYPE_CHECKING:
    from .runtime_envs import RuntimeEnvs
    from .directory import ObjectDirectory
    from .membership import Membership
    from .scheduler import Scheduler
    from .tasks import TaskTable


#: dead actors remembered (calls to older ones fail with "no actor with id ... is known")
MAX_DEAD_ACTORS = 1000


class ActorTable:
    """Actors, their names, and those waiting for a node with room."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.out = ctx.out
        self.events = ctx.events
        self.log = ctx.log
        self.dropped = ctx.dropped
        self.chores = ctx.chores
        self.members: Membership
        self.directory: ObjectDirectory
        self.table: TaskTable
        self.scheduler: Scheduler
        self.runtime_envs: RuntimeEnvs
        self.actors: dict[bytes, ActorRec] = {}
        self.actor_names: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> live actor
        self.unplaced: list[ActorRec] = []  # constructors ready, but no node has room yet
        self.dead_actors: deque[bytes] = deque()  # oldest first

    def place_waiting(self) -> None:
        """Try again to place the actors no node had room for."""
        if self.unplaced:
            waiting, self.unplaced = self.unplaced, []
            for actor in waiting:
                self.place_actor(actor)

    def owner_left(self, peer: bytes) -> None:
        """Its creator is gone: an actor that is not detached dies with it."""
        if self.actors:
            for actor in list(self.actors.values()):
                if actor.owner == peer and not actor.detached and actor.state != A.DEAD:
                    self.kill_actor(actor, "its owner (the process that created it) exited")

    def on_create_actor(self, peer: bytes, msg: P.CreateActor) -> None:
        """CreateActor: check it, name it, make its handle object and start its constructor (or
        refuse, saying why)."""
        spec, opts = msg.spec, msg.options
        reply = msg.request_id
        problem = A.options_problem(opts)
        if (problem is not None or len(spec.task_id) != 16 or spec.actor_id != spec.task_id
                or spec.method != "__init__" or spec.task_id in self.actors
                or spec.task_id in self.table.tasks or return_ids(spec.task_id, 1)[0] in self.directory.objects
                or actor_handle_id(spec.task_id) in self.directory.objects):
            problem = problem or "its id is taken or malformed"
            self.dropped.event("invalid actor creation", "dropped CreateActor %s from %r: %s",
                               spec.task_id.hex(), peer, problem)
            if reply:
                self.out.send(peer, P.ActorReply(reply, {"error": f"invalid actor creation: "
                                                                  f"{problem}"}))
            else:
                self.ctx.reject(peer, "CreateActor", f"actor {spec.name}: invalid actor creation: "
                             f"{problem}")
            return
        if spec.runtime_env and spec.runtime_env not in self.runtime_envs.envs:
            problem = f"its runtime_env {spec.runtime_env} was never registered with the head"
            if reply:
                self.out.send(peer, P.ActorReply(reply, {"error": problem}))
            else:
                self.ctx.reject(peer, "CreateActor", f"actor {spec.name}: {problem}")
            return
        actor = ActorRec(spec._replace(num_returns=1), peer, opts)
        if actor.name_key is not None:
            existing = self.actors.get(self.actor_names.get(actor.name_key, b""))
            if existing is not None:
                if reply:
                    info = existing.handle_info() if opts.get("get_if_exists") else {
                        "error": f"an actor named {actor.name_key[1]!r} already exists "
                                 f"({existing.label()}); pass get_if_exists=True to get it"}
                    self.out.send(peer, P.ActorReply(reply, info))
                return
            self.actor_names[actor.name_key] = actor.actor_id
        self.actors[actor.actor_id] = actor
        # the object its handles refer to: owned by the creator, counted like any object;
        # when it is freed, an actor that is neither detached nor named ends (handle_freed)
        self.directory.add_handle(actor_handle_id(actor.actor_id), peer)
        if reply:
            self.out.send(peer, P.ActorReply(reply, actor.handle_info()))
        self._start_constructor(actor)

    def _start_constructor(self, actor: ActorRec) -> None:
        """Run the actor's constructor (again): its inputs first, then a worker."""
        old = actor.ctor
        if old is not None:
            self.table.drop_constructor_run(old)
        spec = actor.spec
        t = TaskRec(spec, actor.owner, self.table.job_of(actor.owner, spec.parent))
        t.retries_left = 0  # a lost constructor is a restart, counted by max_restarts
        actor.ctor = t
        self.directory.constructor_pending(return_ids(spec.task_id, 1)[0], actor.owner)
        if spec.function_id not in self.table.functions:
            self._actor_dead(actor, "its class was never registered with the head")
            return
        missing = next((d for d in spec.deps if d not in self.directory.objects), None)
        if missing is not None:
            self._actor_dead(actor, f"its constructor's argument {missing.hex()} was freed")
            return
        self.table.admit(t)  # (TaskSubmitted)

    def actor_task_ready(self, t: TaskRec) -> None:
        """An actor's constructor or call has its inputs: place the actor, or send the call in
        its turn."""
        actor = self.actors.get(t.spec.actor_id)
        if actor is None:
            return
        if t.spec.method == "__init__":
            if actor.ctor is t and actor.state in (A.PENDING, A.RESTARTING):
                t.state = READY
                self.place_actor(actor)
            elif actor.ctor is t and actor.state == A.CREATING and actor.worker is not None:
                t.state = READY  # its worker could not read its inputs: again, once they exist
                self._send_constructor(actor)
            return
        t.state = READY
        if not t.queued:  # a call sent before and coming back (its inputs were lost)
            t.queued = True
            actor.calls.appendleft(t)
        self._dispatch_actor(actor)

    def place_actor(self, actor: ActorRec) -> None:
        """Pick a node for a ready constructor: where its resources fit, an idle worker (fast),
        then the fewest actors. No node fits: it waits in ``unplaced`` (the owner is told)."""
        if actor.state == A.DEAD or actor.node is not None:  # (dead, or placed already)
            return
        demand = actor.resources
        env = actor.spec.runtime_env
        best = None
        for n in self.members.nodes.values():
            if n.alive and fits(n.avail, demand):
                key = (not (n.env_idle.get(env) if env else n.idle),
                       len(n.actor_workers) + len(n.actor_queue))
                if best is None or key < best[0]:
                    best = (key, n)
        if best is None:
            if actor not in self.unplaced:
                self.unplaced.append(actor)
                if not actor.warned and not any(fits(n.total, demand)
                                                for n in self.members.nodes.values() if n.alive):
                    actor.warned = True
                    self.out.send(actor.owner, P.Notice("warning", (
                        f"no node can start {actor.label()} now: it needs {describe(demand)}. "
                        "It waits until such a node joins.")))
            return
        node = best[1]
        if demand.get(GPU):
            alloc = assign_gpus(node.gpus, demand[GPU])
            if alloc is None:  # GPU units enough in total, not on whole devices: wait
                if actor not in self.unplaced:
                    self.unplaced.append(actor)
                return
            actor.gpu_alloc = alloc
        sub_from(node.avail, demand)
        actor.node = node
        pool = node.env_idle.get(env) if env else node.idle
        if pool:
            w = pool.pop()
            node.workers.pop(w.peer, None)
            self.start_actor(actor, w)
        elif not env:  # the next worker that joins this node is the actor's
            node.actor_queue.append(actor)
            if node.starting < len(node.actor_queue):  # none on its way for it yet
                node.starting += 1
                self.out.send(node.peer, P.StartWorkers(1))
        else:  # the next worker of its runtime environment that joins this node is the actor's
            node.actor_queue.append(actor)
            waiting = sum(1 for a in node.actor_queue if a.spec.runtime_env == env)
            starting = node.env_starting.get(env, 0)
            if starting < waiting:
                node.starting += 1
                node.env_starting[env] = starting + 1
                self.out.send(node.peer, P.StartWorkers(1, env, self.runtime_envs.envs.get(env, "")))

    def start_actor(self, actor: ActorRec, w: WorkerRec) -> None:
        """A worker leaves its node's pool for the actor (a replacement starts) and gets the
        constructor."""
        node = w.node
        node.actor_workers[w.peer] = w
        if (node.alive and not w.env
                and len(node.workers) + node.starting - len(node.actor_queue) < node.num_cpus):
            node.starting += 1  # a replacement keeps the pool at its size
            self.out.send(node.peer, P.StartWorkers(1))
        w.actor = actor
        w.lease = None
        actor.worker = w
        actor.state = A.CREATING
        self._send_constructor(actor)

    def _send_constructor(self, actor: ActorRec) -> None:
        """Hand the ready constructor to the actor's worker."""
        t = actor.ctor
        w = actor.worker
        if t is None or t.state != READY:  # (cannot happen: placed only when ready)
            return
        if t.spec.deps and not self.directory.inputs_ready(t):  # one is being made again: wait
            self.table.wait_inputs(t)
            return
        t.state = ASSIGNED
        t.worker = w
        w.assigned.append(t)
        self.scheduler.started(t, w)
        self.out.add(w.peer, P.Execute, self.scheduler.assignment(t, w))

    def actor_created(self, actor: ActorRec, t: TaskRec, value: P.SerializedObject | None) -> None:
        """The constructor returned: the actor is alive (its calls go), or it failed and the
        actor is dead."""
        if actor.ctor is not t:
            return
        actor.ctor = None
        if value is None or value.is_error:  # the worker says why, as a system error
            why = (value.read_system_error()[1] if value is not None
                   and value.flags == P.SerializedObject.SYSTEM_ERROR else "its constructor failed")
            self.kill_actor(actor, why)
            return
        actor.state = A.ALIVE
        self.events.add(("ActorCreated", self.ctx.now, actor.actor_id, actor.class_name,
                         actor.node.node_id if actor.node is not None else "",
                         actor.name_key[1] if actor.name_key else ""))
        self._dispatch_actor(actor)

    def _dispatch_actor(self, actor: ActorRec) -> None:
        """Send an alive actor's calls whose turn came (all before them sent) to its worker."""
        if actor.state != A.ALIVE:
            return
        calls = actor.calls
        w = actor.worker
        while calls:
            t = calls[0]
            if t.state == DONE or self.table.tasks.get(t.spec.task_id) is not t:
                calls.popleft().queued = False  # failed while waiting (e.g. an input failed)
                continue
            if t.state != READY:
                return
            if t.spec.deps and not self.directory.inputs_ready(t):  # one is being made again
                self.table.wait_inputs(t)  # (it keeps its turn: it leaves the queue once ready)
                continue
            calls.popleft().queued = False
            self.scheduler.assign(t, w)

    def actor_worker_lost(self, w: WorkerRec, why: str) -> None:
        """The actor's process (or node) died: retry or fail the calls it had, then restart
        the actor or declare it dead."""
        actor = w.actor
        node = w.node
        if node is not None:
            node.actor_workers.pop(w.peer, None)
            add_to(node.avail, actor.resources)
            self.scheduler.free_gpus(actor.gpu_alloc, node)
        actor.gpu_alloc = None
        sent = list(w.assigned)
        w.assigned.clear()
        self.members.forget_worker(w)
        # (calls it made to itself were cancelled as it left)
        sent = [t for t in sent if t.state == ASSIGNED]
        if actor.worker is not w:
            return
        actor.worker = None
        actor.node = None
        if actor.state != A.DEAD:
            actor.cause = why
        ctor = actor.ctor if actor.ctor in sent else None
        sent = [t for t in sent if t is not ctor]
        retry, fail = A.split_in_flight(sent)
        if actor.state == A.DEAD or not A.will_restart(actor):
            retry, fail = [], sent
        for t in reversed(retry):
            t.worker = None
            t.state = READY
            t.queued = True
            actor.calls.appendleft(t)
            self.events.add(("TaskRetried", self.ctx.now, t.spec.task_id, why))
        for t in fail:
            t.worker = None
            self.table.fail_task(t, ERR("ActorDiedError", A.died_message(actor, t.spec.name)))
        if ctor is not None and not A.will_restart(actor):  # lost while creating, for good
            actor.ctor = None
            self.table.fail_task(ctor, ERR("ActorDiedError", A.died_message(actor)))
        if actor.state == A.DEAD:
            return
        if A.will_restart(actor):
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.restarts += 1
            actor.state = A.RESTARTING
            self.events.add(("ActorRestarted", self.ctx.now, actor.actor_id, actor.restarts, why))
            self.log.warning("%s died (%s): restarting it (restart %d)", actor.label(), why,
                        actor.restarts)
            self._start_constructor(actor)
        else:
            self._actor_dead(actor, why)

    def env_failed(self, node: NodeRec, env: str, why: str) -> None:
        """A node could not set up runtime environment ``env``: the actors waiting there for a
        worker of it die, saying why."""
        for actor in [a for a in node.actor_queue if a.spec.runtime_env == env]:
            self._actor_dead(actor, why)

    def kill_actor(self, actor: ActorRec, why: str) -> None:
        """Stop an actor for good: its queued calls fail now, its process is killed (the
        calls it had fail when its exit is reported)."""
        actor.no_restart = True
        w = actor.worker
        self._actor_dead(actor, why)
        if w is not None and w.node is not None and w.node.alive:
            self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"{actor.label()}: {why}"))

    def handle_freed(self, actor_id: bytes) -> None:
        """No handle to the actor is left anywhere (its handle object was freed): one that is
        neither detached nor named ends once the calls already made are done, as in Ray."""
        actor = self.actors.get(actor_id)
        if (actor is None or actor.state == A.DEAD or actor.detached
                or actor.name_key is not None):
            return
        actor.out_of_scope = True
        self.end_if_idle(actor)

    def end_if_idle(self, actor: ActorRec) -> None:
        """An actor whose handles are all gone ends when it has no call left: an idle live
        one is asked to exit (its process ends normally); one still starting is stopped."""
        if actor.state == A.DEAD:
            return
        tasks = self.table.tasks
        if any(tasks.get(t.spec.task_id) is t for t in actor.calls):
            return
        w = actor.worker
        if w is not None and any(t is not actor.ctor for t in w.assigned):
            return
        why = "all its handles are gone (an actor that is neither detached nor named ends then)"
        if actor.state == A.ALIVE and w is not None:
            actor.no_restart = True
            self._actor_dead(actor, why)
            self.out.send(w.peer, P.Exit(f"{actor.label()} ended: {why}"))
        else:
            self.kill_actor(actor, why)

    def _actor_dead(self, actor: ActorRec, why: str) -> None:
        if actor.state == A.DEAD:
            return
        actor.state = A.DEAD
        actor.cause = why
        self.log.info("%s is dead: %s", actor.label(), why)
        self.events.add(("ActorDead", self.ctx.now, actor.actor_id, why))
        self.dead_actors.append(actor.actor_id)  # kept a while, to say why calls to it fail
        if len(self.dead_actors) > MAX_DEAD_ACTORS:
            self.actors.pop(self.dead_actors.popleft(), None)
        if actor.name_key is not None and self.actor_names.get(actor.name_key) == actor.actor_id:
            del self.actor_names[actor.name_key]
        if actor in self.unplaced:
            self.unplaced.remove(actor)
        node = actor.node
        if node is not None and actor in node.actor_queue:
            node.actor_queue.remove(actor)
            add_to(node.avail, actor.resources)
            self.scheduler.free_gpus(actor.gpu_alloc, node)
            actor.gpu_alloc = None
            actor.node = None
        ctor = actor.ctor
        if ctor is not None and self.table.tasks.get(ctor.spec.task_id) is ctor and ctor.state != ASSIGNED:
            actor.ctor = None
            self.table.cancel_waiting(ctor)
            self.table.fail_task(ctor, ERR("ActorDiedError", A.died_message(actor)))
        while actor.calls:
            t = actor.calls.popleft()
            t.queued = False
            if self.table.tasks.get(t.spec.task_id) is t and t.state != DONE:
                self.table.cancel_waiting(t)
                self.table.fail_task(t, ERR("ActorDiedError", A.died_message(actor, t.spec.name)))

    def on_get_actor(self, peer: bytes, msg: P.GetActor) -> None:
        """get_actor(): the handle of a live actor of that name, or why there is none."""
        actor = self.actors.get(self.actor_names.get((msg.namespace, msg.name), b""))
        if actor is None or actor.state == A.DEAD:
            where = f" in namespace {msg.namespace!r}" if msg.namespace else ""
            info = {"error": f"no live actor named {msg.name!r}{where}"}
        else:
            info = actor.handle_info()
        self.out.send(peer, P.ActorReply(msg.request_id, info))

    def on_kill_actor(self, peer: bytes, msg: P.KillActor) -> None:
        """kill(): end the actor for good, or (no_restart=False) kill its process so it restarts."""
        actor = self.actors.get(msg.actor_id)
        if actor is None or actor.state == A.DEAD:
            return
        if msg.no_restart or actor.worker is None:
            self.kill_actor(actor, "it was killed by taskmesh.kill()")
        else:  # its exit restarts it (if it has restarts left)
            w = actor.worker
            self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"{actor.label()}: "
                                                    "killed by taskmesh.kill(no_restart=False)"))

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError unless names, workers, placements and states of the actors
        agree."""
        for key, aid in self.actor_names.items():
            actor = self.actors.get(aid)
            require(actor is not None and actor.name_key == key and actor.state != A.DEAD,
                    f"actor name {key} maps to {aid.hex()}, which is not a live actor of that name")
        for aid, actor in self.actors.items():
            name = actor.label()
            require(actor.actor_id == aid, f"{name} is filed under the wrong id")
            if actor.worker is not None:
                w = actor.worker
                require(w.actor is actor and w.node is not None
                        and w.node.actor_workers.get(w.peer) is w, f"{name}: its worker is not "
                        "an actor worker of its node")
                require(actor.node is w.node, f"{name}: placed on another node than its worker")
            else:
                require(actor.state not in (A.CREATING, A.ALIVE), f"{name} is {actor.state} "
                        "without a worker")
                require(actor.node is None or actor in actor.node.actor_queue,
                        f"{name} is placed on a node but neither runs nor waits there")
            if actor in self.unplaced:
                require(actor.node is None and actor.state != A.DEAD, f"{name} is unplaced "
                        "but placed or dead")
            if actor.state == A.DEAD:
                require(actor.name_key is None or self.actor_names.get(actor.name_key) != aid,
                        f"{name} is dead but still owns its name")


"""The scheduler: which worker runs each ready task, and how fast drivers may submit.

    ready task ──enqueue──▶ queue per resource shape (and strategy)
        ──schedule()──▶ 1. an idle worker on the node holding most of its argument bytes
                           (then most free CPU; SPREAD: least loaded; node affinity: that node)
                        2. nodes with room but no idle worker start workers
                        3. short tasks pipelined behind busy workers of the same shape
    idle workers while others have tasks waiting ──steal──▶ Revoke half, given to the idle
    a worker blocked in get() ──▶ lends its CPU, or runs the tasks it waits for (Help)
    a driver's task ends ──▶ Credit (backpressure: a driver keeps max_pending_tasks in flight)

Placement is pure (``policy.py``); this part keeps the queues, the leases (a worker holds its
task's resources while it has tasks), the function durations that decide what is short, and
each driver's window. Task records are the task table's; the scheduler moves a ready task to
a worker and back.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Iterable

from .. import _protocol as P
from .._resources import CPU, GPU, assign_gpus, describe, device_order
from .context import ERR, Context
from .policy import fits, is_short, pick_node, pick_spread, pipeline_window, steal_count, workers_to_start
from .records import (
    ASSIGNED,
    READY,
    NodeRec,
    TaskRec,
    WorkerRec,
    add_to,
    idle_pool,
    int_field,
    pop_front,
    queued_load,
    require,
    sub_from,
)

if TYPE_CHECKING:
    from .actor_table import ActorTable
    from .runtime_envs import RuntimeEnvs
    from .directory import ObjectDirectory
    from .membership import Membership
    from .tasks import TaskTable


#: work is stolen only from a worker that has reported no result for this long while tasks
#: wait behind its running one (one that reports keeps up: its queue holds milliseconds)
STEAL_AFTER_S = 0.05
#: CPU lent by a blocked worker starts new workers only after this long: most blocks are short
#: (a parent waiting for children it runs itself as Help), and a process start costs far more
START_GRACE_S = 0.05


class Scheduler:
    """Queues, placement, leases, stealing, help and credits."""

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
        self.actor_table: ActorTable
        self.runtime_envs: RuntimeEnvs
        self.queues: dict[tuple, deque[TaskRec]] = {}
        self.warned_shapes: set[tuple] = set()
        self.fn_mean_s: dict[bytes, float] = {}  # function id -> its tasks' mean duration
        self.stolen_asked = 0  # tasks asked back from busy workers for idle ones (Revoke)
        self.stolen = 0  # tasks given back (Returned)
        self.credits_due: dict[bytes, int] = {}  # driver -> tasks of its that ended this round
        #: driver -> Credit is sent once this many of its tasks ended (a tenth of its window;
        #: every tick sends the rest), so a stream of tasks does not cost a message per round
        self.credit_batch: dict[bytes, int] = {}
        #: driver -> tasks of its not finished yet (Credit owed), and its window (from its
        #: Hello): a driver with twice its window unfinished gets the surplus failed
        self.in_flight: dict[bytes, int] = {}
        self.windows: dict[bytes, int] = {}

    # ------------------------------------------------------------------ rounds and time

    def tick(self, now: float) -> None:
        """Steal for idle workers when nothing is queued; send every Credit due."""
        if not self.queues or self.only_unplaceable_queued():
            self.steal()
        if self.credits_due:
            self.send_credits(all_due=True)

    def ran(self, function_id: bytes, duration_s: float) -> None:
        """A task of this function ran this long: what decides whether its kind is short."""
        old = self.fn_mean_s.get(function_id)
        self.fn_mean_s[function_id] = (duration_s if old is None
                                       else 0.8 * old + 0.2 * duration_s)

    # ------------------------------------------------------------------ credits

    def driver_joined(self, peer: bytes, window: int) -> None:
        """A driver that keeps at most ``window`` tasks unfinished (max_pending_tasks)."""
        self.credit_batch[peer] = max(1, window // 10)
        self.windows[peer] = window

    def driver_left(self, peer: bytes) -> None:
        """A driver is gone: its window goes (its in-flight count once its last task ends)."""
        self.credit_batch.pop(peer, None)
        self.windows.pop(peer, None)
        if not self.in_flight.get(peer):  # else its last running task's end removes it
            self.in_flight.pop(peer, None)

    def take_credit(self, peer: bytes) -> tuple[int, int] | None:
        """Count one more unfinished task of a driver; or, if it already has twice its window
        unfinished (it ignores Credit), count nothing and return (unfinished, window)."""
        flying = self.in_flight.get(peer, 0)
        window = self.windows.get(peer, self.config.max_pending_tasks)
        if flying >= 2 * window:
            return flying, window
        self.in_flight[peer] = flying + 1
        return None

    def credit_back(self, peer: bytes) -> None:
        """A task of this driver was refused: it may send one more."""
        self.credits_due[peer] = self.credits_due.get(peer, 0) + 1

    def schedule(self) -> None:
        """Assign ready tasks to workers (called after every input batch)."""
        if self.actor_table.unplaced:
            self.actor_table.place_waiting()
        for shape, queue in list(self.queues.items()):
            if queue:
                self._schedule_shape(queue)
            if not queue:
                del self.queues[shape]
        if self.credits_due:  # backpressure: drivers may submit as many more
            self.send_credits(all_due=False)

    def on_blocked(self, peer: bytes, msg: P.Blocked) -> None:
        """A worker waits in get(): take back what it handed back, lend its CPU, and offer it the
        tasks it waits for (Help)."""
        w = self.members.workers.get(peer)
        if w is None:
            return
        self._take_back(w, msg.returned)
        if not w.assigned:  # nothing of ours runs there: no CPU to lend
            if w.lease is not None:
                self.release_lease(w)
            return
        if not w.blocked:
            if w.lease is not None and w.node is not None:
                add_to(w.node.avail, w.lease)
            w.blocked = True
            w.blocked_since = self.ctx.now
        if msg.waiting and w.assigned:
            self._offer_help(w, msg.waiting)

    def _offer_help(self, w: WorkerRec, waiting: list) -> None:
        """Hand a blocked worker the not-yet-started tasks that make what it waits for.

        It runs them inside its blocked get(), so a parent waiting for its children needs no
        extra worker process; it holds its CPU again while it does.
        """
        help_tasks = []
        seen = set()
        for oid in waiting:
            tid = oid[:16]
            if tid in seen:
                continue
            seen.add(tid)
            t = self.table.tasks.get(tid)
            if (t is not None and t.state == READY and t.spec.resources == w.lease
                    and t.spec.runtime_env == w.env  # (another environment's: not here)
                    and not t.spec.actor_id and self.directory.inputs_ready(t)):  # (actors run their own)
                help_tasks.append(t)  # left in its queue; the scheduler skips non-READY ones
        if not help_tasks:
            return
        if w.lease is not None and w.node is not None:
            sub_from(w.node.avail, w.lease)
        w.blocked = False
        items = []
        for t in help_tasks:
            t.state = ASSIGNED
            t.worker = w
            w.assigned.append(t)
            self.started(t, w)
            items.append(self.assignment(t, w))
        self.out.send(w.peer, P.Help(items))

    def on_unblocked(self, peer: bytes, msg: P.Unblocked) -> None:
        """A blocked worker runs again: it takes its lent CPU back."""
        w = self.members.workers.get(peer)
        if w is None or not w.blocked or not w.assigned:
            return
        w.blocked = False
        if w.lease is not None and w.node is not None:
            sub_from(w.node.avail, w.lease)

    def send_credits(self, all_due: bool) -> None:
        """Send drivers the Credit their ended tasks earned (batched unless ``all_due``)."""
        due = self.credits_due
        batch = self.credit_batch
        for peer, n in list(due.items()):
            if all_due or n >= batch.get(peer, 1):
                del due[peer]
                if self.members.peers.get(peer) == "driver":
                    self.out.send(peer, P.Credit(n))

    def only_unplaceable_queued(self) -> bool:
        """True if no task queued at the head fits any idle node now (e.g. one asking for more
        GPUs than any node has): such a task must not stop stealing for the others."""
        idle = [n.avail for n in self.members.nodes.values() if n.alive and n.idle]
        return not any(q and fits(avail, q[0].spec.resources)
                       for q in self.queues.values() for avail in idle)

    def steal(self) -> None:
        """Nothing is queued at the head, yet some workers are idle while others have tasks
        waiting behind their running one (pipelined): ask those back (Revoke), half of each
        such queue, so the idle workers get them (a node that joined or finished early)."""
        idle = [n for n in self.members.nodes.values() if n.alive and n.idle]
        if not idle:
            return
        for n in self.members.nodes.values():
            if not n.alive:
                continue
            for w in n.workers.values():
                if len(w.assigned) < 2 or w.revoking or w.blocked:
                    continue
                k = steal_count(len(w.assigned) - 1, self.ctx.now - w.last_result, STEAL_AFTER_S)
                if not k or not any(fits(m.avail, w.lease or {}) for m in idle):
                    continue
                take = [t.spec.task_id for t in list(w.assigned)[-k:]]
                w.revoking = True
                w.slow = True
                self.out.send(w.peer, P.Revoke(take))
                # ring its doorbell: it may be in a long task, not reading its socket
                self.out.send(n.peer, P.InterruptTask(w.worker_id, bytes(16)))
                self.stolen_asked += len(take)

    def on_returned(self, peer: bytes, msg: P.Returned) -> None:
        """A worker handed back tasks it was asked to (Revoke): they go to the front of their
        queues."""
        w = self.members.workers.get(peer)
        if w is None:
            return
        w.revoking = False
        self.stolen += len(msg.task_ids)
        self._take_back(w, msg.task_ids)
        if not w.assigned and w.lease is not None:
            self.release_lease(w)

    def _take_back(self, w: WorkerRec, task_ids: Iterable[bytes]) -> None:
        """Tasks a worker hands back unstarted go to the front of their queues, in order.
        (Not an actor's constructor: the actor's worker is its own, and it runs it.)"""
        back = []
        for tid in task_ids:
            t = self.table.tasks.get(tid)
            if (t is None or t.worker is not w or t.state != ASSIGNED or t in back
                    or (t.spec.method == "__init__" and w.actor is not None)):
                self.dropped.event("hand-back of a task the worker does not hold", "dropped "
                                   "the hand-back of task %s by worker %s: not assigned to it",
                                   tid.hex(), w.worker_id, level=logging.DEBUG)
                continue
            w.assigned.remove(t)
            back.append(t)
        for t in reversed(back):
            t.worker = None
            self.enqueue(t, front=True)

    def return_credit(self, t: TaskRec) -> None:
        """A driver's task ended (or was dropped): it may submit one more (backpressure)."""
        t.credit = False
        self.credits_due[t.owner] = self.credits_due.get(t.owner, 0) + 1
        left = self.in_flight.get(t.owner, 1) - 1
        if left > 0 or t.owner in self.members.peers:
            self.in_flight[t.owner] = left
        else:  # the last task of a driver that is gone
            self.in_flight.pop(t.owner, None)

    def enqueue(self, t: TaskRec, front: bool = False) -> None:
        """Put a ready task in its shape's queue (an actor's call goes to its actor)."""
        if t.spec.actor_id:
            self.actor_table.actor_task_ready(t)
            return
        t.state = READY
        if t.queued:  # its old entry is still in the queue: it will be found there
            return
        t.queued = True
        q = self.queues.get(t.shape)
        if q is None:
            q = self.queues[t.shape] = deque()
        if front:
            q.appendleft(t)
        else:
            q.append(t)

    def make_ready(self, t: TaskRec, announce: bool = True) -> None:
        """A task's inputs exist: queue it (warning its owner once if no node could ever run it).
        ``announce=False``: no TaskQueued, the task's TaskSubmitted just said it."""
        if announce:
            self.events.add(("TaskQueued", self.ctx.now, t.spec.task_id))
        if t.spec.actor_id:
            self.actor_table.actor_task_ready(t)
            return
        q = self.queues.get(t.shape)
        if q is None:
            q = self.queues[t.shape] = deque()
            if t.shape not in self.warned_shapes and not any(
                fits(n.total, t.spec.resources) for n in self.members.nodes.values() if n.alive
            ):
                self.warned_shapes.add(t.shape)
                largest = max((n.total for n in self.members.nodes.values() if n.alive),
                              key=lambda r: r.get(CPU, 0), default={})
                self.out.send(t.owner, P.Notice("warning", (
                    f"no node can run task {t.spec.name} now: it needs "
                    f"{describe(t.spec.resources)}; the largest node has "
                    f"{describe(largest)}. It waits until such a node joins.")))
        self.enqueue(t)

    def _skip_unready(self, queue: deque[TaskRec]) -> None:
        """Drop queue heads taken out of turn (handed to a blocked worker as Help), and send
        back to waiting the ones whose inputs are being rebuilt."""
        while queue:
            t = queue[0]
            if t.state != READY:
                queue.popleft().queued = False
            elif t.spec.deps and not self.directory.inputs_ready(t):
                pop_front(queue)
                self.table.wait_inputs(t)
            else:
                return

    def _schedule_shape(self, queue: deque[TaskRec]) -> None:
        self._skip_unready(queue)
        if not queue:
            return
        demand = queue[0].spec.resources
        strategy = queue[0].strategy
        env = queue[0].spec.runtime_env  # ("": the default; else only its own workers)
        nodes = [n for n in self.members.nodes.values() if n.alive]
        prefer = None
        if strategy.kind == "NODE":
            there = [n for n in nodes if n.node_id == strategy.node_id]
            if strategy.soft:
                prefer = strategy.node_id
            elif not there:
                self._fail_unplaceable(queue, strategy.node_id)
                return
            else:
                nodes = there
        spread = strategy.kind == "SPREAD"
        by_id = {n.node_id: n for n in nodes}
        # each node's idle workers of the queue's environment (the lists themselves: a pop
        # below shows in them)
        idle = [(n, n.env_idle.get(env) or ()) if env else (n, n.idle) for n in nodes]
        # 1. idle workers, on the node holding most argument bytes, then most free CPU
        while queue:
            spec = queue[0].spec
            held = (self.directory.held_bytes(queue[0]) if spec.deps or (spec.args is not None
                                                                 and spec.args.is_stored) else None)
            if spread:
                node_id = pick_spread(((n.node_id, n.avail, queued_load(n)) for n, pool in idle
                                       if pool), demand)
            else:
                node_id = pick_node(((n.node_id, n.avail) for n, pool in idle if pool), demand,
                                    held, prefer)
            if node_id is None:
                break
            best = by_id[node_id]
            alloc = None
            if demand.get(GPU):
                alloc = assign_gpus(best.gpus, demand[GPU])
                if alloc is None:  # enough GPU in total, but not on the devices it needs
                    break
            w = (best.env_idle[env] if env else best.idle).pop()
            w.lease = dict(demand)
            w.gpu_alloc = alloc
            sub_from(best.avail, demand)
            self.assign(pop_front(queue), w)
            self._skip_unready(queue)
        if not queue:
            return
        # 2. nodes with room but no idle worker start more workers
        demand_cpu = demand.get(CPU, 0)
        recent = self.ctx.now - START_GRACE_S
        if env:  # (workers of its own, made room for: runtime_envs.py)
            self.runtime_envs.start_workers(queue, env, nodes, demand)
        for n in nodes if not env else ():
            if not n.idle and fits(n.avail, demand):
                blocked = [w for w in n.workers.values() if w.blocked]
                cap = max(n.num_cpus, 1) + len(blocked) + 2
                # CPU lent only a moment ago does not start a process yet
                fresh = sum(w.lease.get(CPU, 0) for w in blocked
                            if w.lease is not None and w.blocked_since > recent)
                count = workers_to_start(n.avail.get(CPU, 0) - fresh, demand_cpu, len(queue),
                                         n.starting, len(n.workers), cap)
                if count > 0:
                    n.starting += count
                    self.out.send(n.peer, P.StartWorkers(count))
        # 3. pipeline short tasks behind busy workers of the same shape
        if spread:
            return  # (one at a time, so that they spread)
        fn_mean = self.fn_mean_s
        busy = [w for n in nodes for w in n.workers.values()
                if w.lease == demand and not w.blocked and w.assigned and not w.slow
                and w.env == env and is_short(fn_mean.get(w.assigned[-1].spec.function_id))]
        if not busy:
            return
        busy.sort(key=lambda w: len(w.assigned))
        max_pipe = self.config.max_pipeline
        progress = True
        while queue and progress:
            progress = False
            for w in busy:
                self._skip_unready(queue)
                if not queue:
                    break
                t = queue[0]
                window = pipeline_window(fn_mean.get(t.spec.function_id), len(queue),
                                         len(busy), max_pipe)
                if len(w.assigned) < window:
                    self.assign(pop_front(queue), w)
                    progress = True

    def _fail_unplaceable(self, queue: deque[TaskRec], node_id: str) -> None:
        """Tasks that must run on a node that is not alive (hard node affinity) fail now."""
        known = node_id in self.members.nodes
        while queue:
            t = pop_front(queue)
            if t.state != READY:
                continue
            self.table.fail_task(t, ERR("TaskUnschedulableError", (
                f"task {t.spec.name} must run on node {node_id} (NodeAffinitySchedulingStrategy "
                f"with soft=False), which {'is dead' if known else 'is not part of the cluster'}"
                "; use soft=True to let it run elsewhere")))

    def assign(self, t: TaskRec, w: WorkerRec) -> None:
        """Hand a ready task to a worker (Execute)."""
        t.state = ASSIGNED
        t.worker = w
        w.assigned.append(t)
        if self.events.on:  # (TaskStarted, inline: this is the per-task path)
            node = w.node
            self.events.added.append(("TaskStarted", self.ctx.now, t.spec.task_id,
                                      node.node_id if node is not None else "", w.worker_id))
        if t.spec.timeout_s:
            t.started = self.ctx.now if len(w.assigned) == 1 else None
            self.table.watch_timeout(t)
        self.out.add(w.peer, P.Execute, self.assignment(t, w))

    def started(self, t: TaskRec, w: WorkerRec) -> None:
        """A task went to a worker: the TaskStarted event (with the stream off it goes nowhere;
        the per-task caller skips the call then)."""
        node = w.node
        self.events.add(("TaskStarted", self.ctx.now, t.spec.task_id,
                         node.node_id if node is not None else "", w.worker_id))

    def assignment(self, t: TaskRec, w: WorkerRec) -> P.Assignment:
        """The Execute item for a task on a worker: its function blob the first time, its inputs'
        values or where they are, its GPUs."""
        spec = t.spec
        blob = None
        if spec.function_id not in w.functions:
            w.functions.add(spec.function_id)
            blob = self.table.functions[spec.function_id]
        dep_values = [self.directory.objects[d].value for d in spec.deps] if spec.deps else []
        args = spec.args
        if args is not None and args.is_stored:  # large arguments: say where they are now
            rec = self.directory.objects.get(args.contained[0]) if args.contained else None
            if rec is not None and rec.value is not None:
                args = rec.value
        env = None
        node = w.node
        if node is not None and node.gpus and spec.method in ("", "__init__"):
            alloc = w.actor.gpu_alloc if w.actor is not None else w.gpu_alloc
            env = {"CUDA_VISIBLE_DEVICES": ",".join(sorted(alloc or (), key=device_order))}
        if not spec.actor_id:
            return P.Assignment(spec.task_id, spec.name, spec.function_id, blob, args,
                                dep_values, spec.num_returns, "", None, spec.timeout_s, env,
                                spec.retry_filter, t.job)
        actor_opts = None
        if spec.method == "__init__":
            o = w.actor.options if w.actor is not None else {}
            actor_opts = {"actor_id": spec.actor_id, "class_name": str(o.get("class_name", "")),
                          "max_concurrency": int_field(o.get("max_concurrency")) or 1,
                          "is_async": bool(o.get("is_async"))}
        return P.Assignment(spec.task_id, spec.name, spec.function_id, blob, args,
                            dep_values, spec.num_returns, spec.method, actor_opts, spec.timeout_s,
                            env, spec.retry_filter, t.job)

    def free_gpus(self, gpu_alloc: dict[str, int] | None, node: NodeRec | None) -> None:
        """Give a lease's GPU units back to their devices."""
        if gpu_alloc and node is not None:
            for device, units in gpu_alloc.items():
                if device in node.gpus:
                    node.gpus[device] += units

    def release_lease(self, w: WorkerRec) -> None:
        """A worker has no task left: its resources go back to its node and it is idle."""
        node = w.node
        self.free_gpus(w.gpu_alloc, node)
        w.gpu_alloc = None
        if w.lease is not None and node is not None and not w.blocked:
            add_to(node.avail, w.lease)
        w.lease = None
        w.blocked = False
        w.idle_since = self.ctx.now
        if node is not None and node.alive and w.peer in node.workers:
            pool = idle_pool(node, w.env)
            if w not in pool:
                pool.append(w)

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError unless each driver's unfinished tasks match its credits and
        every queue entry is a task of that queue's shape, marked queued."""
        owed: dict[bytes, int] = {}  # backpressure: each driver's unfinished tasks
        for t in self.table.tasks.values():
            if t.credit:
                owed[t.owner] = owed.get(t.owner, 0) + 1
        for peer, n in self.in_flight.items():
            require(n == owed.get(peer, 0), f"driver {peer!r}: {n} tasks counted in flight, "
                    f"{owed.get(peer, 0)} unfinished")
        require(owed.keys() <= self.in_flight.keys(), "unfinished tasks of an uncounted driver")
        for shape, queue in self.queues.items():
            for t in queue:
                require(t.shape == shape, f"task {t.spec.task_id.hex()} queued under another shape")
                require(t.queued, f"task {t.spec.task_id.hex()} sits in a queue unmarked")
                require(t.state != READY or self.table.tasks.get(t.spec.task_id) is t,
                        f"task {t.spec.task_id.hex()} is queued ready but is not pending")

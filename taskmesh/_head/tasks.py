"""The task table: every unfinished task, from its submission to its end.

    Submit ──▶ admitted (its inputs counted) ──inputs exist──▶ ready (the scheduler's queues)
        ──▶ on a worker ──result──▶ finished: return values to the directory, dependents woken
        raised (retry_exceptions), worker lost, input unreadable ──▶ retried, or failed
        cancel() / time-out / owner gone ──▶ cancelled

Lifecycle of a task: submitted -> waiting for its dependencies -> ready (queued by resource
shape) -> assigned to a worker (first in that worker's list = running) -> done. Its return
objects are created at submission, owned by the submitter, and hold a value once the task ends
(an error object if it failed; dependents then fail with the same error without running).
The table owns ``TaskRec`` and the registered functions; where a ready task runs is the
scheduler's, its values are the directory's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from .. import _protocol as P
from .._protocol import return_ids
from . import actors as A
from .context import CHORE_SLICE, ERR, Context
from .records import (
    ASSIGNED,
    CANCELLED,
    DONE,
    READY,
    WAITING,
    NodeRec,
    TaskRec,
    WorkerRec,
    require,
)

if TYPE_CHECKING:
    from .runtime_envs import RuntimeEnvs
    from .actor_table import ActorTable
    from .directory import ObjectDirectory
    from .membership import Membership
    from .scheduler import Scheduler


#: with more pending tasks than this, the head shares the name, function id and resources
#: of tasks of one function (memory over speed)
INTERN_ABOVE = 10_000
#: the head keeps at most this much of a failed task's error text (its event, the state view)
MAX_ERROR_CHARS = 8192
#: a task may have at most this many return values (a Submit with more is dropped)
MAX_RETURNS = P.MAX_RETURNS
#: a task past its timeout_s that its worker could not interrupt is killed this much later
TIMEOUT_GRACE_S = 2.0
#: a task whose inputs could not be read is tried again after this pause (doubling up to the
#: maximum: enough for the head to declare their holder dead and rebuild them), at most
#: MAX_DEPENDENCY_RETRIES times
DEPENDENCY_RETRY_S = 0.1
DEPENDENCY_RETRY_MAX_S = 1.0
MAX_DEPENDENCY_RETRIES = 12


class TaskTable:
    """Unfinished tasks, their retries, cancellation and time-outs.

    Why one class of ~570 lines: a task's states are one state machine (waiting, ready,
    assigned, done, cancelled), and every way out of a state (a result, a retry, a cancel,
    a time-out, a lost input, an owner gone) must release the same inputs, holds and credit;
    kept together, one reader sees that each path does. Where a task runs is the scheduler's.
    """

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
        self.scheduler: Scheduler
        self.runtime_envs: RuntimeEnvs
        self.actor_table: ActorTable
        self.tasks: dict[bytes, TaskRec] = {}
        self.functions: dict[bytes, bytes] = {}  # function id -> its pickled function
        self.finished = 0  # tasks ended since start, whichever way
        self.failed = 0  # of those, the ones that ended with an error (cancelled ones too)
        self.cancelled = 0  # tasks stopped because nobody needed their results
        #: tasks whose inputs could not be read, to queue again at a time: (when, task)
        self.deferred: list[tuple[float, TaskRec]] = []
        self.timed: set[TaskRec] = set()  # assigned tasks with a timeout_s (head's backstop)
        self.interned: dict[tuple, Any] = {}
        self.cancel_killed: set[bytes] = set()  # workers killed by cancel(force=True)
        #: task id -> tasks it submitted while it ran (TaskSpec.parent), for a recursive cancel
        self.children: dict[bytes, list[TaskRec]] = {}

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Time-outs past their grace; tasks whose inputs could not be read try again."""
        if self.timed:
            self.enforce_timeouts(now)
        if self.deferred:
            due = [t for when, t in self.deferred if when <= now]
            self.deferred = [(when, t) for when, t in self.deferred if when > now]
            for t in due:
                if self.tasks.get(t.spec.task_id) is t and t.state == WAITING:
                    self.wait_inputs(t)

    def forgive(self, stalled: float) -> None:
        """The head did not run for ``stalled`` seconds: that time does not count against
        running tasks' time-outs."""
        now = self.ctx.now
        for t in self.timed:
            if t.started is not None:
                t.started = min(now, t.started + stalled)

    def watch_timeout(self, t: TaskRec) -> None:
        """``t`` (with a timeout_s) went to a worker: the head's backstop watches it."""
        self.timed.add(t)

    def worker_lost(self, w: WorkerRec, assigned: list[TaskRec], kind: str, why: str) -> None:
        """A pool worker is gone with the tasks it had: the one it was running retries (if
        it has retries left) or fails with ``kind``; the ones queued behind it run elsewhere,
        uncharged."""
        requeue = []
        charged = w.peer not in self.cancel_killed
        self.cancel_killed.discard(w.peer)
        for i, t in enumerate(assigned):
            self.timed.discard(t)
            if t.state != ASSIGNED:  # one of its own nested tasks, cancelled as it left
                continue
            t.worker = None
            if i == 0 and charged:  # the one it was running
                if t.retries_left != 0:
                    if t.retries_left > 0:
                        t.retries_left -= 1
                    self.log.warning("task %s lost: %s; retrying", t.spec.name, why)
                    requeue.append(t)
                else:
                    self.fail_task(t, ERR(kind, f"task {t.spec.name} failed: {why}, and it has "
                                          f"no retries left (max_retries={t.spec.max_retries})"))
            else:
                requeue.append(t)
        for t in reversed(requeue):
            self.events.add(("TaskRetried", self.ctx.now, t.spec.task_id, why))
            self.scheduler.enqueue(t, front=True)

    # ------------------------------------------------------------------ messages

    def job_of(self, owner: bytes, parent: bytes) -> bytes:
        """The job (driver) of a task ``owner`` submits: the driver itself, or the job of the
        task that submitted it (``parent``) while that one is unfinished; b"" otherwise."""
        if self.members.peers.get(owner) == "driver":
            return owner
        t = self.tasks.get(parent) if parent else None
        return t.job if t is not None else b""

    def on_register_function(self, peer: bytes, msg: P.RegisterFunction) -> None:
        """Keep a function's pickle (opaque bytes) for the first assignment to each worker."""
        self.functions[msg.function_id] = bytes(msg.blob)

    def on_submit(self, peer: bytes, msg: P.Submit) -> None:
        """New tasks: check each, create its return objects, count it against its driver's
        window, and admit it (or fail it at once, saying why)."""
        objects = self.directory.objects
        credit = self.members.peers.get(peer) == "driver"
        take_credit = self.scheduler.take_credit
        intern = self._intern
        expect = self.directory.expect
        tasks, actors = self.tasks, self.actor_table.actors
        for spec in msg.tasks:
            rids = None
            if (0 <= spec.num_returns <= MAX_RETURNS and len(spec.task_id) == 16
                    and spec.task_id not in tasks and spec.task_id not in actors
                    and spec.method != "__init__"):
                rids = return_ids(spec.task_id, spec.num_returns)
                if not objects.keys().isdisjoint(rids):  # its results exist: a duplicate
                    rids = None
            if rids is None:
                self.dropped.event("duplicate or invalid task", "dropped task %s (%s) from %r: "
                                   "its id is taken or malformed, or it has %d returns",
                                   spec.task_id.hex(), spec.name, peer, spec.num_returns)
                if credit:
                    self.scheduler.credit_back(peer)
                self.ctx.reject(peer, "Submit", f"task {spec.name} ({spec.task_id.hex()}): its id "
                             "is taken or malformed, it has more than "
                             f"{MAX_RETURNS:,} returns, or it is an actor constructor",
                             object_ids=self._unclaimed_returns(spec))
                continue
            if len(tasks) > INTERN_ABOVE:  # many pending: tasks of one function share
                # their name, function id and resources (one copy each; costs ~1 us a task)
                spec = spec._replace(name=intern(spec.name),
                                     function_id=intern(spec.function_id),
                                     resources=intern(spec.resources))
            t = TaskRec(spec, peer, peer if credit else self.job_of(peer, spec.parent))
            if credit:
                over = take_credit(peer)
                if over is not None:  # it ignores Credit: bound what it costs the head
                    self._over_window(t, rids, *over)
                    continue
                t.credit = True
            if spec.actor_id:
                actor = actors.get(spec.actor_id)
                if actor is None or actor.state == A.DEAD:
                    expect(peer, rids)
                    why = (A.died_message(actor, spec.name) if actor is not None else
                           f"call {spec.name} failed: no actor with id {spec.actor_id.hex()} "
                           "is known to the head")
                    self._refuse_now(t, ERR("ActorDiedError", why))
                    continue
            expect(peer, rids)
            if spec.function_id not in self.functions:
                self._refuse_now(t, ERR("TaskmeshError", f"task {spec.name}: its function was "
                                        "never registered with the head"))
                continue
            if spec.runtime_env and spec.runtime_env not in self.runtime_envs.envs:
                self._refuse_now(t, ERR("RuntimeEnvSetupError", f"task {spec.name}: its "
                                        f"runtime_env {spec.runtime_env} was never registered "
                                        "with the head"))
                continue
            unknown = next((d for d in spec.deps if d not in objects or d in rids), None)
            if unknown is not None:
                why = ("is its own result" if unknown in rids else
                       "the head does not know: it was freed or never existed")
                self._refuse_now(t, ERR("ObjectLostError", f"task {spec.name} depends on "
                                        f"object {unknown.hex()}, which {why}"))
                continue
            if spec.actor_id:  # in submission order: it leaves the queue only in its turn
                t.state = WAITING
                t.queued = True
                actors[spec.actor_id].calls.append(t)
            if spec.parent:
                self._add_child(spec.parent, t)
            self.admit(t)

    def _unclaimed_returns(self, spec: P.TaskSpec) -> list[bytes]:
        """The return ids of a refused task that no live task or object uses (its submitter
        may fail their refs); none if they belong to something else."""
        if (not 0 <= spec.num_returns <= MAX_RETURNS or len(spec.task_id) != 16
                or spec.task_id in self.tasks or spec.task_id in self.actor_table.actors):
            return []
        rids = return_ids(spec.task_id, spec.num_returns)
        return rids if self.directory.objects.keys().isdisjoint(rids) else []

    def _over_window(self, t: TaskRec, rids: list[bytes], flying: int, window: int) -> None:
        """Fail a task of a driver that has twice its window of tasks unfinished: a taskmesh
        driver waits for Credit long before that, so this one ignores backpressure, and
        queueing its tasks could take all of the head's memory."""
        peer = t.owner
        self.scheduler.credit_back(peer)
        self.directory.expect(peer, rids)
        self.dropped.event("over its window", "failed task %s of driver %r: it has %d tasks "
                           "unfinished, twice its max_pending_tasks of %d", t.spec.name, peer,
                           flying, window)
        why = (f"the head refused task {t.spec.name}: this driver already has {flying:,} "
               f"unfinished tasks, twice its max_pending_tasks ({window:,}); a taskmesh driver "
               "waits for the head's Credit instead of sending more")
        self._refuse_now(t, ERR("TaskmeshError", why))

    def _refuse_now(self, t: TaskRec, err: P.SerializedObject) -> None:
        """A submitted task fails before it is admitted (its inputs were never counted)."""
        spec = t.spec
        self.events.add(("TaskSubmitted", self.ctx.now, spec.task_id, spec.name, spec.actor_id, 0,
                         t.job, spec.parent, args_bytes(spec.args)))
        self._finish(t, [err] * spec.num_returns, deps_counted=False)

    def admit(self, t: TaskRec) -> None:
        """Count a new (or re-run) task's uses of its inputs and queue it once they exist; the
        TaskSubmitted event says how many of them it waits for."""
        objects = self.directory.objects
        spec = t.spec
        failed: P.SerializedObject | None = None
        for dep in spec.deps:
            obj = objects[dep]
            obj.dependents += 1
            if obj.value is None:
                t.waiting += 1
                if obj.waiters is None:
                    obj.waiters = [t]
                else:
                    obj.waiters.append(t)
            elif obj.value.is_error and failed is None:
                failed = obj.value
        if spec.args is not None and spec.args.contained:
            t.held = self.directory.hold(spec.args.contained)
        self.tasks[spec.task_id] = t
        self.events.add(("TaskSubmitted", self.ctx.now, spec.task_id, spec.name, spec.actor_id,
                         t.waiting, t.job, spec.parent, args_bytes(spec.args)))
        if failed is not None:
            self.fail_task(t, failed)
        elif t.waiting == 0:
            self.scheduler.make_ready(t, announce=False)  # (its TaskSubmitted says queued)

    def on_cancel(self, peer: bytes, msg: P.Cancel) -> None:
        """``taskmesh.cancel()``: the task fails now with TaskCancelledError (its dependents
        too); a queued one never runs, one on a worker is interrupted (or, with ``force``,
        its worker killed). Finished tasks and actor constructors are left alone. With
        ``recursive`` the unfinished tasks it submitted go the same way, and theirs."""
        for oid in msg.object_ids:
            t = self.tasks.get(oid[:16])
            if t is None or t.state == DONE or t.spec.method == "__init__":
                continue
            why = f"task {t.spec.name} was cancelled by taskmesh.cancel()"
            if msg.recursive and self.children:
                for child in self._descendants(t):
                    self._stop_task(child, "TaskCancelledError",
                                    f"task {child.spec.name} was cancelled: its parent {why}",
                                    msg.force)
            self._stop_task(t, "TaskCancelledError", why, msg.force)

    def _add_child(self, parent: bytes, t: TaskRec) -> None:
        """Remember that a running task submitted ``t`` (for a recursive cancel). Entries of
        children that ended are pruned as the list doubles, so a task that submits millions
        keeps only its unfinished ones."""
        if parent not in self.tasks:
            return
        kids = self.children.get(parent)
        if kids is None:
            self.children[parent] = [t]
            return
        kids.append(t)
        n = len(kids)
        if n >= 64 and n & (n - 1) == 0:
            kids[:] = [k for k in kids if self.tasks.get(k.spec.task_id) is k]

    def _descendants(self, t: TaskRec) -> list[TaskRec]:
        """The unfinished tasks ``t`` submitted, theirs, and so on (children before their
        own children; actor constructors are not cancelled: kill the actor)."""
        out: list[TaskRec] = []
        seen = {id(t)}
        stack = [t]
        while stack:
            for k in self.children.get(stack.pop().spec.task_id, ()):
                if (id(k) in seen or self.tasks.get(k.spec.task_id) is not k
                        or k.spec.method == "__init__"):
                    continue
                seen.add(id(k))
                out.append(k)
                stack.append(k)
        return out

    def _stop_task(self, t: TaskRec, kind: str, why: str, force: bool) -> None:
        w = t.worker
        if t.state == ASSIGNED and w is not None:
            running = bool(w.assigned) and w.assigned[0] is t
            if t in w.assigned:
                w.assigned.remove(t)
            self._next_started(w)
            node = w.node
            if node is not None and node.alive:
                if force and running and w.actor is None:
                    self.cancel_killed.add(w.peer)
                    self.out.send(node.peer, P.KillWorker(w.worker_id, why))
                else:  # running: interrupted; queued on the worker: skipped when reached
                    self.out.send(node.peer, P.InterruptTask(w.worker_id, t.spec.task_id))
            if not w.assigned and w.lease is not None:
                self.scheduler.release_lease(w)
        else:
            self.cancel_waiting(t)
        self.timed.discard(t)
        t.worker = None
        self.fail_task(t, ERR(kind, why))

    def _next_started(self, w: WorkerRec) -> None:
        """The task now at the front of a worker's list starts: its time-out counts from now."""
        if w.assigned:
            t = w.assigned[0]
            if t.spec.timeout_s and t.started is None:
                t.started = self.ctx.now

    def enforce_timeouts(self, now: float) -> None:
        """The worker stops a task whose timeout_s ran out; if it could not (stuck in code
        that does not return to the interpreter), its process is killed a grace period later."""
        for t in list(self.timed):
            if t.state != ASSIGNED or t.worker is None:
                self.timed.discard(t)
            elif t.started is not None and now - t.started > t.spec.timeout_s + TIMEOUT_GRACE_S:
                self._stop_task(t, "TaskTimeoutError", (
                    f"task {t.spec.name} ran longer than its timeout_s={t.spec.timeout_s:g} s "
                    f"and did not stop when interrupted: its worker (pid {t.worker.pid}) was "
                    "killed"), force=True)

    def cancel_waiting(self, t: TaskRec) -> None:
        """A waiting task is failed from outside: stop waiting for its inputs."""
        if t.state != WAITING or not t.waiting:
            return
        for d in t.spec.deps:
            obj = self.directory.objects.get(d)
            if obj is not None and obj.waiters and t in obj.waiters:
                obj.waiters.remove(t)
        t.waiting = 0

    def on_results(self, peer: bytes, msg: P.TaskResults) -> None:
        """A worker's results: each ends its task (values to the directory), retries it, or waits
        for an input to come back."""
        w = self.members.workers.get(peer)
        if w is None:
            return
        w.slow = False
        w.last_result = self.ctx.now
        ran = self.scheduler.ran
        for r in msg.results:
            t = self.tasks.get(r.task_id)
            if t is None or t.worker is not w or t.state != ASSIGNED:
                # (normal after a cancel, a steal or a worker declared lost: debug level)
                self.dropped.event("result of a task the worker does not hold", "dropped the "
                                   "result of task %s from worker %s: not assigned to it",
                                   r.task_id.hex(), w.worker_id, level=logging.DEBUG)
                continue
            if w.assigned and w.assigned[0] is t:
                w.assigned.popleft()
                self._next_started(w)
            else:
                w.assigned.remove(t)
            if self.timed:
                self.timed.discard(t)
            d = r.duration_s
            if 0.0 <= d < 1e9:  # (not NaN, negative or infinite: placement computes with it)
                ran(t.spec.function_id, d)
            else:
                d = 0.0
            if (t.spec.retry_exceptions and t.retries_left != 0 and r.returns
                    and not r.no_retry and r.returns[0].flags == P.SerializedObject.TASK_ERROR):
                if t.retries_left > 0:
                    t.retries_left -= 1
                t.worker = None
                self.events.add(("TaskRetried", self.ctx.now, t.spec.task_id, "it raised"))
                self.scheduler.enqueue(t)
                continue
            if (r.returns and r.returns[0].flags == P.SerializedObject.SYSTEM_ERROR
                    and self._dependency_lost(t, r.returns[0])):
                continue
            if len(r.returns) != t.spec.num_returns:
                err = ERR("TaskmeshError", f"worker {w.pid} returned {len(r.returns)} values for "
                           f"task {t.spec.name}, expected {t.spec.num_returns}")
                self._finish(t, [err] * t.spec.num_returns)
            else:
                self._finish(t, r.returns, node=w.node, duration=d, error=r.error)
                if t.spec.method == "__init__" and w.actor is not None:
                    self.actor_table.actor_created(w.actor, t, r.returns[0] if r.returns else None)
            if w.node is not None:
                w.node.finished += 1
        if not w.assigned and w.lease is not None:
            self.scheduler.release_lease(w)

    def _dependency_lost(self, t: TaskRec, err: P.SerializedObject) -> bool:
        """A worker could not read one of the task's inputs from any holder the head named.
        Run the task again once the input is back: at once if it is being rebuilt (its holder
        was declared dead), else after a pause (the holder may be dead but not yet declared
        so). True if handled; False for other system errors."""
        kind, message = err.read_system_error()
        if kind != "DependencyLost":
            return False
        t.worker = None
        t.dep_failures += 1
        if t.dep_failures > MAX_DEPENDENCY_RETRIES:
            failed = ERR("ObjectLostError", f"task {t.spec.name} could not read its inputs "
                          f"{t.dep_failures} times: {message.split(' ', 1)[-1]}")
            self.fail_task(t, failed)
            actor = self.actor_table.actors.get(t.spec.actor_id) if t.spec.method == "__init__" else None
            if actor is not None:  # its constructor cannot run: it is dead
                self.actor_table.actor_created(actor, t, failed)
            return True
        delay = min(DEPENDENCY_RETRY_MAX_S, DEPENDENCY_RETRY_S * 2 ** (t.dep_failures - 1))
        self.events.add(("TaskRetried", self.ctx.now, t.spec.task_id, "an input could not be read"))
        t.state = WAITING
        self.deferred.append((self.ctx.now + delay, t))
        return True

    def drop_constructor_run(self, old: TaskRec) -> None:
        """An actor restarts while the last run of its constructor was pending (sent, or
        waiting for its inputs): that run lets go of its inputs, and the new one counts them
        again."""
        if self.tasks.get(old.spec.task_id) is not old:
            return
        del self.tasks[old.spec.task_id]
        self.events.add(("TaskCancelled", self.ctx.now, old.spec.task_id, "its actor restarts"))
        self.cancel_waiting(old)
        self.timed.discard(old)
        old.state = CANCELLED
        old.worker = None
        self.release_inputs(old)

    def cancel_chore(self, peer: bytes) -> Iterator[None]:
        """Cancel the pending tasks of an owner that left whose results nobody needs (no
        borrower, no pending task, no value refers to them); the others run on for those who
        need them. A scan of every task, yielding every CHORE_SLICE (a chore)."""
        tasks = self.tasks
        objects = self.directory.objects
        for i, t in enumerate(list(tasks.values())):
            if (t.owner == peer and tasks.get(t.spec.task_id) is t
                    and t.spec.method != "__init__"):  # (an actor's fate is decided by its
                # table: a detached one's constructor runs on after its creator left)
                rids = return_ids(t.spec.task_id, t.spec.num_returns)
                if not any(o is not None and o.needed() for o in map(objects.get, rids)):
                    self._cancel(t, "its owner left")
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield

    def _cancel(self, t: TaskRec, why: str) -> None:
        """Stop a task nobody needs: drop it from the queues, or kill the worker running it
        (via its node agent; the worker's other tasks then run elsewhere, and a replacement
        starts); free what it held."""
        state = t.state
        t.state = CANCELLED
        self.events.add(("TaskCancelled", self.ctx.now, t.spec.task_id, why))
        if t.credit:  # its driver left: the task leaves its window all the same
            self.scheduler.return_credit(t)
        self.tasks.pop(t.spec.task_id, None)
        if self.children:
            self.children.pop(t.spec.task_id, None)
        self.cancelled += 1
        w = t.worker
        t.worker = None
        if state == ASSIGNED and w is not None and t in w.assigned:
            running = w.assigned[0] is t
            w.assigned.remove(t)  # a task queued behind on the worker: its result is dropped
            if running and w.node is not None and w.node.alive:
                self.log.info("task %s cancelled (%s): killing worker %s (pid %d) on node %s",
                         t.spec.name, why, w.worker_id, w.pid, w.node.node_id)
                self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"task {t.spec.name} "
                                                        f"was cancelled: {why}"))
                # the tasks queued behind it never started: they run elsewhere, uncharged,
                # and the worker takes nothing more (it is in no idle list, holds no tasks)
                for rest in reversed(w.assigned):
                    rest.worker = None
                    self.scheduler.enqueue(rest, front=True)
                w.assigned.clear()
        for oid in return_ids(t.spec.task_id, t.spec.num_returns):
            obj = self.directory.objects.get(oid)
            if obj is not None and obj.value is None and not obj.needed():
                del self.directory.objects[oid]  # (no value: nothing charged)
        self.release_inputs(t)

    def release_inputs(self, t: TaskRec) -> None:
        """A task that was admitted will not end normally (cancelled, or replaced by a new
        run): it no longer uses its inputs nor holds the refs in its arguments."""
        if t.held:
            held, t.held = t.held, None
            self.directory.unhold(held)
        for dep in t.spec.deps:
            obj = self.directory.objects.get(dep)
            if obj is not None:
                obj.dependents -= 1
                self.directory.drop_if_unneeded(dep, obj)

    def fail_task(self, t: TaskRec, err: P.SerializedObject) -> None:
        """End a task with an error value for each of its returns."""
        self._finish(t, [err] * t.spec.num_returns)

    def _intern(self, value: Any) -> Any:
        """One shared object per distinct name, function id or resources dict (their
        ``repr``: a dict is keyed by its items)."""
        key = (type(value), tuple(sorted(value.items())) if type(value) is dict else value)
        found = self.interned.get(key)
        if found is None:
            if len(self.interned) > 100_000:  # many distinct ones: stop sharing
                return value
            found = self.interned[key] = value
        return found

    def _finish(self, t: TaskRec, returns: list, deps_counted: bool = True,
                node: NodeRec | None = None, duration: float = 0.0, error: str = "") -> None:
        """Store a finished task's return values and wake whatever waited for them.
        ``error``: for a task that raised, its worker's text of the error (TaskResult.error)."""
        events = self.events
        first = returns[0] if returns else None
        if first is None or not first.is_error:
            if events.on:
                events.added.append(("TaskFinished", self.ctx.now, t.spec.task_id, duration))
        else:
            self.failed += 1
            if events.on:
                if first.flags == P.SerializedObject.SYSTEM_ERROR:
                    kind, message = first.read_system_error()
                else:  # (no text from a worker: it did not run, an input was an error)
                    kind, message = "TaskError", error or (
                        "it did not run: one of its inputs is the error of a task that raised")
                if kind == "TaskCancelledError":
                    events.add(("TaskCancelled", self.ctx.now, t.spec.task_id, message))
                else:
                    events.add(("TaskFailed", self.ctx.now, t.spec.task_id, kind,
                                message[:MAX_ERROR_CHARS]))
        if t.credit:
            self.scheduler.return_credit(t)
        t.state = DONE
        t.worker = None
        tid = t.spec.task_id
        self.tasks.pop(tid, None)
        self.finished += 1
        if self.children:
            self.children.pop(tid, None)
        if t.spec.actor_id and t.spec.method != "__init__":
            actor = self.actor_table.actors.get(t.spec.actor_id)
            if actor is not None and actor.out_of_scope:
                self.actor_table.end_if_idle(actor)
        objects = self.directory.objects
        for oid, value in zip(return_ids(t.spec.task_id, t.spec.num_returns), returns):
            obj = objects.get(oid)
            if obj is not None:
                self.directory.set_value(oid, obj, value, push_owner=True, node=node)
                if obj.locations and obj.lineage is None and not t.spec.actor_id:
                    # stored: rebuildable from its task (not an actor call: its state is gone)
                    obj.lineage = t
                    obj.rebuilds_left = t.spec.max_retries
            elif value.is_stored and node is not None:  # nobody wants it: free the copy
                self.directory.free_copies(oid, [node.node_id])
        if not deps_counted:
            return
        if t.held:
            held, t.held = t.held, None
            self.directory.unhold(held)
        for dep in t.spec.deps:
            obj = objects.get(dep)
            if obj is not None:
                obj.dependents -= 1
                self.directory.drop_if_unneeded(dep, obj)

    def wait_inputs(self, t: TaskRec) -> None:
        """(Re)queue a task, or make it wait for those of its inputs that have no value now."""
        t.state = WAITING
        t.waiting = 0
        objects = self.directory.objects
        for d in t.spec.deps:
            obj = objects.get(d)
            if obj is not None and obj.value is not None and obj.value.is_error:
                for other in t.spec.deps:  # stop waiting for the others: it fails now
                    rec = objects.get(other)
                    if rec is not None and rec.waiters and t in rec.waiters:
                        rec.waiters.remove(t)
                self.fail_task(t, obj.value)
                return
            if obj is not None and obj.value is None:
                t.waiting += 1
                if obj.waiters is None:
                    obj.waiters = [t]
                else:
                    obj.waiters.append(t)
        if t.waiting == 0:
            self.scheduler.make_ready(t)
        else:
            self.events.add(("TaskWaiting", self.ctx.now, t.spec.task_id, t.waiting))

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError unless every unfinished task is where its state says: on the
        worker it names, in one queue entry if queued, waiting for as many inputs as list it."""
        entries: dict[int, int] = {}
        for queue in self.scheduler.queues.values():
            for t in queue:
                entries[id(t)] = entries.get(id(t), 0) + 1
        waits: dict[int, int] = {}
        for obj in self.directory.objects.values():
            for t in obj.waiters or ():
                waits[id(t)] = waits.get(id(t), 0) + 1
        deferred = {id(t) for _, t in self.deferred}
        for tid, t in self.tasks.items():
            name = f"task {tid.hex()} ({t.spec.name})"
            require(t.spec.task_id == tid, f"{name} is filed under the wrong id")
            require(t.state in (WAITING, READY, ASSIGNED), f"{name} is pending in state {t.state}")
            if t.state == ASSIGNED:
                w = t.worker
                require(w is not None and self.members.workers.get(w.peer) is w
                        and sum(1 for x in w.assigned if x is t) == 1,
                        f"{name} is assigned to a worker that does not list it once")
            else:
                require(t.worker is None, f"{name} has a worker but is not assigned")
            if not t.spec.actor_id:
                require(entries.get(id(t), 0) == (1 if t.queued else 0),
                        f"{name}: {entries.get(id(t), 0)} queue entries, queued={t.queued}")
                require(t.state != READY or t.queued, f"{name} is ready but in no queue")
            if t.state == WAITING:
                require(t.waiting == waits.get(id(t), 0), f"{name} waits for {t.waiting} inputs, "
                        f"but {waits.get(id(t), 0)} objects list it")
                require(t.waiting > 0 or id(t) in deferred or t.spec.method == "__init__",
                        f"{name} waits for nothing")


def args_bytes(args: P.SerializedObject | None) -> int:
    """The size of a task's serialized arguments (for its TaskSubmitted event): inline bytes,
    or the size of the stored object that holds them."""
    if args is None:
        return 0
    if args.buffers:
        return args.nbytes
    if args.flags == P.SerializedObject.STORED:
        try:
            return args.read_stored()[1]
        except P.ProtocolError:
            return 0
    return len(args.data)

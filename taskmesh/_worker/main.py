"""The worker process: runs the tasks the head assigns to it, one at a time, in order.

    head ──Execute[assignments]──▶ queue ──run──▶ results ──TaskResults (batched)──▶ head

Results of fast tasks are held back briefly (``result_batch_s``, at most 64) while more
assigned tasks are already waiting, so a stream of short tasks costs one message per batch;
held results never wait for the task that runs next (results.py: a courier thread sends them
at their deadline), and a slow task's result goes out the moment it ends. A task that blocks
in ``get()``/``wait()`` first hands back the tasks queued behind it and tells the head
(Blocked), which lends the CPU to another worker; when it resumes it says Unblocked. A watchdog thread exits the process as
soon as the node agent's lifeline pipe closes, even in the middle of a long task.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import pickle
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor as _ThreadPool
from typing import Any

from .. import _protocol as P
from .. import _serialize as S
from .._client.core import CoreClient
from .._client.hooks import ClientHooks
from .._context import CTX
from .._spin import Spinner
from .._secret import Security, find_secret, take_secret_from_env
from ..config import Config
from .._output_marks import NO_CONTEXT, Context
from ..errors import ObjectLostError, SerializationError, TaskmeshError
from . import output
from . import envsetup
from .results import ResultBatch

log = logging.getLogger("taskmesh.worker")

#: an InterruptTask with this task id asks the worker to read its socket (protocol.md)
DOORBELL = bytes(16)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    def __init__(self, config: Config, endpoint: str, node_id: str, worker_id: str,
                 incarnation: int = 0, security: Security | None = None) -> None:
        self.config = config
        self.incarnation = incarnation  # of its node agent (a fenced node joins again: +1)
        self.node_id = node_id
        self.worker_id = worker_id
        self.pid = os.getpid()
        # the node agent hands the secret over in the environment; it is taken out at once so
        # that programs the user's tasks start do not inherit it
        if security is None:
            key = take_secret_from_env() or find_secret(config.secret_file)
            security = Security(key, config.encrypt)
        #: how this worker hooks into its client core (messages, blocked waits, held results)
        self.hooks = _WorkerHooks(self)
        self.core = CoreClient(config, endpoint, "worker", endpoint.replace("tcp://", ""),
                               security, identity=b"W" + worker_id.encode(), hooks=self.hooks,
                               node_id=node_id)
        #: the runtime environment it was started in ("": the default), and what the tasks
        #: it submits inherit; why its packages could not be set up (its tasks fail so)
        self.runtime_env_id, self.core.runtime_env = envsetup.from_environment()
        self.env_error: str | None = None
        #: results held back for batching (they may hold refs: no Release may overtake them)
        self.results = ResultBatch(self.core.send, config.result_batch_s)
        self.queue: collections.deque[P.Assignment] = collections.deque()
        #: guards changes to ``queue`` that are more than one append or pop: a Revoke may be
        #: handled by the control thread while the main thread runs a task
        self.queue_lock = threading.Lock()
        self.revokes_seen = 0
        self.help_queue: collections.deque[P.Assignment] = collections.deque()
        self.wait_stack: list[list] = []  # objects each active wait of the main thread needs
        self.main_thread = threading.get_ident()
        self.functions: dict[bytes, Any] = {}
        self._retry_classes: dict[bytes, tuple] = {}  # retry_filter -> exception classes
        self.blobs: dict[bytes, bytes] = {}
        self.block_depth = 0
        self.block_lock = threading.Lock()
        self.running = 0  # tasks executing (more than one while Help tasks run)
        self._uncounted = threading.local()  # this thread's block did not lend a CPU
        self.exit_reason: str | None = None
        #: the actor instance, once this worker ran an actor's constructor (it then runs only
        #: that actor's calls: in order, or in a thread pool / an event loop for concurrency)
        self.actor: Any = None
        self.actor_label = ""
        #: whose output an actor's worker writes: the job that created it, its class name
        self.actor_context: Context | None = None
        self._concurrent: Any = None  # ThreadPoolExecutor, or the asyncio loop of an async actor
        self._async_slots: Any = None  # asyncio.Semaphore: max_concurrency of an async actor
        #: tasks the head cancelled (ids from the control pipe): skipped, or interrupted
        self.cancelled: set[bytes] = set()
        self.timed_out: bytes | None = None  # the task whose timeout_s ran out
        #: True while the task's own code runs (and taskmesh calls it makes): only then may a
        #: cancel or time-out signal raise, never while a result is being stored or sent
        self.in_user_code = False
        CTX.core = self.core
        CTX.node_id = node_id
        CTX.worker_id = worker_id

    # ------------------------------------------------------------------ messages

    def _on_message(self, msg: Any) -> None:
        t = type(msg)
        if t is P.Execute or t is P.Help:
            for a in msg.assignments:  # keep the code even of tasks we hand back
                if a.function_blob is not None:
                    self.blobs[a.function_id] = a.function_blob
            if t is P.Help:
                self.help_queue.extend(msg.assignments)
            elif self.block_depth:
                # blocked (e.g. in a task the head cancelled, which has not ended yet): we may
                # not start these; hand them straight back, except an actor's constructor: the
                # head gave us to that actor, and we run it once the blocked task is over
                ctors = [a for a in msg.assignments if a.method == "__init__"]
                self.queue.extend(ctors)
                back = [a.task_id for a in msg.assignments if a.method != "__init__"]
                if back or not ctors:
                    waiting = self.wait_stack[-1] if self.wait_stack else []
                    self.core.send(P.Blocked(back, waiting))
            else:
                self.queue.extend(msg.assignments)
        elif t is P.Revoke:
            self.revokes_seen += 1
            wanted = set(msg.task_ids)
            with self.queue_lock:
                kept = [a for a in self.queue if a.task_id not in wanted]
                returned = [a.task_id for a in self.queue if a.task_id in wanted]
                self.queue.clear()  # in place: the run loop holds this deque
                self.queue.extend(kept)
            self.core.send(P.Returned(returned))
        elif t is P.Exit:
            self.exit_reason = msg.reason
        else:
            log.warning("worker ignored unexpected %s", t.__name__)

    def _block(self, waiting: list) -> None:
        if not self.running:
            # a thread left behind by a finished task: no task holds a CPU here to lend
            self._uncounted.flag = True
            return
        self._uncounted.flag = False
        with self.block_lock:
            self.block_depth += 1
            if self.block_depth > 1:
                return  # another thread of this task already lent the CPU
        if threading.get_ident() == self.main_thread:
            self.wait_stack.append(waiting)
        self._flush()
        self.core.pump(0)  # take in whatever was already sent to us
        self.core.send(P.Blocked(self._hand_back_queue(), waiting))

    def _hand_back_queue(self) -> list[bytes]:
        """Empty the queue of tasks not started yet, for the head to run elsewhere; return
        their ids. An actor's constructor stays: the head gave this worker to that actor (it
        can come while a task the head cancelled has not ended yet), so it runs here later."""
        with self.queue_lock:
            kept = [a for a in self.queue if a.method == "__init__"]
            returned = [a.task_id for a in self.queue if a.method != "__init__"]
            self.queue.clear()
            self.queue.extend(kept)
        return returned

    def _unblock(self) -> None:
        if getattr(self._uncounted, "flag", False):
            self._uncounted.flag = False
            return
        with self.block_lock:
            self.block_depth -= 1
            if self.block_depth > 0:
                return
        if threading.get_ident() == self.main_thread and self.wait_stack:
            self.wait_stack.pop()
        self.core.send(P.Unblocked())

    def _help(self) -> bool:
        """In a blocked get(): run the tasks the head handed us that make what we wait for."""
        if not self.help_queue or threading.get_ident() != self.main_thread:
            return False
        saved, self.block_depth = self.block_depth, 0  # we hold the CPU again while helping
        try:
            while self.help_queue:
                self._run(self.help_queue.popleft())
        finally:
            self.block_depth = saved
        self._flush()
        self.core.pump(0)
        waiting = self.wait_stack[-1] if self.wait_stack else []
        # back to waiting: lend the CPU again
        self.core.send(P.Blocked(self._hand_back_queue(), waiting))
        return True

    # ------------------------------------------------------------------ running tasks

    def _flush(self) -> None:
        output.flush()  # (what its tasks printed goes first)
        self.results.flush()

    def _function(self, a: P.Assignment) -> Any:
        fn = self.functions.get(a.function_id)
        if fn is None:
            blob = a.function_blob or self.blobs.pop(a.function_id, None)
            if blob is None:
                raise RuntimeError(f"the head did not send the code of {a.name}")
            fn = self.functions[a.function_id] = pickle.loads(blob)
        return fn

    def _run(self, a: P.Assignment) -> None:
        if a.task_id in self.cancelled:  # cancelled before it started: the head failed it
            self.cancelled.discard(a.task_id)
            return
        if self.env_error is not None:  # its runtime environment is not there: nothing runs
            self.results.add(envsetup.failed(a, self.env_error, self.node_id, self.pid))
            return
        if self._concurrent is not None and a.method:
            self._run_concurrently(a)
            return
        self.results.arm()  # results still held leave by their deadline, however long this runs
        start = time.perf_counter()
        if a.env:  # e.g. CUDA_VISIBLE_DEVICES: the GPUs the head gave this task
            os.environ.update({str(k): str(v) for k, v in a.env.items()})
        outer = CTX.current_task_id, CTX.current_task_name, CTX.current_job  # (Help tasks)
        self.running += 1
        CTX.current_task_id = a.task_id
        CTX.current_task_name = a.name
        CTX.current_job = a.job
        n = a.num_returns
        no_retry = False
        error = ""  # a raised error as text, for the head's state API (it never unpickles)
        try:
            fn = self._function(a)
            try:
                deps, args_obj = self._inputs(a)
            except _InputLost as lost:  # the head reruns it once the input is back
                self.running -= 1
                CTX.current_task_id, CTX.current_task_name, CTX.current_job = outer
                self.results.add(P.TaskResult(a.task_id, [lost.error()], 0.0))
                return
            args, kwargs = S.unpack_args(args_obj, deps)
            if a.timeout_s > 0:
                self.timed_out = a.task_id
                signal.setitimer(signal.ITIMER_REAL, a.timeout_s)
            outer_in_user_code = self.in_user_code  # (a Help task runs inside a blocked one)
            try:
                self.in_user_code = True
                # a cancel that came while the task was being set up (after the check at the
                # top, or while its inputs were read): its signal found no task to stop, or
                # none in user code; the control thread adds the id before it looks, so one
                # that comes after this check finds the task and signals it
                if a.task_id in self.cancelled:
                    raise _Interrupted("TaskCancelledError", "was cancelled by taskmesh.cancel()")
                if not a.method:
                    result = fn(*args, **kwargs)
                elif a.method == "__init__":
                    result = self._become_actor(a, fn, args, kwargs)
                else:
                    result = self._call_method(a, args, kwargs)
            finally:
                self.in_user_code = outer_in_user_code
                if a.timeout_s > 0:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    self.timed_out = None
        except _Interrupted as stop:
            self.cancelled.discard(a.task_id)
            what = (f"ran longer than its timeout_s={a.timeout_s:g} s and was stopped"
                    if stop.kind == "TaskTimeoutError" else stop.what)
            returns = [P.SerializedObject.system_error(
                stop.kind, f"task {a.name} {what} (node {self.node_id}, worker pid {self.pid})")
            ] * n
        except BaseException as exc:  # noqa: BLE001 - every task failure becomes an error object
            if isinstance(exc, KeyboardInterrupt):
                exc = RuntimeError("the task was interrupted (KeyboardInterrupt)")
            if a.method == "__init__":
                returns = [_constructor_failed(exc, a, self.node_id, self.pid)]
            else:
                returns = [S.dump_task_error(exc, a.name, self.node_id, self.pid)] * n
                no_retry = not self._retryable(a, exc)
                error = S.error_text(exc)
        else:
            try:
                returns = self._serialize_returns(a, result)
            except (SerializationError, ValueError, TaskmeshError, OSError) as exc:
                returns = [S.dump_task_error(exc, a.name, self.node_id, self.pid, False)] * n
                error = S.error_text(exc, False)
            del result
        output.task_ended()
        CTX.current_task_id, CTX.current_task_name, CTX.current_job = outer
        self.running -= 1
        self.results.add(P.TaskResult(a.task_id, returns, time.perf_counter() - start, no_retry,
                                      error))

    def describe_output(self) -> Context:
        """Whose output this worker writes now (for the context markers of output.py): its
        actor's, or the running task's."""
        if self.actor_context is not None:
            return self.actor_context._replace(task_id=CTX.current_task_id or b"")
        if CTX.current_task_id is None:
            return NO_CONTEXT
        return Context(CTX.current_job, CTX.current_task_id, b"", _short(CTX.current_task_name))

    # ------------------------------------------------------------------ interrupts

    def install_interrupts(self, control_fd: int | None) -> None:
        """Cancellation and time-outs interrupt the running task with an exception raised
        from a signal handler in the main thread (a blocking sleep or read is cut short
        too). The ids of cancelled tasks come from the node agent over ``control_fd``."""
        signal.signal(signal.SIGUSR1, self._on_cancel_signal)
        signal.signal(signal.SIGALRM, self._on_timeout_signal)
        if control_fd is None:
            return
        main = threading.main_thread().ident

        def read_control() -> None:
            buf = b""
            while True:
                try:
                    chunk = os.read(control_fd, 4096)
                except OSError:
                    return
                if not chunk:
                    return  # the agent is gone (the lifeline ends us)
                buf += chunk
                while len(buf) >= 16:
                    tid, buf = buf[:16], buf[16:]
                    if tid == DOORBELL:  # the head sent something that cannot wait for the
                        self._answer_doorbell()  # running task to end (a Revoke): read it now
                        continue
                    self.cancelled.add(tid)
                    if CTX.current_task_id == tid and main is not None:
                        signal.pthread_kill(main, signal.SIGUSR1)

        threading.Thread(target=read_control, name="taskmesh-control", daemon=True).start()

    def _answer_doorbell(self) -> None:
        """Read the socket from the control thread until the Revoke that rang arrived (it
        and the doorbell take different paths), or 0.2 s passed (then the main loop will)."""
        seen = self.revokes_seen
        deadline = time.monotonic() + 0.2
        try:
            while self.revokes_seen == seen and time.monotonic() < deadline:
                self.core.pump(0.02)
        except Exception as exc:  # noqa: BLE001 - the main loop will meet it too
            log.debug("doorbell: %s", exc)

    def _on_cancel_signal(self, signum: int, frame: Any) -> None:
        tid = CTX.current_task_id
        if (tid is not None and tid in self.cancelled and self._concurrent is None
                and self.in_user_code):
            raise _Interrupted("TaskCancelledError", "was cancelled by taskmesh.cancel()")

    def _on_timeout_signal(self, signum: int, frame: Any) -> None:
        tid = CTX.current_task_id
        if tid is not None and tid == self.timed_out and self.in_user_code:
            raise _Interrupted("TaskTimeoutError", "ran longer than its timeout_s")

    # ------------------------------------------------------------------ actors

    def _become_actor(self, a: P.Assignment, cls: Any, args: tuple, kwargs: dict) -> None:
        """Run an actor's constructor: from now on this process serves only that actor."""
        opts = a.actor or {}
        self.actor_context = Context(a.job, a.task_id, bytes(opts.get("actor_id") or b""),
                                     _short(str(opts.get("class_name") or a.name)))
        self.actor = cls(*args, **kwargs)
        self.actor_label = f"actor {opts.get('class_name') or a.name}"
        # a blocked call keeps its process: there is no CPU to lend nor tasks to hand back
        self.hooks.lends_cpu = False
        concurrency = int(opts.get("max_concurrency") or 1)
        if opts.get("is_async"):
            import asyncio

            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="taskmesh-actor-loop",
                             daemon=True).start()
            self._async_slots = asyncio.run_coroutine_threadsafe(
                _semaphore(concurrency), loop).result()
            self._concurrent = loop
            output.concurrent()
        elif concurrency > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._concurrent = ThreadPoolExecutor(concurrency, "taskmesh-actor")
            output.concurrent()
        return None

    def _call_method(self, a: P.Assignment, args: tuple, kwargs: dict) -> Any:
        if self.actor is None:
            raise RuntimeError(f"{a.name}: this worker runs no actor (its constructor did not run)")
        return getattr(self.actor, a.method)(*args, **kwargs)

    def _run_concurrently(self, a: P.Assignment) -> None:
        """A call of a threaded or async actor: run it beside the others; its result goes
        out on its own as soon as it is done."""
        if not isinstance(self._concurrent, _ThreadPool):  # an event loop
            import asyncio

            asyncio.run_coroutine_threadsafe(self._call_async(a), self._concurrent)
        else:
            self._concurrent.submit(self._call_in_thread, a)

    def _call_in_thread(self, a: P.Assignment) -> None:
        start = time.perf_counter()
        no_retry, error = False, ""
        try:
            returns = self._serialize_returns(a, self._call_with_inputs(a))
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error object
            returns = self._failed_returns(a, exc)
            no_retry, error = not self._retryable(a, exc), S.error_text(exc)
        self._send_result(a, returns, start, no_retry, error)

    async def _call_async(self, a: P.Assignment) -> None:
        async with self._async_slots:
            start = time.perf_counter()
            no_retry, error = False, ""
            try:
                result = self._call_with_inputs(a)
                if inspect.isawaitable(result):
                    result = await result
                returns = self._serialize_returns(a, result)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an error object
                returns = self._failed_returns(a, exc)
                no_retry, error = not self._retryable(a, exc), S.error_text(exc)
            self._send_result(a, returns, start, no_retry, error)

    def _retryable(self, a: P.Assignment, exc: BaseException) -> bool:
        """May the head retry the task after it raised ``exc``? Only an exception of a class
        its ``retry_exceptions`` list names, when it has one (the head cannot tell: it never
        unpickles)."""
        if not a.retry_filter:
            return True
        classes = self._retry_classes.get(a.retry_filter)
        if classes is None:
            try:
                classes = tuple(pickle.loads(a.retry_filter))
            except Exception as err:  # noqa: BLE001 - a class that does not exist here
                log.warning("task %s: its retry_exceptions could not be loaded (%s); not "
                            "retrying", a.name, err)
                classes = ()
            if len(self._retry_classes) < 1000:
                self._retry_classes[a.retry_filter] = classes
        return isinstance(exc, classes)

    def _call_with_inputs(self, a: P.Assignment) -> Any:
        deps, args_obj = self._inputs(a)
        args, kwargs = S.unpack_args(args_obj, deps)
        return self._call_method(a, args, kwargs)

    def _failed_returns(self, a: P.Assignment, exc: BaseException) -> list:
        if isinstance(exc, _InputLost):  # the head runs it again once the input is back
            return [exc.error()]
        return [S.dump_task_error(exc, a.name, self.node_id, self.pid)] * a.num_returns

    def _send_result(self, a: P.Assignment, returns: list, start: float,
                     no_retry: bool = False, error: str = "") -> None:
        """A concurrent call's result goes out on its own, at once."""
        self.core.send(P.TaskResults([P.TaskResult(a.task_id, returns,
                                                   time.perf_counter() - start, no_retry,
                                                   error)]))

    def _inputs(self, a: P.Assignment) -> tuple[Any, Any]:
        """The task's dependency values and its arguments object, read from the node's store
        where they are stored; _InputLost if one is on no reachable node."""
        resolve = self.core.reader.read
        deps: Any = ()
        if a.dep_values:
            deps = [S.value_or_raise(_read(resolve, v)) for v in a.dep_values]
        args_obj = a.args
        if args_obj is not None and args_obj.is_stored:  # large arguments: from the store
            args_obj = _read(resolve, args_obj)
            if args_obj.is_error:  # the head's verdict: lost for good
                raise S.to_exception(args_obj)
        return deps, args_obj

    def _serialize_returns(self, a: P.Assignment, result: Any) -> list:
        n = a.num_returns
        if n == 1:
            values = [result]
        elif n == 0:
            values = []
        else:
            try:
                values = list(result)
            except TypeError:
                raise ValueError(f"task {a.name} has num_returns={n} but returned a "
                                 f"{type(result).__name__}, not a sequence") from None
            if len(values) != n:
                raise ValueError(f"task {a.name} has num_returns={n} but returned "
                                 f"{len(values)} values")
        out: list = []
        try:
            self._serialize_each(a, values, out)
        except BaseException:
            stored = [o.read_stored()[0] for o in out if o.is_stored]
            if stored:  # the task fails as a whole: free what it already stored
                store = self.core.local_store()
                if store is not None:
                    store.delete(stored)
            raise
        return out

    def _serialize_each(self, a: P.Assignment, values: list, out: list) -> None:
        n = a.num_returns
        threshold = self.config.store_threshold_bytes
        for i, v in enumerate(values):
            try:
                obj = S.dumps(v)
            except SerializationError as exc:
                which = "" if n == 1 else f" {i}"
                raise SerializationError(
                    f"task {a.name} returned a value{which} that could not be serialized: "
                    f"{exc.__cause__ or exc}. Return something picklable (e.g. convert it to "
                    "plain data) instead.") from None
            if obj.nbytes > threshold:  # into the node store: one copy, the head sees a marker
                oid = a.task_id + i.to_bytes(4, "big")
                try:
                    obj = self.core.store_large(oid, obj) or S.snapshot(obj)
                except TaskmeshError as exc:
                    raise type(exc)(f"task {a.name} on node {self.node_id}: its result could not "
                                    f"be stored: {exc}") from None
            elif obj.buffers:  # held back for batching: the task's arrays may change meanwhile
                obj = S.snapshot(obj)
            out.append(obj)

    def run(self) -> int:
        info = {"node_id": self.node_id, "worker_id": self.worker_id, "pid": self.pid,
                "incarnation": self.incarnation}
        if self.runtime_env_id:  # a worker of a runtime environment: only its tasks come here
            info["runtime_env"] = self.runtime_env_id
        self.core.send(P.Hello(P.PROTOCOL_VERSION, "worker", info))
        if self.runtime_env_id:  # its working_dir and py_modules, before any task runs
            self.env_error = envsetup.set_up(self.core, self.config.runtime_env_cache())
        queue = self.queue
        core = self.core
        spinner = Spinner(self.config.spin_s)
        while self.exit_reason is None:
            if core._refused is not None:
                log.error("the head refused this worker: %s", core._refused)
                return 1
            if core.head_gone:
                return 0  # the head exited; nothing left to run
            if self.help_queue:  # handed to us in a get() that returned before running them
                self._run(self.help_queue.popleft())
                continue
            if not queue:
                self._flush()
                core.pump(0 if spinner.spin(core.sock.has_input) else 1.0)
                spinner.woke()  # a timeout counts too: a long gap stops the spinning
                continue
            with self.queue_lock:
                a = queue.popleft() if queue else None
            if a is None:
                continue
            self._run(a)
            if not queue and core.sock.has_input():  # (a Revoke rings the doorbell instead)
                core.pump(0)
            if not queue or self.results.due():
                self._flush()
        self.results.close()
        core.close()
        return 0


class _WorkerHooks(ClientHooks):
    """The worker's side of the client core's interface (``_client/hooks.py``): messages that
    are not the client's go to the worker; a blocked get()/wait() lends the CPU and runs Help
    tasks, until the worker becomes an actor (``lends_cpu`` off: an actor's blocked call keeps
    its process); held results keep Releases back; a store gone ends the process."""

    __slots__ = ("worker", "lends_cpu")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lends_cpu = True

    def on_message(self, msg: Any) -> None:
        self.worker._on_message(msg)

    def block(self, waiting: list) -> None:
        if self.lends_cpu:
            self.worker._block(waiting)

    def unblock(self) -> None:
        if self.lends_cpu:
            self.worker._unblock()

    def wait_step(self) -> bool:
        return self.lends_cpu and self.worker._help()

    def holding_values(self) -> bool:
        return self.worker.results.holding

    def store_closed(self) -> None:
        _store_gone()


class _Interrupted(BaseException):
    """Raised into a running task by a cancel or time-out signal (a BaseException, so that
    ``except Exception`` in user code does not swallow it)."""

    def __init__(self, kind: str, what: str) -> None:
        super().__init__(what)
        self.kind = kind
        self.what = what


class _InputLost(Exception):
    """A stored input of a task could not be read from any node the head named."""

    def __init__(self, object_id: bytes, cause: BaseException) -> None:
        super().__init__(f"{object_id.hex()} {cause}")
        self.object_id = object_id

    def error(self) -> P.SerializedObject:
        return P.SerializedObject.system_error("DependencyLost", str(self))


def _read(resolve: Any, obj: P.SerializedObject) -> P.SerializedObject:
    try:  # not waiting for holders to be declared dead: the head reruns the task then
        return resolve(obj, None, False)
    except ObjectLostError as exc:
        raise _InputLost(obj.read_stored()[0], exc) from None


async def _semaphore(n: int) -> Any:
    import asyncio

    return asyncio.Semaphore(n)


def _constructor_failed(exc: BaseException, a: P.Assignment, node_id: str,
                        pid: int) -> P.SerializedObject:
    """Why an actor could not start, as text the head can read (it never unpickles)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next  # from the user's constructor on
    tb = "".join(traceback.format_exception(type(exc), exc, tb)[1:])
    return P.SerializedObject.system_error(
        "ActorDiedError", f"its constructor {a.name} raised {type(exc).__name__}: {exc} "
                          f"(node {node_id}, pid {pid})\n{tb.rstrip()}")


def _short(name: str) -> str:
    """The label a driver shows for a task or actor: its function's or class's own name,
    without the module (``__main__.f`` -> ``f``), as Ray shows it."""
    return name.rsplit(".", 1)[-1] if " " not in name else name


def _store_gone() -> None:
    """The node's object store closed its connection: the node agent is gone (the lifeline
    pipe is about to say so too). Exit now, before the store's ConnectionError could become the
    running task's error: a result sent now would keep the head from retrying the task."""
    log.warning("the object store of this node closed its connection: the node agent is gone; "
                "exiting")
    os._exit(0)


def watch_lifeline(fd: int) -> None:
    """Exit the process the moment the node agent's end of the pipe closes."""

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, name="taskmesh-lifeline", daemon=True).start()

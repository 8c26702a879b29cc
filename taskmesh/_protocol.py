"""Every message that crosses a taskmesh socket: its op tag, its typed fields, encode and decode.

    driver/worker ──Submit, Put, Subscribe, Release, Borrow, RegisterFunction, Goodbye──▶ head
    head ──ObjectValues, InfoReply, Notice──▶ driver/worker
    head ──Execute, Help, Exit──▶ worker ──TaskResults, Blocked, Unblocked──▶ head
    head ──Output──▶ driver
    driver/worker/status ──LogRequest──▶ head ──ReadLogs──▶ node agent ──LogsRead──▶ head
    node agent ──Heartbeat, WorkerExited, ObjectLocations, WorkerOutput──▶ head
    head ──StartWorkers, Shutdown, HeartbeatAck, FreeObjects, KillWorker──▶ node agent
    anyone ──Hello──▶ head ──Welcome | Refused──▶ anyone
    local client ──StoreCreate, StoreSeal, StoreAbort, StorePin, StoreUnpin, StoreDelete, StoreFetch──▶ node store
    node store ──StoreInfo, StoreCreated | StoreCreateFailed, StorePinned | StorePinFailed, StoreWaiting──▶ local client

A message is one ZeroMQ multipart message: frame 0 is a msgpack array ``[op, field, ...]``;
large binary buffers (pickle protocol-5 out-of-band buffers) ride in frames 1..n and are referenced
from frame 0 by a msgpack extension (code 1, the frame index), so they are never copied into the
header. msgpack was chosen over pickle for the envelope because decoding it cannot execute code:
the head decodes every envelope but never unpickles a user payload (``SerializedObject.data``).

``decode`` checks the op, the field count and every field's type, converting nested records into
their typed classes; anything else raises :class:`ProtocolError`, which the receiver counts, logs
and drops. docs/protocol.md has a section per message.

Why one module of ~900 lines: it is the wire, all of it, in one place (as docs/protocol.md is):
each message is a small declaration, and one reader checking a change of the protocol (its
version, an op, a field type) must see every message and the one decoder that checks them.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import msgpack

#: 2: connections are authenticated (CurveZMQ or PLAIN with a token from the cluster secret) and
#: the transfer stream starts with a handshake; the messages themselves are as in version 1.
#: 3: TaskSpec.parent and .retry_filter, Assignment.retry_filter, TaskResult.no_retry,
#: Cancel.recursive, Rejected; actor handles are counted through their handle object
#: 4: Assignment.job; WorkerOutput (node agent -> head) and Output (head -> driver): what
#: tasks print, shown on the driver of their job; LogRequest, ReadLogs, LogsRead: log files
PROTOCOL_VERSION = 5

#: the most return values a task may have (the head drops a Submit asking for more)
MAX_RETURNS = 100_000

#: WorkerExited.exitcode of a worker whose exit status could not be learned
EXIT_UNKNOWN = 1000

_EXT_FRAME = 1


def return_ids(task_id: bytes, num_returns: int) -> list[bytes]:
    """Object ids of a task's returns: the task id plus a 4-byte index."""
    return [task_id + i.to_bytes(4, "big") for i in range(num_returns)]


#: the index of an actor's handle object (see actor_handle_id)
HANDLE_INDEX = b"\xff\xff\xff\xff"


def actor_handle_id(actor_id: bytes) -> bytes:
    """The object every handle of an actor refers to: counted like any object (owner,
    borrowers, values holding it); a non-detached, unnamed actor ends when it is freed."""
    return actor_id + HANDLE_INDEX


class ProtocolError(ValueError):
    """A message that is not a well-formed taskmesh message of this protocol version."""


# --------------------------------------------------------------------------- payload records


class SerializedObject:
    """An opaque serialized value: a pickle stream plus its out-of-band buffers.

    ``flags`` says how to read it: VALUE (a pickle), TASK_ERROR (a pickled remote error),
    SYSTEM_ERROR (a msgpack ``[kind, message]`` built by taskmesh itself, never a pickle, so the
    head can make one without pickling anything) or STORED (a large value that lives in node
    object stores: ``data`` is a msgpack ``[object_id, size, [[node_id, address], ...]]`` saying
    where, and the bytes are read from a store; see docs/object-store.md).
    """

    __slots__ = ("flags", "data", "buffers", "contained")

    VALUE: ClassVar[int] = 0
    TASK_ERROR: ClassVar[int] = 1
    SYSTEM_ERROR: ClassVar[int] = 2
    STORED: ClassVar[int] = 3

    def __init__(self, flags: int, data: bytes, buffers: Sequence[Any] = (),
                 contained: Sequence[bytes] = ()) -> None:
        self.flags = flags
        self.data = data
        self.buffers = buffers
        #: ids of the ObjectRefs pickled inside the value: the head keeps them alive while
        #: this object (or the task whose arguments it is) exists
        self.contained = contained

    @property
    def is_error(self) -> bool:
        return self.flags == 1 or self.flags == 2

    @property
    def is_stored(self) -> bool:
        return self.flags == 3

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(_buflen(b) for b in self.buffers)

    @classmethod
    def system_error(cls, kind: str, message: str) -> "SerializedObject":
        return cls(cls.SYSTEM_ERROR, msgpack.packb([kind, message]))

    @classmethod
    def stored(cls, object_id: bytes, size: int, locations: list) -> "SerializedObject":
        """A STORED marker: ``size`` bytes of ``object_id`` held by ``locations``
        (``[[node_id, transfer address], ...]``; the address may be "" when only the id matters)."""
        return cls(cls.STORED, msgpack.packb([object_id, size, locations]))

    def read_stored(self) -> tuple[bytes, int, list]:
        """(object_id, size, locations) of a STORED marker; ProtocolError if it is malformed."""
        try:
            oid, size, locations = msgpack.unpackb(self.data)
        except Exception:
            raise ProtocolError("malformed stored-object marker") from None
        if type(oid) is not bytes or type(size) is not int or size < 0 or type(locations) is not list:
            raise ProtocolError("malformed stored-object marker")
        for loc in locations:
            if type(loc) is not list or len(loc) != 2 or not all(type(x) is str for x in loc):
                raise ProtocolError("malformed location in a stored-object marker")
        return oid, size, locations

    def read_system_error(self) -> tuple[str, str]:
        kind, message = msgpack.unpackb(self.data)
        return str(kind), str(message)

    def __repr__(self) -> str:
        return f"SerializedObject(flags={self.flags}, nbytes={self.nbytes})"


def _buflen(b: Any) -> int:
    return b.nbytes if isinstance(b, memoryview) else len(b)


class TaskSpec(NamedTuple):
    """A submitted task, as the driver describes it to the head. ``args`` is opaque to the head."""

    task_id: bytes
    name: str
    function_id: bytes
    args: SerializedObject | None
    deps: list  # object ids of top-level ObjectRef arguments, in argument order
    num_returns: int
    resources: dict  # resource name -> amount in units of 1/10000
    max_retries: int
    retry_exceptions: bool  # also retry when the task raises
    actor_id: bytes = b""  # a call to (or, with method "__init__", the creation of) an actor
    method: str = ""  # the actor method called
    timeout_s: float = 0.0  # stop it once it ran this long (0: no limit)
    strategy: str = ""  # "": default; "SPREAD"; "node:ID" (must run there), "node?:ID" (prefer)
    parent: bytes = b""  # the task that submitted it, if any (cancel(recursive=True) follows it)
    #: with retry_exceptions: the exception classes that are retried (cloudpickled tuple,
    #: opaque to the head; b"": any exception)
    retry_filter: bytes = b""
    #: its runtime environment's id ("": the default; see RegisterEnv)
    runtime_env: str = ""


class Assignment(NamedTuple):
    """A task the head hands to one worker, with its resolved dependency values."""

    task_id: bytes
    name: str
    function_id: bytes
    function_blob: bytes | None  # sent the first time this worker sees the function
    args: SerializedObject | None
    dep_values: list  # SerializedObject per TaskSpec.deps entry
    num_returns: int
    method: str = ""  # an actor method to call on this worker's actor ("__init__": create it)
    actor: dict | None = None  # with "__init__": the actor's id, name and concurrency options
    timeout_s: float = 0.0  # as in the spec
    env: dict | None = None  # environment variables set before it runs (CUDA_VISIBLE_DEVICES)
    retry_filter: bytes = b""  # as in the spec: the worker checks a raised exception against it
    job: bytes = b""  # the driver whose job it belongs to (its output is shown there); b"": none


class TaskResult(NamedTuple):
    """A finished task's return values (or error objects), as a worker reports it."""

    task_id: bytes
    returns: list  # SerializedObject per return
    duration_s: float
    no_retry: bool = False  # it raised an exception its retry_filter does not list
    #: a task that raised: the error as plain text (type, message, traceback; at most 8 KiB)
    #: for the state API, since the head never unpickles the error object; "" otherwise
    error: str = ""


class ObjectValue(NamedTuple):
    """An object that became available. ``value`` is None when only its readiness is pushed."""

    object_id: bytes
    value: SerializedObject | None
    nbytes: int


# --------------------------------------------------------------------------- type checking

_Check = Callable[[Any], Any]


def _fail(what: str, value: Any) -> ProtocolError:
    return ProtocolError(f"expected {what}, got {type(value).__name__}")


def _scalar(*types: type) -> _Check:
    name = "/".join(t.__name__ for t in types)

    def check(v: Any) -> Any:
        if type(v) in types:
            return v
        raise _fail(name, v)

    check.types = types  # type: ignore[attr-defined]  # (for _compile: checked in line)
    check.what = name  # type: ignore[attr-defined]
    return check


_BYTES = _scalar(bytes)
_STR = _scalar(str)
_INT = _scalar(int)
_FLOAT = _scalar(float, int)
_DICT = _scalar(dict)
_BOOL = _scalar(bool)


def _blob(v: Any) -> Any:
    if type(v) is bytes or isinstance(v, memoryview):
        return v
    raise _fail("bytes", v)


def _optional(inner: _Check) -> _Check:
    def check(v: Any) -> Any:
        return None if v is None else inner(v)

    check.optional = inner  # type: ignore[attr-defined]
    return check


def _list_of(inner: _Check) -> _Check:
    def check(v: Any) -> Any:
        if type(v) is not list:
            raise _fail("list", v)
        return [inner(x) for x in v]

    check.items = inner  # type: ignore[attr-defined]
    return check


def _compile(cls: type, checks: Sequence[_Check], first: int, what: str) -> Callable[[Any], Any]:
    """One function that checks the fields of ``v[first:]`` against ``checks`` and returns a
    ``cls`` of them, with the checks of scalars, optionals and lists of scalars written in line
    (a call per field and per list item was most of the head's cost of decoding a message).
    It raises exactly what the per-field checks raise; a list of the wrong length gets
    ``what`` (a message's: its field count; a record's: "malformed <name>")."""
    ns: dict[str, Any] = {"_fail": _fail, "_new": tuple.__new__, "_cls": cls,
                          "ProtocolError": ProtocolError}
    names = [f"x{i}" for i in range(len(checks))]
    body: list[str] = []

    def called(check: _Check) -> str:
        name = f"c{len(ns)}"
        ns[name] = check
        return name

    def inline(check: _Check, var: str, pad: str, depth: int) -> None:
        types = getattr(check, "types", None)
        if types is not None:
            cond = " and ".join(f"type({var}) is not {called(t)}" for t in types)
            body.append(f"{pad}if {cond}: raise _fail({check.what!r}, {var})")  # type: ignore
        elif hasattr(check, "optional"):
            body.append(f"{pad}if {var} is not None:")
            inline(check.optional, var, pad + "    ", depth)  # type: ignore[attr-defined]
        elif hasattr(check, "items"):
            inner = check.items  # type: ignore[attr-defined]
            body.append(f"{pad}if type({var}) is not list: raise _fail('list', {var})")
            if hasattr(inner, "types"):  # items are checked, the list kept as it is
                body.append(f"{pad}for e{depth} in {var}:")
                inline(inner, f"e{depth}", pad + "    ", depth + 1)
            else:
                body.append(f"{pad}{var} = [{called(inner)}(e) for e in {var}]")
        else:
            body.append(f"{pad}{var} = {called(check)}({var})")

    for check, var in zip(checks, names):
        inline(check, var, "    ", 0)
    n = len(checks)
    unpack = ", ".join(["_"] * first + names) + ("," if n + first == 1 else "")
    src = "\n".join([
        "def check(v):",
        "    if type(v) is _cls: return v" if first == 0 else "    pass",
        f"    if type(v) is not list or len(v) != {n + first}: raise ProtocolError({what})",
        f"    {unpack} = v" if n + first else "    pass",
        *body,
        f"    return _new(_cls, ({', '.join(names)}{',' if n == 1 else ''}))",
    ])
    exec(compile(src, f"<taskmesh checks of {cls.__name__}>", "exec"), ns)  # noqa: S102
    check = ns["check"]
    check.record, check.fields = cls, tuple(checks)  # (what it checks: for the tests' oracle)
    return check


def _serialized(v: Any) -> SerializedObject:
    if type(v) is not list:
        if type(v) is SerializedObject:
            return v
        raise _fail("serialized object [flags, data, buffers(, contained)]", v)
    n = len(v)
    if n == 3:  # (unpacked by hand: this runs for every value of every message)
        flags, data, buffers = v
        contained: Any = ()
    elif n == 4:
        flags, data, buffers, contained = v
        if type(contained) is not list:
            raise _fail("list", contained)
        for c in contained:
            if type(c) is not bytes:
                raise _fail("bytes", c)
    else:
        raise _fail("serialized object [flags, data, buffers(, contained)]", v)
    if type(flags) is not int or not 0 <= flags <= 3:
        raise ProtocolError(f"bad serialized-object flags {flags!r}")
    if type(buffers) is not list:
        raise _fail("list of buffers", buffers)
    for b in buffers:
        if type(b) is not bytes and not isinstance(b, memoryview):
            raise _fail("bytes", b)
    if flags == 2:  # SYSTEM_ERROR: receivers (the head too) read it
        _system_error_payload(data)
    if type(data) is not bytes and not isinstance(data, memoryview):
        raise _fail("bytes", data)
    return SerializedObject(flags, data, buffers, contained)


def _system_error_payload(data: Any) -> None:
    try:
        value = msgpack.unpackb(data)
    except Exception:  # msgpack raises several types on garbage
        raise ProtocolError("malformed system error: not msgpack") from None
    if type(value) is not list or len(value) != 2 or not all(type(x) is str for x in value):
        raise ProtocolError("malformed system error: not [kind, message]")


def _record(cls: type, field_checks: Sequence[_Check]) -> _Check:
    return _compile(cls, field_checks, 0, repr(f"malformed {cls.__name__}"))


def _resources(v: Any) -> dict:
    if type(v) is not dict:
        raise _fail("dict of resources", v)
    for k, amount in v.items():
        if type(k) is not str or type(amount) is not int or amount < 0:
            raise ProtocolError("resources must map names to non-negative integer units")
    return v


_TASK_SPEC = _record(
    TaskSpec,
    [_BYTES, _STR, _BYTES, _optional(_serialized), _list_of(_BYTES), _INT, _resources, _INT, _BOOL,
     _BYTES, _STR, _FLOAT, _STR, _BYTES, _BYTES, _STR],
)
_ASSIGNMENT = _record(
    Assignment,
    [_BYTES, _STR, _BYTES, _optional(_BYTES), _optional(_serialized), _list_of(_serialized), _INT,
     _STR, _optional(_DICT), _FLOAT, _optional(_DICT), _BYTES, _BYTES],
)
_TASK_RESULT = _record(TaskResult, [_BYTES, _list_of(_serialized), _FLOAT, _BOOL, _STR])
_OBJECT_VALUE = _record(ObjectValue, [_BYTES, _optional(_serialized), _INT])


def _put_item(v: Any) -> tuple[bytes, SerializedObject]:
    if type(v) is not list or len(v) != 2:
        raise ProtocolError("malformed put item")
    return _BYTES(v[0]), _serialized(v[1])


# --------------------------------------------------------------------------- messages

_BY_OP: dict[int, type] = {}


class Message:
    """Base of all wire messages. Subclasses are NamedTuples with a unique ``OP``."""

    OP: ClassVar[int]
    CHECKS: ClassVar[Sequence[_Check]]


def _message(op: int, *checks: _Check) -> Callable[[type], type]:
    def register(cls: type) -> type:
        if op in _BY_OP:
            raise RuntimeError(f"duplicate op {op}")
        assert len(checks) == len(cls._fields), cls  # type: ignore[attr-defined]
        cls.OP = op  # type: ignore[attr-defined]
        cls.CHECKS = checks  # type: ignore[attr-defined]
        cls.DECODE = _compile(  # type: ignore[attr-defined]  # [op, field, ...] -> cls
            cls, checks, 1, f"f'{cls.__name__} needs {len(checks)} fields, got {{len(v) - 1}}'")
        _BY_OP[op] = cls
        return cls

    return register


# -- handshake ---------------------------------------------------------------


@_message(1, _INT, _STR, _DICT)
class Hello(NamedTuple):
    """First message on every connection: who I am. kind: driver | worker | node | status."""

    version: int
    kind: str
    info: dict


@_message(2, _INT, _DICT)
class Welcome(NamedTuple):
    """The head accepted a Hello."""

    version: int
    info: dict


@_message(3, _STR)
class Refused(NamedTuple):
    """The head refused a Hello (wrong protocol version, duplicate node, ...)."""

    reason: str


# -- clients (drivers, and workers running nested tasks) --------------------


@_message(10, _BYTES, _STR, _BYTES)
class RegisterFunction(NamedTuple):
    """A pickled function, sent once per function before the first task that uses it."""

    function_id: bytes
    name: str
    blob: bytes


@_message(11, _list_of(_TASK_SPEC))
class Submit(NamedTuple):
    """New tasks. Their return objects belong to the sender (the owner)."""

    tasks: list


@_message(12, _list_of(_put_item))
class Put(NamedTuple):
    """Objects created with ``put()``: (object_id, SerializedObject) pairs."""

    objects: list


@_message(13, _list_of(_BYTES))
class Subscribe(NamedTuple):
    """Send me these objects' values as soon as each is available."""

    object_ids: list


@_message(14, _list_of(_BYTES))
class Release(NamedTuple):
    """I hold no more references to these objects (as their owner, or as a borrower)."""

    object_ids: list


@_message(26, _list_of(_BYTES))
class Borrow(NamedTuple):
    """I now hold ObjectRefs to these objects of other owners (unpickled from a value or task
    arguments): keep them until I Release them."""

    object_ids: list


@_message(27, _list_of(_BYTES), _BOOL, _BOOL)
class Cancel(NamedTuple):
    """``taskmesh.cancel(ref)``: stop the tasks that make these objects. Queued ones are
    dropped; a running one is interrupted (``force``: its worker is killed). ``recursive``:
    the unfinished tasks they submitted are cancelled too, and theirs, and so on."""

    object_ids: list
    force: bool
    recursive: bool = False


@_message(15, _INT, _STR)
class InfoRequest(NamedTuple):
    """Ask for cluster information. what: nodes | resources | available | status."""

    request_id: int
    what: str


@_message(16, _list_of(_OBJECT_VALUE))
class ObjectValues(NamedTuple):
    """Values (or readiness) of objects the receiver owns or subscribed to."""

    items: list


@_message(17, _INT, _scalar(dict, list))
class InfoReply(NamedTuple):
    """Answer to an InfoRequest."""

    request_id: int
    data: Any


def _output_entry(v: Any) -> list:
    """``[job, label, pid, stream, lines]`` (WorkerOutput) or ``[ip, label, pid, stream,
    lines]`` (Output): lines a worker wrote to stdout (stream 1) or stderr (2)."""
    if (type(v) is not list or len(v) != 5 or type(v[0]) not in (bytes, str)
            or type(v[1]) is not str or type(v[2]) is not int or v[3] not in (1, 2)
            or type(v[4]) is not list or not all(type(line) is str for line in v[4])):
        raise _fail("[job or ip, label, pid, stream 1|2, [line, ...]]", v)
    return v


@_message(5, _list_of(_output_entry))
class Output(NamedTuple):
    """Lines the workers of this driver's tasks and actors wrote, batched:
    ``[ip, label, pid, stream, lines]``, ``label`` the task's function or the actor's class."""

    entries: list


@_message(18, _STR, _STR)
class Notice(NamedTuple):
    """A warning for a person to read, e.g. a task no node can ever run."""

    level: str
    message: str


@_message(4, _STR, _INT, _list_of(_BYTES), _STR)
class Rejected(NamedTuple):
    """The head refused a message of this peer (malformed, or making no sense here): it names
    the message, the request it answered (0: none) and objects that will never get a value
    from it (e.g. the results of a refused task), and says why. An unauthenticated peer never
    gets one: its messages are never read."""

    message: str
    request_id: int
    object_ids: list
    reason: str


@_message(19)
class Goodbye(NamedTuple):
    """The client is leaving: release everything it owns."""


# -- workers ---------------------------------------------------------------


@_message(20, _list_of(_ASSIGNMENT))
class Execute(NamedTuple):
    """Tasks for this worker to run, in order."""

    assignments: list


@_message(21, _list_of(_TASK_RESULT))
class TaskResults(NamedTuple):
    """Finished tasks, batched."""

    results: list


@_message(22, _list_of(_BYTES), _list_of(_BYTES))
class Blocked(NamedTuple):
    """The running task waits in get()/wait(): lend my CPU.

    ``returned``: assigned tasks I had not started (run them elsewhere). ``waiting``: the
    objects I wait for; the head may hand me their not-yet-started tasks as Help.
    """

    returned: list
    waiting: list


@_message(23)
class Unblocked(NamedTuple):
    """The running task resumed; I hold my CPU again."""


@_message(28, _list_of(_BYTES))
class Revoke(NamedTuple):
    """Work stealing: give back those of these tasks you have not started (another node has
    idle workers); answer Returned."""

    task_ids: list


@_message(29, _list_of(_BYTES))
class Returned(NamedTuple):
    """Answer to Revoke: the tasks I dropped from my queue unstarted (maybe none)."""

    task_ids: list


@_message(25, _list_of(_ASSIGNMENT))
class Help(NamedTuple):
    """Run these now, inside the blocked task: they make objects it waits for. I take the
    CPU back while you run them; send Blocked again when you go back to waiting."""

    assignments: list


@_message(24, _STR)
class Exit(NamedTuple):
    """Worker: finish nothing more, exit now."""

    reason: str


# -- node agents -----------------------------------------------------------


@_message(30, _DICT)
class Heartbeat(NamedTuple):
    """Node agent liveness and load figures."""

    stats: dict


@_message(31, _STR, _INT, _INT)
class WorkerExited(NamedTuple):
    """A worker process ended (exitcode < 0: killed by that signal)."""

    worker_id: str
    pid: int
    exitcode: int


@_message(32, _INT, _STR, _STR)
class StartWorkers(NamedTuple):
    """Node agent: start this many more worker processes (for the runtime environment
    ``env``, whose wire form is ``wire``; "": the default)."""

    count: int
    env: str = ""
    wire: str = ""


@_message(33, _STR)
class Shutdown(NamedTuple):
    """Node agent: stop your workers and exit."""

    reason: str


@_message(37, _STR, _STR)
class KillWorker(NamedTuple):
    """Node agent: SIGKILL this worker process now (its running task was cancelled); report
    its exit with WorkerExited as for any other."""

    worker_id: str
    reason: str


# -- log files ---------------------------------------------------------------


@_message(80, _INT, _STR, _DICT)
class LogRequest(NamedTuple):
    """``taskmesh logs``: ask the nodes about their log files. ``node_id`` "": every node and
    the head; "head": the head's own; else that node. ``query``: ``{"op": "list"}``,
    ``{"op": "read", "file": NAME, "tail": N}`` or ``{..., "offset": BYTES}`` (follow), or
    ``{"op": "find", "task": HEX}`` / ``{"op": "find", "actor": HEX}``. Answered with one
    InfoReply: ``{"replies": {node_id: reply}, "missing": {node_id: why}}``."""

    request_id: int
    node_id: str
    query: dict


@_message(81, _INT, _DICT)
class ReadLogs(NamedTuple):
    """Node agent: answer this log query about your log directory (with LogsRead)."""

    request_id: int
    query: dict


@_message(82, _INT, _DICT)
class LogsRead(NamedTuple):
    """A node agent's answer to ReadLogs (``{"error": text}`` if it could not)."""

    request_id: int
    reply: dict


# -- runtime environments ----------------------------------------------------


@_message(83, _STR, _STR)
class RegisterEnv(NamedTuple):
    """A runtime environment's wire form (JSON; the head keeps it without reading it), sent
    once per environment before the first task that runs in it; ``env_id`` names it in
    ``TaskSpec.runtime_env``."""

    env_id: str
    wire: str


@_message(85, _STR, _BYTES)
class RegisterPackage(NamedTuple):
    """A runtime_env package (a working_dir or py_module, zipped) is the object
    ``object_id``, which this client just put: the head keeps it for every later run
    (``InfoRequest("package:<name>")`` finds it)."""

    name: str
    object_id: bytes


@_message(84, _STR, _STR)
class EnvFailed(NamedTuple):
    """Node agent: the runtime environment ``env_id`` could not be set up here (``message``:
    why, e.g. pip's error)."""

    env_id: str
    message: str


# -- flow control -----------------------------------------------------------


@_message(70, _INT)
class Credit(NamedTuple):
    """Backpressure: ``count`` more of your tasks finished (a driver may have at most
    ``max_pending_tasks`` submitted and not finished; it waits for credit beyond that)."""

    count: int


# -- actors -----------------------------------------------------------------


@_message(60, _TASK_SPEC, _DICT, _INT)
class CreateActor(NamedTuple):
    """Create an actor: ``spec`` is its constructor (``actor_id`` = ``task_id``, method
    ``"__init__"``); ``options``: class_name, methods, name, namespace, get_if_exists,
    detached, max_restarts, max_task_retries, max_concurrency, is_async. A non-zero
    ``request_id`` asks for an ActorReply (needed with a name: it may exist already)."""

    spec: TaskSpec
    options: dict
    request_id: int


@_message(61, _INT, _DICT)
class ActorReply(NamedTuple):
    """Answer to CreateActor (with a request id) or GetActor: the actor's handle fields
    (actor_id, function_id, class_name, methods, is_async, max_task_retries), or {"error":
    message}."""

    request_id: int
    info: dict


@_message(62, _INT, _STR, _STR)
class GetActor(NamedTuple):
    """Look up a live named actor (``taskmesh.get_actor(name, namespace)``)."""

    request_id: int
    name: str
    namespace: str


@_message(63, _BYTES, _BOOL)
class KillActor(NamedTuple):
    """``taskmesh.kill(actor)``: stop the actor's process now; its pending calls fail with
    ActorDiedError. With ``no_restart`` False it restarts if it has restarts left."""

    actor_id: bytes
    no_restart: bool


@_message(38, _STR, _BYTES)
class InterruptTask(NamedTuple):
    """Node agent: tell this worker (through its control pipe) to stop task ``task_id``: it
    raises TaskCancelledError in it if it is running, or skips it if it has not started."""

    worker_id: str
    task_id: bytes


@_message(39, _list_of(_output_entry))
class WorkerOutput(NamedTuple):
    """Lines the workers of this node wrote, batched: ``[job, label, pid, stream, lines]``
    per worker and stream, ``job`` the driver the lines are for (the head drops those of a
    driver that is not connected or asked for none: the node's log files have them all)."""

    entries: list


@_message(34)
class HeartbeatAck(NamedTuple):
    """The head is alive (answer to Heartbeat)."""


def _sized_id(v: Any) -> list:
    if type(v) is not list or len(v) != 2 or type(v[0]) is not bytes or type(v[1]) is not int:
        raise _fail("[object_id, size]", v)
    return v


@_message(35, _list_of(_sized_id), _list_of(_BYTES))
class ObjectLocations(NamedTuple):
    """This node now holds copies of ``added`` (``[object_id, size]`` pairs: fetched from
    another node) and no longer holds ``removed``."""

    added: list
    removed: list


@_message(36, _list_of(_BYTES))
class FreeObjects(NamedTuple):
    """No reference to these objects remains: delete your copies (once nobody reads them)."""

    object_ids: list


# -- a node's object store and its local clients (never over TCP) ----------
# 40-49: client -> store; 50-59: store -> client. See docs/object-store.md.


@_message(40, _BYTES, _INT)
class StoreCreate(NamedTuple):
    """Give me ``size`` bytes of the arena to write a new object into."""

    object_id: bytes
    size: int


@_message(41, _BYTES)
class StoreSeal(NamedTuple):
    """I finished writing the object I created: it is immutable and readable from now on."""

    object_id: bytes


@_message(42, _BYTES)
class StoreAbort(NamedTuple):
    """Forget the object I was creating and its space."""

    object_id: bytes


@_message(43, _list_of(_BYTES))
class StorePin(NamedTuple):
    """I want to read these objects: keep each where it is until I unpin it (one pin each)."""

    object_ids: list


@_message(44, _list_of(_BYTES))
class StoreUnpin(NamedTuple):
    """I dropped one view of each of these objects."""

    object_ids: list


@_message(45, _list_of(_BYTES))
class StoreDelete(NamedTuple):
    """The cluster no longer references these objects: free them once nobody pins them."""

    object_ids: list


def _source(v: Any) -> list:
    if type(v) is not list or len(v) != 2 or type(v[0]) is not str or type(v[1]) is not str:
        raise _fail("source [node_id, address]", v)
    return v


@_message(46, _BYTES, _INT, _list_of(_source))
class StoreFetch(NamedTuple):
    """Make this object local: pull its ``size`` bytes from one of ``sources`` (``[node_id,
    "host:port"]`` of nodes holding it, tried in order), unless this store has or is fetching it.
    Pins of the object wait for the fetch, and fail if every source failed."""

    object_id: bytes
    size: int
    sources: list


@_message(50, _STR, _INT)
class StoreInfo(NamedTuple):
    """The store's arena (a file in /dev/shm to map) and its size; first message to a client."""

    arena: str
    capacity: int


@_message(51, _BYTES, _INT, _INT)
class StoreCreated(NamedTuple):
    """Write the object's ``size`` bytes at ``offset`` in the arena, then send StoreSeal."""

    object_id: bytes
    offset: int
    size: int


@_message(52, _BYTES, _STR, _BOOL)
class StoreCreateFailed(NamedTuple):
    """The create failed and the object is forgotten. ``full``: for lack of room (else refused)."""

    object_id: bytes
    reason: str
    full: bool


@_message(53, _BYTES, _INT, _INT)
class StorePinned(NamedTuple):
    """Read the object at ``offset`` until you unpin it (one per requested pin)."""

    object_id: bytes
    offset: int
    size: int


@_message(54, _BYTES, _STR, _BOOL)
class StorePinFailed(NamedTuple):
    """The pin was refused. ``full``: the object is on disk and no room appeared to restore it;
    else it is not in this store (unknown, deleted, or its creator gave up)."""

    object_id: bytes
    reason: str
    full: bool


@_message(55, _BYTES)
class StoreWaiting(NamedTuple):
    """Your create or pin waits (for room, a restore or the seal); the answer follows."""

    object_id: bytes


# --------------------------------------------------------------------------- encode / decode


class _OutOfBand:
    __slots__ = ("buf",)

    def __init__(self, buf: Any) -> None:
        self.buf = buf


def encode(msg: Any, frame_threshold: int = 64 * 1024) -> list:
    """Encode a message into ZeroMQ frames: [msgpack header, out-of-band buffers...]."""
    frames: list = [b""]

    def default(obj: Any) -> Any:
        if type(obj) is SerializedObject:
            bufs = [
                _OutOfBand(b) if _buflen(b) > frame_threshold else b for b in obj.buffers
            ]
            if obj.contained:
                return [obj.flags, obj.data, bufs, obj.contained]
            return [obj.flags, obj.data, bufs]
        if type(obj) is _OutOfBand:
            frames.append(obj.buf)
            return msgpack.ExtType(_EXT_FRAME, (len(frames) - 1).to_bytes(4, "little"))
        if isinstance(obj, memoryview):
            return obj.tobytes()
        raise TypeError(f"cannot encode {type(obj).__name__} in a taskmesh message")

    frames[0] = msgpack.packb((msg.OP, *msg), default=default, use_bin_type=True)
    return frames


def decode(frames: Sequence[Any]) -> Any:
    """Decode and type-check frames into a message object; raise ProtocolError if malformed."""
    if not frames:
        raise ProtocolError("empty message")

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _EXT_FRAME or len(data) != 4:
            raise ProtocolError(f"unknown msgpack extension {code}")
        index = int.from_bytes(data, "little")
        if not 1 <= index < len(frames):
            raise ProtocolError(f"reference to missing frame {index}")
        f = frames[index]
        return f if isinstance(f, (bytes, memoryview)) else memoryview(f)

    try:
        raw = msgpack.unpackb(
            frames[0], use_list=True, raw=False, ext_hook=ext_hook, strict_map_key=False
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types on garbage
        raise ProtocolError(f"undecodable header: {exc}") from None
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise ProtocolError("header is not [op, ...]")
    cls = _BY_OP.get(raw[0])
    if cls is None:
        raise ProtocolError(f"unknown op {raw[0]}")
    if cls is Hello and len(raw) >= 2 and type(raw[1]) is int and raw[1] != PROTOCOL_VERSION:
        # another version's Hello may have other fields; keep what is needed to refuse it
        # with a message naming both versions (its first field is the version in all of them)
        kind = raw[2] if len(raw) > 2 and type(raw[2]) is str else "peer"
        return Hello(raw[1], kind[:32], {})
    return _checked(cls, raw)


def _checked(cls: type, raw: list) -> Any:
    """``raw`` (``[op, field, ...]``, unpacked) as a ``cls``, its fields checked."""
    fields = len(cls.CHECKS)  # type: ignore[attr-defined]
    if len(raw) - 1 != fields:
        raise ProtocolError(f"{cls.__name__} needs {fields} fields, got {len(raw) - 1}")
    try:
        return cls.DECODE(raw)  # type: ignore[attr-defined]
    except ProtocolError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


class Malformed(NamedTuple):
    """Not a wire message: what the head's sockets hand on in place of a message they could
    not decode, so that the head can answer its (authenticated) sender with Rejected."""

    message: str  # the message's name, if its op could be read ("" otherwise)
    request_id: int  # its request id, if it is a request and that field could be read
    reason: str


def malformed(frames: Sequence[Any], exc: ProtocolError) -> Malformed:
    """Describe a message that failed to decode, as far as its header can be read."""
    name, request_id = "", 0
    try:
        raw = msgpack.unpackb(frames[0], use_list=True, raw=False, strict_map_key=False,
                              ext_hook=lambda code, data: None)
    except Exception:  # not msgpack at all
        raw = None
    if type(raw) is list and raw and type(raw[0]) is int and raw[0] in _BY_OP:
        cls = _BY_OP[raw[0]]
        name = cls.__name__
        fields = cls._fields  # type: ignore[attr-defined]
        if "request_id" in fields:
            i = fields.index("request_id") + 1
            if len(raw) > i and type(raw[i]) is int and 0 < raw[i] < 1 << 63:
                request_id = raw[i]
    return Malformed(name, request_id, str(exc))


def message_types() -> dict[int, type]:
    """op -> message class, for docs and tests."""
    return dict(_BY_OP)

"""Wire protocol: every message round-trips, big buffers ride out of band, garbage is refused.

``decode`` is the head's first line of defence: whatever arrives on a socket, it must either
return a typed message or raise ProtocolError — never any other exception type.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmesh import _protocol as P
from taskmesh._protocol import (
    Assignment,
    ObjectValue,
    ProtocolError,
    SerializedObject,
    TaskResult,
    TaskSpec,
    decode,
    encode,
    message_types,
)

from ..support.head import build

SO = SerializedObject(SerializedObject.VALUE, b"\x80\x05pickle", [b"buf-1", b"x" * 100])
ERR = SerializedObject(SerializedObject.TASK_ERROR, b"pickled-error", [])
SYS = SerializedObject.system_error("WorkerCrashedError", "boom")


def make_spec(**changes) -> TaskSpec:
    fields = dict(task_id=b"t" * 16, name="mod.f", function_id=b"f" * 16, args=SO,
                  deps=[b"o" * 20, b"p" * 20], num_returns=2,
                  resources={"CPU": 10_000, "GPU": 5_000}, max_retries=3, retry_exceptions=False)
    fields.update(changes)
    return build(TaskSpec, **fields)


SPEC = make_spec()

# One or more examples per message type. A new message type without an entry here fails
# test_every_message_type_has_an_example.
EXAMPLES: dict[type, list] = {
    P.Hello: [P.Hello(P.PROTOCOL_VERSION, "driver", {"pid": 1, "hostname": "h", "nested": [1, b"x"]})],
    P.Welcome: [P.Welcome(P.PROTOCOL_VERSION, {"peer": b"\x00\x01peer"})],
    P.Refused: [P.Refused("protocol version mismatch")],
    P.RegisterFunction: [P.RegisterFunction(b"fid", "mod.f", b"\x80\x05blob")],
    P.Submit: [
        P.Submit([SPEC]),
        P.Submit([SPEC, make_spec(task_id=b"u" * 16, args=None, deps=[], resources={},
                                  max_retries=-1, num_returns=0, retry_exceptions=True)]),
        P.Submit([]),
    ],
    P.Put: [P.Put([(b"oid-1", SO), (b"oid-2", ERR)])],
    P.Subscribe: [P.Subscribe([b"a", b"b"]), P.Subscribe([])],
    P.Release: [P.Release([b"a"])],
    P.Borrow: [P.Borrow([b"o" * 20])],
    P.InfoRequest: [P.InfoRequest(7, "status")],
    P.ObjectValues: [P.ObjectValues([ObjectValue(b"o1", SO, SO.nbytes),
                                     ObjectValue(b"o2", None, 1 << 40),
                                     ObjectValue(b"o3", SYS, SYS.nbytes)])],
    P.InfoReply: [P.InfoReply(7, {"CPU": 20_000, "node:10.0.0.1": 10_000}),
                  P.InfoReply(8, [{"NodeID": "n1", "Alive": True}])],
    P.Notice: [P.Notice("warning", "no node can run task f")],
    P.Output: [P.Output([["10.0.0.2", "f", 1234, 1, ["hello", ""]],
                         ["10.0.0.3", "Counter", 99, 2, ["Traceback (most recent call last):"]]])],
    P.WorkerOutput: [P.WorkerOutput([[b"D" + bytes(8), "f", 1234, 2, ["warn", "é"]]]),
                     P.WorkerOutput([])],
    P.LogRequest: [P.LogRequest(3, "", {"op": "list"}),
                   P.LogRequest(4, "n1", {"op": "read", "file": "agent.log", "tail": 10})],
    P.ReadLogs: [P.ReadLogs(9, {"op": "find", "task": "ab" * 16})],
    P.LogsRead: [P.LogsRead(9, {"found": [], "truncated": False}), P.LogsRead(1, {"error": "x"})],
    P.Execute: [P.Execute([
        Assignment(b"t1", "mod.f", b"fid", b"blob", SO, [SO, ERR], 1),
        Assignment(b"t2", "mod.f", b"fid", None, None, [], 0),
        Assignment(b"t3", "mod.C.__init__", b"cid", b"blob", None, [], 1, "__init__",
                   {"actor_id": b"t3", "max_concurrency": 1, "is_async": False}),
        Assignment(b"t4", "mod.C.get", b"cid", None, SO, [], 1, "get"),
    ])],
    P.TaskResults: [P.TaskResults([TaskResult(b"t1", [SO, ERR], 0.25),
                                   TaskResult(b"t2", [], 3)])],
    P.Blocked: [build(P.Blocked, returned=[b"t2", b"t3"], waiting=[b"o1" * 10]),
                build(P.Blocked, returned=[], waiting=[])],
    P.Unblocked: [P.Unblocked()],
    P.Exit: [P.Exit("idle surplus worker")],
    P.Heartbeat: [P.Heartbeat({"cpu_percent": 12.5, "rss": 1 << 30, "workers": 4})],
    P.WorkerExited: [build(P.WorkerExited, worker_id="w1", pid=1234, exitcode=-9),
                     build(P.WorkerExited, worker_id="w2", pid=5, exitcode=0)],
    P.StartWorkers: [P.StartWorkers(3), P.StartWorkers(1, "env_ab", '{"env_vars": {"A": "1"}}')],
    P.RegisterEnv: [P.RegisterEnv("env_ab", '{"env_vars": {"A": "1"}}')],
    P.RegisterPackage: [P.RegisterPackage("pkg_" + "ab" * 32, b"o" * 20)],
    P.EnvFailed: [P.EnvFailed("env_ab", "pip install x failed (exit code 1):\nNo matching ...")],
    P.Shutdown: [P.Shutdown("taskmesh stop")],
    P.HeartbeatAck: [P.HeartbeatAck()],
    P.ObjectLocations: [P.ObjectLocations([[b"o" * 20, 1 << 20]], [b"p" * 20]), P.ObjectLocations([], [])],
    P.FreeObjects: [P.FreeObjects([b"o" * 20, b"p" * 20])],
    P.KillWorker: [P.KillWorker("n1-3", "task f was cancelled: its owner left")],
    P.StoreCreate: [P.StoreCreate(b"o" * 20, 3 << 20), P.StoreCreate(b"empty", 0)],
    P.StoreSeal: [P.StoreSeal(b"o" * 20)],
    P.StoreAbort: [P.StoreAbort(b"o" * 20)],
    P.StorePin: [P.StorePin([b"a" * 20, b"a" * 20, b"b" * 20]), P.StorePin([])],
    P.StoreUnpin: [P.StoreUnpin([b"a" * 20])],
    P.StoreDelete: [P.StoreDelete([b"a" * 20, b"b" * 20])],
    P.StoreFetch: [P.StoreFetch(b"a" * 20, 1 << 20, [["node1", "10.0.0.1:4000"], ["node2", "h2:1"]]),
                   P.StoreFetch(b"b" * 20, 0, [])],
    P.StoreInfo: [P.StoreInfo("taskmesh-arena-123-abc", 8 << 20)],
    P.StoreCreated: [P.StoreCreated(b"o" * 20, 4096, 3 << 20)],
    P.StoreCreateFailed: [P.StoreCreateFailed(b"o" * 20, "cannot create object: no room", True),
                          P.StoreCreateFailed(b"o" * 20, "object already exists", False)],
    P.StorePinned: [P.StorePinned(b"o" * 20, 0, 1 << 40)],
    P.StorePinFailed: [P.StorePinFailed(b"o" * 20, "not in this node's object store", False),
                       P.StorePinFailed(b"o" * 20, "cannot restore object: no room", True)],
    P.StoreWaiting: [P.StoreWaiting(b"o" * 20)],
    P.CreateActor: [P.CreateActor(make_spec(actor_id=b"t" * 16, method="__init__"),
                                  {"class_name": "mod.C", "methods": {"f": {"num_returns": 1}},
                                   "name": "counter", "detached": True}, 3)],
    P.ActorReply: [P.ActorReply(3, {"actor_id": b"a" * 16, "class_name": "mod.C"}),
                   P.ActorReply(4, {"error": "no actor named 'x'"})],
    P.GetActor: [P.GetActor(5, "counter", "")],
    P.KillActor: [P.KillActor(b"a" * 16, True)],
    P.Cancel: [P.Cancel([b"o" * 20], False, True), P.Cancel([], True, False)],
    P.Rejected: [P.Rejected("GetActor", 7, [], "malformed: GetActor: expected str"),
                 P.Rejected("Submit", 0, [b"t" * 16 + bytes(4)], "its id is taken")],
    P.InterruptTask: [P.InterruptTask("n1-3", b"t" * 16)],
    P.Revoke: [P.Revoke([b"t" * 16, b"u" * 16])],
    P.Credit: [P.Credit(1), P.Credit(100_000)],
    P.Returned: [P.Returned([b"t" * 16]), P.Returned([])],
    P.Goodbye: [P.Goodbye()],
    P.Help: [P.Help([Assignment(b"t9", "mod.g", b"gid", b"blob", SO, [SYS], 1)]), P.Help([])],
}


def norm(v):
    """A comparable, type-revealing form of a (decoded) message."""
    if type(v) is SerializedObject:
        return ("SerializedObject", v.flags, bytes(v.data), [bytes(b) for b in v.buffers])
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return (type(v).__name__, *[norm(x) for x in v])
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, (memoryview, bytearray)):
        return bytes(v)
    return v


def roundtrip(msg, **kw):
    return decode(encode(msg, **kw))


# --------------------------------------------------------------------------- round trips


def test_every_message_type_has_an_example():
    missing = sorted(cls.__name__ for cls in message_types().values() if cls not in EXAMPLES)
    assert not missing, f"add round-trip examples for: {', '.join(missing)}"


@pytest.mark.parametrize("op,cls", sorted(message_types().items()),
                         ids=[c.__name__ for _, c in sorted(message_types().items())])
def test_message_round_trips(op, cls):
    examples = EXAMPLES.get(cls)
    if not examples:
        pytest.fail(f"no example for {cls.__name__}")
    for msg in examples:
        assert type(msg).OP == op
        frames = encode(msg)
        assert msgpack.unpackb(frames[0], strict_map_key=False)[0] == op
        out = decode(frames)
        assert type(out) is cls
        assert norm(out) == norm(msg)


def test_nested_records_decode_to_their_typed_classes():
    sub = roundtrip(P.Submit([SPEC]))
    spec = sub.tasks[0]
    assert type(spec) is TaskSpec
    assert type(spec.args) is SerializedObject
    assert spec.resources == {"CPU": 10_000, "GPU": 5_000}
    ex = roundtrip(EXAMPLES[P.Execute][0])
    assert all(type(a) is Assignment for a in ex.assignments)
    assert all(type(d) is SerializedObject for d in ex.assignments[0].dep_values)
    tr = roundtrip(EXAMPLES[P.TaskResults][0])
    assert type(tr.results[0]) is TaskResult
    ov = roundtrip(EXAMPLES[P.ObjectValues][0])
    assert type(ov.items[0]) is ObjectValue
    assert ov.items[1].value is None
    assert ov.items[2].value.read_system_error() == ("WorkerCrashedError", "boom")
    put = roundtrip(EXAMPLES[P.Put][0])
    oid, obj = put.objects[1]
    assert oid == b"oid-2" and type(obj) is SerializedObject and obj.is_error


def test_op_tags_are_unique_and_messages_are_namedtuples():
    types = message_types()
    assert len(set(types)) == len(types)
    for op, cls in types.items():
        assert cls.OP == op
        assert len(cls.CHECKS) == len(cls._fields)


def test_serialized_object_helpers():
    assert not SO.is_error and ERR.is_error and SYS.is_error
    assert SO.nbytes == len(SO.data) + 5 + 100
    assert SerializedObject(0, b"ab", [memoryview(b"xyz")]).nbytes == 5
    assert SYS.flags == SerializedObject.SYSTEM_ERROR
    assert SYS.read_system_error() == ("WorkerCrashedError", "boom")


def test_encode_refuses_unencodable_values_with_a_clear_type_error():
    with pytest.raises(TypeError, match="cannot encode object"):
        encode(P.Hello(P.PROTOCOL_VERSION, "driver", {"x": object()}))


# --------------------------------------------------------------------------- out-of-band frames


def test_large_buffers_travel_as_their_own_frames():
    big = bytes(range(256)) * 400  # 102_400 bytes
    big_view = memoryview(bytearray(b"\x07" * 70_000))
    so = SerializedObject(SerializedObject.VALUE, b"header-pickle", [b"small", big, big_view])
    msg = P.ObjectValues([ObjectValue(b"o", so, so.nbytes)])
    frames = encode(msg, frame_threshold=64 * 1024)
    assert len(frames) == 3
    assert frames[1] is big  # not copied
    assert frames[2] is big_view
    assert len(frames[0]) < 200  # the header does not contain the big buffers
    assert big[:64] not in frames[0]
    out = decode(frames)
    bufs = out.items[0].value.buffers
    assert [bytes(b) for b in bufs] == [b"small", big, bytes(big_view)]
    assert out.items[0].nbytes == so.nbytes


def test_frame_threshold_is_exclusive_and_configurable():
    buf = b"z" * 1000
    so = SerializedObject(0, b"d", [buf])
    assert len(encode(P.Put([(b"o", so)]), frame_threshold=1000)) == 1  # == threshold: inline
    frames = encode(P.Put([(b"o", so)]), frame_threshold=999)
    assert len(frames) == 2 and frames[1] is buf


def test_out_of_band_frames_keep_their_places_across_many_objects():
    bufs = [bytes([i]) * (200 + i) for i in range(5)]
    results = [TaskResult(f"t{i}".encode(), [SerializedObject(0, b"p", [bufs[i], b"tiny"])], 0.1)
               for i in range(5)]
    frames = encode(P.TaskResults(results), frame_threshold=100)
    assert len(frames) == 6
    out = decode(frames)
    for i, r in enumerate(out.results):
        assert r.task_id == f"t{i}".encode()
        assert [bytes(b) for b in r.returns[0].buffers] == [bufs[i], b"tiny"]


def test_decode_accepts_buffer_like_frames():
    big = b"q" * 500
    so = SerializedObject(0, b"d", [big])
    frames = encode(P.Put([(b"o", so)]), frame_threshold=10)
    frames = [bytearray(frames[0]), bytearray(frames[1])]  # e.g. zmq frames expose buffers
    out = decode(frames)
    (_, obj), = out.objects
    assert bytes(obj.buffers[0]) == big


# --------------------------------------------------------------------------- rejection


def pack(*fields):
    return [msgpack.packb(list(fields), use_bin_type=True)]


def ext_frame(i, n=4):
    return msgpack.ExtType(1, i.to_bytes(n, "little"))


GOOD_SPEC = list(make_spec(args=None, deps=[], num_returns=1, resources={"CPU": 10_000}))


def spec_with(**changes):
    fields = list(GOOD_SPEC)
    for name, value in changes.items():
        fields[TaskSpec._fields.index(name)] = value
    return fields


BAD_FRAMES = {
    "no frames": [],
    "empty frame": [b""],
    "reserved msgpack byte": [b"\xc1"],
    "truncated array": [b"\x93\x01"],
    "not msgpack text": [b"hello, world"],
    "trailing garbage": [msgpack.packb([P.HeartbeatAck.OP]) + b"\x00"],
    "frame0 is None": [None],
    "frame0 is int": [5],
    "frame0 is str": ["[34]"],
    "header is a map": [msgpack.packb({"op": 1})],
    "header is a scalar": [msgpack.packb(34)],
    "header is empty list": pack(),
    "op is str": pack("1", 1, "driver", {}),
    "op is bool": pack(True),
    "op is float": pack(34.0),
    "unknown op": pack(999),
    "negative op": pack(-1),
    "too few fields": pack(P.Hello.OP, P.PROTOCOL_VERSION, "driver"),
    "too many fields": pack(P.Hello.OP, P.PROTOCOL_VERSION, "driver", {}, 5),
    "fields on fieldless msg": pack(P.HeartbeatAck.OP, 1),
    "version is str": pack(P.Hello.OP, "1", "driver", {}),
    "version is float": pack(P.Hello.OP, 1.0, "driver", {}),
    "version is bool": pack(P.Hello.OP, True, "driver", {}),
    "info is list": pack(P.Hello.OP, P.PROTOCOL_VERSION, "driver", []),
    "kind is bytes": pack(P.Hello.OP, P.PROTOCOL_VERSION, b"driver", {}),
    "invalid utf-8 str": [b"\x94\x01\x01\xa1\xff\x80"],
    "str where bytes expected": pack(P.RegisterFunction.OP, "fid", "f", b"blob"),
    "bytes where str expected": pack(P.RegisterFunction.OP, b"fid", b"f", b"blob"),
    "id list holds str": pack(P.Subscribe.OP, [b"a", "b"]),
    "id list is not a list": pack(P.Release.OP, b"a"),
    "id list is a map": pack(P.Release.OP, {b"a": 1}),
    "submit not list": pack(P.Submit.OP, GOOD_SPEC),
    "spec short": pack(P.Submit.OP, [GOOD_SPEC[:-1]]),
    "spec long": pack(P.Submit.OP, [GOOD_SPEC + [1]]),
    "spec is map": pack(P.Submit.OP, [{"task_id": b"t"}]),
    "negative resources": pack(P.Submit.OP, [spec_with(resources={"CPU": -1})]),
    "float resources": pack(P.Submit.OP, [spec_with(resources={"CPU": 1.5})]),
    "bool resources": pack(P.Submit.OP, [spec_with(resources={"CPU": True})]),
    "non-str resource name": pack(P.Submit.OP, [spec_with(resources={1: 10})]),
    "resources is list": pack(P.Submit.OP, [spec_with(resources=[["CPU", 1]])]),
    "num_returns is str": pack(P.Submit.OP, [spec_with(num_returns="1")]),
    "deps hold ints": pack(P.Submit.OP, [spec_with(deps=[1])]),
    "task_id is str": pack(P.Submit.OP, [spec_with(task_id="tid")]),
    "args flags 4": pack(P.Submit.OP, [spec_with(args=[4, b"d", []])]),
    "args flags -1": pack(P.Submit.OP, [spec_with(args=[-1, b"d", []])]),
    "args flags str": pack(P.Submit.OP, [spec_with(args=["0", b"d", []])]),
    "args flags bool": pack(P.Submit.OP, [spec_with(args=[False, b"d", []])]),
    "args data str": pack(P.Submit.OP, [spec_with(args=[0, "d", []])]),
    "args buffers not list": pack(P.Submit.OP, [spec_with(args=[0, b"d", b"buf"])]),
    "args buffer str": pack(P.Submit.OP, [spec_with(args=[0, b"d", ["buf"]])]),
    "args wrong length": pack(P.Submit.OP, [spec_with(args=[0, b"d"])]),
    "args is bytes": pack(P.Submit.OP, [spec_with(args=b"pickle")]),
    "put item short": pack(P.Put.OP, [[b"oid"]]),
    "put item bad value": pack(P.Put.OP, [[b"oid", [0, b"d"]]]),
    "put id str": pack(P.Put.OP, [["oid", [0, b"d", []]]]),
    "object value nbytes str": pack(P.ObjectValues.OP, [[b"o", None, "1"]]),
    "object value flags 7": pack(P.ObjectValues.OP, [[b"o", [7, b"d", []], 1]]),
    "result duration str": pack(P.TaskResults.OP, [[b"t", [], "0.1"]]),
    "result returns not list": pack(P.TaskResults.OP, [[b"t", [0, b"d", []], 0.1]]),
    "assignment blob str": pack(P.Execute.OP, [[b"t", "f", b"fid", "blob", None, [], 1]]),
    "assignment dep None": pack(P.Execute.OP, [[b"t", "f", b"fid", None, None, [None], 1]]),
    "info reply data str": pack(P.InfoReply.OP, 1, "nodes"),
    "worker exited pid str": pack(P.WorkerExited.OP, "w", "1", *[0] * (len(P.WorkerExited._fields) - 2)),
    "start workers float": pack(P.StartWorkers.OP, 1.5),
    "store create size str": pack(P.StoreCreate.OP, b"o", "10"),
    "store create id str": pack(P.StoreCreate.OP, "o", 10),
    "store pin ids not list": pack(P.StorePin.OP, b"o"),
    "store failed full int": pack(P.StoreCreateFailed.OP, b"o", "why", 1),
    "store info capacity float": pack(P.StoreInfo.OP, "arena", 1.5),
    "missing frame": pack(P.RegisterFunction.OP, b"fid", "f", ext_frame(1)),
    "missing frame far": pack(P.Put.OP, [[b"o", [0, b"d", [ext_frame(7)]]]]),
    "frame index 0": pack(P.Put.OP, [[b"o", [0, b"d", [ext_frame(0)]]]]),
    "frame ref short data": pack(P.Put.OP, [[b"o", [0, b"d", [ext_frame(1, 3)]]]]) + [b"x"],
    "unknown extension": pack(P.Put.OP, [[b"o", [0, b"d", [msgpack.ExtType(9, b"\0\0\0\1")]]]]) + [b"x"],
    "frame ref where str expected": pack(P.Hello.OP, P.PROTOCOL_VERSION, ext_frame(1), {}) + [b"driver"],
    "frame ref to unbufferable frame": pack(P.Put.OP, [[b"o", [0, b"d", [ext_frame(1)]]]]) + ["str"],
    "deep nesting": [b"\x91" * 100_000 + b"\xc0"],
    "huge declared array": [b"\xdd\xff\xff\xff\xff"],
    "bad timestamp ext": [b"\x92\x22\xd4\xff\x00"],
    "retry_exceptions int": pack(P.Submit.OP, [spec_with(retry_exceptions=1)]),
}


@pytest.mark.parametrize("frames", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_decode_rejects_garbage_with_protocol_error(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


def test_protocol_error_messages_say_what_is_wrong():
    with pytest.raises(ProtocolError, match="unknown op 999"):
        decode(pack(999))
    with pytest.raises(ProtocolError, match="Hello needs 3 fields, got 2"):
        decode(pack(P.Hello.OP, P.PROTOCOL_VERSION, "driver"))
    with pytest.raises(ProtocolError, match="missing frame 1"):
        decode(pack(P.RegisterFunction.OP, b"fid", "f", ext_frame(1)))
    with pytest.raises(ProtocolError, match="RegisterFunction.*expected bytes, got str"):
        decode(pack(P.RegisterFunction.OP, "fid", "f", b"blob"))
    with pytest.raises(ProtocolError, match="flags"):
        decode(pack(P.Submit.OP, [spec_with(args=[4, b"d", []])]))
    with pytest.raises(ProtocolError, match="non-negative"):
        decode(pack(P.Submit.OP, [spec_with(resources={"CPU": -1})]))


def test_frame_reference_resolves_to_the_frame():
    frames = pack(P.RegisterFunction.OP, b"fid", "f", ext_frame(1)) + [b"the-blob"]
    msg = decode(frames)
    assert msg.blob == b"the-blob"


# --------------------------------------------------------------------------- fuzzing


def check_decode(frames):
    try:
        msg = decode(frames)
    except ProtocolError:
        return None
    assert type(msg) in message_types().values()
    return msg


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_fuzz_random_bytes_only_raise_protocol_error(frames):
    check_decode(frames)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=5))
    | st.builds(lambda i: msgpack.ExtType(1, i.to_bytes(4, "little")), st.integers(0, 3))
)
hashable = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4) | st.binary(max_size=4)
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(hashable, children, max_size=3),
    max_leaves=6,
)
ops = st.sampled_from(sorted(message_types())) | st.integers(-3, 300)


@FUZZ
@given(ops, st.lists(structures, max_size=9), st.lists(st.binary(max_size=8), max_size=2))
def test_fuzz_random_msgpack_structures_only_raise_protocol_error(op, fields, extra_frames):
    frames = [msgpack.packb([op, *fields], use_bin_type=True)] + extra_frames
    msg = check_decode(frames)
    if msg is not None:  # what decode accepts, encode can send again, unchanged
        again = decode(encode(msg))
        assert type(again) is type(msg)


@FUZZ
@given(st.sampled_from(sorted(message_types())), st.data())
def test_fuzz_right_op_and_field_count_only_raise_protocol_error(op, data):
    cls = message_types()[op]
    fields = data.draw(st.lists(structures, min_size=len(cls._fields), max_size=len(cls._fields)))
    frames = [msgpack.packb([op, *fields], use_bin_type=True), b"frame-1", b"frame-2"]
    check_decode(frames)


valid_frames = [encode(m, frame_threshold=16) for ms in EXAMPLES.values() for m in ms]


@FUZZ
@given(st.sampled_from(valid_frames), st.data())
def test_fuzz_mutated_valid_messages_only_raise_protocol_error(frames, data):
    header = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "drop_frame"]))
        if kind == "flip" and header:
            i = data.draw(st.integers(0, len(header) - 1))
            header[i] = data.draw(st.integers(0, 255))
        elif kind == "truncate" and header:
            del header[data.draw(st.integers(0, len(header) - 1)):]
        elif kind == "insert":
            i = data.draw(st.integers(0, len(header)))
            header[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "drop_frame" and len(frames) > 1:
            frames = frames[:-1]
    check_decode([bytes(header), *frames[1:]])


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_contained_refs_and_stored_markers_round_trip():
    obj = SerializedObject(0, b"pickle", [b"buf"], [b"inner-1", b"inner-2"])
    [(oid, out)] = roundtrip(P.Put([(b"outer", obj)])).objects
    assert list(out.contained) == [b"inner-1", b"inner-2"] and out.data == b"pickle"
    plain = roundtrip(P.Put([(b"o", SerializedObject(0, b"p", []))])).objects[0][1]
    assert list(plain.contained) == []
    marker = SerializedObject.stored(b"oid", 1 << 30, [["n1", "10.0.0.1:7400"]])
    assert marker.is_stored and not marker.is_error
    out = roundtrip(P.Put([(b"oid", marker)])).objects[0][1]
    assert out.read_stored() == (b"oid", 1 << 30, [["n1", "10.0.0.1:7400"]])
    for bad in (b"\xc1", msgpack.packb([b"oid", -1, []]), msgpack.packb([b"oid", 1, [["n"]]])):
        with pytest.raises(ProtocolError, match="marker"):
            SerializedObject(3, bad).read_stored()
    with pytest.raises(ProtocolError):
        decode(pack(P.Put.OP, [[b"o", [0, b"p", [], [1, 2]]]]))  # contained ids must be bytes


def test_a_hello_of_another_version_decodes_enough_to_be_refused():
    # another version's Hello may carry other fields; the version and kind survive so the
    # head can say which versions are involved
    msg = decode(pack(P.Hello.OP, P.PROTOCOL_VERSION + 1, "node", {"x": 1}, "a new field"))
    assert msg == P.Hello(P.PROTOCOL_VERSION + 1, "node", {})
    msg = decode(pack(P.Hello.OP, 0, ["not a kind"]))
    assert msg == P.Hello(0, "peer", {})


# --------------------------------------------------------------------------- compiled checks


def oracle_check(check, v):
    """What a field check accepts and returns, worked out one call per field and per item
    (the way decode did before its checks were compiled): the oracle for the compiled ones."""
    if hasattr(check, "record"):
        if type(v) is check.record:
            return v
        if type(v) is not list or len(v) != len(check.fields):
            raise ProtocolError(f"malformed {check.record.__name__}")
        return check.record._make([oracle_check(c, x) for c, x in zip(check.fields, v)])
    if hasattr(check, "optional"):
        return None if v is None else oracle_check(check.optional, v)
    if hasattr(check, "items"):
        if type(v) is not list:
            raise ProtocolError(f"expected list, got {type(v).__name__}")
        return [oracle_check(check.items, x) for x in v]
    return check(v)


def oracle_decode(raw):
    cls = message_types()[raw[0]]
    if len(raw) - 1 != len(cls.CHECKS):
        raise ProtocolError(f"{cls.__name__} needs {len(cls.CHECKS)} fields, got {len(raw) - 1}")
    try:
        return cls._make([oracle_check(c, v) for c, v in zip(cls.CHECKS, raw[1:])])
    except ProtocolError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


def outcome(fn, raw):
    try:
        return ("ok", norm(fn(raw)))
    except ProtocolError as exc:
        return ("error", str(exc))


def mutate(value, data, depth=0):
    """``value`` with one part (at any depth) replaced by a random structure."""
    if isinstance(value, list) and value and depth < 4 and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return value[:i] + [mutate(value[i], data, depth + 1)] + value[i + 1:]
    return data.draw(structures)


raw_examples = [msgpack.unpackb(encode(m)[0], raw=False, strict_map_key=False)
                for ms in EXAMPLES.values() for m in ms]


@pytest.mark.parametrize("raw", raw_examples, ids=lambda r: message_types()[r[0]].__name__)
def test_compiled_checks_decode_every_example_as_the_per_field_checks_do(raw):
    assert outcome(lambda r: P._checked(message_types()[r[0]], r), raw) == outcome(oracle_decode, raw)


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.sampled_from(raw_examples), st.data())
def test_compiled_checks_accept_and_refuse_what_the_per_field_checks_do(raw, data):
    if len(raw) > 1:  # one field changed, at any depth
        i = data.draw(st.integers(1, len(raw) - 1))
        raw = raw[:i] + [mutate(raw[i], data)] + raw[i + 1:]
    else:
        raw = raw + [data.draw(structures)]

    compiled = lambda r: P._checked(message_types()[r[0]], r)  # noqa: E731 (decode's last step)
    assert outcome(compiled, raw) == outcome(oracle_decode, raw)

"""The node agent's object store service, through StoreClient, on a real embedded cluster:
zero-copy reads, LRU spilling and restoring, full-store errors, clients that vanish, cleanup."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import taskmesh
from taskmesh import ObjectStoreFullError
from taskmesh._context import CTX
from taskmesh._node.store_service import store_socket_name
from taskmesh._store.client import StoreClient

from ..support.procs import descendants, kill_all, ours, shm_entries, wait_gone
from ..support.wait import until

MiB = 1 << 20
CAPACITY = 8 * MiB
OBJ = 3 * MiB  # two fit in the store, three do not
TIMEOUT_S = 0.5  # store_create_timeout_s

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path):
    """The store socket name of a fresh 1-CPU cluster with an 8 MiB store spilling under tmp_path;
    afterwards: no process, arena or spill file is left."""
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    before_shm = shm_entries()
    spill_base = tmp_path / "spill"
    taskmesh.init(num_cpus=1, object_store_memory=CAPACITY, store_create_timeout_s=TIMEOUT_S,
                  spill_dir=str(spill_base))
    procs = descendants()
    try:
        yield store_socket_name(CTX.cluster.node_id)
    finally:
        taskmesh.shutdown()
        left = wait_gone(procs)
        kill_all(left)
        assert not left, f"processes left after shutdown: {left}"
        assert ours(shm_entries() - before_shm, procs) == set(), "an arena was left in /dev/shm"
        assert list(spill_base.iterdir()) == [], "spill files were left behind"


def spill_files(tmp_path) -> list[str]:
    [directory] = glob.glob(str(tmp_path / "spill" / "taskmesh-spill-*"))
    assert os.stat(directory).st_mode & 0o777 == 0o700
    return sorted(f for f in os.listdir(directory) if not f.endswith(".part"))


def put(client: StoreClient, oid: bytes, fill: float) -> None:
    """Create, fill with float64 ``fill + index``, seal."""
    view = client.create(oid, OBJ)
    np.frombuffer(view, dtype=np.float64)[:] = fill + np.arange(OBJ // 8)
    client.seal(oid)


def check(view: memoryview, fill: float) -> None:
    arr = np.frombuffer(view, dtype=np.float64)
    assert arr.size == OBJ // 8
    assert arr[0] == fill and arr[-1] == fill + OBJ // 8 - 1
    assert np.array_equal(arr, fill + np.arange(OBJ // 8))


def test_pin_from_a_second_client_reads_the_sealed_bytes_zero_copy(store):
    with StoreClient(store) as writer, StoreClient(store) as reader:
        assert writer.capacity == CAPACITY and writer.arena.name == reader.arena.name
        view = writer.create(b"obj-1", OBJ)
        assert view.nbytes == OBJ and not view.readonly
        np.frombuffer(view, dtype=np.float64)[:] = 0.5 + np.arange(OBJ // 8)
        writer.seal(b"obj-1")

        [ro] = reader.pin([b"obj-1"])
        assert ro.readonly
        check(ro, 0.5)
        arr = np.frombuffer(ro, dtype=np.float64)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1.0
        # the reader's array is the arena itself, not a copy: a byte changed through the
        # creator's mapping (never done after a seal outside a test) shows up in it at once
        np.frombuffer(view, dtype=np.float64)[0] = -1.0
        assert arr[0] == -1.0
        np.frombuffer(view, dtype=np.float64)[0] = 0.5

        # two pins, two views of the same bytes
        again = reader.pin([b"obj-1", b"obj-1"])
        assert all(np.frombuffer(v, dtype=np.float64)[7] == 7.5 for v in again)
        reader.unpin([b"obj-1"] * 3)
        del arr, ro, again, view


def test_unpinned_objects_are_spilled_for_room_and_restored_on_pin(store, tmp_path):
    with StoreClient(store) as client:
        put(client, b"a", 1.0)
        put(client, b"b", 2.0)
        assert spill_files(tmp_path) == []
        put(client, b"c", 3.0)  # no room: "a", least recently used, goes to disk first
        assert spill_files(tmp_path) == [b"a".hex()]

        [a] = client.pin([b"a"])  # restored; "b" is spilled to make room
        check(a, 1.0)
        assert spill_files(tmp_path) == sorted([b"a".hex(), b"b".hex()])
        [b] = client.pin([b"b"])  # "a" is pinned, so "c" makes room
        check(b, 2.0)
        check(a, 1.0)
        assert spill_files(tmp_path) == sorted([b"a".hex(), b"b".hex(), b"c".hex()])
        client.unpin([b"a", b"b"])
        del a, b

        [c] = client.pin([b"c"])  # back from disk too
        check(c, 3.0)
        client.unpin([b"c"])
        del c

        client.delete([b"a"])  # freed: its spill file goes
        until(lambda: b"a".hex() not in spill_files(tmp_path), timeout=5.0,
              what="the spill file of the deleted object to go")
        with pytest.raises(taskmesh.ObjectLostError, match="not in this node's object store"):
            client.pin([b"a"])
    # "b" and "c" still have spill files: shutdown removes them (checked by the fixture)
    assert len(spill_files(tmp_path)) == 2


def test_a_create_larger_than_the_store_fails_at_once_naming_the_sizes(store):
    with StoreClient(store) as client:
        started = time.monotonic()
        with pytest.raises(ObjectStoreFullError) as info:
            client.create(b"huge", CAPACITY + MiB)
        assert time.monotonic() - started < TIMEOUT_S
        assert f"{CAPACITY + MiB} bytes" in str(info.value)
        assert f"({CAPACITY} bytes)" in str(info.value)
        put(client, b"fits", 4.0)  # the store is unharmed


def test_a_create_waits_while_everything_is_pinned_then_times_out(store):
    with StoreClient(store) as writer, StoreClient(store) as reader:
        put(writer, b"a", 1.0)
        put(writer, b"b", 2.0)
        views = reader.pin([b"a", b"b"])
        started = time.monotonic()
        with pytest.raises(ObjectStoreFullError) as info:
            writer.create(b"c", OBJ)
        waited = time.monotonic() - started
        assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 3
        message = str(info.value)
        assert f"{OBJ} bytes" in message and f"capacity {CAPACITY} bytes" in message
        assert "pinned by readers" in message
        for v, fill in zip(views, (1.0, 2.0)):
            check(v, fill)  # the pinned objects were not touched

        reader.unpin([b"a"])  # now there is something to spill
        del views
        started = time.monotonic()
        put(writer, b"c", 3.0)
        assert time.monotonic() - started < TIMEOUT_S
        [c] = reader.pin([b"c"])
        check(c, 3.0)


def test_a_client_that_dies_without_sealing_frees_its_space(store):
    code = textwrap.dedent(f"""
        import sys, time
        from taskmesh._store.client import StoreClient
        client = StoreClient({store!r})
        view = client.create(b"never-sealed", {6 * MiB})
        view[:] = b"x" * {6 * MiB}
        print("created", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "created"
    finally:
        child.kill()
        child.wait(10)
    with StoreClient(store) as client:
        started = time.monotonic()
        view = client.create(b"next", 6 * MiB)  # fits only once the dead client's space is free
        assert time.monotonic() - started < TIMEOUT_S
        client.abort(b"next")
        del view
        # a client that closes its connection without sealing: the same
        other = StoreClient(store)
        other.create(b"left-open", 6 * MiB)
        other.close()
        view = client.create(b"again", 6 * MiB)
        assert view.nbytes == 6 * MiB
        client.seal(b"again")
        del view


def test_a_spill_that_fails_leaves_the_object_in_memory_and_the_create_fails_cleanly(store, tmp_path):
    with StoreClient(store) as client:
        put(client, b"a", 1.0)
        put(client, b"b", 2.0)
        # the spill directory becomes a regular file: every spill fails with NotADirectoryError,
        # for root too (permissions would not stop root)
        [directory] = glob.glob(str(tmp_path / "spill" / "taskmesh-spill-*"))
        os.rmdir(directory)
        with open(directory, "wb") as f:
            f.write(b"not a directory")
        try:
            started = time.monotonic()
            with pytest.raises(ObjectStoreFullError) as info:
                client.create(b"c", OBJ)  # spilling "a", then "b", fails: no room, no hang
            waited = time.monotonic() - started
            assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 3
            message = str(info.value)
            assert "spilling to disk failed lately for 2 object(s)" in message
            assert "NotADirectoryError" in message
            views = client.pin([b"a", b"b"])  # both stayed in memory, intact
            check(views[0], 1.0)
            check(views[1], 2.0)
            client.unpin([b"a", b"b"])
            del views
        finally:
            os.unlink(directory)
            os.mkdir(directory, 0o700)
        assert spill_files(tmp_path) == []
        client.delete([b"a"])  # its memory is freed at once: "c" fits without a spill
        started = time.monotonic()
        put(client, b"c", 3.0)
        assert time.monotonic() - started < TIMEOUT_S
        [c] = client.pin([b"c"])
        check(c, 3.0)
        client.unpin([b"c"])
        del c


def test_a_restore_that_fails_loses_the_object_and_removes_its_file(store, tmp_path):
    with StoreClient(store) as client:
        put(client, b"a", 1.0)
        put(client, b"b", 2.0)
        put(client, b"c", 3.0)  # "a" goes to disk
        [directory] = glob.glob(str(tmp_path / "spill" / "taskmesh-spill-*"))
        os.truncate(os.path.join(directory, b"a".hex()), OBJ // 2)  # damaged: restoring fails
        with pytest.raises(taskmesh.ObjectLostError, match="was lost.*EOFError") as info:
            client.pin([b"a"])
        assert b"a".hex() in str(info.value)
        until(lambda: b"a".hex() not in spill_files(tmp_path), timeout=5.0,
              what="the damaged spill file to go")
        with pytest.raises(taskmesh.ObjectLostError, match="was lost"):
            client.pin([b"a"])  # later pins say so too
        views = client.pin([b"b", b"c"])  # the others are unharmed (restored if need be)
        check(views[0], 2.0)
        check(views[1], 3.0)
        client.unpin([b"b", b"c"])
        del views

"""init/shutdown: what starts, what is left behind, and clear errors for bad addresses."""

from __future__ import annotations

import json
import socket
import signal
import time

import msgpack
import psutil
import pytest
import zmq

import taskmesh
from taskmesh import _protocol as P
from taskmesh._context import CTX

from ..support.clients import raw_dealer, run_python
from ..support.procs import kill_all, shm_entries, wait_gone

CHILD_PIDS = """
import json, psutil, taskmesh
taskmesh.init(num_cpus=2)
@taskmesh.remote
def f(): return 1
assert taskmesh.get(f.remote()) == 1
print(json.dumps([p.pid for p in psutil.Process().children(recursive=True)]), flush=True)
"""


def _pids_from(out: str) -> set[int]:
    return set(json.loads(out.strip().splitlines()[-1]))


def test_shutdown_leaves_nothing_behind():
    shm_before = shm_entries()
    info = taskmesh.init(num_cpus=2)
    port = int(info["address"].rsplit(":", 1)[1])
    procs = {p.pid for p in psutil.Process().children(recursive=True)}
    assert len(procs) >= 4  # head, node agent, two workers
    try:
        assert taskmesh.get(taskmesh.put(41)) == 41
    finally:
        taskmesh.shutdown()
    assert not wait_gone(procs, 10)
    assert not taskmesh.is_initialized()
    mine = [c for c in psutil.Process().net_connections("tcp") if c.laddr and
            (c.laddr.port == port or (c.raddr and c.raddr.port == port))]
    assert [c for c in mine if c.status != psutil.CONN_TIME_WAIT] == []
    assert shm_entries() - shm_before == set()
    taskmesh.shutdown()  # twice is fine


def test_interpreter_exit_without_shutdown_cleans_up():
    r = run_python(CHILD_PIDS + "\n# no shutdown: atexit does it\n")
    assert r.returncode == 0, r.stderr
    left = wait_gone(_pids_from(r.stdout), 10)
    kill_all(left)
    assert not left


def test_killed_driver_takes_its_cluster_down():
    code = CHILD_PIDS + "import os, time\ntime.sleep(60)\n"
    import subprocess, sys

    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        pids = _pids_from(line)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        left = wait_gone(pids, 10)
        kill_all(left)
        assert not left, "lifeline did not stop the embedded cluster"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_init_twice():
    taskmesh.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="already"):
            taskmesh.init(num_cpus=1)
        taskmesh.init(num_cpus=1, ignore_reinit_error=True)
    finally:
        taskmesh.shutdown()


def test_api_before_init_is_a_clear_error():
    assert not taskmesh.is_initialized()
    with pytest.raises(RuntimeError, match="taskmesh.init"):
        taskmesh.put(1)


def test_no_head_at_address_fails_fast_naming_it():
    with zmq.Context() as ctx:
        s = ctx.socket(zmq.ROUTER)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close()  # nothing listens there now
    t = time.monotonic()
    with pytest.raises(taskmesh.HeadConnectionError, match=f"127.0.0.1:{port}"):
        taskmesh.init(address=f"127.0.0.1:{port}")
    assert time.monotonic() - t < 10
    assert not taskmesh.is_initialized()


def test_auto_without_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKMESH_RUN_DIR", str(tmp_path))
    with pytest.raises(taskmesh.HeadConnectionError, match="taskmesh start --head"):
        taskmesh.init(address="auto")


def test_other_protocol_version_is_refused(cluster):
    address = taskmesh.get_runtime_context().gcs_address
    with raw_dealer(address, CTX.cluster.security) as s:
        s.send(msgpack.packb([P.Hello.OP, 999, "driver", {}]))
        assert s.poll(5000)
        reply = P.decode(s.recv_multipart())
    assert isinstance(reply, P.Refused)
    assert "999" in reply.reason and str(P.PROTOCOL_VERSION) in reply.reason
    # a whole driver of another version gets a clear exception
    r = run_python(
        "import taskmesh, taskmesh._protocol as P\n"
        "P.PROTOCOL_VERSION = 998\n"
        f"try:\n    taskmesh.init(address='{address}')\n"
        "except taskmesh.ProtocolVersionError as e:\n    print('REFUSED', e)\n", timeout=30)
    assert "REFUSED" in r.stdout and "998" in r.stdout, r.stdout + r.stderr
    # and the head keeps serving
    assert taskmesh.get(taskmesh.put("still here")) == "still here"


def test_garbage_does_not_hurt_the_head(cluster):
    address = taskmesh.get_runtime_context().gcs_address
    with raw_dealer(address, CTX.cluster.security) as s:  # garbage from inside the cluster
        for junk in (b"", b"\x00\xff garbage", msgpack.packb([12345]), msgpack.packb([P.Submit.OP, "x"])):
            s.send(junk)
    port = int(address.rsplit(":", 1)[1])
    for junk in (b"\x00\x00\x00\x00", b"\x01\x00\x00\x00" + b"\xff" * 8, b"\x02"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:  # the local socket too
            u.connect(f"\0taskmesh-head-{port}")
            u.sendall(junk)

    @taskmesh.remote
    def ok():
        return "ok"

    assert taskmesh.get(ok.remote(), timeout=30) == "ok"


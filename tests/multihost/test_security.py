"""Security between real hosts: the attacker is on another machine than the cluster.

Head on h0, a node on h1, the attacker (or a misconfigured node) on h2, a driver on h3. The
filesystem is shared, so a file the attacker's pickle would create anywhere is seen here.
"""

from __future__ import annotations

import json
import sys

import pytest

from taskmesh._secret import ClusterKey, write_secret_file

from ..support.netcluster import join_node, start_head

pytestmark = pytest.mark.multihost

ATTACKER = r'''
import json, pickle, socket, struct, sys, time
import zmq
from taskmesh._gatekeeper import secure_client
from taskmesh._secret import ClusterKey, Security

head, transfer_host, transfer_port, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

class Evil:
    def __reduce__(self):
        return (open, (marker, "w"))

payload = pickle.dumps(Evil())
out = {}
ctx = zmq.Context()
for name, security in [("none", None), ("wrong secret", Security(ClusterKey.generate())),
                       ("wrong secret, no encryption", Security(ClusterKey.generate(), False))]:
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if security is not None:
        secure_client(s, security)
    s.connect(f"tcp://{head}")
    s.send(payload)
    s.send_multipart([b"\x93\x01\xa6driver\x80", payload])
    out[name] = bool(s.poll(1000))  # any answer at all?
    s.close()
ctx.term()
# the node's object-transfer port: a pickle, then a well-formed-looking object request
for data in (payload, b"TMXQ" + struct.pack("<HH", 1, 20) + b"x" * 20):
    with socket.create_connection((transfer_host, transfer_port), timeout=5) as c:
        c.settimeout(5)
        c.sendall(data)
        got = b""
        try:
            while len(got) < 1 << 16:
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ConnectionError):
            pass
        out.setdefault("transfer answers", []).append(got.decode("latin-1"))
print("RESULT " + json.dumps(out))
'''

DRIVER = r'''
import json, sys, time
import numpy as np
import taskmesh

taskmesh.init(address=sys.argv[1])

@taskmesh.remote
def echo(x):
    return x

print("RESULT " + json.dumps({"echo": taskmesh.get(echo.remote("still serving"), timeout=60)}))
taskmesh.shutdown()
'''


def _transfer_port(hosts, i: int) -> int:
    """The TCP port the node agent on host i listens on (its object-transfer port)."""
    r = hosts.run(i, "ss", "-Htln")
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in r.stdout.splitlines() if line.strip()}
    assert len(ports) == 1, r.stdout
    return ports.pop()


def _result(r) -> dict:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, r.stdout + r.stderr
    return json.loads(lines[-1][7:])


def _head_log(tmp_path) -> str:
    return "".join(p.read_text() for p in (tmp_path / "run0" / "logs").glob("head-*/head.log"))


def _node_log(tmp_path, i: int) -> str:
    return "".join(p.read_text() for p in (tmp_path / f"run{i}" / "logs").glob("*/agent.log"))


def test_an_attacker_on_another_host_is_refused_and_runs_nothing(hosts, tmp_path):
    address = start_head(hosts, tmp_path, 7311)
    join_node(hosts, tmp_path, 1, address, 1)
    marker = tmp_path / "pwned"
    script = tmp_path / "attacker.py"
    script.write_text(ATTACKER)
    r = hosts.run(2, sys.executable, str(script), address, hosts.addr(1),
                  str(_transfer_port(hosts, 1)), str(marker), timeout=60)
    assert r.returncode == 0, r.stderr
    out = _result(r)
    # the head answered none of them: no Refused, no Welcome; nothing was decoded
    assert out["none"] is False and out["wrong secret"] is False
    assert out["wrong secret, no encryption"] is False
    # the transfer port served nothing: at most a refusal (a response whose status is not OK)
    for answer in out["transfer answers"]:
        assert len(answer) < 512, answer[:100]
        assert not answer.startswith("TMXR") or answer[6] != "\0", answer
    attacker_ip = hosts.addr(2)
    head_log = _head_log(tmp_path)
    assert f"refused a connection from {attacker_ip}" in head_log, head_log
    assert f"{attacker_ip}" in _node_log(tmp_path, 1)
    # the cluster keeps serving a driver that holds the secret, and the pickle never ran
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    r = hosts.run(3, sys.executable, str(script), address, timeout=90)
    assert r.returncode == 0, r.stderr
    assert _result(r) == {"echo": "still serving"}
    assert not marker.exists()


def test_a_node_with_another_secret_is_refused_with_a_clear_error(hosts, tmp_path):
    address = start_head(hosts, tmp_path, 7312)
    other = str(tmp_path / "other-secret")
    key = write_secret_file(other, ClusterKey.generate())
    r = hosts.run(2, sys.executable, "-m", "taskmesh._cli", "start", "--worker", "--address",
                  address, "--num-cpus", "1", "--secret-file", other,
                  env={"TASKMESH_RUN_DIR": str(tmp_path / "run2")}, timeout=60)
    assert r.returncode == 1
    assert "different cluster secrets" in r.stderr and key.fingerprint in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"refused a connection from {hosts.addr(2)}" in _head_log(tmp_path)


SNIFFER_DRIVER = r'''
import json, socket, sys, threading
import numpy as np
import taskmesh

marker = sys.argv[2].encode()
captured = bytearray()
stop = threading.Event()
ready = threading.Event()

def sniff():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
    s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: drop no packet
    s.bind(("eth0", 0))
    ready.set()
    s.settimeout(0.1)
    while not stop.is_set():
        try:
            captured.extend(s.recv(65535))
        except socket.timeout:
            pass
    s.setblocking(False)  # what the kernel queued before the stop, this thread may not have read
    while True:
        try:
            captured.extend(s.recv(65535))
        except BlockingIOError:
            break

t = threading.Thread(target=sniff)
t.start()
ready.wait()
taskmesh.init(address=sys.argv[1])

@taskmesh.remote
def echo(x):
    return x

@taskmesh.remote
def big(m):
    # 1 MiB of random bytes with the marker in it: stored on the worker's node, then pulled
    # from there by this driver over the transfer stream
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    return data[:1000] + m + data[1000:]

small = taskmesh.get(echo.remote(marker.decode()), timeout=60)
large = taskmesh.get(big.remote(marker), timeout=60)
taskmesh.shutdown()
stop.set()
t.join()
print("RESULT " + json.dumps({"ok": small == marker.decode() and marker in large,
                              "captured": len(captured), "seen": marker in captured}))
'''


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "no-encryption"])
def test_traffic_between_hosts_is_encrypted_unless_turned_off(hosts, tmp_path, encrypt):
    flags = [] if encrypt else ["--no-encryption"]
    head_ip = hosts.addr(0)
    r = hosts.run(0, sys.executable, "-m", "taskmesh._cli", "start", "--head", "--port", "7313",
                  "--num-cpus", "0", "--node-ip", head_ip, *flags,
                  env={"TASKMESH_RUN_DIR": str(tmp_path / "run0")})
    assert r.returncode == 0, r.stderr
    address = f"{head_ip}:7313"
    join_node(hosts, tmp_path, 1, address, 1, *flags)
    script = tmp_path / "sniff.py"
    script.write_text(SNIFFER_DRIVER)
    marker = "SNIFF-ME-" + ClusterKey.generate().fingerprint * 4
    r = hosts.run(3, sys.executable, str(script), address, marker,
                  env={"TASKMESH_ENCRYPT": "1" if encrypt else "0"}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = _result(r)
    assert out["ok"] and out["captured"] > 1 << 20  # the task ran; the capture saw its traffic
    # the marker crossed the wire twice (task argument and result, the result by the transfer
    # stream); in the clear only when encryption is off
    assert out["seen"] is (not encrypt)

"""Security on one machine: the cluster secret, refused peers, nothing unauthenticated unpickled.

Peers on the head's machine normally use its local socket; these tests open TCP connections to
127.0.0.1 on purpose, as a peer on another machine would (tests/multihost/test_security.py
does it from real other hosts).
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import time

import msgpack
import pytest

import taskmesh
from taskmesh import _protocol as P
from taskmesh import _rundir
from taskmesh._client.core import CoreClient
from taskmesh._secret import ClusterKey, Security, read_secret_file, write_secret_file
from taskmesh._transport import free_port, tcp_endpoint
from taskmesh.config import Config

from ..support.cli import tm
from ..support.clients import raw_dealer
from ..support.procs import kill_all, wait_gone
from ..support.wait import until


class _CreatesFile:
    """Unpickling this creates ``path``: what an attacker's task would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(path: str) -> bytes:
    return pickle.dumps(_CreatesFile(path))


@pytest.fixture
def home_env(tmp_path):
    """A user whose home holds no secret yet, and no secret in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("TASKMESH_SECRET", "TASKMESH_SECRET_FILE")}
    env["HOME"] = str(tmp_path / "home")
    env["TASKMESH_RUN_DIR"] = str(tmp_path / "run")
    os.makedirs(env["HOME"])
    yield env
    pids = {int(rec["pid"]) for rec in _rundir.live(env["TASKMESH_RUN_DIR"])}
    tm("stop", env=env)
    kill_all(wait_gone(pids, 5))


def start_head(env: dict, *extra: str) -> tuple[int, str]:
    """`taskmesh start --head` on 127.0.0.1; (port, the head's log file)."""
    port = free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip", "127.0.0.1",
           *extra, env=env)
    assert r.returncode == 0, r.stderr
    head = _rundir.live(env["TASKMESH_RUN_DIR"], "head")[0]
    return port, head["log_file"]


def wait_for_log(path: str, text: str, timeout: float = 10.0) -> str:
    """The log file at ``path``, once ``text`` is in it."""
    def read() -> str:
        with open(path) as f:
            return f.read()

    def log_with_text() -> str | None:
        log = read()
        return log if text in log else None

    return until(log_with_text, timeout=timeout,
                 what=lambda: f"{text!r} in {path}, which holds:\n{read()}")


def connect(port: int, security: Security, **config) -> dict:
    """Handshake as a driver over TCP, as from another machine; the Welcome's info."""
    cfg = Config.from_env(connect_timeout_s=10, **config)
    core = CoreClient(cfg, tcp_endpoint("127.0.0.1", port), "driver", f"127.0.0.1:{port}", security)
    try:
        return core.handshake()
    finally:
        core.close()


def test_start_head_creates_a_private_secret_that_everyone_finds(home_env):
    port, _ = start_head(home_env)
    path = os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    key = read_secret_file(path)
    r = tm("secret", env=home_env)
    assert r.returncode == 0 and key.fingerprint in r.stdout and path in r.stdout
    # status and a driver find it with no flag
    r = tm("status", env=home_env)
    assert r.returncode == 0, r.stderr
    assert "127.0.0.1" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import taskmesh; taskmesh.init(address='auto'); "
                        "print(taskmesh.get(taskmesh.put(41)) + 1)"],
                       capture_output=True, text=True, timeout=60, env=home_env)
    assert r.stdout.strip() == "42", r.stderr
    # and so does a driver over TCP, holding the same secret
    assert connect(port, Security(key))["peer"]


def test_start_head_prints_the_join_command_and_keeps_an_existing_secret(home_env, tmp_path):
    secret = str(tmp_path / "lab-secret")
    key = write_secret_file(secret)
    port = free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "0", "--node-ip", "127.0.0.1",
           "--secret-file", secret, env=home_env)
    assert r.returncode == 0, r.stderr
    assert (f"taskmesh start --worker --address 127.0.0.1:{port} --secret-file {secret}"
            in r.stdout), r.stdout
    assert key.fingerprint in r.stdout and "new" not in r.stdout
    assert read_secret_file(secret).hex() == key.hex()  # not replaced
    # a node joining with that flag works; without it (no secret at the default place) it
    # fails in one line saying where it looked
    r = tm("start", "--worker", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
           "--node-ip", "127.0.0.1", "--secret-file", secret, env=home_env)
    assert r.returncode == 0, r.stderr
    r = tm("status", env=home_env)  # finds the head's secret file through its run record
    assert r.returncode == 0, r.stderr
    r = tm("status", "--address", f"127.0.0.1:{port}", env=home_env)
    assert r.returncode == 1
    assert "no cluster secret at" in r.stderr and ".taskmesh/cluster-secret" in r.stderr


def test_a_secret_file_others_can_read_is_refused(home_env, tmp_path):
    secret = str(tmp_path / "loose")
    write_secret_file(secret)
    os.chmod(secret, 0o644)
    r = tm("start", "--head", "--port", str(free_port()), "--num-cpus", "0", "--secret-file",
           secret, env=home_env)
    assert r.returncode == 1
    assert f"chmod 600 {secret}" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_rotating_the_secret_locks_out_the_old_one(home_env):
    start_head(home_env, "--num-cpus", "0")
    path = os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret")
    old = read_secret_file(path)
    r = tm("secret", "--new", env=home_env)
    assert r.returncode == 0, r.stderr
    new = read_secret_file(path)
    assert new.hex() != old.hex() and new.fingerprint in r.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert tm("stop", env=home_env).returncode == 0
    port, _ = start_head(home_env, "--num-cpus", "0")
    with pytest.raises(taskmesh.AuthenticationError, match="different cluster secrets"):
        connect(port, Security(old))
    connect(port, Security(new))


def test_a_peer_without_the_secret_is_refused_and_nothing_it_sends_is_unpickled(home_env, tmp_path):
    port, log_file = start_head(home_env)
    key = read_secret_file(os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret"))
    marker = tmp_path / "pwned"
    payload = evil_pickle(str(marker))
    # what a driver would send, but from no-one: a task whose function pickle creates a file
    submit_like = msgpack.packb([P.RegisterFunction.OP, b"f" * 16, payload])
    attempts = [None, Security(ClusterKey.generate()), Security(key, encrypt=False)]
    for security in attempts:
        with raw_dealer(f"127.0.0.1:{port}", security) as s:
            for frame in (payload, submit_like, msgpack.packb([P.Hello.OP, P.PROTOCOL_VERSION,
                                                              "driver", {}])):
                s.send(frame)
            assert not s.poll(300)  # no answer, not even a Refused
    # logged with the address (one line per reason and 10 s: the no-secret and the PLAIN
    # attempts may share one, as libzmq reports some failures without detail)
    log = wait_for_log(log_file, "it does not hold this cluster's secret")
    assert log.count("refused a connection from 127.0.0.1:") >= 2, log
    assert "it does not hold this cluster's secret" in log, log
    # the head keeps serving, and the pickle never ran anywhere
    connect(port, Security(key))
    r = tm("status", env=home_env)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("security:"))
    assert f"encryption on, secret {key.fingerprint}" in line
    assert int(line.split("refused connections: ")[1].split(";")[0]) >= 3, line
    assert not marker.exists()


def test_wrong_secret_and_encryption_mismatch_get_clear_errors_at_once(home_env):
    port, _ = start_head(home_env, "--num-cpus", "0")
    key = read_secret_file(os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret"))
    other = ClusterKey.generate()
    t = time.monotonic()
    with pytest.raises(taskmesh.AuthenticationError) as info:
        connect(port, Security(other))
    assert time.monotonic() - t < 5  # not the whole connect time-out
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "different cluster secrets" in text
    assert other.fingerprint in text
    with pytest.raises(taskmesh.AuthenticationError, match="encryption is on at one end and off"):
        connect(port, Security(key, encrypt=False))


def test_encryption_can_be_turned_off_explicitly_with_a_warning(home_env):
    port, log_file = start_head(home_env, "--num-cpus", "0", "--no-encryption")
    key = read_secret_file(os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret"))
    log = wait_for_log(log_file, "encryption is off")
    assert "encryption is off" in log and "WARNING" in log
    connect(port, Security(key, encrypt=False))
    with pytest.raises(taskmesh.AuthenticationError, match="the head does not accept"):
        connect(port, Security(ClusterKey.generate(), encrypt=False))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_on_the_machine_cannot_use_the_local_sockets(fresh_cluster, tmp_path):
    """The local sockets admit only the cluster's user: another user's bytes are never read."""
    from taskmesh._context import CTX

    port = int(CTX.core.address.rsplit(":", 1)[1])
    marker = tmp_path / "pwned"
    payload = evil_pickle(str(marker))
    names = [f"taskmesh-head-{port}", f"taskmesh-node-{CTX.node_id}"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: only plain socket calls, then _exit
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = []
            for name in names:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
                    u.settimeout(10)
                    u.connect("\0" + name)
                    try:
                        u.sendall(struct.pack("<IQ", 1, len(payload)) + payload)
                        out.append("closed" if u.recv(1) == b"" else "answered")
                    except ConnectionError:
                        out.append("closed")
            os.write(w, " ".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            answers = f.read().decode().split()
    finally:
        os.waitpid(pid, 0)
    assert answers == ["closed", "closed"]
    assert not marker.exists()

    @taskmesh.remote
    def still():
        return "serving"

    assert taskmesh.get(still.remote(), timeout=30) == "serving"


def test_the_embedded_cluster_has_a_secret_of_its_own(fresh_cluster):
    """Its TCP port (127.0.0.1) admits only holders of the secret it made at start."""
    from taskmesh._context import CTX

    port = int(CTX.core.address.rsplit(":", 1)[1])
    with pytest.raises(taskmesh.AuthenticationError):
        connect(port, Security(read_secret_file(os.environ["TASKMESH_SECRET_FILE"])))
    connect(port, CTX.cluster.security)


def test_oversized_messages_are_dropped_and_the_head_keeps_serving(home_env):
    env = {**home_env, "TASKMESH_MAX_MESSAGE_BYTES": str(1 << 20)}
    port, log_file = start_head(env, "--num-cpus", "0")
    key = read_secret_file(os.path.join(home_env["HOME"], ".taskmesh", "cluster-secret"))
    # over TCP, from a holder of the secret: ZeroMQ drops the connection before allocating
    with raw_dealer(f"127.0.0.1:{port}", Security(key)) as s:
        s.send_multipart([msgpack.packb([P.Hello.OP, P.PROTOCOL_VERSION, "driver", {}]),
                          b"x" * (2 << 20)])
        assert not s.poll(500)
    # over the local socket: a header announcing 2 GiB closes the connection at once
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.settimeout(10)
        u.connect(f"\0taskmesh-head-{port}")
        u.sendall(struct.pack("<IQ", 1, 5) + b"peer1" + struct.pack("<IQ", 1, 2 << 30))
        assert u.recv(1) == b""
    log = wait_for_log(log_file, "larger than the maximum")
    assert "larger than the maximum" in log, log
    assert connect(port, Security(key))["peer"]

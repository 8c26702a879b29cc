"""Other programs that talk to a test's cluster: a second driver in a fresh interpreter, a bare
ZeroMQ socket."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import zmq

from taskmesh._context import CTX
from taskmesh._gatekeeper import secure_client
from taskmesh._secret import Security


def run_python(code: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter (a separate driver process). It holds the
    secret of this process's embedded cluster, if there is one, as a user's second script on
    the same machine could (by $TASKMESH_SECRET)."""
    secret = CTX.cluster.security.key.env() if CTX.cluster is not None else {}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **secret, **(env or {})})


@contextlib.contextmanager
def raw_dealer(address: str, security: Security | None = None) -> Iterator[zmq.Socket]:
    """A bare ZeroMQ DEALER to a head's TCP port ("host:port"), as any program could open
    one; with ``security``, holding those credentials (secret, encryption on or off)."""
    with zmq.Context() as ctx:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if security is not None:
            secure_client(s, security)
        s.connect(f"tcp://{address}")
        try:
            yield s
        finally:
            s.close()


REPO = Path(__file__).resolve().parents[2]


def with_support(env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with this checkout first on PYTHONPATH,
    so that a script run by another interpreter can import ``tests.support``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env

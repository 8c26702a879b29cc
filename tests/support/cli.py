"""The ``taskmesh`` command run as a user runs it, and HTTP requests to a head's endpoints."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request


def tm(*args: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """``taskmesh ARGS`` in a fresh interpreter with ``env``; its output captured."""
    return subprocess.run([sys.executable, "-m", "taskmesh._cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def fetch(url: str, headers: dict | None = None, method: str = "GET",
          timeout: float = 30) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request; error statuses are answers too."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()

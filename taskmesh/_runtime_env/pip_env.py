"""A runtime_env's ``pip`` requirements as a virtual environment on a node: made once per
distinct set, kept in the node's cache, shared by every worker that needs it.

    build(pip, cache_dir, log) ──▶ <cache_dir>/pip_<hash>/        (python -m venv
                                      bin/python                    --system-site-packages)
                                      .ready                        (written last)

The environment is made from the node's own interpreter with the node's packages visible
(``--system-site-packages``, as Ray's): taskmesh itself, numpy and whatever the node has are
there; the requirements are installed over them by the node's pip (``pip --python``), so the
environment needs no pip of its own unless ``pip_version`` asks for one. The name hashes the
requirements, the options and the interpreter (its path and version): another interpreter
gets its own environment.

Two builders of one environment (two workers, or two node agents on one machine sharing the
cache) take turns through a lock file; the second finds the first's work done. A failed
build leaves nothing behind and raises ``PipEnvError`` with the end of pip's output; all of
pip's output goes to ``log``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

#: the file written once an environment is complete (one without it is being made, or broken)
READY = ".ready"
#: lines of pip's output an error carries
ERROR_LINES = 25


class PipEnvError(RuntimeError):
    """The requirements could not be installed; the message ends with pip's own error."""


def env_name(pip: dict, python: str | None = None) -> str:
    """``pip_<hash>``: the requirements (as checked by ``spec``) and the interpreter."""
    python = os.path.realpath(python or sys.executable)
    key = {"packages": list(pip["packages"]), "pip_check": bool(pip.get("pip_check")),
           "pip_version": pip.get("pip_version"), "python": python,
           "version": _version(python)}
    text = json.dumps(key, sort_keys=True).encode()
    return "pip_" + hashlib.sha256(text).hexdigest()[:40]


def _version(python: str) -> str:
    if os.path.realpath(sys.executable) == python:
        return sys.version
    out = subprocess.run([python, "-c", "import sys; print(sys.version)"],
                         capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip()


def python_of(env_dir: str) -> str:
    """The interpreter of a made environment."""
    return os.path.join(env_dir, "bin", "python")


def is_ready(env_dir: str) -> bool:
    return os.path.exists(os.path.join(env_dir, READY))


def build(pip: dict, cache_dir: str, log_path: str, *, python: str | None = None,
          timeout_s: float | None = None) -> str:
    """The environment for ``pip`` under ``cache_dir``, made if it is not there yet (blocking:
    the node agent runs this in a helper process, ``python -m taskmesh._runtime_env.pip_env``).
    Returns its directory; raises PipEnvError if pip fails or takes longer than
    ``timeout_s`` (None: no limit)."""
    python = python or sys.executable
    name = env_name(pip, python)
    dest = os.path.join(cache_dir, name)
    if is_ready(dest):
        os.utime(dest)
        return dest
    os.makedirs(cache_dir, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(dest + ".lock", "a+") as lock:
        _lock(lock, deadline, name)
        if is_ready(dest):  # (made by whoever held the lock before)
            os.utime(dest)
            return dest
        shutil.rmtree(dest, ignore_errors=True)  # (a build that died half-way)
        try:
            with open(log_path, "ab") as log:
                _make(pip, dest, python, log, deadline)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        with open(os.path.join(dest, READY), "w") as f:
            f.write(json.dumps({"packages": pip["packages"], "made": time.time()}))
    return dest


def _lock(lock, deadline: float | None, name: str) -> None:
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise PipEnvError(f"environment {name}: another process has been making it "
                                  "for longer than the set-up time-out") from None
            time.sleep(0.1)


def _make(pip: dict, dest: str, python: str, log, deadline: float | None) -> None:
    _run([python, "-m", "venv", "--system-site-packages", "--without-pip", dest], log,
         deadline, "creating the virtual environment")
    env_python = python_of(dest)
    pip_cmd = [python, "-m", "pip", "--python", env_python]
    quiet = ["--disable-pip-version-check", "--no-input"]
    if pip.get("pip_version"):
        _run([*pip_cmd, "install", *quiet, "pip" + pip["pip_version"]], log, deadline,
             f"installing pip{pip['pip_version']}")
        pip_cmd = [env_python, "-m", "pip"]
    args = [a for line in pip["packages"] for a in shlex.split(line)]
    if args:
        _run([*pip_cmd, "install", *quiet, *args], log, deadline,
             "pip install " + " ".join(pip["packages"]))
    if pip.get("pip_check"):
        _run([*pip_cmd, "check"], log, deadline, "pip check")


def _run(cmd: list[str], log, deadline: float | None, what: str) -> None:
    log.write(f"$ {shlex.join(cmd)}\n".encode())
    log.flush()
    start = log.tell()
    left = None if deadline is None else max(0.1, deadline - time.monotonic())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=left, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise PipEnvError(f"{what}: not done within the set-up time-out "
                          "(runtime_env['config']['setup_timeout_seconds'])") from None
    if done.returncode != 0:
        log.flush()
        raise PipEnvError(f"{what} failed (exit code {done.returncode}):\n"
                          + _tail(log.name, start))


def _tail(path: str, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(pip's output could not be read)"
    return "\n".join(lines[-ERROR_LINES:])


def main(argv: list[str]) -> int:
    """``python -m taskmesh._runtime_env.pip_env SPEC_JSON CACHE_DIR LOG [TIMEOUT_S]``: build,
    print the environment's directory; on failure print the error and exit 1."""
    pip = json.loads(argv[0])
    timeout = float(argv[3]) if len(argv) > 3 and float(argv[3]) > 0 else None
    try:
        print(build(pip, argv[1], argv[2], timeout_s=timeout), flush=True)
    except PipEnvError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

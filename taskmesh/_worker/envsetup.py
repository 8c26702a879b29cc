"""A worker of a runtime environment with packages (a working_dir, py_modules) sets them up
itself as it starts, before its first task: each package's zip is read from the object store
as any object is (from this node's store, or pulled from the node that has it), unpacked once
into the machine's runtime_env cache (``_runtime_env/package.py``: atomic; the next worker
finds it there), and put in place:

    working_dir  the current directory and sys.path[0] (a .zip whose content is one directory:
                 that directory, as Ray)
    py_modules   on sys.path after it, each package's parent directory

``PYTHONPATH`` gets the same entries, for the programs a task starts. If a package cannot be
had, the worker stays up and fails each task it is given with RuntimeEnvSetupError saying why
(rather than exiting, which would only make the head start another that fails the same way).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from .. import _protocol as P
from .. import _serialize as S
from .._runtime_env import package
from .._runtime_env.apply import ENV_ID_VAR, ENV_WIRE_VAR
from .._runtime_env.spec import SETUP_TIMEOUT_S

log = logging.getLogger("taskmesh.worker")


def from_environment() -> tuple[str, dict]:
    """The id and wire form of the runtime environment the node agent started this worker
    in (``apply.launch`` put them in its environment); ("", {}) for the default."""
    env_id = os.environ.get(ENV_ID_VAR, "")
    if not env_id:
        return "", {}
    try:
        wire = json.loads(os.environ.get(ENV_WIRE_VAR, "{}"))
    except ValueError:
        log.warning("unreadable %s: nested tasks get no runtime_env", ENV_WIRE_VAR)
        wire = {}
    return env_id, wire if isinstance(wire, dict) else {}


def failed(a: P.Assignment, why: str, node_id: str, pid: int) -> P.TaskResult:
    """The result of a task given to a worker whose packages could not be set up."""
    err = P.SerializedObject.system_error("RuntimeEnvSetupError", (
        f"task {a.name} on node {node_id} (worker pid {pid}): the runtime_env {why}"))
    return P.TaskResult(a.task_id, [err] * a.num_returns, 0.0, True)


def set_up(core: Any, cache_dir: str) -> str | None:
    """Put the packages of the worker's runtime environment (``core.runtime_env``) in
    place; None, or why it could not (logged)."""
    wire = core.runtime_env
    limit = (wire.get("config") or {}).get("setup_timeout_seconds")
    timeout_s = SETUP_TIMEOUT_S if limit is None else (None if limit == -1 else float(limit))
    why = _set_up(core, wire, cache_dir, timeout_s)
    if why is not None:
        log.error("runtime_env: %s", why)
    return why


def _set_up(core: Any, wire: dict, cache_dir: str, timeout_s: float | None) -> str | None:
    wd = wire.get("working_dir")
    mods = wire.get("py_modules") or []
    if not wd and not mods:
        return None
    try:
        front: list[str] = []
        if wd:
            front.append(package.working_path(_unpacked(core, wd, cache_dir, timeout_s),
                                              bool(wd.get("archive"))))
        front.extend(_unpacked(core, m, cache_dir, timeout_s) for m in mods)
    except Exception as exc:  # noqa: BLE001 - every cause is the task's error, said once
        return f"its packages could not be set up: {exc}"
    if wd:
        os.chdir(front[0])
    sys.path[:0] = front
    rest = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(front + ([rest] if rest else []))
    return None


def _unpacked(core: Any, entry: dict, cache_dir: str, timeout_s: float | None) -> str:
    """The package of a wire entry (``{"pkg", "object", "archive"}``), unpacked."""
    name = str(entry["pkg"])
    where = os.path.join(cache_dir, name)
    if os.path.isdir(where):
        os.utime(where)
        return where
    oid = bytes.fromhex(str(entry["object"]))
    value = core.get_values([oid], timeout_s)[0]
    if value is None:
        raise TimeoutError(f"package {name} was not there within the set-up time-out")
    data = S.value_or_raise(core.reader.read(value))
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"package {name} is not a zip")
    return package.unpack(data, cache_dir, name)

"""From a checked runtime_env to a running worker: the form that travels (packages by name,
not local paths), the environment's id (which workers may share), and how a worker for it
is started on a node.

    driver: validate() ──▶ wire_form(env, pack) ──▶ {"working_dir": {"pkg": …}, ...} ──▶ env_id()
    node:   the pip environment made ──▶ Ready ──▶ launch(...) (the worker then unpacks the
            packages itself: ``_worker/envsetup.py``)

Two runtime_envs with the same wire form are one environment: their tasks may share workers,
whichever driver sent them. A worker for an environment is a new interpreter (the
environment's, for pip) with its env_vars set before anything runs (so that variables read
at import, such as ``OMP_NUM_THREADS``, take effect; ``${NAME}`` in a value is the node's
NAME, as Ray expands it). ``launch`` can also start it in a directory with ``PYTHONPATH`` =
that directory, then more paths, then whatever ``PYTHONPATH`` it had (``Ready.working_dir``
and ``py_paths``); packages shipped with the environment are put in place by the worker
itself as it starts instead (it reads them from the object store).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: the variable that tells a worker which environment it is for
ENV_ID_VAR = "TASKMESH_RUNTIME_ENV_ID"
#: and the one with its wire form (JSON): what the tasks it submits inherit
ENV_WIRE_VAR = "TASKMESH_RUNTIME_ENV"
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def wire_form(env: dict[str, Any], pack: Callable[[str, list[str], bool], dict]) -> dict:
    """``env`` (checked by ``spec.validate``) with working_dir and each py_module replaced by
    what ``pack(path, excludes, keep_name)`` returns for it (``{"pkg": name, "archive": bool}``,
    the package uploaded or found); ``excludes`` has done its work and does not travel."""
    out: dict[str, Any] = {}
    excludes = env.get("excludes", [])

    def packed(path: Any, keep_name: bool) -> dict:  # (a parent's wire form is packed already)
        return path if isinstance(path, dict) else pack(path, excludes, keep_name)

    if "working_dir" in env:
        out["working_dir"] = packed(env["working_dir"], False)
    if "py_modules" in env:
        out["py_modules"] = [packed(p, True) for p in env["py_modules"]]
    for key in ("env_vars", "pip", "config"):
        if key in env:
            out[key] = env[key]
    return out


def env_id(wire: dict) -> str:
    """The environment's id: "" for the default (nothing set), else a hash of what decides
    what a worker is (not ``config``, which only says how to set it up)."""
    decides = {k: v for k, v in wire.items() if k != "config"}
    if not decides:
        return ""
    text = json.dumps(decides, sort_keys=True, separators=(",", ":")).encode()
    return "env_" + hashlib.sha256(text).hexdigest()[:32]


@dataclass(frozen=True)
class Ready:
    """An environment made ready on a node: where its parts are."""

    env_id: str
    working_dir: str | None = None  # the unpacked working_dir
    py_paths: tuple[str, ...] = ()  # what goes on sys.path for py_modules
    python: str | None = None  # the pip environment's interpreter (None: the node's)
    env_vars: dict[str, str] = field(default_factory=dict)
    wire: str = ""  # its wire form (JSON), for the tasks its workers submit


def launch(ready: Ready, argv: list[str], base_env: dict[str, str]
           ) -> tuple[list[str], dict[str, str], str | None]:
    """The argv, environment and current directory of a worker for ``ready``, given the
    default worker's argv (``[python, "-m", ...]``) and environment."""
    env = dict(base_env)
    env.update({k: _expand(v, base_env) for k, v in ready.env_vars.items()})
    front = ([ready.working_dir] if ready.working_dir else []) + list(ready.py_paths)
    if front:
        rest = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(front + ([rest] if rest else []))
    env[ENV_ID_VAR] = ready.env_id
    if ready.wire:
        env[ENV_WIRE_VAR] = ready.wire
    if ready.python:
        argv = [ready.python, *argv[1:]]
    return argv, env, ready.working_dir


def _expand(value: str, base_env: dict[str, str]) -> str:
    """``${NAME}`` in an env_vars value is the node's value of NAME (as Ray: ``"PATH":
    "/opt/bin:${PATH}"`` prepends); a name the node does not have is left as written."""
    if "${" not in value:
        return value
    return _REFERENCE.sub(lambda m: base_env.get(m.group(1), m.group(0)), value)

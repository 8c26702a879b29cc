"""A ``runtime_env`` checked and put in one form, and how a child's is merged with its parent's.

Ray's fields, with Ray's meaning:

    working_dir   a local directory or .zip: the worker's current directory and sys.path[0]
    py_modules    local packages, modules (a path or the module object), .zip or .whl files:
                  put on sys.path
    excludes      gitignore-style patterns left out of working_dir and py_modules
    env_vars      {name: value}, set before the task's code runs
    pip           requirements: a list, a requirements file, or {"packages": ..., "pip_check":
                  bool, "pip_version": str}
    config        {"setup_timeout_seconds": int (-1: none), "eager_install": bool}

Other fields Ray knows (``conda``, ``container``, ``image_uri``, ``uv``, ...) get an error
naming what to use instead; an unknown field gets an error listing the known ones. Every check
happens on the driver, before anything is uploaded or run.

Inheritance (Ray's): a task's or actor's ``runtime_env`` is merged over its parent's (the task
or actor that submitted it, else the job's): ``env_vars`` are merged name by name, the child
winning; every other field the child gives replaces the parent's.
"""

from __future__ import annotations

import os
import types
from typing import Any

#: the fields taskmesh supports, and what each is
FIELDS = {
    "working_dir": "a local directory or .zip file: the worker's current directory",
    "py_modules": "local packages, modules, .zip or .whl files put on sys.path",
    "excludes": "gitignore-style patterns left out of working_dir and py_modules",
    "env_vars": "environment variables set before the task runs, {name: value}",
    "pip": "requirements installed in a virtual environment per node",
    "config": "{'setup_timeout_seconds': int, 'eager_install': bool}",
}
#: fields of Ray's that taskmesh does not support, and what to do instead
NOT_SUPPORTED = {
    "conda": "use 'pip' (a virtual environment per node from the node's interpreter)",
    "uv": "use 'pip'",
    "container": "start the nodes inside the container instead",
    "image_uri": "start the nodes inside the image instead",
    "java_jars": "taskmesh runs Python only",
    "nsight": "run the profiler around the node instead",
    "mpi": "not available",
    "py_executable": "start the node with the interpreter wanted (`python -m taskmesh start`)",
    "worker_process_setup_hook": "not available yet",
}
CONFIG_FIELDS = ("setup_timeout_seconds", "eager_install")
#: the default of config.setup_timeout_seconds (Ray's)
SETUP_TIMEOUT_S = 600
_ARCHIVES = (".zip", ".whl")
#: pip options a requirement line may hold (where packages come from; nothing else)
PIP_OPTIONS = ("--index-url", "--extra-index-url", "-i ", "--find-links", "-f ", "--no-index",
               "--pre", "--trusted-host")


class RuntimeEnvError(ValueError):
    """A ``runtime_env`` that cannot be used; the message names the field and the fix."""


def validate(runtime_env: Any, *, where: str = "runtime_env") -> dict[str, Any]:
    """The ``runtime_env`` checked, with paths made absolute and pip in one form
    (``{"packages": [...], "pip_check": bool}``, plus ``pip_version`` if given); ``{}`` for
    None. Raises RuntimeEnvError (a ValueError) naming the problem."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise RuntimeEnvError(f"{where} must be a dict, got {type(runtime_env).__name__}")
    out: dict[str, Any] = {}
    for key, value in runtime_env.items():
        if not isinstance(key, str):
            raise RuntimeEnvError(f"{where} keys are field names (str), got {key!r}")
        if key in NOT_SUPPORTED:
            raise RuntimeEnvError(f"{where}[{key!r}] is not supported by taskmesh: "
                                  f"{NOT_SUPPORTED[key]}")
        if key not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise RuntimeEnvError(f"{where} has an unknown field {key!r}; the fields are: {known}")
        if value is None:
            continue  # (Ray: a field set to None is not set)
        out[key] = _CHECKS[key](value, f"{where}[{key!r}]")
    return out


def merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` (checked) over ``parent`` (checked), as Ray merges them: env_vars name by
    name, every other field replaced."""
    if not child:
        return parent
    if not parent:
        return child
    out = {**parent, **child}
    if "env_vars" in parent and "env_vars" in child:
        out["env_vars"] = {**parent["env_vars"], **child["env_vars"]}
    return out


def _path(value: Any, what: str) -> str:
    if isinstance(value, types.ModuleType):
        return _module_path(value, what)
    if not isinstance(value, (str, os.PathLike)):
        raise RuntimeEnvError(f"{what} must be a path (str), got {type(value).__name__}")
    text = os.fspath(value)
    if "://" in str(text):
        raise RuntimeEnvError(f"{what}: remote URIs ({text}) are not supported; give a local "
                              "directory or file, which taskmesh uploads to the cluster")
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.exists(path):
        raise RuntimeEnvError(f"{what}: {text} does not exist (looked for {path})")
    if not os.access(path, os.R_OK):
        raise RuntimeEnvError(f"{what}: {path} cannot be read (permissions)")
    return path


def _module_path(module: types.ModuleType, what: str) -> str:
    """A module object's source: its package directory, or its file."""
    file = getattr(module, "__file__", None)
    if not file:
        raise RuntimeEnvError(f"{what}: module {module.__name__!r} has no file to ship "
                              "(a built-in or namespace module)")
    if os.path.basename(file) == "__init__.py":
        return os.path.dirname(os.path.abspath(file))
    return os.path.abspath(file)


def _working_dir(value: Any, what: str) -> str:
    path = _path(value, what)
    if os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".zip")):
        return path
    raise RuntimeEnvError(f"{what}: {path} is neither a directory nor a .zip file")


def _py_modules(value: Any, what: str) -> list[str]:
    if isinstance(value, (str, os.PathLike, types.ModuleType)) or not isinstance(value,
                                                                                 (list, tuple)):
        raise RuntimeEnvError(f"{what} must be a list of paths or modules, got "
                              f"{type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        path = _path(item, f"{what}[{i}]")
        if not (os.path.isdir(path) or path.endswith((".py", *_ARCHIVES))):
            raise RuntimeEnvError(f"{what}[{i}]: {path} is not a package directory, a .py "
                                  "file, a .zip or a .whl")
        out.append(path)
    return out


def _excludes(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(p, str) for p in value):
        raise RuntimeEnvError(f"{what} must be a list of gitignore-style patterns (str)")
    return list(value)


def _env_vars(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RuntimeEnvError(f"{what} must be a dict of str to str, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise RuntimeEnvError(f"{what}: {k!r} is not a valid variable name")
        if not isinstance(v, str):
            raise RuntimeEnvError(f"{what}[{k!r}] must be a str, got {type(v).__name__} "
                                  f"({v!r}); environment variables are strings")
        if "\0" in v:
            raise RuntimeEnvError(f"{what}[{k!r}] holds a NUL character")
    return dict(value)


def _pip(value: Any, what: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"pip_check": False}
    if isinstance(value, dict):
        unknown = set(value) - {"packages", "pip_check", "pip_version"}
        if unknown:
            raise RuntimeEnvError(f"{what} has unknown keys {sorted(unknown)}; the keys are "
                                  "'packages', 'pip_check' and 'pip_version'")
        if "packages" not in value:
            raise RuntimeEnvError(f"{what} needs 'packages'")
        if not isinstance(value.get("pip_check", False), bool):
            raise RuntimeEnvError(f"{what}['pip_check'] must be True or False")
        extra["pip_check"] = value.get("pip_check", False)
        if value.get("pip_version") is not None:
            if not isinstance(value["pip_version"], str):
                raise RuntimeEnvError(f"{what}['pip_version'] must be a str such as '==24.0'")
            extra["pip_version"] = value["pip_version"]
        value = value["packages"]
    if isinstance(value, (str, os.PathLike)):
        packages = _requirements_file(_path(value, what), what)
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        packages = [p.strip() for p in value if p.strip()]
    else:
        raise RuntimeEnvError(f"{what} must be a list of requirements, a requirements file or "
                              "a dict with 'packages'")
    for p in packages:
        if p.startswith("-") and not p.startswith(PIP_OPTIONS):
            raise RuntimeEnvError(f"{what}: option {p.split()[0]!r} is not allowed (only "
                                  + ", ".join(o.strip() for o in PIP_OPTIONS) + ")")
    return {"packages": packages, **extra}


def _requirements_file(path: str, what: str) -> list[str]:
    if not os.path.isfile(path):
        raise RuntimeEnvError(f"{what}: {path} is not a requirements file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeEnvError(f"{what}: cannot read {path}: {exc}") from None
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            if line.startswith(("-r", "--requirement", "-c", "--constraint")):
                raise RuntimeEnvError(f"{what}: {path} includes another file ({line}); give "
                                      "the requirements in one file")
            out.append(line)
    return out


def _config(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RuntimeEnvError(f"{what} must be a dict")
    unknown = set(value) - set(CONFIG_FIELDS)
    if unknown:
        raise RuntimeEnvError(f"{what} has unknown keys {sorted(unknown)}; the keys are "
                              + ", ".join(repr(k) for k in CONFIG_FIELDS))
    out = dict(value)
    t = out.get("setup_timeout_seconds", SETUP_TIMEOUT_S)
    if isinstance(t, bool) or not isinstance(t, int) or (t <= 0 and t != -1):
        raise RuntimeEnvError(f"{what}['setup_timeout_seconds'] must be a positive int, or -1 "
                              f"for no limit, got {t!r}")
    if not isinstance(out.get("eager_install", True), bool):
        raise RuntimeEnvError(f"{what}['eager_install'] must be True or False")
    return out


_CHECKS = {
    "working_dir": _working_dir,
    "py_modules": _py_modules,
    "excludes": _excludes,
    "env_vars": _env_vars,
    "pip": _pip,
    "config": _config,
}

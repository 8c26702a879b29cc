"""Making runtime environments ready on a node, as a sans-IO state machine: which pip
environments to build, when an environment's workers may start, and when its set-up failed.
The node agent carries out the commands and reports back. (Packages, a working_dir and
py_modules, are fetched and unpacked by the environment's workers themselves, as they start:
they read objects as any client does.)

    need(env_id, wire, count) ──▶ Build(pip) if its pip env is not made ─┐ part_ready /
                                                                         │ part_failed
                                  Start(Ready, count) once it is ready  ◀┘
                                  Failed(env_id, message) if the build failed or the set-up
                                  time-out passed (the tasks waiting for it fail with it)

Parts are shared: one pip requirement set is built once for every environment that has it.
A part that failed is forgotten, so the next environment that needs it tries again (a
network hiccup is not for ever; a typo fails again, with pip's error, each time it is asked
for). ``forget`` drops an environment whose workers are all gone; its parts stay on disk for
the cache's clean-up to judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

from .apply import Ready
from .spec import SETUP_TIMEOUT_S

READY, WORKING = "ready", "working"


@dataclass(frozen=True)
class Build:
    """Build the pip environment ``name`` for ``pip`` (``pip_env.build`` in a helper)."""

    name: str
    pip: dict
    timeout_s: float | None


@dataclass(frozen=True)
class Start:
    """Start ``count`` workers for the environment, now ready."""

    ready: Ready
    count: int


@dataclass(frozen=True)
class Failed:
    """The environment could not be made ready here: ``message`` says why."""

    env_id: str
    message: str


Command = Union[Build, Start, Failed]


@dataclass
class _Part:
    state: str  # WORKING or READY
    path: str = ""  # READY: the pip environment's directory
    envs: set[str] = field(default_factory=set)  # environments waiting for it


@dataclass
class _Env:
    wire: dict
    parts: list[str]  # the name of its pip environment, if it has one
    waiting: int  # workers asked for, to start once ready
    deadline: float | None
    ready: Ready | None = None


class Setups:
    """The runtime environments of one node: their parts and who waits for them."""

    def __init__(self, pip_name: Any) -> None:
        self._pip_name = pip_name  # pip spec -> its environment's name (pip_env.env_name)
        self.envs: dict[str, _Env] = {}
        self.parts: dict[str, _Part] = {}

    def need(self, env_id: str, wire: dict, count: int, now: float) -> list[Command]:
        """``count`` more workers for ``env_id`` (``wire``: its wire form)."""
        env = self.envs.get(env_id)
        if env is not None and env.ready is not None:
            return [Start(env.ready, count)] if count > 0 else []
        if env is not None:
            env.waiting += count
            return []
        timeout = (wire.get("config") or {}).get("setup_timeout_seconds", SETUP_TIMEOUT_S)
        env = _Env(wire, [], count, None if timeout == -1 else now + timeout)
        self.envs[env_id] = env
        out: list[Command] = []
        wanted: list[tuple[str, Command]] = []
        if wire.get("pip"):
            name = self._pip_name(wire["pip"])
            wanted.append((name, Build(name, wire["pip"], None if timeout == -1 else timeout)))
        for name, command in wanted:
            env.parts.append(name)
            part = self.parts.get(name)
            if part is None:
                part = self.parts[name] = _Part(WORKING)
                out.append(command)
            if part.state == WORKING:
                part.envs.add(env_id)
        out.extend(self._check(env_id))
        return out

    def part_ready(self, name: str, path: str) -> list[Command]:
        """A package was unpacked at ``path``, or a pip environment made there."""
        part = self.parts.get(name)
        if part is None:
            return []
        part.state, part.path = READY, path
        waiting, part.envs = part.envs, set()
        return [c for env_id in sorted(waiting) for c in self._check(env_id)]

    def part_failed(self, name: str, message: str) -> list[Command]:
        """A package could not be fetched or unpacked, or pip failed: every environment
        waiting for it fails with ``message``; the part is forgotten (tried again if asked)."""
        part = self.parts.pop(name, None)
        if part is None:
            return []
        return [c for env_id in sorted(part.envs) for c in self._fail(env_id, message)]

    def tick(self, now: float) -> list[Command]:
        """Environments whose set-up time-out passed before they were ready fail."""
        late = [env_id for env_id, env in self.envs.items()
                if env.ready is None and env.deadline is not None and now > env.deadline]
        out: list[Command] = []
        for env_id in late:
            timeout = (self.envs[env_id].wire.get("config") or {}).get(
                "setup_timeout_seconds", SETUP_TIMEOUT_S)
            out.extend(self._fail(env_id, f"the runtime_env was not ready within its set-up "
                                          f"time-out of {timeout} s (runtime_env['config']"
                                          "['setup_timeout_seconds'])"))
        return out

    def forget(self, env_id: str) -> None:
        """The environment's workers are all gone: set it up again if it is needed again."""
        env = self.envs.pop(env_id, None)
        if env is not None:
            for name in env.parts:
                part = self.parts.get(name)
                if part is not None:
                    part.envs.discard(env_id)

    def _check(self, env_id: str) -> list[Command]:
        env = self.envs[env_id]
        parts = [self.parts.get(name) for name in env.parts]
        if any(p is None or p.state != READY for p in parts):
            return []
        paths = dict(zip(env.parts, (p.path for p in parts if p is not None)))
        wire = env.wire
        env.ready = Ready(
            env_id,
            python=paths[self._pip_name(wire["pip"])] + "/bin/python" if wire.get("pip") else None,
            env_vars=dict(wire.get("env_vars") or {}),
            wire=json.dumps(wire, sort_keys=True))
        count, env.waiting = env.waiting, 0
        return [Start(env.ready, count)] if count > 0 else []

    def _fail(self, env_id: str, message: str) -> list[Command]:
        env = self.envs.pop(env_id, None)
        if env is None:
            return []
        for name in env.parts:
            part = self.parts.get(name)
            if part is not None:
                part.envs.discard(env_id)
        return [Failed(env_id, message)]


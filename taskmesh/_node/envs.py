"""The node agent's runtime environments: the I/O around ``_runtime_env.setups.Setups``.

    PrepareEnv(env, wire, count) ──▶ Setups.need ──Build──▶ `python -m taskmesh._runtime_env.pip_env`
                                                              (a helper process, watched by pidfd)
                                     ◀──part_ready / part_failed── its exit
                                 ──▶ EnvReady(env, count) | EnvSetupFailed(env, message)

(A working_dir and py_modules are the workers' to fetch and unpack: ``_worker/envsetup.py``.)

A pip environment is built by a helper process (pip takes seconds to minutes; the agent's
loop never waits for it). Its output goes to ``runtime_env-<name>.log`` in the node's log
directory (``taskmesh logs`` shows it). The environments live in the machine's runtime_env
cache (``Config.runtime_env_cache``), shared by the nodes of the machine through lock files;
entries unused for a week go when the agent starts (``_runtime_env/cache.py``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from .._runtime_env import cache, pip_env
from .._runtime_env.apply import Ready
from .._runtime_env.setups import Build, Failed, Setups, Start
from .state import EnvReady, EnvSetupFailed

log = logging.getLogger("taskmesh.node")


class _BuildProc:
    __slots__ = ("name", "proc", "pidfd")

    def __init__(self, name: str, proc: subprocess.Popen, pidfd: int) -> None:
        self.name = name
        self.proc = proc
        self.pidfd = pidfd


class NodeEnvs:
    """Runtime environments made ready on this node, and the builds under way."""

    def __init__(self, cache_dir: str, log_dir: str) -> None:
        self.cache_dir = cache_dir
        self.log_dir = log_dir
        self.setups = Setups(pip_env.env_name)
        self.ready: dict[str, Ready] = {}  # env id -> where its parts are
        self.builds: dict[int, _BuildProc] = {}  # pidfd -> the helper building a pip env
        self._collected = False

    def prepare(self, env: str, wire_text: str, count: int, now: float) -> list[Any]:
        """Make ``env`` ready for ``count`` more workers: events for the agent's state."""
        if not self._collected:  # (once, before the first environment: old entries go)
            self._collected = True
            try:
                removed = cache.collect(self.cache_dir)
                if removed:
                    log.info("removed %d unused runtime environment(s) from %s",
                             len(removed), self.cache_dir)
            except OSError as exc:
                log.warning("could not clean %s: %s", self.cache_dir, exc)
        try:
            wire = json.loads(wire_text)
            if not isinstance(wire, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return [EnvSetupFailed(env, f"its wire form is unreadable ({exc})")]
        return self._carry_out(self.setups.need(env, wire, count, now))

    def finished(self, pidfd: int) -> list[Any]:
        """A build helper ended: its environment is ready, or failed with its error."""
        b = self.builds.pop(pidfd)
        os.close(pidfd)
        out, err = b.proc.communicate()
        if b.proc.returncode == 0 and out.strip():
            return self._carry_out(self.setups.part_ready(b.name, out.strip().splitlines()[-1]))
        message = err.strip() or f"the pip helper exited with code {b.proc.returncode}"
        return self._carry_out(self.setups.part_failed(b.name, message))

    def tick(self, now: float) -> list[Any]:
        return self._carry_out(self.setups.tick(now))

    def close(self) -> None:
        """The agent is ending: stop the builds (a half-made environment is made again)."""
        for b in self.builds.values():
            b.proc.kill()
            b.proc.wait()
            os.close(b.pidfd)
        self.builds.clear()

    def _carry_out(self, commands: list) -> list[Any]:
        events: list[Any] = []
        for c in commands:
            if type(c) is Start:
                self.ready[c.ready.env_id] = c.ready
                events.append(EnvReady(c.ready.env_id, c.count))
            elif type(c) is Failed:
                events.append(EnvSetupFailed(c.env_id, c.message))
            elif type(c) is Build:
                events.extend(self._build(c))
        return events

    def _build(self, c: Build) -> list[Any]:
        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, f"runtime_env-{c.name}.log")
        cmd = [sys.executable, "-m", "taskmesh._runtime_env.pip_env", json.dumps(c.pip),
               self.cache_dir, log_path, str(c.timeout_s or 0)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            pidfd = os.pidfd_open(proc.pid)
        except OSError as exc:
            return self._carry_out(self.setups.part_failed(
                c.name, f"could not start the pip helper: {exc}"))
        log.info("building runtime_env pip environment %s (pip's output: %s)", c.name, log_path)
        self.builds[pidfd] = _BuildProc(c.name, proc, pidfd)
        return []

"""State files of CLI-started daemons on this machine (one JSON file per process).

``taskmesh stop`` and ``init(address="auto")`` read them; ``taskmesh start`` refuses to start
a second head (or a second node for the same address) while a recorded one is alive. Files of
dead processes are ignored and removed.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._transport import pid_alive


def _dir(run_dir: str) -> str:
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    return run_dir


def record(run_dir: str, role: str, pid: int, **fields: Any) -> str:
    path = os.path.join(_dir(run_dir), f"{role}-{pid}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"role": role, "pid": pid, **fields}, f)
    os.replace(tmp, path)
    return path


def live(run_dir: str, role: str | None = None) -> list[dict[str, Any]]:
    """Records of processes that are still alive (stale files are deleted)."""
    if not os.path.isdir(run_dir):
        return []
    out = []
    for name in sorted(os.listdir(run_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(run_dir, name)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if not pid_alive(int(rec.get("pid", 0))):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        if role is None or rec.get("role") == role:
            rec["_path"] = path
            out.append(rec)
    return out


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def find_head(run_dir: str) -> tuple[str, str] | None:
    """(address, secret file or "") of the head started on this machine with the CLI, if
    one is alive."""
    heads = live(run_dir, "head")
    if not heads:
        return None
    return str(heads[-1]["connect_address"]), str(heads[-1].get("secret_file") or "")

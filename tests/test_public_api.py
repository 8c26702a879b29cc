"""The public namespace: every name in __all__ exists, once, with a docstring; no import side effects."""

from __future__ import annotations

import subprocess
import sys

import taskmesh

RAY_CORE_NAMES = {"init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "nodes",
                  "cluster_resources", "available_resources", "get_runtime_context", "ObjectRef"}


def test_all_names_exist_once_and_are_documented():
    assert len(taskmesh.__all__) == len(set(taskmesh.__all__))
    for name in taskmesh.__all__:
        obj = getattr(taskmesh, name)
        assert (obj.__doc__ or "").strip(), f"taskmesh.{name} has no docstring"
    assert RAY_CORE_NAMES <= set(taskmesh.__all__)


def test_import_starts_nothing():
    code = ("import threading, taskmesh, sys\n"
            "assert threading.active_count() == 1, threading.enumerate()\n"
            "assert not taskmesh.is_initialized()\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_cluster_utils_is_public_documented_and_starts_nothing_at_import():
    code = ("import threading, sys\n"
            "from taskmesh import cluster_utils\n"
            "assert threading.active_count() == 1, threading.enumerate()\n"
            "assert cluster_utils.__all__ == ['Cluster', 'ClusterNode']\n"
            "for name in cluster_utils.__all__:\n"
            "    cls = getattr(cluster_utils, name)\n"
            "    assert (cls.__doc__ or '').strip(), name\n"
            "    for attr, member in vars(cls).items():\n"
            "        if not attr.startswith('_') and callable(getattr(member, 'fget', member)):\n"
            "            assert (getattr(member, '__doc__', '') or '').strip(), f'{name}.{attr}'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

"""pytest configuration for the taskmesh micro-benchmarks.

Task functions live in :mod:`benchmarks.workloads` and are pickled by reference,
so taskmesh's worker processes must be able to import the ``benchmarks``
package: put the repository root on ``PYTHONPATH`` before any test starts
taskmesh (workers inherit the driver's environment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parent.parent)

_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if REPO_ROOT not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *_paths])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

"""Helpers under the names Ray users know (``ray.util.scheduling_strategies``), and progress
for long waits (:func:`as_completed`, :func:`tqdm`)."""

from .progress import as_completed, tqdm

__all__ = ["as_completed", "tqdm"]

"""``from taskmesh.util.scheduling_strategies import NodeAffinitySchedulingStrategy``, as in Ray."""

from ..options import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy"]

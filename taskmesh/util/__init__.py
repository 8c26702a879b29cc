"""Helpers under the names Ray users know (``ray.util.scheduling_strategies``)."""

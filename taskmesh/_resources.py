"""Resource amounts on the wire: integers in 1/10000 units, so fractions add up exactly."""

from __future__ import annotations

from typing import Mapping

UNIT = 10_000
CPU = "CPU"


def to_units(amount: float) -> int:
    return int(round(amount * UNIT))


def from_units(units: int) -> float:
    return units / UNIT


def describe(resources: Mapping[str, int]) -> str:
    """{'CPU': 20000} -> 'CPU=2'."""
    return ", ".join(f"{name}={from_units(resources[name]):g}" for name in sorted(resources)) or "nothing"


def valid(resources: object) -> bool:
    """True for a dict of resource name -> non-negative integer units."""
    return isinstance(resources, dict) and all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in resources.items())

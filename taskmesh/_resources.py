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


GPU = "GPU"
MEMORY = "memory"


def detect_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPU device ids of this machine: ``CUDA_VISIBLE_DEVICES`` if it is set (an empty value
    or ``-1`` means none), else one id per GPU that ``nvidia-smi -L`` lists."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if ids in ([], ["-1"], ["NoDevFiles"]) else ids
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def assign_gpus(free: dict[str, int], units: int) -> dict[str, int] | None:
    """Pick devices for a request of ``units`` GPU units from ``free`` (device id -> free
    units, UNIT when unused): whole unused devices for one GPU or more (a whole number of
    them), else a share of one device, packing onto the fullest that fits. Returns device
    id -> units taken (and takes them from ``free``), or None if the devices cannot hold it."""
    if units <= 0:
        return {}
    if units >= UNIT:
        if units % UNIT:
            return None  # more than one GPU must be whole GPUs
        whole = sorted((d for d, f in free.items() if f == UNIT), key=device_order)
        if len(whole) < units // UNIT:
            return None
        take = {d: UNIT for d in whole[: units // UNIT]}
    else:
        fits = [d for d, f in free.items() if f >= units]
        if not fits:
            return None
        best = min(fits, key=lambda d: (free[d], device_order(d)))
        take = {best: units}
    for d, u in take.items():
        free[d] -= u
    return take


def device_order(device: str) -> tuple:
    """Sort key of GPU device ids: numbers in numeric order, then names."""
    return (0, int(device), "") if device.isdigit() else (1, 0, device)

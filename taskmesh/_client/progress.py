"""The driver's side of bars made in tasks (``taskmesh.util.tqdm``): their state lines come
with the task output; each call site gets one ``tqdm`` bar on the driver.

    Output line BAR{"id", "site", "desc", "n", "total", "closed"} ──BarManager.feed──▶ group
        (site, desc) ──▶ one tqdm bar: n and total summed over every task's bar of that site

A group's bar closes once every bar in it closed and none came for ``LINGER_S``.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

#: a finished group stays this long, in case more tasks of that call site start
LINGER_S = 1.0


class _Group:
    __slots__ = ("bar", "parts", "done_at")

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.parts: dict[tuple, dict] = {}  # (ip, pid, bar id) -> its latest state
        self.done_at: float | None = None


class BarManager:
    """The bars drawn on this driver, one per call site."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file
        self.groups: dict[tuple[str, str], _Group] = {}

    @property
    def active(self) -> bool:
        return bool(self.groups)

    def feed(self, source: tuple, text: str, now: float) -> bool:
        """Take one state line (without its prefix); False if it is not one."""
        try:
            state = json.loads(text)
            key = (str(state["site"]), str(state["desc"]))
            part = (*source, str(state["id"]))
        except (ValueError, KeyError, TypeError):
            return False
        group = self.groups.get(key)
        if group is None:
            import tqdm

            group = self.groups[key] = _Group(tqdm.tqdm(
                desc=key[1] or None, total=None, unit=str(state.get("unit") or "it"),
                file=self.file, leave=True, dynamic_ncols=True))
        group.parts[part] = state
        self._draw(group, now)
        return True

    def _draw(self, group: _Group, now: float) -> None:
        parts = group.parts.values()
        totals = [p.get("total") for p in parts]
        bar = group.bar
        bar.total = sum(t for t in totals if t) if all(totals) else None
        bar.n = sum(p.get("n") or 0 for p in parts)
        bar.refresh()
        group.done_at = now if all(p.get("closed") for p in parts) else None

    def tick(self, now: float, everything: bool = False) -> None:
        """Close the groups that are done (all of them with ``everything``)."""
        for key in [k for k, g in self.groups.items()
                    if everything or (g.done_at is not None and now - g.done_at >= LINGER_S)]:
            self.groups.pop(key).bar.close()

    def write(self, text: str, file: TextIO) -> None:
        """A line printed while bars are drawn: above them, not through them."""
        import tqdm

        tqdm.tqdm.write(text, file=file)

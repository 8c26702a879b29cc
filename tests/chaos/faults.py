"""The seeded fault schedule of a chaos run: which fault hits which worker host, when, and how
long until it is repaired. Pure: no processes and no clock (``controller.py`` executes it).

    plan(seed, duration) ──▶ [Fault(at, kind, host, down_s, restart_s, pick), ...]

A seed always gives the same list. The planner keeps two promises, and the controller keeps
them again at run time (where a slow repair can push a fault later than planned):

- a host takes no new fault before the previous one on it is repaired and has settled;
- at most ``max_down`` (2) of the 3 worker hosts are down at once, so the workload can always
  progress on at least one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

#: kind -> weight (docs/chaos.md, "What it injects", says what each does)
KINDS: dict[str, float] = {"kill": 0.25, "crash": 0.15, "cut": 0.25, "worker": 0.25, "agent": 0.10}

#: kinds that take a host's node away until they are repaired
DOWN_KINDS = frozenset({"kill", "crash", "cut", "agent"})

#: seconds a repaired host is left alone (an agent start takes ~1 s; a healed one re-joins)
SETTLE_S = 2.0


@dataclass(frozen=True)
class Fault:
    """One fault. Times are seconds after the workload started."""

    at: float
    kind: str
    host: int
    down_s: float = 0.0  # until the repair: agent restart (kill, agent) or heal (cut, crash)
    restart_s: float = 0.0  # crash: from heal to the agent's restart
    pick: float = 0.0  # worker: which one, as a fraction into the host's workers by pid

    def repaired_after(self) -> float:
        """Seconds from ``at`` until the host's node should be back."""
        return self.down_s + self.restart_s

    def describe(self) -> str:
        if self.kind == "worker":
            return f"SIGKILL a worker on h{self.host}"
        if self.kind == "crash":
            return (f"crash h{self.host}, heal after {self.down_s:.2f} s, restart its agent "
                    f"{self.restart_s:.2f} s later")
        if self.kind == "cut":
            return f"cut h{self.host} for {self.down_s:.2f} s"
        what = "kill h{0} (every process)" if self.kind == "kill" else "SIGKILL the agent of h{0}"
        return what.format(self.host) + f", restart its agent after {self.down_s:.2f} s"

    def to_json(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def plan(seed: int, duration: float, hosts: tuple[int, ...] = (1, 2, 3),
         gap: tuple[float, float] = (1.0, 3.0), max_down: int = 2) -> list[Fault]:
    """Faults from ``gap`` seconds in until ``duration``, one every ``gap`` seconds."""
    if max_down >= len(hosts):
        raise ValueError("max_down must leave at least one host up")
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k] for k in kinds]
    free_at = {h: 0.0 for h in hosts}  # no new fault on h before this
    down_until = {h: 0.0 for h in hosts}  # h's node is gone until this
    out: list[Fault] = []
    t = rng.uniform(*gap)
    while t < duration:
        kind = rng.choices(kinds, weights)[0]
        free = [h for h in hosts if free_at[h] <= t]
        down_now = sum(1 for h in hosts if down_until[h] > t)
        if kind in DOWN_KINDS and down_now >= max_down:
            kind = "worker"  # taking one more host down would leave none
        candidates = [h for h in free if down_until[h] <= t]
        if not candidates:
            t += rng.uniform(*gap)
            continue
        host = rng.choice(candidates)
        if kind == "worker":
            fault = Fault(t, kind, host, pick=rng.random())
        elif kind == "crash":
            fault = Fault(t, kind, host, down_s=rng.uniform(1.0, 4.0),
                          restart_s=rng.uniform(0.2, 1.0))
        elif kind == "cut":
            # a third are shorter than the heartbeat time-out (1.5 s): silence, not death
            short = rng.random() < 1 / 3
            fault = Fault(t, kind, host, down_s=rng.uniform(0.3, 1.2) if short
                          else rng.uniform(2.0, 6.0))
        else:  # kill, agent
            fault = Fault(t, kind, host, down_s=rng.uniform(0.5, 2.0))
        out.append(fault)
        if kind in DOWN_KINDS:
            down_until[host] = t + fault.repaired_after() + SETTLE_S
            free_at[host] = down_until[host]
        else:
            free_at[host] = t + 0.5
        t += rng.uniform(*gap)
    return out


def counts(faults: list[Fault]) -> dict[str, int]:
    """Faults by kind, every kind present (0 if none)."""
    out = {k: 0 for k in KINDS}
    for f in faults:
        out[f.kind] += 1
    return out

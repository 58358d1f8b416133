"""Load profiles as data: stages of (duration_s, users, spawn_rate), replayed by a LoadTestShape.

Pick one with ``--load-profile NAME`` (headless runner or web UI) or ``LOADTEST_PROFILE``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    duration_s: int  # how long this stage lasts
    users: int  # concurrent users during it
    spawn_rate: float  # users started (or stopped) per second to get there


PROFILES: dict[str, list[Stage]] = {
    # Short enough for CI: a step up, a plateau, a step down.
    "ci": [Stage(8, 4, 4), Stage(10, 16, 8), Stage(6, 2, 8)],
    # Steady ramp: the load at which latency bends and replicas are added.
    "ramp": [Stage(60, 4, 1), Stage(60, 16, 1), Stage(60, 32, 1), Stage(60, 64, 2), Stage(60, 8, 4)],
    # Spike: idle, then a burst every few minutes, idle in between (scale up, then back down).
    "spike": [Stage(60, 1, 1), Stage(30, 64, 32), Stage(150, 1, 32), Stage(30, 64, 32), Stage(150, 1, 32),
              Stage(30, 64, 32), Stage(120, 1, 32)],
    # Spike, short: idle, one burst, idle again (loadtests/nodes.py: worker nodes added with it, removed after it).
    "spike-short": [Stage(10, 1, 1), Stage(40, 24, 24), Stage(50, 1, 24)],
    # Rollout: steady traffic with feedback while a candidate earns its way (the caller stops it early).
    "rollout": [Stage(5, 6, 6), Stage(1195, 6, 6)],
    # Faults: steady load while something is killed (loadtests/faults.py stops it after recovery).
    "fault": [Stage(2, 8, 8), Stage(238, 8, 8)],  # ends early, once the row has recovered
    # Soak: an hour at a moderate load, for leaks and slow drift in latency.
    "soak": [Stage(60, 16, 2), Stage(3540, 16, 2)],
}


def timeline(stages: list[Stage]) -> list[tuple[float, float, Stage]]:
    """(start_s, end_s, stage) for each stage."""
    out, t = [], 0.0
    for stage in stages:
        out.append((t, t + stage.duration_s, stage))
        t += stage.duration_s
    return out

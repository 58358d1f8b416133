"""The stage of every version of a model, and every transition between stages, with who and why.

Stages::

    candidate  -> published, passed the offline gates, serves no one yet
    shadow     -> sees a mirror of live traffic; its answers are recorded, never returned
    canary     -> answers a weighted share of live traffic (sticky by a request key)
    production -> answers the rest; Triton's plain ``<model>`` ensemble is pinned to it
    archived   -> retired (rolled back, or replaced by a newer production)

Kept as ``models/<model>/stages.json`` in the data bucket: the current stage of each version and
the list of transitions (from, to, when, by whom or what, the reason, and the numbers that decided
it). ``in_play`` is what Triton keeps loaded side by side: every live stage, plus the production
that was replaced last, so rolling back to it is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from services.registry.records import now

Stage = Literal["candidate", "shadow", "canary", "production", "archived"]
STAGES: tuple[Stage, ...] = ("candidate", "shadow", "canary", "production", "archived")
LIVE: tuple[Stage, ...] = ("candidate", "shadow", "canary", "production")


class StageError(ValueError):
    """A transition that makes no sense (a version that does not exist, a stage that is not one)."""


@dataclass
class StageBook:
    model: str
    versions: dict[int, Stage] = field(default_factory=dict)
    transitions: list[dict] = field(default_factory=list)
    replaced: int | None = None  # the production replaced last (kept apart: transitions are capped)

    @classmethod
    def from_json(cls, model: str, data: dict | None) -> "StageBook":
        data = data or {}
        return cls(model, {int(v): s for v, s in (data.get("versions") or {}).items()},
                   list(data.get("transitions") or []), data.get("replaced"))

    def to_json(self) -> dict:
        return {"model": self.model, "versions": {str(v): s for v, s in sorted(self.versions.items())},
                "replaced": self.replaced, "transitions": self.transitions[-500:]}

    def stage(self, version: int) -> Stage | None:
        return self.versions.get(version)

    def in_stage(self, *stages: Stage) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s in stages)

    @property
    def production(self) -> int | None:
        found = self.in_stage("production")
        return found[-1] if found else None

    @property
    def challengers(self) -> list[int]:
        """Versions on their way to production: candidate, shadow, canary."""
        return self.in_stage("candidate", "shadow", "canary")

    @property
    def previous_production(self) -> int | None:
        """The production version replaced last, while it is archived: what an instant rollback goes back to."""
        if self.replaced is not None and self.versions.get(self.replaced) == "archived":
            return self.replaced
        for t in reversed(self.transitions):  # a book written before `replaced` was kept
            if t["from"] == "production" and t["to"] == "archived" and self.versions.get(t["version"]) == "archived":
                return t["version"]
        return None

    def in_play(self) -> list[int]:
        """The versions Triton keeps loaded: every live stage, and the last production (instant rollback)."""
        play = set(self.in_stage(*LIVE))
        if self.previous_production is not None:
            play.add(self.previous_production)
        return sorted(play)

    def move(self, version: int, to: Stage, *, by: str, reason: str, numbers: dict[str, Any] | None = None) -> dict:
        """Record `version` entering stage `to`; returns the transition."""
        if to not in STAGES:
            raise StageError(f"{to!r} is not a stage; stages are {list(STAGES)}")
        before = self.versions.get(version)
        if before == "production" and to == "archived":
            self.replaced = version
        transition = {"version": version, "from": before, "to": to, "at": now(), "by": by, "reason": reason,
                      "numbers": numbers or {}}
        self.versions[version] = to
        self.transitions.append(transition)
        return transition

    def history(self, version: int) -> list[dict]:
        return [t for t in self.transitions if t["version"] == version]

"""Which version answers a request: the routing table the controller writes, and the gateway's router.

The rollout controller writes ``models/<model>/routing.json`` (``RoutingTable``) whenever a stage,
a weight or the policy changes; every gateway replica reads it about once a second and picks a
version per request, so changing traffic needs no restart and reloads no ensemble::

    router = Router(records, ["churn", "fraud"])
    route = router.choose("churn", headers, request_id)    # Route(version="3", shadow="4", fault=None)

The choice, in order: an A/B cohort named by the request's header; the bandit's Thompson sample
over the live versions; the canary's weighted share, sticky by a header (a user keeps their version)
else by the request id; otherwise production. A request that production answers is also mirrored
to the shadow version for a share of requests. ``version == ""`` means the plain ensemble (no table
yet: a stack before its first rollout decision).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.registry.records import Records
from services.rollout.evaluation import best_probability

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanaryRoute(_Strict):
    version: int
    weight: float = Field(ge=0, le=1)
    sticky_header: str = "x-user-id"


class ShadowRoute(_Strict):
    version: int
    share: float = Field(1.0, ge=0, le=1)
    max_in_flight: int = 64
    tolerance: float = 0.1  # regression: a relative difference above this is a disagreement


class ABRoute(_Strict):
    header: str
    cohorts: dict[str, int]


class BanditRoute(_Strict):
    posteriors: dict[int, tuple[float, float]]  # version -> Beta(alpha, beta) of its reward
    explore_floor: float = 0.05


class Fault(_Strict):
    """Injected on purpose (``rts models fault``), to prove that bad live signals roll a version back."""

    latency_ms: float = Field(0, ge=0)
    error_rate: float = Field(0, ge=0, le=1)


class RoutingTable(_Strict):
    model: str
    revision: int = 0
    strategy: str = "direct"
    production: int | None = None
    canary: CanaryRoute | None = None
    shadow: ShadowRoute | None = None
    ab: ABRoute | None = None
    bandit: BanditRoute | None = None
    faults: dict[int, Fault] = Field(default_factory=dict)

    def shares(self) -> dict[int, float]:
        """Expected share of live traffic per version (what the dashboard plots)."""
        if self.production is None:
            return {}
        if self.bandit:  # what Thompson sampling sends each way: the floor, and P(best) of the rest
            best = best_probability(self.bandit.posteriors)
            floor = self.bandit.explore_floor if len(best) > 1 else 0.0
            return {v: floor + (1 - floor * len(best)) * p for v, p in best.items()}
        shares = {self.production: 1.0}
        if self.canary:
            shares[self.canary.version] = self.canary.weight
            shares[self.production] = 1.0 - self.canary.weight
        return shares


def routing_key(model: str) -> str:
    return f"models/{model}/routing.json"


def read_table(records: Records, model: str) -> RoutingTable | None:
    data = records.get_json(routing_key(model))
    return RoutingTable.model_validate(data) if data else None


def write_table(records: Records, table: RoutingTable) -> None:
    records.put_json(routing_key(table.model), table.model_dump(mode="json"))


@dataclass(frozen=True)
class Route:
    version: str  # "" = the plain ensemble (production as Triton has it pinned)
    pinned: bool = False  # the caller asked for this version (OIP's /versions/<v>): never answered by another
    shadow: str | None = None
    max_in_flight: int = 64
    tolerance: float = 0.1
    fault: Fault | None = None
    shadow_fault: Fault | None = None  # injected into the mirrored call (it still never reaches the user)


PLAIN = Route("")


def sticky_fraction(key: str) -> float:
    """A stable number in [0, 1) for a request key: the same user lands on the same side of a split.

    A real hash, not a checksum: CRC32 is linear, so similar keys (``user-1``, ``user-2``, ...) land
    unevenly and a 50 % canary got 53 % of 5000 such users."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


class Router:
    """Picks a version per request from each model's routing table, refreshed in the background."""

    def __init__(self, records: Records, models: list[str], refresh_s: float = 1.0) -> None:
        self.records, self.models, self.refresh_s = records, list(models), refresh_s
        self.tables: dict[str, RoutingTable] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    def start(self) -> "Router":
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="routing-refresh", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> None:
        for model in self.models:
            try:
                table = read_table(self.records, model)
            except Exception:  # a half-written or unreadable table: keep routing by the last good one
                log.exception("could not read the routing table of %s", model)
                continue
            if table is not None and table.revision >= self.tables.get(model, table).revision:
                self.tables[model] = table

    def choose(self, model: str, headers: Mapping[str, str], request_id: str) -> Route:
        table = self.tables.get(model)
        if table is None or table.production is None:
            return PLAIN
        fault_of = table.faults.get
        if table.ab is not None:
            cohort = headers.get(table.ab.header)
            if cohort is not None and cohort in table.ab.cohorts:
                version = table.ab.cohorts[cohort]
                return Route(str(version), fault=fault_of(version))
        if table.bandit is not None and table.bandit.posteriors:
            version = self._thompson(table.bandit)
            return Route(str(version), fault=fault_of(version))
        if table.canary is not None:
            key = headers.get(table.canary.sticky_header) or request_id
            if sticky_fraction(key) < table.canary.weight:
                version = table.canary.version
                return Route(str(version), fault=fault_of(version))
        shadow = table.shadow
        if shadow is not None and self._rng.random() < shadow.share:
            return Route(str(table.production), shadow=str(shadow.version), max_in_flight=shadow.max_in_flight,
                         tolerance=shadow.tolerance, fault=fault_of(table.production),
                         shadow_fault=fault_of(shadow.version))
        return Route(str(table.production), fault=fault_of(table.production))

    def is_production(self, model: str, version: str) -> bool:
        """Whether `version` is the model's production version (True before any table exists)."""
        table = self.tables.get(model)
        return table is None or table.production is None or str(table.production) == version

    def challengers(self) -> list[tuple[str, str]]:
        """(model, version) of every version in a shadow or canary route: the ones judged live."""
        out = []
        for model, table in self.tables.items():
            for route in (table.shadow, table.canary):
                if route is not None:
                    out.append((model, str(route.version)))
            if table.bandit is not None:
                out += [(model, str(v)) for v in table.bandit.posteriors if v != table.production]
            if table.ab is not None:
                out += [(model, str(v)) for v in set(table.ab.cohorts.values()) if v != table.production]
        return sorted(set(out))

    def judged(self) -> list[tuple[str, str]]:
        """The challengers, and the production version of each model that has one: the versions whose drift the
        rollout compares (a challenger is judged against production on the same traffic)."""
        out = self.challengers()
        for model in {m for m, _ in out}:
            production = self.tables[model].production
            if production is not None:
                out.append((model, str(production)))
        return sorted(set(out))

    def _thompson(self, bandit: BanditRoute) -> int:
        versions = list(bandit.posteriors)
        if self._rng.random() < bandit.explore_floor * len(versions):
            return self._rng.choice(versions)
        draws = [np.random.beta(*bandit.posteriors[v]) for v in versions]
        return versions[int(np.argmax(draws))]

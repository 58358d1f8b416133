"""The routing table and the gateway's router (``services.rollout.routing``), over a local data bucket.

Covered:

- ``Router.choose``: no table (or no production) -> the plain ensemble; production only; a canary's
  weighted split sticky by a header (the same user always gets the same version, across routers;
  the canary share is close to its weight over many users; raising the weight keeps the canary's
  users on it), by the request id without the header; A/B cohorts by header (an unknown cohort goes
  to production); the bandit's Thompson sampling (the better posterior answers most, the explore
  floor keeps the other alive); the shadow mirror share, with ``max_in_flight`` and the tolerance;
  injected faults carried on the route of the version they were set on;
- ``RoutingTable.shares`` (production only, canary, bandit, no production), JSON round trip through
  ``write_table`` / ``read_table``;
- ``Router.refresh``: picks up a newer revision, ignores an older one and keeps the last good table
  when the stored one is unreadable; ``start`` refreshes in the background;
- ``is_production`` and ``challengers``; ``sticky_fraction`` is stable and in [0, 1).
"""

from __future__ import annotations

import random
import time
from collections import Counter

import numpy as np
import pytest

from services.registry.records import Records
from services.rollout.routing import (PLAIN, ABRoute, BanditRoute, CanaryRoute, Fault, Route, Router, RoutingTable,
                                      ShadowRoute, read_table, routing_key, sticky_fraction, write_table)
from services.storage import open_store

MODEL = "digits"


@pytest.fixture
def records(tmp_path) -> Records:
    return Records(open_store(f"file://{tmp_path}/bucket"))


def router_for(records: Records, table: RoutingTable | None, seed: int = 0) -> Router:
    if table is not None:
        write_table(records, table)
    router = Router(records, [MODEL])
    router.refresh()
    router._rng = random.Random(seed)  # reproducible shadow and explore draws
    return router


def canary_table(weight: float = 0.1, **extra) -> RoutingTable:
    return RoutingTable(model=MODEL, revision=1, strategy="progressive", production=1,
                        canary=CanaryRoute(version=2, weight=weight, sticky_header="x-user-id"), **extra)


# ---- the plain ensemble and production ----------------------------------------------------------

def test_no_table_routes_to_the_plain_ensemble(records):
    router = router_for(records, None)
    assert router.choose(MODEL, {}, "r1") == PLAIN and PLAIN.version == ""
    assert router.choose("other", {}, "r1") == PLAIN
    assert router.is_production(MODEL, "7")  # nothing decided yet: whatever answers is production


def test_a_table_without_production_routes_to_the_plain_ensemble(records):
    router = router_for(records, RoutingTable(model=MODEL, revision=1))
    assert router.choose(MODEL, {"x-user-id": "u"}, "r1") == PLAIN


def test_production_only(records):
    router = router_for(records, RoutingTable(model=MODEL, revision=1, production=3))
    assert {router.choose(MODEL, {}, f"r{i}") for i in range(50)} == {Route("3")}
    assert router.is_production(MODEL, "3") and not router.is_production(MODEL, "4")
    assert router.challengers() == []


# ---- canary --------------------------------------------------------------------------------------

def test_canary_is_sticky_by_the_header(records):
    router = router_for(records, canary_table(0.5))
    other = router_for(Records(records.store), None)  # another gateway replica reading the same table
    for user in (f"user-{i}" for i in range(200)):
        first = router.choose(MODEL, {"x-user-id": user}, "req-a").version
        # the request id changes on every request; the user does not
        assert all(router.choose(MODEL, {"x-user-id": user}, f"req-{j}").version == first for j in range(5))
        assert other.choose(MODEL, {"x-user-id": user}, "req-z").version == first


@pytest.mark.parametrize("weight", [0.1, 0.5])
def test_canary_share_is_close_to_its_weight_over_many_users(records, weight):
    router = router_for(records, canary_table(weight))
    n = 5000
    versions = Counter(router.choose(MODEL, {"x-user-id": f"user-{i}"}, "same-request").version for i in range(n))
    assert set(versions) == {"1", "2"}
    assert versions["2"] / n == pytest.approx(weight, abs=0.03)


def test_raising_the_canary_weight_keeps_its_users_on_it(records):
    small = router_for(records, canary_table(0.1))
    users = [f"user-{i}" for i in range(2000)]
    on_canary = {u for u in users if small.choose(MODEL, {"x-user-id": u}, "r").version == "2"}
    write_table(records, canary_table(0.5).model_copy(update={"revision": 2}))
    small.refresh()
    assert small.tables[MODEL].canary.weight == 0.5
    assert all(small.choose(MODEL, {"x-user-id": u}, "r").version == "2" for u in on_canary)


def test_without_the_sticky_header_the_request_id_decides(records):
    router = router_for(records, canary_table(0.3))
    picks = [router.choose(MODEL, {"other-header": "x"}, f"request-{i}").version for i in range(3000)]
    assert picks.count("2") / len(picks) == pytest.approx(0.3, abs=0.03)
    assert all(router.choose(MODEL, {}, f"request-{i}").version == picks[i] for i in range(100))
    # the key the split uses is exactly the request id
    assert all((sticky_fraction(f"request-{i}") < 0.3) == (picks[i] == "2") for i in range(3000))


def test_sticky_fraction_is_stable_and_in_the_unit_interval():
    values = [sticky_fraction(f"k{i}") for i in range(1000)]
    assert all(0 <= v < 1 for v in values)
    assert values == [sticky_fraction(f"k{i}") for i in range(1000)]
    assert len(set(values)) > 990


# ---- A/B cohorts ---------------------------------------------------------------------------------

def test_ab_cohorts_by_header(records):
    table = RoutingTable(model=MODEL, revision=1, strategy="ab", production=1,
                         ab=ABRoute(header="x-cohort", cohorts={"b": 2, "a": 1, "old": 0}))
    router = router_for(records, table)
    assert all(router.choose(MODEL, {"x-cohort": "b"}, f"r{i}") == Route("2") for i in range(20))
    assert router.choose(MODEL, {"x-cohort": "a"}, "r") == Route("1")
    assert router.choose(MODEL, {"x-cohort": "old"}, "r") == Route("0")
    assert router.choose(MODEL, {"x-cohort": "c"}, "r") == Route("1")  # not a cohort: production
    assert router.choose(MODEL, {}, "r") == Route("1")
    assert router.challengers() == [(MODEL, "0"), (MODEL, "2")]


# ---- bandit --------------------------------------------------------------------------------------

def test_bandit_sends_most_traffic_to_the_better_posterior_and_keeps_exploring(records):
    np.random.seed(0)  # the Thompson draws
    table = RoutingTable(model=MODEL, revision=1, strategy="bandit", production=1,
                         bandit=BanditRoute(posteriors={1: (10.0, 300.0), 2: (300.0, 10.0)}, explore_floor=0.05))
    router = router_for(records, table)
    n = 4000
    picks = Counter(router.choose(MODEL, {}, f"r{i}").version for i in range(n))
    # 2 wins every Thompson draw; 1 gets only its explore floor (0.05 of traffic each, on average)
    assert picks["1"] / n == pytest.approx(0.05, abs=0.02)
    assert picks["2"] / n == pytest.approx(0.95, abs=0.02)
    assert router.challengers() == [(MODEL, "2")]


def test_bandit_with_equal_posteriors_splits_evenly(records):
    np.random.seed(0)
    table = RoutingTable(model=MODEL, revision=1, strategy="bandit", production=1,
                         bandit=BanditRoute(posteriors={1: (50.0, 50.0), 2: (50.0, 50.0)}, explore_floor=0.0))
    router = router_for(records, table)
    picks = Counter(router.choose(MODEL, {}, f"r{i}").version for i in range(4000))
    assert picks["2"] / 4000 == pytest.approx(0.5, abs=0.04)


# ---- shadow --------------------------------------------------------------------------------------

def test_shadow_mirrors_its_share_of_production_requests(records):
    table = RoutingTable(model=MODEL, revision=1, production=1,
                         shadow=ShadowRoute(version=2, share=0.3, max_in_flight=8, tolerance=0.25))
    router = router_for(records, table)
    routes = [router.choose(MODEL, {}, f"r{i}") for i in range(5000)]
    assert {r.version for r in routes} == {"1"}  # the shadow never answers
    mirrored = [r for r in routes if r.shadow is not None]
    assert len(mirrored) / len(routes) == pytest.approx(0.3, abs=0.03)
    assert {(r.shadow, r.max_in_flight, r.tolerance) for r in mirrored} == {("2", 8, 0.25)}
    assert router.challengers() == [(MODEL, "2")]


def test_a_full_shadow_mirrors_every_request(records):
    router = router_for(records, RoutingTable(model=MODEL, revision=1, production=1, shadow=ShadowRoute(version=2)))
    assert all(router.choose(MODEL, {}, f"r{i}").shadow == "2" for i in range(200))


# ---- faults --------------------------------------------------------------------------------------

def test_faults_ride_on_the_route_of_their_version(records):
    slow, failing = Fault(latency_ms=250), Fault(error_rate=0.5)
    table = canary_table(0.5, faults={2: slow, 1: failing})
    router = router_for(records, table)
    seen = {}
    for i in range(300):
        route = router.choose(MODEL, {"x-user-id": f"u{i}"}, "r")
        seen.setdefault(route.version, []).append(route.fault)
    assert set(seen) == {"1", "2"}
    assert all(f == slow for f in seen["2"]) and all(f == failing for f in seen["1"])

    ab = RoutingTable(model=MODEL, revision=1, strategy="ab", production=1, faults={2: slow},
                      ab=ABRoute(header="x-cohort", cohorts={"b": 2}))
    router = router_for(Records(open_store(f"file://{records.store.root}-ab")), ab)
    assert router.choose(MODEL, {"x-cohort": "b"}, "r").fault == slow
    assert router.choose(MODEL, {}, "r").fault is None


def test_fault_bounds():
    with pytest.raises(ValueError):
        Fault(error_rate=1.5)
    with pytest.raises(ValueError):
        Fault(latency_ms=-1)


# ---- the table -----------------------------------------------------------------------------------

def test_shares():
    assert RoutingTable(model=MODEL).shares() == {}
    assert RoutingTable(model=MODEL, production=1).shares() == {1: 1.0}
    assert canary_table(0.1).shares() == pytest.approx({1: 0.9, 2: 0.1})
    shadowed = RoutingTable(model=MODEL, production=1, shadow=ShadowRoute(version=2))
    assert shadowed.shares() == {1: 1.0}  # a shadow answers no one
    bandit = RoutingTable(model=MODEL, production=1, bandit=BanditRoute(posteriors={1: (1.0, 3.0), 2: (3.0, 1.0)}))
    # P(Beta(3,1) > Beta(1,3)) = 0.95; each version keeps the 5% floor, the rest follows P(best)
    assert bandit.shares() == pytest.approx({1: 0.05 + 0.9 * 0.05, 2: 0.05 + 0.9 * 0.95}, abs=0.01)


def test_the_bandits_shares_are_what_the_router_sends(records):
    """The dashboard's traffic share for a bandit is the share Thompson sampling really sends."""
    table = RoutingTable(model=MODEL, production=1, bandit=BanditRoute(posteriors={1: (30.0, 5.0), 2: (28.0, 6.0)}))
    router = Router(records, [MODEL])
    router.tables[MODEL] = table
    sent = [router.choose(MODEL, {}, f"r{i}").version for i in range(6000)]
    share = sent.count("2") / len(sent)
    assert share == pytest.approx(table.shares()[2], abs=0.03)


def test_table_round_trips_through_the_bucket(records):
    table = RoutingTable(model=MODEL, revision=4, strategy="bandit", production=1,
                         bandit=BanditRoute(posteriors={1: (2.0, 3.0), 2: (5.0, 1.0)}),
                         shadow=ShadowRoute(version=3, share=0.5), faults={2: Fault(latency_ms=5)})
    write_table(records, table)
    assert records.get_json(routing_key(MODEL))["revision"] == 4
    assert read_table(records, MODEL) == table
    assert read_table(records, "other") is None


def test_a_table_with_an_unknown_field_is_refused(records):
    records.put_json(routing_key(MODEL), {"model": MODEL, "production": 1, "surprise": True})
    with pytest.raises(ValueError):
        read_table(records, MODEL)


# ---- refresh -------------------------------------------------------------------------------------

def test_refresh_takes_newer_revisions_and_ignores_older_ones(records):
    router = router_for(records, RoutingTable(model=MODEL, revision=2, production=1))
    write_table(records, RoutingTable(model=MODEL, revision=3, production=2))
    router.refresh()
    assert router.choose(MODEL, {}, "r").version == "2"
    write_table(records, RoutingTable(model=MODEL, revision=1, production=5))  # a stale write
    router.refresh()
    assert router.choose(MODEL, {}, "r").version == "2"


def test_refresh_keeps_the_last_good_table_when_the_stored_one_is_unreadable(records):
    router = router_for(records, RoutingTable(model=MODEL, revision=2, production=1))
    records.store.put_bytes(routing_key(MODEL), b'{"model": "digits", "revis')
    router.refresh()
    assert router.choose(MODEL, {}, "r").version == "1"


def test_start_refreshes_in_the_background(records):
    write_table(records, RoutingTable(model=MODEL, revision=1, production=1))
    router = Router(records, [MODEL], refresh_s=0.02).start()
    try:
        assert router.choose(MODEL, {}, "r").version == "1"  # read at start
        write_table(records, RoutingTable(model=MODEL, revision=2, production=2))
        deadline = time.monotonic() + 3
        while router.choose(MODEL, {}, "r").version != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert router.choose(MODEL, {}, "r").version == "2"
    finally:
        router.stop()

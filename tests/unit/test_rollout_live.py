"""What a gateway replica records of each live version, and its reporter (``services.rollout.live``).

Covered:

- ``LiveStats``: answered and failed requests, mirrored requests (errors, disagreements, skipped),
  predictions, all per (model, version); ``take`` hands everything over once (then None), in the
  shape ``Controller.report`` reads; latencies are capped per report; ``recent`` finds a request
  answered lately and forgets the oldest beyond its bound;
- ``Reporter``: sends snapshots every interval, asks for drift only of the challengers it is told
  about (a drift-only snapshot when there was no traffic), sends nothing when nothing happened,
  and keeps going when a send fails.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.rollout.live import LiveStats, Reporter


def test_take_hands_over_everything_once():
    live = LiveStats(replica="ingress-1")
    assert live.take() is None
    live.request("digits", "3", ok=True, latency_s=0.004)
    live.request("digits", "3", ok=False, latency_s=0.5)
    live.request("digits", "4", ok=True, latency_s=0.006)
    live.shadow("digits", "4", ok=True, latency_s=0.005, disagree=True)
    live.shadow("digits", "4", ok=True, latency_s=0.007, disagree=False)
    live.shadow("digits", "4", ok=False, latency_s=1.0, disagree=None)
    live.shadow_skipped("digits", "4")
    live.request("diabetes", "1", ok=True, latency_s=0.002)
    live.prediction("req-1", "digits", "3", [7])

    snapshot = live.take()
    assert snapshot["replica"] == "ingress-1" and abs(snapshot["at"] - time.time()) < 5
    three, four = snapshot["versions"]["digits"]["3"], snapshot["versions"]["digits"]["4"]
    assert (three["requests"], three["errors"]) == (2, 1)
    assert three["latencies_ms"] == [pytest.approx(4.0)]  # a failure has no latency worth comparing
    assert (four["requests"], four["shadow_requests"], four["shadow_errors"]) == (1, 3, 1)
    assert four["shadow_disagreements"] == 1 and four["shadow_skipped"] == 1
    assert four["shadow_latencies_ms"] == [pytest.approx(5.0), pytest.approx(7.0)]
    assert snapshot["versions"]["diabetes"]["1"]["requests"] == 1
    request_id, model, version, predicted, at, rows = snapshot["predictions"][0]
    assert (request_id, model, version, predicted, rows) == ("req-1", "digits", "3", [7], None)
    assert live.take() is None  # handed over


def test_latencies_are_capped_per_report_but_requests_are_all_counted():
    live = LiveStats(replica="r", max_latencies=10)
    for _ in range(25):
        live.request("digits", "1", ok=True, latency_s=0.001)
        live.shadow("digits", "2", ok=True, latency_s=0.001, disagree=False)
    slot = live.take()["versions"]["digits"]
    assert slot["1"]["requests"] == 25 and len(slot["1"]["latencies_ms"]) == 10
    assert slot["2"]["shadow_requests"] == 25 and len(slot["2"]["shadow_latencies_ms"]) == 10


def test_recent_finds_a_request_answered_lately_and_is_bounded():
    live = LiveStats(replica="r", recent=2)
    for i in range(3):
        live.prediction(f"req-{i}", "digits", "1", [i])
    assert live.recent("req-0") is None  # the oldest was forgotten
    model, version, predicted, at, rows = live.recent("req-2")
    assert (model, version, predicted) == ("digits", "1", [2])
    live.take()
    assert live.recent("req-2") is not None  # a report does not forget what feedback may still join


def wait_for(condition, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_reporter_sends_snapshots_and_drift_of_challengers_only():
    live = LiveStats(replica="r")
    sent: list[dict] = []
    asked: list[tuple[str, str]] = []

    def drift_of(model: str, version: str) -> float | None:
        asked.append((model, version))
        return 0.2 if version == "2" else None

    reporter = Reporter(live, sent.append, watched=lambda: [("digits", "2"), ("digits", "3")],
                        drift_of=drift_of, interval_s=0.02, drift_every_s=0.0).start()
    try:
        assert wait_for(lambda: any("drift" in s for s in sent))
        first = next(s for s in sent if "drift" in s)
        # nothing was served yet: a drift-only snapshot, with no PSI for a version whose window has none
        assert first["versions"] == {} and first["predictions"] == [] and first["drift"] == {"digits": {"2": 0.2}}
        assert set(asked) <= {("digits", "2"), ("digits", "3")}
        live.request("digits", "1", ok=True, latency_s=0.001)
        assert wait_for(lambda: any(s["versions"] for s in sent))
        assert next(s for s in sent if s["versions"])["versions"]["digits"]["1"]["requests"] == 1
    finally:
        reporter.stop()


def test_reporter_sends_nothing_when_nothing_happened_and_survives_a_failed_send():
    live = LiveStats(replica="r")
    calls: list[dict] = []
    failed = threading.Event()

    def send(snapshot: dict) -> None:
        calls.append(snapshot)
        if not failed.is_set():
            failed.set()
            raise ConnectionError("the controller is restarting")

    reporter = Reporter(live, send, interval_s=0.02).start()
    try:
        time.sleep(0.1)
        assert calls == []  # no traffic, no challengers: nothing to say
        live.request("digits", "1", ok=True, latency_s=0.001)
        assert wait_for(failed.is_set)
        live.request("digits", "1", ok=True, latency_s=0.001)
        assert wait_for(lambda: len(calls) >= 2)  # the loop carried on after the failure
    finally:
        reporter.stop()


def test_rows_are_kept_for_feedback_only_when_small():
    """The rows a version was given make its feedback training data; large inputs are not carried around."""
    live = LiveStats(replica="r")
    small, large = np.zeros((2, 64), np.float32), np.zeros((400, 64), np.float32)  # 512 B vs 100 KiB
    live.prediction("a", "digits", "1", [0, 0], small)
    live.prediction("b", "digits", "1", [0] * 400, large)
    assert live.recent("a")[4] is small and live.recent("b")[4] is None
    assert [p[5] is None for p in live.take()["predictions"]] == [False, True]

"""The retraining listener in-process: an in-memory event source, real dedupe records, fake runs, a fake clock.

Covered: debounce (one run per burst, ``max_wait_s`` caps a steady trickle), one run per model with
only that model's events, acknowledgement only after the run is recorded (dedupe marker first),
dedupe of redelivered events (already processed, or still waiting in the burst), a ``lost`` run
leaving its events unacknowledged so they start another run, events that ask for nothing, and
retrain requests that name no model.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from services.events.base import CloudEvent, EventSource, ReceivedEvent, object_created, retrain_requested
from services.modelkit.discovery import load_package
from services.registry.records import Records
from services.retraining.listener import RetrainingListener
from services.retraining.run import unreachable
from services.storage import open_store

DIGITS = load_package("services.models.digits")
DIABETES = load_package("services.models.diabetes")
BOTH = {"digits": DIGITS, "diabetes": DIABETES}
DEBOUNCE, MAX_WAIT = 3.0, 10.0


def created(key: str, etag: str = "e1") -> CloudEvent:
    return object_created(scheme="file", bucket="/bucket", key=key, size=10, etag=etag)


def request(data: dict, event_id: str = "req-1") -> CloudEvent:
    return retrain_requested(data, source="tests", event_id=event_id)


DIGITS_FILE = "datasets/digits/incoming/a.npz"
DIABETES_FILE = "datasets/diabetes/incoming/b.csv"


class FakeSource(EventSource):
    """Queued events out; what is handed out and not acked comes back on ``redeliver()``; acks recorded."""

    name = "fake"

    @classmethod
    def from_settings(cls, settings):
        raise NotImplementedError

    def __init__(self) -> None:
        self.queue: list[ReceivedEvent] = []
        self.in_flight: dict[str, ReceivedEvent] = {}
        self.acked: list[str] = []

    def push(self, *events: CloudEvent) -> None:
        self.queue += [ReceivedEvent(event=e, ack_handle=e.id) for e in events]

    def redeliver(self) -> None:
        self.queue += list(self.in_flight.values())

    def receive(self, max_events: int = 10, timeout_s: float = 1.0) -> list[ReceivedEvent]:
        out, self.queue = self.queue[:max_events], self.queue[max_events:]
        self.in_flight.update({r.ack_handle: r for r in out})
        return out

    def ack(self, received: ReceivedEvent) -> None:
        self.in_flight.pop(received.ack_handle, None)
        self.acked.append(received.event.id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Runs:
    """Fake submit/wait: records what each run was given; ``wait`` checks nothing was acked or marked yet."""

    def __init__(self, source: FakeSource, records: Records) -> None:
        self.source, self.records = source, records
        self.submitted: list[tuple[str, list[str]]] = []  # (model, event ids)
        self.outcomes: list[str] = []  # outcome of each next run; "published" when empty
        self.seen_at_wait: list[tuple[list[str], list[bool]]] = []  # (acked so far, processed markers) per wait

        self.ids_of: dict[str, list[str]] = {}  # run id -> its event ids
        self.dies_in_wait = False  # the listener process is killed while it waits for its run

    def submit(self, model: str, events: list[CloudEvent], run_id: str) -> str:
        assert all(self.records.claim_of(e.id) == run_id for e in events)  # claimed before submitted
        self.submitted.append((model, [e.id for e in events]))
        self.ids_of[run_id] = [e.id for e in events]
        return run_id

    def wait(self, run_id: str) -> dict:
        if self.dies_in_wait:
            self.dies_in_wait = False
            raise Killed
        ids = self.ids_of[run_id]
        self.seen_at_wait.append(([i for i in ids if i in self.source.acked],
                                  [self.records.is_processed(i) for i in ids]))
        outcome = self.outcomes.pop(0) if self.outcomes else "published"
        if outcome == "away":  # failed because a server was away (the record says retryable)
            return {"run_id": run_id, "outcome": "failed", "retryable": True}
        return {"run_id": run_id, "outcome": outcome}


class Killed(BaseException):
    """The listener process dies here (kill -9): nothing after this line of it runs."""


@pytest.fixture
def setup(tmp_path):
    """(listener factory, source, records, runs, clock) over a real Records on a local store."""
    source, clock = FakeSource(), Clock()
    records = Records(open_store(f"file://{tmp_path}/bucket"))
    runs = Runs(source, records)

    def make(models=BOTH) -> RetrainingListener:
        return RetrainingListener(source, records, models, submit=runs.submit, wait=runs.wait,
                                  debounce_s=DEBOUNCE, max_wait_s=MAX_WAIT, clock=clock)

    return make, source, records, runs, clock


def poll_at(listener: RetrainingListener, clock: Clock, t: float) -> list[dict]:
    clock.now = 1000.0 + t
    return listener.poll_once(receive_timeout_s=0)


# ---- debounce -------------------------------------------------------------------------------------

def test_events_within_the_debounce_make_one_run(setup):
    make, source, _, runs, clock = setup
    listener = make()
    events = [created(f"datasets/digits/incoming/{n}.npz") for n in "abc"]
    for t, event in zip((0.0, 2.0, 4.0), events):
        source.push(event)
        assert poll_at(listener, clock, t) == []
    assert poll_at(listener, clock, 4.0 + DEBOUNCE - 0.1) == []  # still inside the quiet period
    assert runs.submitted == []
    records = poll_at(listener, clock, 4.0 + DEBOUNCE)
    assert [r["outcome"] for r in records] == ["published"]
    assert runs.submitted == [("digits", [e.id for e in events])]
    assert poll_at(listener, clock, 100.0) == [] and len(runs.submitted) == 1


def test_max_wait_caps_how_long_a_steady_trickle_delays_the_run(setup):
    make, source, _, runs, clock = setup
    listener = make()
    sent = []
    t = 0.0
    while t < MAX_WAIT:  # a new event every 2 s: the debounce alone would never fire
        sent.append(created(f"datasets/digits/incoming/{t:.0f}.npz"))
        source.push(sent[-1])
        assert poll_at(listener, clock, t) == []
        t += 2.0
    sent.append(created("datasets/digits/incoming/last.npz"))
    source.push(sent[-1])
    assert len(poll_at(listener, clock, MAX_WAIT)) == 1  # first event + max_wait_s, though the last just came
    assert runs.submitted == [("digits", [e.id for e in sent])]


# ---- one run per model ----------------------------------------------------------------------------

def test_a_burst_for_two_models_makes_one_run_each_with_only_its_events(setup):
    make, source, _, runs, clock = setup
    listener = make()
    a, b = created(DIGITS_FILE), created(DIABETES_FILE)
    asked = request({"model": "digits", "reason": "drift"})
    source.push(a, b, asked)
    poll_at(listener, clock, 0.0)
    records = poll_at(listener, clock, DEBOUNCE)
    assert len(records) == 2
    assert sorted(runs.submitted) == [("diabetes", [b.id]), ("digits", [a.id, asked.id])]
    assert sorted(source.acked) == sorted([a.id, b.id, asked.id])


# ---- acknowledgement after the run is recorded ---------------------------------------------------

def test_events_are_acked_and_marked_only_after_the_run_is_recorded(setup):
    make, source, records, runs, clock = setup
    listener = make()
    marked_when_acked = {}
    plain_ack = source.ack

    def ack(received: ReceivedEvent) -> None:
        marked_when_acked[received.event.id] = records.is_processed(received.event.id)
        plain_ack(received)

    source.ack = ack
    a, b = created(DIGITS_FILE, "x"), created("datasets/digits/incoming/c.csv", "y")
    source.push(a, b)
    poll_at(listener, clock, 0.0)
    assert source.acked == [] and not records.is_processed(a.id)  # waiting in the burst: nothing acked
    poll_at(listener, clock, DEBOUNCE)
    assert runs.seen_at_wait == [([], [False, False])]  # while the run ran: no ack, no marker
    assert source.acked == [a.id, b.id] and source.in_flight == {}
    assert marked_when_acked == {a.id: True, b.id: True}  # the marker is written before the ack
    marker = records.store.get_bytes(Records._event_key(a.id))
    assert f'"run_id": "{next(iter(runs.ids_of))}"'.encode() in marker


# ---- dedupe ---------------------------------------------------------------------------------------

def test_a_redelivered_event_already_processed_is_acked_and_starts_nothing(setup):
    make, source, records, runs, clock = setup
    listener = make()
    a = created(DIGITS_FILE)
    records.mark_processed(a.id, "an-earlier-run")
    source.push(a)
    poll_at(listener, clock, 0.0)
    assert source.acked == [a.id]
    assert poll_at(listener, clock, 100.0) == [] and runs.submitted == []


def test_an_event_redelivered_while_waiting_in_the_burst_is_not_added_twice(setup):
    make, source, _, runs, clock = setup
    listener = make()
    a = created(DIGITS_FILE)
    source.push(a)
    poll_at(listener, clock, 0.0)
    source.redeliver()
    assert [r.event.id for r in source.queue] == [a.id]
    poll_at(listener, clock, 1.0)
    poll_at(listener, clock, 1.0 + DEBOUNCE)
    assert runs.submitted == [("digits", [a.id])]
    assert source.acked == [a.id]


def test_a_processed_event_redelivered_after_its_run_starts_nothing(setup):
    make, source, _, runs, clock = setup
    listener = make()
    a = created(DIGITS_FILE)
    source.push(a)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    source.push(a)  # e.g. an SQS message delivered twice
    poll_at(listener, clock, 50.0)
    poll_at(listener, clock, 100.0)
    assert len(runs.submitted) == 1 and source.acked == [a.id, a.id]


# ---- a lost run -----------------------------------------------------------------------------------

def test_a_lost_run_leaves_its_events_unacked_and_they_start_another_run(setup):
    make, source, records, runs, clock = setup
    listener = make()
    a = created(DIGITS_FILE)
    runs.outcomes = ["lost"]
    source.push(a)
    poll_at(listener, clock, 0.0)
    assert [r["outcome"] for r in poll_at(listener, clock, DEBOUNCE)] == ["lost"]
    assert source.acked == [] and not records.is_processed(a.id)
    assert a.id in source.in_flight
    source.redeliver()  # the visibility timeout / ack deadline expires
    poll_at(listener, clock, 60.0)
    assert [r["outcome"] for r in poll_at(listener, clock, 60.0 + DEBOUNCE)] == ["published"]
    assert runs.submitted == [("digits", [a.id]), ("digits", [a.id])]
    assert source.acked == [a.id] and records.is_processed(a.id)


def test_a_failed_run_still_acknowledges_its_events(setup):
    """Only 'lost' (no record) keeps events; a run that failed has its record and is not repeated."""
    make, source, records, runs, clock = setup
    listener = make()
    a = created(DIGITS_FILE)
    runs.outcomes = ["failed"]
    source.push(a)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    assert source.acked == [a.id] and records.is_processed(a.id)


def test_a_run_failed_on_an_away_server_runs_again_after_a_backoff_then_acks(setup):
    make, source, records, runs, clock = setup
    listener = make()
    listener.retry_backoff_s = 30.0
    a = created(DIGITS_FILE)
    runs.outcomes = ["away", "away"]
    source.push(a)
    poll_at(listener, clock, 0.0)
    assert [r["outcome"] for r in poll_at(listener, clock, DEBOUNCE)] == ["failed"]
    assert source.acked == [] and not records.is_processed(a.id) and records.claim_of(a.id) is None
    assert poll_at(listener, clock, DEBOUNCE + 29) == []  # not before the backoff
    assert [r["outcome"] for r in poll_at(listener, clock, DEBOUNCE + 30)] == ["failed"]
    assert poll_at(listener, clock, DEBOUNCE + 30 + 59) == []  # the backoff doubled
    assert [r["outcome"] for r in poll_at(listener, clock, DEBOUNCE + 30 + 60)] == ["published"]
    assert runs.submitted == [("digits", [a.id])] * 3
    assert source.acked == [a.id] and records.is_processed(a.id)


def test_retries_stop_at_the_last_attempt_and_the_failure_is_final(setup):
    make, source, records, runs, clock = setup
    listener = make()
    listener.retry_attempts, listener.retry_backoff_s = 2, 1.0
    a = created(DIGITS_FILE)
    runs.outcomes = ["away", "away", "published"]
    source.push(a)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    assert [r["outcome"] for r in poll_at(listener, clock, DEBOUNCE + 1)] == ["failed"]
    assert poll_at(listener, clock, DEBOUNCE + 100) == []
    assert len(runs.submitted) == 2 and source.acked == [a.id] and records.is_processed(a.id)


def test_an_event_redelivered_while_its_retry_waits_is_not_run_twice(setup):
    make, source, records, runs, clock = setup
    listener = make()
    listener.retry_backoff_s = 30.0
    a, b = created(DIGITS_FILE), created("datasets/digits/incoming/b.npz")
    runs.outcomes = ["away"]
    source.push(a)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    source.redeliver()  # a's visibility timeout expires while its retry waits
    source.push(b)  # and new data arrives for the same model
    poll_at(listener, clock, DEBOUNCE + 1)
    poll_at(listener, clock, DEBOUNCE + 1 + DEBOUNCE)  # b's burst is over: one run for b and the waiting a
    assert runs.submitted == [("digits", [a.id]), ("digits", [a.id, b.id])]
    assert poll_at(listener, clock, DEBOUNCE + 100) == []  # the retry went into that run
    assert sorted(source.acked) == sorted([a.id, b.id])


@pytest.mark.parametrize("exc, away", [
    (ConnectionRefusedError(111, "refused"), True),
    (TimeoutError("read timed out"), True),
    (RuntimeError("wrapped"), False),
    (ValueError("a broken file"), False),
])
def test_what_counts_as_a_server_being_away(exc, away):
    assert unreachable(exc) is away


def test_botocore_connection_errors_count_as_away_even_when_wrapped():
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        except Exception as inner:
            raise RuntimeError("publish failed") from inner
    except RuntimeError as outer:
        assert unreachable(outer)


# ---- events that ask for nothing ------------------------------------------------------------------

@pytest.mark.parametrize("event", [
    created("datasets/digits/accepted/a.npz"),
    created("datasets/digits/rejected/a.npz.report.json"),
    created("datasets/digits/incoming/.a.npz"),
    created("datasets/diabetes/incoming/b.npz"),  # digits' suffix, diabetes' prefix
    created("datasets/digits/incoming/a.txt"),
    created("datasets/cats/incoming/a.npz"),
    created("uploads/digits/incoming/a.npz"),
    created("datasets/digits/requests/.r.json"),
    request({"model": "cats", "reason": "drift"}),
], ids=["accepted", "report", "hidden", "wrong-suffix-for-model", "unknown-suffix", "unknown-model-prefix",
        "not-datasets", "hidden-request", "request-unknown-model"])
def test_events_that_ask_for_nothing_are_acked_and_start_nothing(setup, event):
    make, source, _, runs, clock = setup
    listener = make()
    source.push(event)
    poll_at(listener, clock, 0.0)
    assert source.acked == [event.id] and listener.pending == {}
    assert poll_at(listener, clock, 100.0) == [] and runs.submitted == []


def test_a_request_object_under_requests_starts_a_run(setup):
    make, source, _, runs, clock = setup
    listener = make()
    event = created("datasets/diabetes/requests/r1.json")
    source.push(event)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    assert runs.submitted == [("diabetes", [event.id])]


# ---- retrain requests without a model -------------------------------------------------------------

def test_a_request_without_a_model_goes_to_the_only_model(setup):
    make, source, _, runs, clock = setup
    listener = make({"digits": DIGITS})
    asked = request({"reason": "operator"})
    source.push(asked)
    poll_at(listener, clock, 0.0)
    poll_at(listener, clock, DEBOUNCE)
    assert runs.submitted == [("digits", [asked.id])] and source.acked == [asked.id]


def test_a_request_without_a_model_asks_for_nothing_with_two_models(setup):
    make, source, _, runs, clock = setup
    listener = make()
    asked = request({"reason": "operator"})
    source.push(asked)
    poll_at(listener, clock, 0.0)
    assert poll_at(listener, clock, 100.0) == [] and runs.submitted == []
    assert source.acked == [asked.id]


# ---- a listener killed in the middle of a run ---------------------------------------------------------

def killed_mid_run(setup) -> CloudEvent:
    """One event; a listener submits its run and is killed while it waits for it."""
    make, source, _, runs, clock = setup
    event = created(DIGITS_FILE)
    source.push(event)
    first = make()
    runs.dies_in_wait = True
    poll_at(first, clock, 0.0)
    with pytest.raises(Killed):
        poll_at(first, clock, DEBOUNCE)
    return event


def test_a_listener_killed_during_a_run_is_followed_by_the_next_one_not_run_twice(setup):
    make, source, records, runs, clock = setup
    event = killed_mid_run(setup)
    assert len(runs.submitted) == 1 and source.acked == []  # submitted, not acknowledged
    run_id = records.claim_of(event.id)

    source.redeliver()  # the queue hands the unacknowledged event to the restarted listener
    second = make()
    done = poll_at(second, clock, DEBOUNCE + 1)
    assert [r["run_id"] for r in done] == [run_id]  # it waited for the first listener's run
    assert len(runs.submitted) == 1  # and started none of its own
    assert source.acked == [event.id] and records.is_processed(event.id)
    assert records.claim_of(event.id) is None
    assert poll_at(second, clock, 100.0) == [] and len(runs.submitted) == 1


def test_a_claimed_run_that_was_lost_releases_its_events_for_a_new_run(setup):
    make, source, records, runs, clock = setup
    event = killed_mid_run(setup)
    source.redeliver()
    second = make()
    runs.outcomes = ["lost"]  # say the Ray cluster restarted under it
    assert [r["outcome"] for r in poll_at(second, clock, DEBOUNCE + 1)] == ["lost"]
    assert source.acked == [] and records.claim_of(event.id) is None
    source.redeliver()
    poll_at(second, clock, 2 * DEBOUNCE + 2)
    assert [r["outcome"] for r in poll_at(second, clock, 3 * DEBOUNCE + 3)] == ["published"]
    assert len(runs.submitted) == 2 and source.acked == [event.id]


def test_a_failed_submission_releases_the_claim(setup):
    make, source, records, runs, clock = setup
    event = created(DIGITS_FILE)
    source.push(event)
    listener = make()

    def refuse(model, events, run_id):
        raise ConnectionError("the Jobs API is away")

    listener.submit = refuse
    poll_at(listener, clock, 0.0)
    assert poll_at(listener, clock, DEBOUNCE) == []
    assert records.claim_of(event.id) is None and source.acked == []

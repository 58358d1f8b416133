"""The retraining listener: storage / Pub/Sub events in, one Ray Job per model per burst of events out.

Usage::

    rts listen                                            # the local folder source, what `make up` runs
    rts listen --source sqs --queue-url URL [--region R]
    rts listen --source pubsub --subscription projects/P/subscriptions/S

Semantics:

- at least once in, once acted on: an event is acknowledged only after the run it joined has
  been recorded; redelivered events whose id is already recorded are acknowledged and skipped;
- debounce: events that arrive within ``debounce_s`` of each other make one run per model
  (capped at ``max_wait_s`` from the first);
- a crashed listener loses nothing: unacknowledged events come back (SQS visibility timeout,
  Pub/Sub ack deadline, the local watcher re-lists the folder on start), and the run itself
  picks up every file in the model's ``incoming/``, not only the ones named in events;
- and starts nothing twice: before a run is submitted its events are claimed for it (the run id is
  chosen here, and Ray Jobs refuses a second submission with the same id). A listener that finds a
  redelivered event claimed by a run follows that run to its end instead of starting another, and
  acknowledges the event then; if the run was lost (never submitted, or its cluster went away), the
  claim is released and the event starts a new run;
- a run that failed because a server was away (the object store in the middle of a publish, Triton, the
  Jobs API: the record says ``retryable``) runs again for the same events after ``retry_backoff_s``
  (doubling), up to ``retry_attempts`` runs in all; its events stay unacknowledged until then. A run that
  failed for any other reason (a bug, a broken file) is final: its record says why.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from services.events.base import CloudEvent, EventSource, ReceivedEvent, open_source
from services.modelkit import ModelPackage
from services.modelkit.discovery import load_models
from services.registry.records import Records
from services.retraining.jobs import submit_run, wait_for_run
from services.retraining.requests import model_of, new_run_id
from services.settings import Settings
from services.storage import data_store

log = logging.getLogger("retraining.listener")

Submit = Callable[[str, list[CloudEvent], str], str]  # (model, events, run id) -> run id


@dataclass
class Retry:
    not_before: float  # the listener's clock
    attempt: int  # the attempt this will be
    batch: list[ReceivedEvent]

Wait = Callable[[str], dict]  # run id -> run record


class RetrainingListener:
    def __init__(self, source: EventSource, records: Records, models: Mapping[str, ModelPackage], *,
                 submit: Submit, wait: Wait, debounce_s: float = 3.0, max_wait_s: float = 30.0,
                 retry_attempts: int = 3, retry_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.records, self.models = source, records, models
        self.submit, self.wait = submit, wait
        self.debounce_s, self.max_wait_s = debounce_s, max_wait_s
        self.retry_attempts, self.retry_backoff_s = retry_attempts, retry_backoff_s
        self.retries: dict[str, Retry] = {}  # model -> the events of its run that failed on an away server
        self.clock = clock
        self.pending: dict[str, list[ReceivedEvent]] = {}
        self.following: dict[str, list[ReceivedEvent]] = {}  # run id -> its events, redelivered to us
        self.first_at = self.last_at = 0.0
        self.stopping = False

    def poll_once(self, receive_timeout_s: float = 1.0) -> list[dict]:
        """Receive what is there; start runs when a burst is over. Returns the records of runs it waited for."""
        for received in self.source.receive(max_events=100, timeout_s=receive_timeout_s):
            self._accept(received)
        records = self.follow_runs() if self.following else []
        records += self.run_retries()
        if not self.pending:
            return records
        now = self.clock()
        if now - self.last_at < self.debounce_s and now - self.first_at < self.max_wait_s:
            return records
        return records + self.run_pending()

    def _accept(self, received: ReceivedEvent) -> None:
        event = received.event
        model = model_of(event, self.models)
        if model is None:
            self.source.ack(received)  # not ours to act on: the run's own moves, reports, other prefixes
            return
        if self.records.is_processed(event.id):
            log.info("event %s was already acted on; acknowledging", event.id)
            self.source.ack(received)
            return
        run_id = self.records.claim_of(event.id)
        if run_id is not None:
            followed = self.following.setdefault(run_id, [])
            if all(r.event.id != event.id for r in followed):
                log.info("event %s belongs to run %s, started before this listener; following that run",
                         event.id, run_id)
            followed[:] = [r for r in followed if r.event.id != event.id] + [received]  # the newest delivery
            return
        retry = self.retries.get(model)
        for waiting in (self.pending.get(model, []), retry.batch if retry else []):
            for i, earlier in enumerate(waiting):
                if earlier.event.id == event.id:
                    # Redelivered while waiting in the burst or for a retry: keep the newest delivery, whose
                    # receipt handle / ack id is the one the queue still honours.
                    waiting[i] = received
                    return
        now = self.clock()
        if not self.pending:
            self.first_at = now
        self.pending.setdefault(model, []).append(received)
        self.last_at = now
        log.info("event %s %s for %s (%d pending)", event.type, event.data.get("key", ""), model,
                 sum(len(v) for v in self.pending.values()))

    def run_pending(self) -> list[dict]:
        batches, self.pending = self.pending, {}
        records = []
        for model, batch in batches.items():
            attempt = 1
            if model in self.retries:  # new events for a model with a retry waiting: one run for all of them
                retry = self.retries.pop(model)
                batch, attempt = retry.batch + batch, retry.attempt
            records += self._start(model, batch, attempt)
        return records

    def run_retries(self) -> list[dict]:
        """Run again what failed on an away server, once its backoff has passed."""
        records = []
        for model, retry in list(self.retries.items()):
            if self.clock() >= retry.not_before:
                del self.retries[model]
                records += self._start(model, retry.batch, retry.attempt)
        return records

    def _start(self, model: str, batch: list[ReceivedEvent], attempt: int) -> list[dict]:
        events = [r.event for r in batch]
        run_id = new_run_id()
        for received in batch:
            self.records.claim(received.event.id, run_id)
        try:
            self.submit(model, events, run_id)
        except Exception:  # the Jobs API is away, say: these events stay unacknowledged and come back
            log.exception("could not run %s for %d events; they stay unacknowledged", model, len(events))
            for received in batch:
                self.records.release(received.event.id)
            return []
        log.info("submitted run %s of %s for %d events%s", run_id, model, len(events),
                 f" (attempt {attempt} of {self.retry_attempts})" if attempt > 1 else "")
        return self._finish(run_id, batch, model, attempt)

    def follow_runs(self) -> list[dict]:
        """Wait for the runs an earlier listener started for events that came back to us."""
        following, self.following = self.following, {}
        records = []
        for run_id, batch in following.items():
            records += self._finish(run_id, batch, model_of(batch[0].event, self.models), 1)
        return records

    def _finish(self, run_id: str, batch: list[ReceivedEvent], model: str | None, attempt: int) -> list[dict]:
        try:
            record = self.wait(run_id)
        except Exception:  # the Jobs API is away: unacknowledged, the events come back and we follow again
            log.exception("could not follow run %s; its %d events stay unacknowledged", run_id, len(batch))
            return []
        log.info("run %s: %s %s", run_id, record.get("outcome"), record.get("reason") or "")
        if record.get("outcome") == "lost":
            # No record: do not acknowledge; the events come back and start another run.
            log.error("run %s left no record (%s); its events stay unacknowledged", run_id, record.get("reason"))
            for received in batch:
                self.records.release(received.event.id)
            return [record]
        if (record.get("outcome") == "failed" and record.get("retryable") and model is not None
                and attempt < self.retry_attempts):
            wait = self.retry_backoff_s * 2 ** (attempt - 1)
            log.warning("run %s of %s failed on a server that was away; running it again in %.0fs "
                        "(attempt %d of %d)", run_id, model, wait, attempt + 1, self.retry_attempts)
            for received in batch:
                self.records.release(received.event.id)
            self.retries[model] = Retry(self.clock() + wait, attempt + 1, batch)
            return [record]
        for received in batch:
            self.records.mark_processed(received.event.id, run_id)
            self.source.ack(received)
        return [record]

    def run_forever(self) -> None:
        try:
            while not self.stopping:
                self.poll_once()
        finally:
            self.source.close()


def listen(settings: Settings) -> None:
    """Run the listener of these settings until SIGINT or SIGTERM."""
    models = load_models(settings)
    store = data_store(settings)
    listener = RetrainingListener(
        open_source(settings), Records(store), models,
        submit=lambda model, events, run_id: submit_run(settings, model, events, run_id),
        wait=lambda run_id: wait_for_run(settings, run_id),
        debounce_s=settings.listener.debounce_s, max_wait_s=settings.listener.max_wait_s,
        retry_attempts=settings.listener.retry_attempts, retry_backoff_s=settings.listener.retry_backoff_s)

    def stop(signum, frame) -> None:
        listener.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening (%s) for new data of %s under %s/datasets/", settings.listener.source, sorted(models),
             settings.data_uri)
    listener.run_forever()

"""The retraining listener: storage / Pub/Sub events in, one Ray Job per burst of events out.

Usage::

    python -m services.retraining.listener --source local     # what `make up` runs
    python -m services.retraining.listener --source sqs --queue-url URL
    python -m services.retraining.listener --source pubsub --subscription projects/P/subscriptions/S

Semantics:

- at least once in, once acted on: an event is acknowledged only after the run it joined has
  been recorded; redelivered events whose id is already recorded are acknowledged and skipped;
- debounce: events that arrive within ``--debounce`` seconds of each other make one run
  (capped at ``--max-wait`` seconds from the first);
- a crashed listener loses nothing: unacknowledged events come back (SQS visibility timeout,
  Pub/Sub ack deadline, the local watcher re-lists the folder on start), and the run itself
  picks up every file in ``incoming/``, not only the ones named in events.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import Any, Callable

from services.common.settings import get_settings
from services.retraining.dataset import DATASET, INCOMING, REQUESTS, SUFFIXES
from services.retraining.jobs import submit_run, wait_for_run
from services.retraining.records import Records
from services.storage import open_store

log = logging.getLogger("retraining.listener")

OBJECT_CREATED = "rts.object.created"
RETRAIN_REQUESTED = "rts.retrain.requested"


def event_dict(received: Any) -> dict:
    event = getattr(received, "event", received)
    return event.model_dump(mode="json") if hasattr(event, "model_dump") else dict(event)


def triggers_retraining(event: dict) -> bool:
    if event.get("type") == RETRAIN_REQUESTED:
        return True
    if event.get("type") == OBJECT_CREATED:
        key = (event.get("data") or {}).get("key", "")
        name = key.rsplit("/", 1)[-1]
        if name.startswith("."):
            return False
        return (INCOMING in key and key.endswith(SUFFIXES)) or (REQUESTS in key and key.endswith(".json"))
    return False


class RetrainingListener:
    def __init__(self, source: Any, records: Records, *, debounce_s: float = 3.0, max_wait_s: float = 30.0,
                 submit: Callable[[list[dict]], str] = submit_run,
                 wait: Callable[[str], dict] = wait_for_run) -> None:
        self.source, self.records = source, records
        self.debounce_s, self.max_wait_s = debounce_s, max_wait_s
        self.submit, self.wait = submit, wait
        self.pending: list[Any] = []
        self.first_at = self.last_at = 0.0
        self.stopping = False

    def poll_once(self, receive_timeout_s: float = 1.0) -> dict | None:
        """Receive what is there; start a run when a burst is over. Returns the run record, if any."""
        for received in self.source.receive(max_events=100, timeout_s=receive_timeout_s):
            event = event_dict(received)
            if not triggers_retraining(event):
                self.source.ack(received)
                continue
            if self.records.is_processed(event["id"]):
                log.info("event %s was already acted on; acknowledging", event["id"])
                self.source.ack(received)
                continue
            if any(event_dict(p)["id"] == event["id"] for p in self.pending):
                continue  # redelivered while waiting in the burst
            now = time.monotonic()
            if not self.pending:
                self.first_at = now
            self.pending.append(received)
            self.last_at = now
            log.info("event %s %s (%d pending)", event["type"], (event.get("data") or {}).get("key", ""),
                     len(self.pending))
        if not self.pending:
            return None
        now = time.monotonic()
        if now - self.last_at < self.debounce_s and now - self.first_at < self.max_wait_s:
            return None
        return self.run_pending()

    def run_pending(self) -> dict:
        batch, self.pending = self.pending, []
        events = [event_dict(r) for r in batch]
        run_id = self.submit(events)
        log.info("submitted run %s for %d events", run_id, len(events))
        record = self.wait(run_id)
        log.info("run %s: %s %s", run_id, record.get("outcome"), record.get("reason") or "")
        if record.get("outcome") == "lost":
            # No record: do not acknowledge, the events come back and start another run.
            log.error("run %s left no record (%s); events stay unacknowledged", run_id, record.get("reason"))
            return record
        for received, event in zip(batch, events):
            self.records.mark_processed(event["id"], run_id)
            self.source.ack(received)
        return record

    def run_forever(self) -> None:
        while not self.stopping:
            self.poll_once()
        self.source.close()


def make_source(args: argparse.Namespace, settings) -> Any:
    if args.source == "local":
        from services.events.local import LocalFolderSource

        store = open_store(settings.data_uri)
        return LocalFolderSource(store.triton_repository_uri(), prefix=f"{DATASET}/")
    if args.source == "sqs":
        from services.events.sqs import SqsEventSource

        return SqsEventSource(args.queue_url)
    if args.source == "pubsub":
        from services.events.pubsub import PubSubEventSource

        return PubSubEventSource(args.subscription)
    raise SystemExit(f"unknown source {args.source}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description="retraining listener")
    parser.add_argument("--source", choices=["local", "sqs", "pubsub"], default="local")
    parser.add_argument("--queue-url")
    parser.add_argument("--subscription")
    parser.add_argument("--debounce", type=float, default=3.0)
    parser.add_argument("--max-wait", type=float, default=30.0)
    args = parser.parse_args(argv)
    settings = get_settings()
    listener = RetrainingListener(make_source(args, settings), Records(open_store(settings.data_uri)),
                                  debounce_s=args.debounce, max_wait_s=args.max_wait)

    def stop(signum, frame):
        listener.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening (%s) for new data under %s%s", args.source, settings.data_uri, f"/{INCOMING}")
    listener.run_forever()


if __name__ == "__main__":
    main()

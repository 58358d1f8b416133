"""``rts listen``: the retraining listener in the foreground (``make up`` starts one for the local folder)."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from services.cli.common import fail, settings
from services.events.base import SourceNotConfigured
from services.retraining.listener import listen as run_listener


def listen(
    source: Annotated[Optional[str], typer.Option(help="local | sqs | pubsub (RTS_LISTENER_SOURCE)")] = None,
    queue_url: Annotated[Optional[str], typer.Option(help="SQS queue URL, source sqs (RTS_LISTENER_QUEUE_URL)")] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region of the queue; default: from the URL or "
                                                  "AWS_DEFAULT_REGION (RTS_LISTENER_REGION)")] = None,
    subscription: Annotated[Optional[str], typer.Option(help="projects/P/subscriptions/S, source pubsub "
                                                        "(RTS_LISTENER_SUBSCRIPTION)")] = None,
    debounce: Annotated[Optional[float], typer.Option(help="seconds: events this close make one run "
                                                      "(RTS_LISTENER_DEBOUNCE_S)")] = None,
    max_wait: Annotated[Optional[float], typer.Option(help="seconds a burst may delay its run at most "
                                                      "(RTS_LISTENER_MAX_WAIT_S)")] = None,
):
    """Storage and Pub/Sub events in, one retraining run (a Ray Job) per model per burst out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    chosen = settings(listener={"source": source, "queue_url": queue_url, "region": region,
                                "subscription": subscription, "debounce_s": debounce, "max_wait_s": max_wait})
    try:
        run_listener(chosen)
    except SourceNotConfigured as exc:
        raise fail(str(exc)) from None

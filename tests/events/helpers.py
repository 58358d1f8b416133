"""Small helpers shared by the event source tests."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from opentelemetry.sdk.trace import TracerProvider

from services.events.base import EventSource, ReceivedEvent

# A provider of our own, not the global one: tests must not change process-wide tracing.
tracer = TracerProvider().get_tracer("tests.events")


@contextmanager
def producer_span(name: str = "upload") -> Iterator[str]:
    """An active span; yields the traceparent a consumer should see."""
    with tracer.start_as_current_span(name) as span:
        ctx = span.get_span_context()
        yield f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def receive_until(source: EventSource, want: Callable[[ReceivedEvent], bool], *, timeout_s: float,
                  count: int = 1) -> list[ReceivedEvent]:
    """Receive until `count` wanted events arrived (others are acked and dropped) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    got: list[ReceivedEvent] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(got)} of {count} expected events arrived within {timeout_s:.0f}s")
        for received in source.receive(max_events=10, timeout_s=min(remaining, 2.0)):
            if want(received):
                got.append(received)
            else:
                source.ack(received)
    return got

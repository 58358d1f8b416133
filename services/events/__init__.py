"""Event sources: storage notifications and retrain requests in, normalized CloudEvents out.

See ``services.events.base`` for the port; one module per source (local folder, SQS, Pub/Sub) and
``services.events.serverless`` for the Lambda / Cloud Functions entry points.
"""

from services.events.base import (OBJECT_CREATED, RETRAIN_REQUESTED, CloudEvent, EventSource, ReceivedEvent,
                                  object_created, retrain_requested)

__all__ = ["OBJECT_CREATED", "RETRAIN_REQUESTED", "CloudEvent", "EventSource", "ReceivedEvent",
           "object_created", "retrain_requested"]

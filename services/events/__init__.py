"""Event sources: storage notifications and retrain requests in, normalized CloudEvents out.

See ``services.events.base`` for the port and the registry of sources by name (``open_source``);
one module per source (local folder, SQS, Pub/Sub), and ``services.events.serverless`` for the
event shapes Lambda and Cloud Functions receive.
"""

from services.events.base import (OBJECT_CREATED, RETRAIN_REQUESTED, CloudEvent, EventSource, ReceivedEvent,
                                  SourceNotConfigured, object_created, open_source, register_source,
                                  retrain_requested)

__all__ = ["OBJECT_CREATED", "RETRAIN_REQUESTED", "CloudEvent", "EventSource", "ReceivedEvent",
           "SourceNotConfigured", "object_created", "open_source", "register_source", "retrain_requested"]

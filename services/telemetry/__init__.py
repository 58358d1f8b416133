"""Telemetry: one OpenTelemetry trace per request (gateway -> Triton), Prometheus metrics, data drift.

Modules, each usable on its own:

- ``tracing``: ``configure_tracing()`` from the standard OTEL_* variables, W3C context helpers,
  ``triton_trace_args()`` for tritonserver's OpenTelemetry mode;
- ``instrument``: the gateway's ASGI middleware (``ingress`` span, request metrics), ``stage()``
  (span + latency histogram) and ``add_metrics_route()``;
- ``metrics``: the ``rts_*`` metric families and one-line helpers (prometheus_client or ray.util.metrics);
- ``propagation``: W3C trace context through object metadata and message attributes (Getter/Setter pairs);
- ``drift``: ``ReferenceStats``, ``DriftMonitor``, ``DriftTrigger``, ``plot_drift`` (model-agnostic: a
  model package names the columns drift is watched on);
- ``otlp_receiver``: an in-memory OTLP/HTTP receiver (protobuf and JSON) for tests and local debugging.

Nothing is imported here, so importing one module never pulls in the others' dependencies.
"""

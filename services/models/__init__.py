"""Model packages: everything model-specific, one package per model (see services/modelkit).

The platform finds them through configuration (``RTS_MODELS``, default: every package here, in the
order below, then any other by name) and never imports one by name. The first is the default
model of ``POST /v1/predict``.
"""

ORDER = ("digits", "diabetes")

"""Peers of the gateway for ``make bench``: the same request, the same preprocessing and postprocessing
(the digits package's own functions, ``digits_io``), the same Triton ensemble ``digits``, served another way.

- ``kserve_peer``: KServe's ModelServer with a ``kserve.Model`` transformer; Triton over KServe's gRPC v2 client;
- ``bentoml_peer``: a BentoML 1.4 service with one tritonclient gRPC aio client;
- ``triton_peer``: Triton alone, pre and post as Python-backend models in an ensemble around ``digits``.

``launch`` makes each peer's venv (``.venv-peers/<peer>``, pinned by ``requirements-<peer>.txt``) and runs its
server; ``loadtests/bench_peers.py`` checks and measures them beside the gateway.
"""

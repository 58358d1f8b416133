"""BentoML peer: a BentoML 1.4 service with one tritonclient gRPC aio client, pre -> Triton -> post.

Runs in ``.venv-peers/bentoml`` (``launch.peer_python("bentoml")``)::

    PEER_TRITON_GRPC=127.0.0.1:8101 bentoml serve loadtests.peers.bentoml_peer:DigitsService \
        --host 127.0.0.1 --port 9002

``POST /predict`` with the gateway's body ``{"instances": [{"image_b64": ...}]}`` answers the gateway's
``{"predictions": [...]}``; the digits package's own preprocessing and postprocessing around the ensemble.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import tritonclient.grpc.aio as grpcclient

from loadtests.peers import digits_io


# One worker process, as the gateway runs one replica; no access log, as the gateway runs.
@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class DigitsService:
    def __init__(self) -> None:
        self.url = os.environ["PEER_TRITON_GRPC"]
        self._client: grpcclient.InferenceServerClient | None = None

    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:  # made on the serving event loop, where its channel lives
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    @bentoml.api
    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        rows = digits_io.features(instances)
        tensor = grpcclient.InferInput(digits_io.INPUT, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = await self.client().infer(digits_io.ENSEMBLE, [tensor],
                                           outputs=[grpcclient.InferRequestedOutput(digits_io.OUTPUT)])
        return {"predictions": digits_io.predictions(result.as_numpy(digits_io.OUTPUT))}

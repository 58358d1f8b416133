"""KServe peer: KServe's own ModelServer running a ``kserve.Model`` transformer in front of Triton.

Runs in ``.venv-peers/kserve`` (``launch.peer_python("kserve")``), with KServe's own flags::

    python -m loadtests.peers.kserve_peer --http_port 9001 --enable_grpc false --workers 1 \
        --enable_latency_logging false --predictor_host 127.0.0.1:8101 --predictor_protocol grpc-v2

``POST /v1/models/digits:predict`` with the gateway's body ``{"instances": [{"image_b64": ...}]}``:
``preprocess`` runs the digits package's preprocessing into a v2 ``InferRequest`` for the ensemble;
KServe's own ``Model.predict`` sends it to the bare Triton with its gRPC v2 client (Triton speaks the same
``inference.GRPCInferenceService``); ``postprocess`` turns the probabilities into the gateway's predictions.

KServe's REST server binds 0.0.0.0 with no option to change it (kserve/protocol/rest/server.py), so
``LoopbackRESTServer`` sets uvicorn's host to 127.0.0.1 before it starts; its gRPC server (``[::]``) is off.
Per-request log lines are off, as the gateway runs (they are not the work compared): the latency line by
KServe's flag, and, having no flag, uvicorn's access log, the timing middleware's ``kserve.trace`` lines and
FastAPI's deprecation warning about KServe's ORJSONResponse (printed on every request) by logging settings.
"""

from __future__ import annotations

import logging
import warnings

import kserve
from kserve import InferInput, InferRequest, InferResponse, model_server
from kserve.protocol.rest.server import RESTServer

from loadtests.peers import digits_io


class DigitsTransformer(kserve.Model):
    def __init__(self) -> None:
        super().__init__(digits_io.ENSEMBLE)  # forwarded to the Triton model of the same name
        self.ready = True

    def preprocess(self, payload: dict, headers: dict[str, str] | None = None) -> InferRequest:
        rows = digits_io.features(payload["instances"])
        tensor = InferInput(name=digits_io.INPUT, shape=list(rows.shape), datatype="FP32")
        tensor.set_data_from_numpy(rows)
        return InferRequest(model_name=self.name, infer_inputs=[tensor])

    def postprocess(self, response: InferResponse, headers: dict[str, str] | None = None) -> dict:
        output = next(o for o in response.outputs if o.name == digits_io.OUTPUT)
        return {"predictions": digits_io.predictions(output.as_numpy())}


class LoopbackRESTServer(RESTServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"
        access = logging.getLogger("uvicorn.access")  # what uvicorn's access_log=False does, after KServe's setup
        access.handlers, access.propagate = [], False


def main() -> None:
    model_server.RESTServer = LoopbackRESTServer
    server = kserve.ModelServer()  # configures KServe's logging
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server.start([DigitsTransformer()])


if __name__ == "__main__":
    main()

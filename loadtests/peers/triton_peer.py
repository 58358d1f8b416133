"""Triton alone: the digits preprocessing and postprocessing as Python-backend models around the ensemble.

``write_repository(folder)`` writes a small model repository of the bench's own (never into the product's
``triton_models/``), served by the same bundled tritonserver beside the product's repository::

    peer_pipeline (ensemble)   image BYTES [1] (a base64 image file, as the gateway's /v2 takes it)
      peer_preprocess          image -> pixels FP32 [64]       digits_io.features_from_files
      digits (the ensemble)    pixels -> probabilities [10]    the product's, unchanged
      peer_postprocess         probabilities -> label INT64 [1], confidence FP32 [1], probabilities FP32 [10]
                                                               digits_io.output_tensors (the gateway's /v2 outputs)

Called over Triton's HTTP/JSON (OIP): ``POST /v2/models/peer_pipeline/infer`` with
``{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": ["<base64 PNG>"]}]}``.

This file is also the Python-backend model itself: it is copied as ``model.py`` into both step models,
and ``parameters.step`` says which step a copy is (``pre`` or ``post``).
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np

PIPELINE, PRE, POST = "peer_pipeline", "peer_preprocess", "peer_postprocess"
# The steps wait as long for more requests as the product's ensemble members do (triton_models/digits_*/config.pbtxt,
# 0 since 2026-11-30): the same tuning on both sides (tests/unit/test_bench_peers.py checks they agree).
STEP_QUEUE_DELAY_US = 0
STEP_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 64
input [ {inputs} ]
output [ {outputs} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
parameters: {{ key: "step", value: {{ string_value: "{step}" }} }}
parameters: {{ key: "repo_root", value: {{ string_value: "{repo_root}" }} }}
"""
PIPELINE_CONFIG = """name: "{name}"
platform: "ensemble"
max_batch_size: 64
input [ {{ name: "image", data_type: TYPE_STRING, dims: [ 1 ] }} ]
output [ {outputs} ]
ensemble_scheduling {{
  step [
    {{ model_name: "{pre}", model_version: -1,
      input_map {{ key: "image", value: "image" }} output_map {{ key: "{input}", value: "features" }} }},
    {{ model_name: "{ensemble}", model_version: -1,
      input_map {{ key: "{input}", value: "features" }} output_map {{ key: "{output}", value: "scores" }} }},
    {{ model_name: "{post}", model_version: -1,
      input_map {{ key: "{output}", value: "scores" }}
      output_map {{ key: "label", value: "label" }} output_map {{ key: "confidence", value: "confidence" }}
      output_map {{ key: "probabilities", value: "probabilities" }} }}
  ]
}}
"""
OUTPUTS = ('{ name: "label", data_type: TYPE_INT64, dims: [ 1 ] }, '
           '{ name: "confidence", data_type: TYPE_FP32, dims: [ 1 ] }, '
           '{ name: "probabilities", data_type: TYPE_FP32, dims: [ 10 ] }')


def write_repository(folder: Path, repo_root: Path, *, ensemble: str = "digits", input_name: str = "pixels",
                     output_name: str = "probabilities") -> Path:
    """The three peer models in ``folder`` (made anew); returns it. ``ensemble`` must be served beside them."""
    shutil.rmtree(folder, ignore_errors=True)
    steps = {
        PRE: ("pre", '{ name: "image", data_type: TYPE_STRING, dims: [ 1 ] }',
              f'{{ name: "{input_name}", data_type: TYPE_FP32, dims: [ 64 ] }}'),
        POST: ("post", f'{{ name: "{output_name}", data_type: TYPE_FP32, dims: [ 10 ] }}', OUTPUTS),
    }
    for name, (step, inputs, outputs) in steps.items():
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "config.pbtxt").write_text(STEP_CONFIG.format(
            name=name, inputs=inputs, outputs=outputs, step=step, repo_root=repo_root, delay=STEP_QUEUE_DELAY_US))
        shutil.copy(__file__, folder / name / "1" / "model.py")
    (folder / PIPELINE / "1").mkdir(parents=True)
    (folder / PIPELINE / "config.pbtxt").write_text(PIPELINE_CONFIG.format(
        name=PIPELINE, outputs=OUTPUTS, pre=PRE, post=POST, ensemble=ensemble, input=input_name, output=output_name))
    return folder


def request_body(image_b64: str) -> bytes:
    """The OIP JSON request of one image for ``peer_pipeline``."""
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                   "data": [image_b64]}]}).encode()


class TritonPythonModel:
    """One step of ``peer_pipeline`` inside Triton's Python backend (``parameters.step``: pre or post)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params["repo_root"] not in sys.path:
            sys.path.insert(0, params["repo_root"])
        from loadtests.peers import digits_io

        self.io, self.step = digits_io, params["step"]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:  # dynamic batching hands over several; each gets its own answer
            try:
                if self.step == "pre":
                    images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
                    rows = self.io.features_from_files([base64.b64decode(v) for v in images])
                    tensors = [pb_utils.Tensor(self.io.INPUT, rows)]
                else:
                    scores = pb_utils.get_input_tensor_by_name(request, self.io.OUTPUT).as_numpy()
                    out = self.io.output_tensors(scores)
                    tensors = [pb_utils.Tensor("label", np.asarray(out["label"], np.int64).reshape(-1, 1)),
                               pb_utils.Tensor("confidence", np.asarray(out["confidence"], np.float32).reshape(-1, 1)),
                               pb_utils.Tensor("probabilities", np.asarray(out["probabilities"], np.float32))]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # a bad image is this request's error, not the model's end
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

"""The bench's peers without their servers: Triton alone's Python-backend steps run here on the trained
ensemble and must answer as the gateway's own pre/post do; the bodies, answer readers and table of the runner."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from loadtests import bench_peers
from loadtests.bench import CpuMeter, Measurement, holdout_png
from loadtests.bench_peers import (Peer, check, floor_answer, json_body, oip_answer, oip_image_body,
                                   predictions_answer, summary_table)
from loadtests.peers import digits_io, triton_peer
from services.settings import REPO_ROOT
from services.triton.config import ModelConfig, parse_config


def test_the_io_names_are_the_ensembles():
    family = digits_io.DIGITS.family
    assert (digits_io.ENSEMBLE, digits_io.INPUT, digits_io.OUTPUT) == (
        family.ensemble, family.config.inputs[0].name, family.config.outputs[0].name)


def test_triton_alone_steps_are_tuned_as_the_products_ensemble_members(tmp_path):
    """Both sides of the comparison wait as long for more requests: a peer step tuned otherwise would move the c=1
    and c=32 columns by itself (100 us vs 0 moved them 0.3 ms and 5% here)."""
    repository = triton_peer.write_repository(tmp_path / "peer", REPO_ROOT)
    members = [REPO_ROOT / "triton_models" / step.model_name / "config.pbtxt"
               for step in parse_config((REPO_ROOT / "triton_models" / "digits" / "config.pbtxt").read_text())
               .ensemble_scheduling.step]
    delays = {parse_config(p.read_text()).dynamic_batching.max_queue_delay_microseconds for p in members}
    steps = {parse_config((repository / name / "config.pbtxt").read_text()).dynamic_batching.max_queue_delay_microseconds
             for name in (triton_peer.PRE, triton_peer.POST)}
    assert len(members) >= 2 and delays == steps == {triton_peer.STEP_QUEUE_DELAY_US}


def fake_pb_utils() -> types.ModuleType:
    """The part of Triton's ``triton_python_backend_utils`` the peer's steps use."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.tensors, self.error = {t.name: t.array for t in output_tensors}, error

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, RuntimeError
    pb.get_input_tensor_by_name = lambda request, name: Tensor(name, request[name])
    return pb


def step_model(repository, name: str):
    """The generated model.py of one step, loaded as Triton's Python backend loads it, and initialized."""
    spec = importlib.util.spec_from_file_location(f"peer_{name}", repository / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (repository / name / "config.pbtxt").read_text()
    model = module.TritonPythonModel()  # Triton hands the config over as JSON with the proto's field names
    model.initialize({"model_config": json.dumps(MessageToDict(parse_config(text), preserving_proto_field_name=True))})
    return model, ModelConfig.read(repository / name / "config.pbtxt")


def test_triton_alone_answers_as_the_gateway(digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    repository = triton_peer.write_repository(tmp_path / "peer-models", REPO_ROOT)
    pipeline = ModelConfig.read(repository / triton_peer.PIPELINE / "config.pbtxt")
    assert pipeline.is_ensemble and [t.name for t in pipeline.inputs] == ["image"]
    assert [t.name for t in pipeline.outputs] == ["label", "confidence", "probabilities"]
    assert f'model_name: "{digits_io.ENSEMBLE}"' in (repository / triton_peer.PIPELINE / "config.pbtxt").read_text()
    pre, pre_config = step_model(repository, triton_peer.PRE)
    post, post_config = step_model(repository, triton_peer.POST)
    assert [t.name for t in pre_config.outputs] == [digits_io.INPUT]
    assert [t.name for t in post_config.inputs] == [digits_io.OUTPUT]

    pngs = [holdout_png(i) for i in range(4)]
    images = np.array([[base64.b64encode(p)] for p in pngs], dtype=object)  # [N, 1] BYTES, as Triton hands it
    (features,) = pre.execute([{"image": images}])
    rows = features.tensors[digits_io.INPUT]
    package = digits.package
    gateway_rows = package.preprocess([package.Instance(image_b64=base64.b64encode(p).decode()) for p in pngs])
    np.testing.assert_array_equal(rows, gateway_rows)

    scores = digits.scores(rows)
    (answer,) = post.execute([{digits_io.OUTPUT: scores}])
    gateway = package.postprocess({digits_io.OUTPUT: scores}, package.Options())
    assert answer.error is None
    assert answer.tensors["label"].reshape(-1).tolist() == [p["label"] for p in gateway]
    np.testing.assert_allclose(answer.tensors["confidence"].reshape(-1), [p["confidence"] for p in gateway],
                               atol=1e-6)

    (bad,) = pre.execute([{"image": np.array([[b"bm90IGFuIGltYWdl"]], dtype=object)}])  # "not an image"
    assert bad.error is not None and not bad.tensors


def test_every_body_carries_the_same_image():
    png = holdout_png()
    b64 = base64.b64encode(png).decode()
    body, ctype = json_body(png)
    assert ctype == "application/json" and json.loads(body) == {"instances": [{"image_b64": b64}]}
    oip = json.loads(oip_image_body(png)[0])
    assert oip["inputs"][0]["data"] == [b64] and oip["inputs"][0]["datatype"] == "BYTES"


def test_the_answer_readers_agree():
    scores = np.array([[0.01, 0.02, 0.6, 0.05, 0.02, 0.1, 0.05, 0.05, 0.05, 0.05]], dtype=np.float32)
    tensors = digits_io.output_tensors(scores)
    oip = {"outputs": [{"name": k, "data": np.asarray(v).reshape(-1).tolist()} for k, v in tensors.items()]}
    answers = [predictions_answer({"predictions": digits_io.predictions(scores)}), oip_answer(oip),
               floor_answer({"outputs": [{"name": "probabilities", "data": scores[0].tolist()}]})]
    for got in answers:
        assert got[0][0] == 2 and got[0][1] == pytest.approx(0.6, abs=1e-4)


def test_the_summary_has_one_row_per_target():
    def m(target, c, rps, cpu):
        return Measurement(target, c, rps=rps, p50_ms=1000 * c / rps, p90_ms=0, p99_ms=0, requests=100, errors=0,
                           server_cpu_ms_per_req=cpu)

    results = [m(t, c, rps, cpu) for t, rps, cpu in (("gateway-fused", 500, 2.0), ("kserve", 250, 3.5))
               for c in (1, 8, 32)]
    table = summary_table(results, [1, 8, 32], ["gateway-fused", "kserve", "bentoml"])
    lines = table.splitlines()
    assert lines[0] == ("| target | c=1 p50 ms | c=8 p50 ms | c=8 req/s | c=32 p50 ms | c=32 req/s "
                        "| server CPU ms/req at c=32 | req/s vs gateway at c=32 | errors |")
    assert len(lines) == 4  # bentoml has no measurement: no row
    assert lines[3] == "| kserve | 4.00 | 32.00 | 250 | 128.00 | 250 | 3.50 | 0.50x | 0 |"


def test_a_target_that_answers_differently_is_refused(monkeypatch):
    answers = iter([{"predictions": [{"label": 3, "confidence": 0.9}]},
                    {"predictions": [{"label": 5, "confidence": 0.9}]}])

    class Response:
        def __init__(self):
            self.body = next(answers)

        def raise_for_status(self):
            pass

        def json(self):
            return self.body

    monkeypatch.setattr(bench_peers.httpx, "post", lambda *a, **kw: Response())
    peer = Peer("kserve", "http://127.0.0.1:1/predict", "json", predictions_answer, CpuMeter())
    reference = [[(3, 0.9)], [(3, 0.9)]]
    assert check(peer, reference, [holdout_png(0), holdout_png(1)]) == \
        "digit 1: answered [(5, 0.9)], the gateway [(3, 0.9)]"

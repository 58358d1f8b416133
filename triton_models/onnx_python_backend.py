"""Triton Python-backend model that runs the version folder's ONNX file with onnxruntime.

Copied as ``<model>/<version>/model.py`` beside ``model.onnx`` for every member whose CPU
``config.pbtxt`` says ``backend: "python"`` (the pytriton build of tritonserver has no onnxruntime
backend). Tensor names and dtypes come from config.pbtxt; the ONNX graph must use the same names.
On a GPU Triton, configs/gpu.pbtxt serves the same model.onnx with ``platform: "onnxruntime_onnx"``.

Parameters (config.pbtxt ``parameters``): ``onnx_file`` (default model.onnx), ``intra_op_threads``.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = set(self.input_names) - graph_inputs
        if missing:
            raise pb_utils.TritonModelException(f"{path} has no inputs named {sorted(missing)}")

    def execute(self, requests):
        # Dynamic batching hands over several requests: run them as one onnxruntime call.
        columns = {name: [] for name in self.input_names}
        sizes = []
        for request in requests:
            for name in self.input_names:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(columns[self.input_names[0]][-1].shape[0])
        feed = {name: np.concatenate(parts).astype(np.float32, copy=False) for name, parts in columns.items()}
        try:
            results = self.session.run([name for name, _ in self.outputs], feed)
        except Exception as exc:  # one bad batch must not take the model down
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]).astype(dtype, copy=False))
                for (name, dtype), result in zip(self.outputs, results)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

"""A Triton ensemble run in this process with onnxruntime, from the ONNX bytes Triton will serve.

Usage::

    runner = OnnxEnsemble(family, {"churn_linear": b"...", "churn_gbm": b"...", "churn_combine": b"..."})
    outputs = runner.run({"features": rows})           # {"probabilities": array}

Gates evaluate a candidate through this, and publishing checks that Triton answers the same: what
passes the gates is byte for byte what serves. The steps come from the ensemble's config.pbtxt.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from services.triton.config import EnsembleFamily

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
         "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class OnnxEnsemble:
    def __init__(self, family: EnsembleFamily, onnx_files: dict[str, bytes]) -> None:
        missing = set(family.members) - set(onnx_files)
        if missing:
            raise ValueError(f"no ONNX file for ensemble members {sorted(missing)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.family = family
        self.sessions = {m: ort.InferenceSession(onnx_files[m], options, providers=["CPUExecutionProvider"])
                         for m in family.members}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ensemble's outputs for a batch of its inputs (named as in its config.pbtxt)."""
        return run_steps(self.family, inputs, lambda member, feed, wanted: self.sessions[member].run(wanted, feed))

    def primary(self, inputs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's first output (class scores, or predicted values); an array feeds its only input."""
        return self.run(as_inputs(self.family, inputs))[self.family.config.outputs[0].name]


def as_inputs(family: EnsembleFamily, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name the rows for the ensemble's inputs: an array is its only input (most models have one)."""
    if isinstance(inputs, dict):
        return inputs
    if len(family.config.inputs) != 1:
        raise ValueError(f"ensemble {family.ensemble} has inputs {[t.name for t in family.config.inputs]}; "
                         "pass them by name")
    return {family.config.inputs[0].name: inputs}


def run_steps(family: EnsembleFamily, inputs: dict[str, np.ndarray],
              call: Callable[[str, dict[str, np.ndarray], list[str]], Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """Run the ensemble's steps in dependency order, each through `call(member, feed, wanted_outputs)`.

    The same walk runs the members on onnxruntime here and on Triton when publishing checks a new
    version member by member (``services.registry``).
    """
    config = family.config
    tensors = {}
    for tensor in config.inputs:
        if tensor.name not in inputs:
            raise KeyError(f"ensemble {config.name} needs input {tensor.name!r}")
        tensors[tensor.name] = np.ascontiguousarray(inputs[tensor.name], dtype=NUMPY[tensor.datatype])
    pending = list(config.steps)
    while pending:
        ready = [s for s in pending if all(v in tensors for v in s.input_map.values())]
        if not ready:
            raise ValueError(f"ensemble {config.name}: steps {[s.model_name for s in pending]} wait for tensors "
                             "no step produces")
        for step in ready:
            member = family.member_configs[step.model_name]
            feed = {name: np.ascontiguousarray(tensors[source], dtype=NUMPY[member.input(name).datatype])
                    for name, source in step.input_map.items()}
            wanted = list(step.output_map)
            for name, value in zip(wanted, call(step.model_name, feed, wanted)):
                tensors[step.output_map[name]] = value
            pending.remove(step)
    return {t.name: tensors[t.name] for t in config.outputs}

"""ONNX helpers for a package's ``export``: the averaging combiner and naming tensors as config.pbtxt does.

Usage::

    onx = to_onnx(regressor, initial_types=[(inp.name, FloatTensorType([None, *inp.dims]))])
    rename_output(onx, "variable", config.outputs[0].name)      # skl2onnx's name -> the config's
    files = export_ensemble(trained, family, member_onnx)       # + the mean combiner nobody trains
"""

from __future__ import annotations

from typing import Any, Callable

import onnx
from onnx import TensorProto, helper

from services.triton.config import EnsembleFamily, ModelConfig

OPSET = 17
IR_VERSION = 8  # opset 17's IR (ONNX 1.12): onnx stamps its newest, and older onnxruntimes refuse it


def rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename graph output `old` (and the node output producing it) to `new`, in place."""
    if old == new:
        return
    if old not in {o.name for o in model.graph.output}:
        raise KeyError(f"the graph has no output {old!r}; it has {[o.name for o in model.graph.output]}")
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    for output in model.graph.output:
        if output.name == old:
            output.name = new


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Serve only these graph outputs (converters add others, e.g. a classifier's labels), in place."""
    keep = [o for o in model.graph.output if o.name in names]
    missing = set(names) - {o.name for o in keep}
    if missing:
        raise KeyError(f"the graph has no outputs {sorted(missing)}; it has {[o.name for o in model.graph.output]}")
    del model.graph.output[:]
    model.graph.output.extend(keep)


def mean_combiner_onnx(config: ModelConfig) -> bytes:
    """ONNX graph averaging its inputs (members' scores or values, same shape) into its one output."""
    (out,) = config.outputs
    ins = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, [None, *t.dims]) for t in config.inputs]
    output = helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [None, *out.dims])
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [], [1.0 / len(ins)])
    nodes = [helper.make_node("Sum", [i.name for i in ins], ["total"]),
             helper.make_node("Mul", ["total", "weight"], [out.name])]
    model = helper.make_model(helper.make_graph(nodes, config.name, ins, [output], initializer=[weight]),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_ensemble(trained: dict[str, Any], family: EnsembleFamily,
                    convert: Callable[[Any, ModelConfig], bytes]) -> dict[str, bytes]:
    """ONNX bytes for every member of the ensemble: each trained model through `convert` (with its member's
    config), and the averaging combiner for each member nobody trains."""
    unknown = set(trained) - set(family.members)
    if unknown:
        raise KeyError(f"trained models {sorted(unknown)} are not members of {family.ensemble} {list(family.members)}")
    return {name: convert(trained[name], family.member_configs[name]) if name in trained
            else mean_combiner_onnx(family.member_configs[name]) for name in family.members}

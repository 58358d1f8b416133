"""Open Inference Protocol (KServe v2) request/response codec, with Triton's binary tensor extension.

The gateway exposes each served model as an OIP model whose inputs are what users send and whose
outputs are the postprocessed results, both declared by the model package (``oip_inputs``,
``oip_input_sets``, task outputs): for an image classifier ``image`` (BYTES, one encoded file per
element) or ``pixels``, answered with ``label``, ``confidence``, ``probabilities``; for a tabular
regressor one FP32 tensor per named column, answered with ``value``. The stock
``tritonclient.http`` client works against it with its defaults (binary inputs and outputs).

Binary extension: header ``Inference-Header-Content-Length: N`` says the first N bytes of the
body are the JSON header; each binary tensor follows in order, its size in
``parameters.binary_data_size``. BYTES elements are a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.errors import InvalidInput
from services.modelkit import ModelPackage, TensorSpec

HEADER_LENGTH = "inference-header-content-length"
MAX_DIM = 2**31 - 1  # one dimension of a tensor's shape
NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


@dataclass
class OipRequest:
    id: str | None
    inputs: list[Any]  # what the package's preprocess takes, one per row
    outputs: dict[str, bool]  # name -> send as binary
    parameters: dict[str, Any] = field(default_factory=dict)


def _shape(spec: TensorSpec) -> list[int]:
    return [-1, *spec.shape]


def model_metadata(package: ModelPackage, versions: list[str]) -> dict:
    return {
        "name": package.name,
        "versions": versions,
        "platform": "raytriton_pipeline",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": _shape(t)} for t in package.oip_inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": _shape(t)} for t in package.outputs],
    }


def parse_request(body: bytes, header_length: str | None, package: ModelPackage, max_items: int) -> OipRequest:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length must be an integer", code="bad_header") from None
        if n < 0 or n > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes",
                               code="bad_header")
        header_bytes, binary = body[:n], memoryview(body)[n:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the inference request header is not valid JSON: {exc}", code="bad_json") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the parser goes
        raise InvalidInput("the inference request header nests too deep", code="bad_json") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object", code="bad_json")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors", code="empty_batch")
    tensors: dict[str, Any] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise InvalidInput("each input must be an object with name, datatype, shape", code="bad_tensor")
        data, offset = _tensor_values(tensor, binary, offset)
        if tensor["name"] in tensors:
            raise InvalidInput(f"input {tensor['name']!r} is sent twice", code="wrong_inputs")
        tensors[tensor["name"]] = (tensor, data)
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} binary bytes no input accounts for",
                           code="bad_binary")
    rows = _check_inputs(tensors, package, max_items)
    params = _parameters(header, "the request")
    all_binary = bool(params.get("binary_data_output", False))
    names = [t.name for t in package.outputs]
    requested = header.get("outputs")
    outputs: dict[str, bool] = {}
    if requested:
        if not isinstance(requested, list):
            raise InvalidInput("'outputs' must be a list", code="bad_outputs")
        for out in requested:
            name = out.get("name") if isinstance(out, dict) else None
            if name not in names:
                raise InvalidInput(f"unknown output {name!r}; outputs are {names}", code="unknown_output")
            outputs[name] = bool(_parameters(out, f"output {name!r}").get("binary_data", all_binary))
    else:
        outputs = {name: all_binary for name in names}
    request_id = header.get("id")
    return OipRequest(id=str(request_id) if request_id is not None else None, inputs=rows, outputs=outputs,
                      parameters=params)


def _tensor_values(tensor: dict, binary: memoryview, offset: int) -> tuple[Any, int]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise InvalidInput("input tensor has no 'name'", code="bad_tensor")
    if datatype not in NUMERIC and datatype != "BYTES":
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}", code="wrong_datatype")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers", code="wrong_shape")
    count = math.prod(shape)  # exact: numpy's product wraps around past 2**63
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the end of the body",
                               code="bad_binary")
        raw = bytes(binary[offset : offset + size])
        offset += size
        if datatype == "BYTES":
            values = _unpack_bytes(raw, name)
            if len(values) != count:
                raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, got {len(values)}",
                                   code="wrong_shape")
            return values, offset
        dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise InvalidInput(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                               f"got {size}", code="wrong_shape")
        return np.frombuffer(raw, dtype=dtype).reshape(shape), offset
    if "data" not in tensor:
        raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size", code="bad_tensor")
    flat = _flatten(tensor["data"])
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, got {len(flat)}",
                           code="wrong_shape")
    if datatype == "BYTES":
        return flat, offset
    # JSON numbers only: true/false are BOOL's values, and "0.5" is text, whatever numpy would make of them.
    wanted = bool if datatype == "BOOL" else (int, float)
    if not all(isinstance(v, wanted) and (datatype == "BOOL" or not isinstance(v, bool)) for v in flat):
        raise InvalidInput(f"input {name!r}: data are not all {datatype} values", code="wrong_datatype")
    try:
        return np.asarray(flat, dtype=NUMERIC[datatype]).reshape(shape), offset
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"input {name!r}: data are not all {datatype} values", code="wrong_datatype") from None


def _check_inputs(tensors: dict[str, tuple[dict, Any]], package: ModelPackage, max_items: int) -> list[Any]:
    """Check the tensors against the package's declared inputs; hand it the values it turns into rows."""
    specs = {t.name: t for t in package.oip_inputs}
    unknown = [name for name in tensors if name not in specs]
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}; model {package.name!r} takes "
                           f"{' or '.join(_describe_set(s) for s in package.input_sets)}", code="unknown_input")
    given = frozenset(tensors)
    if given not in package.input_sets:
        raise InvalidInput(f"model {package.name!r} takes {' or '.join(_describe_set(s) for s in package.input_sets)}; "
                           f"got {sorted(given)}", code="wrong_inputs")
    batch = None
    values: dict[str, Any] = {}
    for name, (tensor, data) in tensors.items():
        spec, datatype, shape = specs[name], tensor["datatype"], tensor["shape"]
        if datatype not in spec.accepted_datatypes:
            raise InvalidInput(f"input {name!r} must be {' or '.join(spec.accepted_datatypes)}, not {datatype}",
                               code="wrong_datatype")
        row_shapes = [list(spec.shape), *(list(s) for s in spec.alternative_shapes)]
        if datatype != "BYTES" and list(spec.shape) == []:
            row_shapes.append([1])  # one value per row, as [N] or [N, 1]
        if list(shape[1:]) not in row_shapes:
            wanted = " or ".join(str([-1, *s]).replace("-1", "N") for s in row_shapes)
            raise InvalidInput(f"input {name!r} must have shape {wanted}, got {shape}", code="wrong_shape")
        if shape[0] == 0:
            raise InvalidInput("the batch is empty: the first dimension of the input is 0", code="empty_batch")
        if shape[0] > max_items:
            raise InvalidInput(f"the batch has {shape[0]} items; the limit is {max_items}", status=413,
                               code="too_many_items")
        if batch is not None and shape[0] != batch:
            raise InvalidInput(f"inputs have different batch sizes ({batch} and {shape[0]} for {name!r})",
                               code="wrong_shape")
        batch = shape[0]
        if datatype == "BYTES":
            values[name] = [_bytes_value(v, name) for v in data]
        else:
            array = np.asarray(data)
            values[name] = array.reshape(shape[0]) if not spec.shape else array.reshape(shape)
    return package.from_tensors(values)


def _describe_set(names: frozenset[str]) -> str:
    return "'" + "' + '".join(sorted(names)) + "'"


def encode_response(package: ModelPackage, version: str, request: OipRequest,
                    tensors: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    specs = {t.name: t for t in package.outputs}
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        spec, value = specs[name], tensors[name]
        n = len(value)
        entry: dict[str, Any] = {"name": name, "datatype": spec.datatype, "shape": [n, *spec.shape]}
        if binary:
            blob = _pack_bytes(value) if spec.datatype == "BYTES" else np.ascontiguousarray(value).astype(
                np.dtype(NUMERIC[spec.datatype]).newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = ([v.decode() for v in value] if spec.datatype == "BYTES"
                             else np.asarray(value).reshape(-1).tolist())
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": package.name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        header["id"] = request.id
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, {"content-type": "application/json"}
    return header_bytes + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header_bytes)),
    }


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' of {where} must be an object", code="bad_parameters")
    return params


def _flatten(data: Any) -> list:
    """The values of nested lists, row-major; iterative, so no nesting depth can exhaust the stack."""
    if not isinstance(data, list):
        raise InvalidInput("tensor 'data' must be a list", code="bad_tensor")
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    values, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: truncated BYTES element length", code="bad_binary")
        (length,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + length > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element runs past the end of the tensor", code="bad_binary")
        values.append(raw[i : i + length])
        i += length
    return values


def _pack_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _bytes_value(value: Any, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # JSON BYTES: files travel base64-encoded
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"JSON {name!r} elements must be base64-encoded", code="bad_base64") from None
    raise InvalidInput(f"{name!r} elements must be base64 strings or binary BYTES", code="wrong_datatype")

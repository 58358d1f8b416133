"""Open Inference Protocol (KServe v2) request/response codec, with Triton's binary tensor extension.

The gateway exposes each served model as an OIP model whose inputs are what users send
(``image``: BYTES, one encoded image file per element; or the model's raw array input, e.g.
``pixels``: numbers shaped ``[N, 8, 8]`` or ``[N, 64]``), and whose outputs are the postprocessed
results (``label``, ``confidence``, ``probabilities``). The stock ``tritonclient.http`` client
works against it with its defaults (binary inputs and outputs).

Binary extension: header ``Inference-Header-Content-Length: N`` says the first N bytes of the
body are the JSON header; each binary tensor follows in order, its size in
``parameters.binary_data_size``. BYTES elements are a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import InvalidInput
from services.models.base import ModelSpec
from services.pipeline.stages import Item

HEADER_LENGTH = "inference-header-content-length"
NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
ARRAY_DATATYPES = ("FP32", "FP64", "FP16", "UINT8", "INT32", "INT64")
OUTPUTS = ("label", "confidence", "probabilities")


@dataclass
class OipRequest:
    id: str | None
    items: list[Item]
    outputs: dict[str, bool]  # name -> send as binary
    parameters: dict[str, Any] = field(default_factory=dict)


def model_metadata(spec: ModelSpec, versions: list[str]) -> dict:
    preprocess_shape = [-1, *_array_shape(spec)]
    return {
        "name": spec.name,
        "versions": versions,
        "platform": "raytriton_pipeline",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": _array_input(spec), "datatype": "FP32", "shape": preprocess_shape},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64" if _int_labels(spec) else "BYTES", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(spec.labels)]},
        ],
    }


def parse_request(body: bytes, header_length: str | None, spec: ModelSpec, max_items: int) -> OipRequest:
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
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object", code="bad_json")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors", code="empty_batch")
    if len(inputs) != 1:
        raise InvalidInput(f"send exactly one input tensor ('image' or '{_array_input(spec)}'), got {len(inputs)}",
                           code="wrong_inputs")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object with name, datatype, shape", code="bad_tensor")
    offset = 0
    data, offset = _tensor_values(tensor, binary, offset)
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} binary bytes no input accounts for",
                           code="bad_binary")
    items = _items(tensor, data, spec, max_items)
    params = header.get("parameters") or {}
    all_binary = bool(params.get("binary_data_output", False))
    requested = header.get("outputs")
    outputs: dict[str, bool] = {}
    if requested:
        if not isinstance(requested, list):
            raise InvalidInput("'outputs' must be a list", code="bad_outputs")
        for out in requested:
            name = out.get("name") if isinstance(out, dict) else None
            if name not in OUTPUTS:
                raise InvalidInput(f"unknown output {name!r}; outputs are {list(OUTPUTS)}", code="unknown_output")
            outputs[name] = bool((out.get("parameters") or {}).get("binary_data", all_binary))
    else:
        outputs = {name: all_binary for name in OUTPUTS}
    request_id = header.get("id")
    return OipRequest(id=str(request_id) if request_id is not None else None, items=items, outputs=outputs,
                      parameters=params)


def _tensor_values(tensor: dict, binary: memoryview, offset: int) -> tuple[Any, int]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise InvalidInput("input tensor has no 'name'", code="bad_tensor")
    if datatype not in NUMERIC and datatype != "BYTES":
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}", code="wrong_datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers", code="wrong_shape")
    count = int(np.prod(shape))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
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
    try:
        return np.asarray(flat, dtype=NUMERIC[datatype]).reshape(shape), offset
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"input {name!r}: data are not all {datatype} values", code="wrong_datatype") from None


def _items(tensor: dict, data: Any, spec: ModelSpec, max_items: int) -> list[Item]:
    name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
    array_input = _array_input(spec)
    if shape[0] == 0:
        raise InvalidInput("the batch is empty: the first dimension of the input is 0", code="empty_batch")
    if shape[0] > max_items:
        raise InvalidInput(f"the batch has {shape[0]} items; the limit is {max_items}", status=413,
                           code="too_many_items")
    if name == "image":
        if datatype != "BYTES":
            raise InvalidInput(f"input 'image' must be BYTES (encoded image files), not {datatype}",
                               code="wrong_datatype")
        if len(shape) != 1:
            raise InvalidInput(f"input 'image' must have shape [N], got {shape}", code="wrong_shape")
        return [Item("image", _image_bytes(v)) for v in data]
    if name == array_input:
        if datatype not in ARRAY_DATATYPES:
            raise InvalidInput(f"input {name!r} must be one of {list(ARRAY_DATATYPES)}, not {datatype}",
                               code="wrong_datatype")
        row_shape = _array_shape(spec)
        flat_row = int(np.prod(row_shape))
        if list(shape[1:]) not in (list(row_shape), [flat_row]):
            raise InvalidInput(f"input {name!r} must have shape [N, {', '.join(map(str, row_shape))}] "
                               f"or [N, {flat_row}], got {shape}", code="wrong_shape")
        return [Item("array", np.asarray(row).reshape(row_shape)) for row in data]
    raise InvalidInput(f"unknown input {name!r}; model {spec.name!r} takes 'image' or {array_input!r}",
                       code="unknown_input")


def encode_response(spec: ModelSpec, version: str, request: OipRequest, predictions: list[dict],
                    probabilities: np.ndarray) -> tuple[bytes, dict[str, str]]:
    n = len(predictions)
    int_labels = _int_labels(spec)
    tensors = {
        "label": (np.asarray([p["label"] for p in predictions], dtype=np.int64) if int_labels
                  else [str(p["label"]).encode() for p in predictions], "INT64" if int_labels else "BYTES", [n]),
        "confidence": (np.asarray([p["confidence"] for p in predictions], dtype=np.float32), "FP32", [n]),
        "probabilities": (np.asarray(probabilities, dtype=np.float32), "FP32", [n, len(spec.labels)]),
    }
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        value, datatype, shape = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _pack_bytes(value) if datatype == "BYTES" else np.ascontiguousarray(value).astype(
                np.dtype(value.dtype).newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = ([v.decode() for v in value] if datatype == "BYTES"
                             else np.asarray(value).reshape(-1).tolist())
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": spec.name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        header["id"] = request.id
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, {"content-type": "application/json"}
    return header_bytes + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header_bytes)),
    }


def _array_input(spec: ModelSpec) -> str:
    return spec.array_input


def _array_shape(spec: ModelSpec) -> tuple[int, ...]:
    return tuple(spec.array_shape)


def _int_labels(spec: ModelSpec) -> bool:
    return all(isinstance(label, (int, np.integer)) for label in spec.labels)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        raise InvalidInput("tensor 'data' must be a list", code="bad_tensor")
    out: list = []

    def walk(node: Any) -> None:
        for v in node:
            walk(v) if isinstance(v, list) else out.append(v)

    walk(data)
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


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # JSON BYTES: images travel base64-encoded
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("JSON 'image' elements must be base64-encoded image files", code="bad_base64") from None
    raise InvalidInput("'image' elements must be base64 strings or binary BYTES", code="wrong_datatype")

"""The three stages of an inference request, as plain classes with no Ray in them.

``ray_apps/inference.py`` runs each as its own Serve deployment (composed mode) or all inside the
ingress replica (fused mode); the code is the same either way, so tests and benchmarks compare
deployment layouts, not implementations.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from services.common.errors import InvalidInput, ServingError, UnknownModel, UpstreamUnavailable
from services.models.base import ModelSpec, load_specs
from services.observability.tracing import sampled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One user input: an encoded image file, or a raw array for the model's array input."""

    kind: str  # "image" | "array"
    value: Any  # bytes for images, nested lists / ndarray for arrays


class PreprocessStage:
    def __init__(self, model_paths: Sequence[str]) -> None:
        self.specs = load_specs(model_paths)
        self.processors = {name: spec.load_preprocessor() for name, spec in self.specs.items()}

    def run(self, model: str, items: Sequence[Item]) -> np.ndarray:
        spec = _spec(self.specs, model)
        processor = self.processors[model]
        rows = np.empty((len(items), *spec.feature_shape), dtype=np.float32)
        for i, item in enumerate(items):
            try:
                if item.kind == "image":
                    data = item.value
                    if isinstance(data, str):
                        data = _b64decode(data)
                    rows[i] = processor.from_image(data)
                elif item.kind == "array":
                    rows[i] = processor.from_array(_as_array(item.value))
                else:
                    raise InvalidInput(f"unknown input kind {item.kind!r}")
            except ServingError as exc:
                exc.message = f"item {i}: {exc.message}" if len(items) > 1 else exc.message
                exc.args = (exc.message,)
                raise
        return rows

    def ready(self) -> bool:
        return True


class PostprocessStage:
    def __init__(self, model_paths: Sequence[str]) -> None:
        self.specs = load_specs(model_paths)
        self.processors = {name: spec.load_postprocessor() for name, spec in self.specs.items()}

    def run(self, model: str, scores: np.ndarray, top_k: int) -> list[dict]:
        _spec(self.specs, model)
        return self.processors[model](scores, top_k)

    def ready(self) -> bool:
        return True


class TritonStage:
    """Async client to Triton; one channel per replica, created lazily on the serving loop.

    Requests go over gRPC. Traced requests (a sampled W3C ``traceparent`` in ``headers``) go over
    HTTP when ``http_url`` is set: Triton's gRPC frontend loses the incoming trace context of a
    few percent of requests (measured 13 of 400 here, 0 of 400 over HTTP), so their Triton spans
    would start a trace of their own instead of joining the request's.
    """

    def __init__(self, url: str, model_paths: Sequence[str], timeout_s: float = 5.0,
                 http_url: str | None = None) -> None:
        self.url = url.removeprefix("grpc://")
        self.http_url = http_url.removeprefix("http://").rstrip("/") if http_url else None
        self.specs = load_specs(model_paths)
        self.timeout_s = timeout_s
        self._client = None
        self._http_client = None

    def _get_client(self):
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_grpc_channel_args())
        return self._client

    def _get_http_client(self):
        if self._http_client is None:
            import tritonclient.http.aio as httpclient

            self._http_client = httpclient.InferenceServerClient(self.http_url, conn_timeout=self.timeout_s)
        return self._http_client

    async def infer(self, model: str, features: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> dict:
        spec = _spec(self.specs, model)
        features = np.ascontiguousarray(features, dtype=np.float32)
        try:
            if self.http_url and sampled(headers):
                result = await self._infer_http(spec, features, version, headers)
                served = result.get_response()["model_version"]
            else:
                result = await self._infer_grpc(spec, features, version, headers)
                served = result.get_response().model_version
        except Exception as exc:
            raise triton_error(exc, spec.triton_model, version) from None
        return {"scores": result.as_numpy(spec.triton_output), "model": spec.name, "version": served}

    async def _infer_grpc(self, spec: ModelSpec, features: np.ndarray, version: str, headers):
        import tritonclient.grpc.aio as grpcclient

        inp = grpcclient.InferInput(spec.triton_input, list(features.shape), "FP32")
        inp.set_data_from_numpy(features)
        out = grpcclient.InferRequestedOutput(spec.triton_output)
        return await self._get_client().infer(
            spec.triton_model, [inp], model_version=version, outputs=[out], client_timeout=self.timeout_s,
            headers=headers or None)

    async def _infer_http(self, spec: ModelSpec, features: np.ndarray, version: str, headers):
        import tritonclient.http.aio as httpclient

        inp = httpclient.InferInput(spec.triton_input, list(features.shape), "FP32")
        inp.set_data_from_numpy(features, binary_data=True)
        out = httpclient.InferRequestedOutput(spec.triton_output, binary_data=True)
        return await self._get_http_client().infer(
            spec.triton_model, [inp], model_version=version, outputs=[out], headers=dict(headers))

    async def health(self) -> tuple[bool, str]:
        """(ready, reason): Triton is up and every served model is loaded."""
        client = self._get_client()
        try:
            if not await client.is_server_ready(client_timeout=2.0):
                return False, f"Triton at {self.url} is not ready"
            for spec in self.specs.values():
                if not await client.is_model_ready(spec.triton_model, client_timeout=2.0):
                    return False, f"Triton model {spec.triton_model!r} is not loaded"
        except Exception as exc:
            return False, f"Triton at {self.url} is unreachable: {_first_line(exc)}"
        return True, "ok"

    def ready(self) -> bool:
        return True


def _grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's channel defaults, plus reconnect attempts at most 1 s apart.

    gRPC's default backoff grows to 2 minutes while Triton is away, so after a restart the
    channel (and the health endpoint that uses it) could stay failed long after Triton is back.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def triton_error(exc: Exception, model: str, version: str) -> ServingError:
    if isinstance(exc, OSError) or type(exc).__module__.startswith("aiohttp"):  # the HTTP client's own errors
        return UpstreamUnavailable(f"Triton is unavailable ({type(exc).__name__}): {_first_line(exc)}")
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = _first_line(exc)
    lowered = message.lower()
    # Checked before the status: Triton answers UNAVAILABLE for a version that is not loaded too.
    if version and ("unknown model" in lowered or "is not found" in lowered or "not at ready state" in lowered):
        return UnknownModel(f"model {model!r} version {version} is not served (only the current version is; "
                            f"roll back to serve an older one): {message}")
    # gRPC status names, or the HTTP status codes of the HTTP client (traced requests).
    if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "502", "503", "504")) or "Connect" in message:
        return UpstreamUnavailable(f"Triton is unavailable ({status or type(exc).__name__}): {message}")
    if "unknown model" in lowered or "is not found" in lowered or "not ready" in lowered:
        return UnknownModel(f"Triton does not serve model {model!r}: {message}")
    if "INVALID_ARG" in status or status == "400":
        return InvalidInput(f"Triton rejected the request: {message}")
    log.error("Triton call failed: %s %s", status, message)
    return ServingError(f"Triton failed the request: {message}", status=502, code="upstream_error")


def _spec(specs: dict[str, ModelSpec], model: str) -> ModelSpec:
    try:
        return specs[model]
    except KeyError:
        raise UnknownModel(f"no model named {model!r}; served models: {sorted(specs)}") from None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image_b64 is not valid base64", code="bad_base64") from None


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput("array input must be a rectangular list of numbers", code="wrong_shape") from None
    return arr


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

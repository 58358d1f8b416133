"""The one client the platform uses to talk to Triton: inference (async) and model control (sync).

Usage::

    triton = TritonClient("grpc://127.0.0.1:8101", http_url="http://127.0.0.1:8100")
    result = await triton.infer("churn", {"features": rows}, ["probabilities"], headers=triton_headers())
    result.outputs["probabilities"], result.version
    ok, reason = await triton.ready(["churn"])

    triton.load("churn_gbm"); triton.ready_versions("churn_gbm"); triton.served_version("churn")
    triton.infer_sync("churn_gbm", 2, {"features": rows}, ["probabilities"])

Inference goes over gRPC (one channel per client, made lazily on the caller's event loop).
Traced requests (a sampled W3C ``traceparent`` in ``headers``) go over HTTP when ``http_url`` is
set: Triton's gRPC frontend loses the incoming trace context of a few percent of requests
(measured 13 of 400 here, 0 of 400 over HTTP). Errors come back as the user-facing ``ServingError``
that says whose fault it was (``triton_error``). Control calls (load, versions, per-version checks)
are what publishing and rolling back need; they block, and run in retraining jobs and the CLI.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpc_sync
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

from services.errors import InvalidInput, ServingError, UnknownModel, UpstreamUnavailable
from services.telemetry.tracing import sampled
from services.triton.onnx_ensemble import NUMPY

log = logging.getLogger(__name__)


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    version: str  # the version of the model that answered


def _datatype(array: np.ndarray) -> str:
    for name, dtype in NUMPY.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no Triton datatype for numpy {array.dtype}")


class TritonClient:
    def __init__(self, url: str, *, http_url: str | None = None, timeout_s: float = 5.0,
                 control_timeout_s: float = 60.0) -> None:
        self.url = url.removeprefix("grpc://")
        self.http_url = http_url.removeprefix("http://").rstrip("/") if http_url else None
        self.timeout_s, self.control_timeout_s = timeout_s, control_timeout_s
        self._aio: grpc_aio.InferenceServerClient | None = None
        self._http: http_aio.InferenceServerClient | None = None
        self._sync: grpc_sync.InferenceServerClient | None = None

    # ---- inference (async, on the serving event loop) ---------------------------------------
    def _aio_client(self) -> grpc_aio.InferenceServerClient:
        if self._aio is None:
            self._aio = grpc_aio.InferenceServerClient(self.url, channel_args=grpc_channel_args())
        return self._aio

    def _http_client(self) -> http_aio.InferenceServerClient:
        if self._http is None:
            self._http = http_aio.InferenceServerClient(self.http_url, conn_timeout=self.timeout_s)
        return self._http

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], version: str = "",
                    headers: Mapping[str, str] | None = None) -> InferResult:
        try:
            if self.http_url and sampled(headers):
                tensors = []
                for name, array in inputs.items():
                    tensor = http_aio.InferInput(name, list(array.shape), _datatype(array))
                    tensor.set_data_from_numpy(array, binary_data=True)
                    tensors.append(tensor)
                result = await self._http_client().infer(
                    model, tensors, model_version=version, headers=dict(headers or {}),
                    outputs=[http_aio.InferRequestedOutput(name, binary_data=True) for name in outputs])
                served = result.get_response()["model_version"]
            else:
                tensors = []
                for name, array in inputs.items():
                    tensor = grpc_aio.InferInput(name, list(array.shape), _datatype(array))
                    tensor.set_data_from_numpy(array)
                    tensors.append(tensor)
                result = await self._aio_client().infer(
                    model, tensors, model_version=version, client_timeout=self.timeout_s,
                    outputs=[grpc_aio.InferRequestedOutput(name) for name in outputs], headers=headers or None)
                served = result.get_response().model_version
        except Exception as exc:
            raise triton_error(exc, model, version) from None
        return InferResult({name: result.as_numpy(name) for name in outputs}, served)

    async def ready(self, models: Sequence[str]) -> tuple[bool, str]:
        """(ready, reason): Triton is up and every model in `models` is loaded."""
        client = self._aio_client()
        try:
            if not await client.is_server_ready(client_timeout=2.0):
                return False, f"Triton at {self.url} is not ready"
            for model in models:
                if not await client.is_model_ready(model, client_timeout=2.0):
                    return False, f"Triton model {model!r} is not loaded"
        except Exception as exc:
            return False, f"Triton at {self.url} is unreachable: {_first_line(exc)}"
        return True, "ok"

    # ---- control (blocking) -----------------------------------------------------------------
    def _sync_client(self) -> grpc_sync.InferenceServerClient:
        if self._sync is None:
            self._sync = grpc_sync.InferenceServerClient(self.url)
        return self._sync

    def server_ready(self) -> bool:
        try:
            return bool(self._sync_client().is_server_ready(client_timeout=1.0))
        except Exception:
            return False

    def load(self, model: str) -> None:
        self._sync_client().load_model(model, client_timeout=self.control_timeout_s)

    def load_all(self, models: Sequence[str]) -> None:
        """Load several models at once. Triton loads them side by side (``--model-load-thread-count``, 4); one after
        another, a version's members each waited for the last one's Python-backend stub to start (2 s apiece here).
        Raises the first failure once every load has ended."""
        client = self._sync_client()
        with ThreadPoolExecutor(max_workers=max(1, len(models))) as pool:
            loads = [pool.submit(client.load_model, model, client_timeout=self.control_timeout_s) for model in models]
        for done in loads:
            done.result()

    def unload(self, model: str) -> None:
        self._sync_client().unload_model(model, client_timeout=self.control_timeout_s)

    def ready_versions(self, model: str) -> list[int]:
        index = self._sync_client().get_model_repository_index(as_json=True).get("models", [])
        return sorted(int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY"
                      and m.get("version"))

    def served_version(self, model: str) -> str:
        """The version Triton answers with when no version is asked for (the highest it has loaded)."""
        return self._sync_client().get_model_metadata(model, as_json=True)["versions"][-1]

    def infer_sync(self, model: str, version: int | str, inputs: Mapping[str, np.ndarray],
                   outputs: Sequence[str]) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            tensor = grpc_sync.InferInput(name, list(array.shape), _datatype(array))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        result = self._sync_client().infer(model, tensors, model_version=str(version),
                                           outputs=[grpc_sync.InferRequestedOutput(n) for n in outputs],
                                           client_timeout=self.control_timeout_s)
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        """Close the blocking client (async channels close with their event loop)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's channel defaults, plus reconnect attempts at most 1 s apart.

    gRPC's default backoff grows to 2 minutes while Triton is away, so after a restart the
    channel (and the health endpoint that uses it) could stay failed long after Triton is back.
    """
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
    """The user-facing error for a failed Triton call: 503 when Triton is away, 404 for a version it
    does not serve, 400 for a request it refused, 502 for anything else."""
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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

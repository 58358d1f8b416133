"""Which transport a Triton call takes, and how Triton's failures become the gateway's HTTP errors."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from services.errors import InvalidInput, ServingError, UnknownModel, UpstreamUnavailable
from services.telemetry.tracing import sampled
from services.triton.client import triton_error

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("headers, is_sampled", [
    ({"traceparent": f"00-{TRACE}-{SPAN}-01"}, True),
    ({"traceparent": f"00-{TRACE}-{SPAN}-03"}, True),  # other flag bits set too
    ({"traceparent": f"00-{TRACE}-{SPAN}-00"}, False),  # propagated but not sampled: nobody records it
    ({"traceparent": f"00-{TRACE}-{SPAN}-zz"}, False),
    ({"traceparent": "garbage"}, False),
    ({}, False),
    (None, False),
])
def test_only_sampled_requests_take_the_traced_path(headers, is_sampled):
    assert sampled(headers) is is_sampled


@pytest.mark.parametrize("exc, version, kind, status", [
    # gRPC client errors
    (InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"), "",
     UpstreamUnavailable, 503),
    (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), "",
     UpstreamUnavailable, 503),
    (InferenceServerException("unexpected shape for input 'pixels'", status="StatusCode.INVALID_ARGUMENT"), "",
     InvalidInput, 400),
    (InferenceServerException("Request for unknown model: 'digits' version 9 is not found",
                              status="StatusCode.UNAVAILABLE"), "9", UnknownModel, 404),
    # HTTP client errors (traced requests)
    (InferenceServerException("unexpected shape for input 'pixels'", status="400"), "", InvalidInput, 400),
    (InferenceServerException("Request for unknown model: 'digits' version 9 is not found", status="400"), "9",
     UnknownModel, 404),
    (InferenceServerException("Server is not ready", status="503"), "", UpstreamUnavailable, 503),
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 8100)"), "", UpstreamUnavailable, 503),
    (TimeoutError(), "", UpstreamUnavailable, 503),
    (InferenceServerException("internal error in backend", status="500"), "", ServingError, 502),
])
def test_triton_failures_map_to_clear_http_errors(exc, version, kind, status):
    err = triton_error(exc, "digits", version)
    assert type(err) is kind
    assert err.status == status


def test_load_all_loads_side_by_side_and_raises_the_first_failure():
    import threading

    from services.triton.client import TritonClient

    class Control:  # the sync gRPC client's model control, recording how many loads overlap
        def __init__(self) -> None:
            self.lock, self.now, self.most, self.loaded = threading.Lock(), 0, 0, []
            self.all_started = threading.Barrier(3, timeout=5)

        def load_model(self, model: str, client_timeout: float) -> None:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            self.all_started.wait()  # only returns if the three loads are out together
            with self.lock:
                self.now -= 1
                self.loaded.append(model)
            if model == "b":
                raise InferenceServerException("failed to load 'b'")

    client = TritonClient("grpc://127.0.0.1:1")
    client._sync = control = Control()
    with pytest.raises(InferenceServerException, match="failed to load 'b'"):
        client.load_all(["a", "b", "c"])
    assert control.most == 3 and sorted(control.loaded) == ["a", "b", "c"]  # every load tried, all at once

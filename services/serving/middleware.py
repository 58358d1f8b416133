"""Plain ASGI middleware of the gateway: body size limit and request ids. Plain ASGI, not
BaseHTTPMiddleware: that one costs about a tenth of the gateway's CPU per request."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Mapping

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import PayloadTooLarge, RequestTimeout, ServingError
from services.telemetry.propagation import clean_trace_headers

# What an X-Request-ID may be: 1..200 characters of A-Z a-z 0-9 . _ : / + = -  (UUIDs, hex, ULIDs,
# base64 ids, "req-123", Heroku's and most proxies' ids). Anything else is replaced by an id made here.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:/+=-]{1,200}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.encode())
# Request headers the app takes at most, whatever the HTTP server in front let through: HAProxy's own
# limits (tune.bufsize 16 KiB, tune.http.maxhdr 101), so the answer is the same behind Serve's Python proxy.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(err: ServingError, request_id: str | None = None, *, oip_format: bool = False,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Our error body; on /v2 routes the OIP shape {"error": "<message>"} that tritonclient parses."""
    out = dict(headers or {})
    if err.retry_after_s:
        out["Retry-After"] = str(err.retry_after_s)
    if err.status == 401:
        out["WWW-Authenticate"] = "Bearer"  # RFC 6750: a 401 names the scheme to use
    body = {"error": err.message, "code": err.code} if oip_format else err.to_json()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=err.status, headers=out)


# A request body must keep coming: BODY_TIMEOUT_S from the first read, plus a second per BODY_MIN_RATE
# bytes received (as Apache's mod_reqtimeout: body=10,MinRate=65536). A stalled or trickling client
# (slowloris, R-U-Dead-Yet) gets a 408 instead of holding a replica's request slot until Serve's 30 s.
BODY_TIMEOUT_S = 10.0
BODY_MIN_RATE = 64 * 1024


class BodySizeLimit:
    """Refuse bodies over the limit from Content-Length, cut off streamed bodies that grow past it, and
    answer 408 to bodies that do not arrive in time (BODY_TIMEOUT_S, BODY_MIN_RATE)."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float | None = None,
                 min_rate: float | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.body_timeout_s = BODY_TIMEOUT_S if body_timeout_s is None else body_timeout_s
        self.min_rate = BODY_MIN_RATE if min_rate is None else min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                  code="body_too_large")
            response = error_response(err, (scope.get("state") or {}).get("request_id"),
                                      oip_format=is_oip_path(scope.get("path", "")))
            return await response(scope, receive, send)
        seen = 0
        complete = False
        started: float | None = None

        async def limited_receive() -> Message:
            nonlocal seen, complete, started
            if complete:  # the body is in: later reads only wait for a disconnect, as long as they like
                return await receive()
            now = time.monotonic()
            started = now if started is None else started
            left = started + self.body_timeout_s + seen / self.min_rate - now
            try:
                async with asyncio.timeout(max(left, 0.001)):  # a timer, no task: cheap on the hot path
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive in time ({seen} bytes after "
                                     f"{time.monotonic() - started:.0f} s; send at least {self.min_rate:.0f} "
                                     "bytes/s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                          code="body_too_large")
            else:
                complete = True  # http.disconnect
            return message

        await self.app(scope, limited_receive, send)


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


class RequestId:
    """Every request has an X-Request-ID: the client's (or Serve's) when it is a valid one, else one made here.

    Outermost of the gateway's middleware, so the rest (spans, logs, the rollout's prediction log,
    feedback) only ever sees a valid id. A client's id that is not 1..200 characters of
    ``A-Z a-z 0-9 . _ : / + = -`` (CR/LF, other control characters, non-ASCII, too long, sent twice)
    is replaced by a new one, not refused: the request is served, and the response says which id it
    got (``X-Request-ID`` header and ``request_id`` in the body). A trace context that cannot be
    trusted (malformed ``traceparent``, oversized or non-ASCII ``tracestate``) is dropped here too
    (``telemetry.propagation.clean_trace_headers``): the request starts a trace of its own.

    Serve's proxy already adds the header to the request (and echoes it in the response), so under
    Serve a valid id is only read; an id made here is echoed here. Serve's own echo of what the
    client sent happens outside this app, after its HTTP server has refused CR, LF and other
    control characters in header values.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        given: bytes | None = None
        count = size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"x-request-id":
                given, count = value, count + 1
        if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADERS:
            return await self._refuse(scope, receive, send, size, len(headers))
        cleaned = clean_trace_headers(headers)
        if cleaned is not None:
            scope["headers"] = headers = cleaned
        if count == 1 and valid_request_id(given):
            scope.setdefault("state", {})["request_id"] = given.decode("ascii")
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        encoded = request_id.encode()
        scope["headers"] = [*(h for h in headers if h[0] != b"x-request-id"), (b"x-request-id", encoded)]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                                      (b"x-request-id", encoded)]
            await send(message)

        await self.app(scope, receive, send_with_id)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, size: int, count: int) -> None:
        request_id = uuid.uuid4().hex
        err = ServingError(f"the request headers are too large ({count} headers, {size} bytes; the limits are "
                           f"{MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes)", status=431,
                           code="headers_too_large")
        response = error_response(err, request_id, oip_format=is_oip_path(scope.get("path", "")),
                                  headers={"X-Request-ID": request_id, "Connection": "close"})
        await response(scope, receive, send)

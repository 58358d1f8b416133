"""Plain ASGI middleware of the gateway: body size limit and request ids. Plain ASGI, not
BaseHTTPMiddleware: that one costs about a tenth of the gateway's CPU per request."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import PayloadTooLarge, ServingError


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(err: ServingError, request_id: str | None = None, *, oip_format: bool = False) -> JSONResponse:
    """Our error body; on /v2 routes the OIP shape {"error": "<message>"} that tritonclient parses."""
    headers = {}
    if err.retry_after_s:
        headers["Retry-After"] = str(err.retry_after_s)
    body = {"error": err.message, "code": err.code} if oip_format else err.to_json()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=err.status, headers=headers)


class BodySizeLimit:
    """Refuse bodies over the limit from Content-Length, and cut off streamed bodies that grow past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                  code="body_too_large")
            return await error_response(err, oip_format=is_oip_path(scope.get("path", "")))(scope, receive, send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                          code="body_too_large")
            return message

        await self.app(scope, limited_receive, send)


class RequestId:
    """Every request has an X-Request-ID: the client's, Serve's, or one made here.

    Serve's proxy already adds the header to the request (and echoes it in the response), so under
    Serve this only reads it; outside Serve it makes one up and echoes it itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                scope.setdefault("state", {})["request_id"] = value.decode("latin-1")
                return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        scope["headers"] = [*scope["headers"], (b"x-request-id", request_id.encode())]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)

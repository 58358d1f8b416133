"""Hostile input against the live gateway of the session's stack (HAProxy / Serve / uvicorn in front of the
app, as deployed): Schemathesis over its own OpenAPI document, the admin token on every mutating route,
header injection over the wire, oversized headers, slow bodies.

Loopback only (the stack's own port). Bounded: Schemathesis stops after FUZZ_BUDGET_S, every socket
has a timeout, the two slow bodies run at once; about 35 s in all. The in-process variants (and the
fuzzing with a larger budget) are tests/unit/test_openapi_fuzz.py and the hostile-input section of
tests/unit/test_routes.py.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import schemathesis

from services.serving.middleware import BODY_TIMEOUT_S
from tests.unit.test_openapi_fuzz import execute, fuzz_config, report

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = 6
FUZZ_BUDGET_S = 20
BODY = b'{"instances": [{"pixels": [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], ' \
       b'[0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], ' \
       b'[0, 0, 6, 13, 10, 0, 0, 0]]}]}'
HEX32 = re.compile(r"[0-9a-f]{32}")


def token(stack) -> str:
    return stack.settings.admin.token.get_secret_value()


def address(stack) -> tuple[str, int]:
    url = urlsplit(stack.gateway_url)
    assert url.hostname in ("127.0.0.1", "localhost", "::1"), url  # loopback only
    return url.hostname, url.port


class Raw:
    """What came back on a raw socket: status (None if the server closed without answering), headers, body."""

    def __init__(self, data: bytes, seconds: float) -> None:
        self.seconds = seconds
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0]) if lines and lines[0] else None
        self.status = int(match.group(1)) if match else None
        self.headers = [tuple(x.strip() for x in line.decode("latin-1").split(":", 1)) for line in lines[1:]
                        if b":" in line]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict:
        body = self.body
        if "chunked" in ",".join(self.header("transfer-encoding")).lower():
            out, rest = b"", body
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size.split(b";")[0], 16)
                if n == 0:
                    break
                out, rest = out + rest[:n], rest[n + 2:]
            body = out
        return json.loads(body)


def send_raw(stack, head: bytes, body: bytes = b"", *, pieces: list[bytes] | None = None, gap_s: float = 0.0,
             timeout_s: float = 20.0) -> Raw:
    """One HTTP/1.1 request written by hand (Connection: close): `head` without the blank line; the body at
    once, or then `pieces` with `gap_s` between them (a slow client) until the server answers."""
    started = time.monotonic()
    data = b""
    with socket.create_connection(address(stack), timeout=timeout_s) as sock:
        try:
            sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
            for piece in pieces or ():
                if select.select([sock], [], [], gap_s)[0]:
                    break  # the server is answering: a slow client stops there
                sock.sendall(piece)
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            while not _complete(data) and (chunk := sock.recv(65536)):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return Raw(data, time.monotonic() - started)


def _complete(data: bytes) -> bool:
    """A whole response is in (by Content-Length or the last chunk); else read on until the server closes."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?im)^transfer-encoding:.*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False


# ---- Schemathesis over the live document -----------------------------------------------------------

def test_schemathesis_over_the_live_gateway(stack, gateway):
    """The same checks as the in-process fuzzing, with a small budget, through the real HTTP servers. Admin
    routes that change what serves (retrain, promote, rollback, policy, faults) are left out: later tests
    rely on the versions and policies as they are (their 401s are checked below)."""
    config = fuzz_config(token(stack), FUZZ_EXAMPLES, **{"max-time": FUZZ_BUDGET_S, "request-timeout": 10})
    schema = schemathesis.openapi.from_url(stack.gateway_url + "/openapi.json", config=config).exclude(
        method=["POST", "PUT"], path_regex="^/admin/")
    failures, requests = execute(schema)
    assert sum(requests.values()) > 100, requests
    assert not failures, report(failures)
    assert gateway.get("/healthz").status_code == 200


def test_every_mutating_admin_route_refuses_without_the_token(stack, gateway):
    paths = gateway.get("/openapi.json").json()["paths"]
    mutating = [(m.upper(), p) for p, item in paths.items() if p.startswith("/admin") for m in item if m != "get"]
    assert len(mutating) >= 5, mutating
    for method, path in mutating:
        url = path.replace("{model}", "digits")
        for headers in ({}, {"Authorization": "Bearer " + "x" * len(token(stack))},
                        {"Authorization": f"Basic {token(stack)}"}):
            r = gateway.request(method, url, headers=headers, json={"version": 1, "yaml": "strategy: direct"})
            assert r.status_code == 401, (method, url, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and token(stack) not in r.text


# ---- headers ----------------------------------------------------------------------------------------

def test_a_bad_request_id_is_replaced_over_the_wire(stack):
    for value in (b"two words", b"x" * 300, b"a;b", "r\u00e9quest".encode()):
        r = send_raw(stack, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"X-Request-ID: " + value + b"\r\nContent-Length: " + str(len(BODY)).encode(), BODY)
        assert r.status == 200, (value, r.status, r.body[:300])
        made = r.json()["request_id"]
        assert HEX32.fullmatch(made) and made.encode() != value
        # the id the gateway made is the one it answers with; Serve's proxy also echoes what it received,
        # after its HTTP server checked the value (no CR, LF or other control characters can be in it)
        assert made in r.header("x-request-id"), r.headers


@pytest.mark.parametrize("line", [
    b"X-Request-ID: abc\rX-Injected: 1",
    b"X-Request-ID: abc\nX-Injected: 1",
    b"X-Request-ID: abc\x00def",
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\rX-Injected: 1",
], ids=["bare-cr", "bare-lf", "nul", "traceparent-cr"])
def test_control_characters_in_headers_never_reach_a_response_header(stack, gateway, line):
    r = send_raw(stack, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + line)
    assert r.status is None or r.status < 500, (r.status, r.body[:300])  # refused (400) or served, never a 5xx
    assert not r.header("x-injected")
    assert all("\r" not in v and "\n" not in v for _, v in r.headers)
    assert gateway.get("/healthz").status_code == 200


def test_an_invalid_traceparent_is_not_continued(stack):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    for value in (f"00-{trace_id}-00f067aa0ba902b7-01-extra".encode(), f"ff-{trace_id}-00f067aa0ba902b7-01".encode(),
                  f"00-{trace_id.upper()}-00F067AA0BA902B7-01".encode(), ("00-" + "\u00e9" * 52).encode()):
        r = send_raw(stack, b"GET /v1/models HTTP/1.1\r\nHost: x\r\ntraceparent: " + value)
        assert r.status == 200, (value, r.status)
        assert trace_id not in ",".join(r.header("x-trace-id")).lower()


@pytest.mark.xfail(strict=True, reason="Ray 2.60: the Serve replica decodes X-Request-ID (and, with tracing on, "
                   "traceparent) as UTF-8 before the app sees the request, so a header byte that is not UTF-8 "
                   "(HTTP allows obs-text) is a plain-text 500 from Ray; strict: this fails once Ray fixes it")
@pytest.mark.parametrize("header", [b"X-Request-ID: r\xe9quest", b"traceparent: 00-" + b"\xe9" * 52])
def test_header_bytes_that_are_not_utf8_are_not_a_500(stack, header):
    r = send_raw(stack, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header)
    assert r.status is not None and r.status < 500, (r.status, r.body[:300])


@pytest.mark.parametrize("size, count", [(64 * 1024, 1), (100, 1000), (1024 * 1024, 1)],
                         ids=["one-64KiB-header", "1000-headers", "one-1MiB-header"])
def test_oversized_headers_are_refused_cleanly(stack, gateway, size, count):
    head = b"GET /v1/models HTTP/1.1\r\nHost: x" + b"".join(
        b"\r\nX-Big-%d: " % i + b"a" * size for i in range(count))
    r = send_raw(stack, head, timeout_s=15)
    # HAProxy refuses them (400: tune.bufsize 16 KiB, tune.http.maxhdr 101), or the app does (431) behind a
    # server that let them through (Serve's Python proxy); or the connection is closed. Never a 5xx.
    assert r.status in (None, 400, 413, 431), (r.status, r.body[:300])
    assert r.seconds < 15
    assert gateway.get("/healthz").status_code == 200  # and the gateway serves on


def test_a_long_request_id_within_the_header_limit_is_replaced(stack):
    r = send_raw(stack, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + b"a" * 8000)
    assert r.status == 200
    assert any(HEX32.fullmatch(v) for v in r.header("x-request-id")), r.header("x-request-id")


# ---- slow bodies ------------------------------------------------------------------------------------

def test_slow_bodies_time_out(stack, gateway):
    """A body that stalls half-way, and one that trickles a byte every half second: both are answered 408
    (body_timeout) after about BODY_TIMEOUT_S, whatever the proxy in front; run at once, so ~BODY_TIMEOUT_S."""
    head = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
           b"Content-Length: " + str(len(BODY)).encode()
    results: dict[str, Raw] = {}
    limit = BODY_TIMEOUT_S + 8

    def stalled() -> None:
        results["stalled"] = send_raw(stack, head, BODY[: len(BODY) // 2], timeout_s=limit)

    def trickling() -> None:
        results["trickling"] = send_raw(stack, head, BODY[:10], pieces=[bytes([b]) for b in BODY[10:60]], gap_s=0.5,
                                        timeout_s=limit)

    threads = [threading.Thread(target=f) for f in (stalled, trickling)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 5)
    assert set(results) == {"stalled", "trickling"}, "a slow client was never answered"
    for name, r in results.items():
        assert r.status == 408, (name, r.status, r.body[:300], r.seconds)
        assert r.json()["error"]["code"] == "body_timeout"
        assert BODY_TIMEOUT_S - 1 < r.seconds < limit, (name, r.seconds)
    assert gateway.post("/v1/models/digits/predict", content=BODY,
                        headers={"content-type": "application/json"}).status_code == 200

"""The floor of the gateway's own transport: a Ray Serve ingress that reads the body and answers a fixed JSON.

Deployed by ``bench_peers`` as a second Serve application (``/floor``) beside the gateway, on the same Serve
instance, the same HAProxy and the same throughput-optimised settings. No FastAPI, no parsing, no model, no
Triton: what it costs per request is what Ray Serve and HAProxy cost before the gateway does any work, so the
gateway can be no faster and no cheaper than this target.
"""

from __future__ import annotations

from ray import serve

ANSWER = b'{"predictions":[{"label":0,"confidence":1.0}],"model":{"name":"floor","version":"1"},"request_id":"-"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def read_body(receive) -> None:
    more = True
    while more:  # the whole body, as any server must read it
        message = await receive()
        more = message.get("more_body", False)


async def respond(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": body})


async def answer(scope, receive, send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    await read_body(receive)
    await respond(send, ANSWER)


@serve.deployment(name="Floor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Floor:
    def __serve_build_asgi_app__(self):
        return answer


app = Floor.bind()


# The floor of a cold start from zero: an ingress like the one above that asks a deployment with no replicas
# (scaled to zero) for its answer, so the first request waits for Serve to start a replica that imports nothing
# of ours. ``bench_freshness`` deploys it beside the autoscaling gateway and times both the same way.
@serve.deployment(name="FloorNoop", ray_actor_options={"num_cpus": 0.1})
class Noop:
    def __call__(self) -> bytes:
        return ANSWER


@serve.deployment(name="FloorIngress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class ColdFloor:
    def __init__(self, noop) -> None:
        self.noop = noop

    def __serve_build_asgi_app__(self):
        async def asgi(scope, receive, send) -> None:
            if scope["type"] != "http":
                return await answer(scope, receive, send)
            await read_body(receive)
            await respond(send, await self.noop.remote())

        return asgi


cold_app = ColdFloor.bind(Noop.bind())

"""Benchmark: the gateway beside its peers, doing the same work on the same request, in one run.

Usage::

    make bench                                   # bench.py, then this into <bench folder>/peers/ (BENCH_PEERS=0 skips)
    python -m loadtests.bench_peers --concurrency 1 8 32 --duration 8 [--peers kserve bentoml triton-alone]

Every target answers one held-out digit, a 28x28 PNG, base64 in the gateway's own /v1 JSON body
``{"instances": [{"image_b64": ...}]}`` (KServe's ModelServer decodes only JSON bodies, so this, not the
multipart body of bench.py, is the one every peer can take): the same preprocessing and postprocessing (the
digits package's own functions, ``loadtests/peers/digits_io.py``) around the same Triton ensemble ``digits``
on the same bundled tritonserver. Targets:

- ``triton-direct``: the floor, Triton's HTTP /v2 infer with the 64 features (no pre/post), as in bench.py;
- ``serve-floor``: the gateway's transport alone, a Ray Serve ingress on the same Serve instance and HAProxy that
  reads the body and answers a fixed JSON (``loadtests/peers/serve_floor.py``): what Serve costs before any work;
- ``gateway-fused``: the gateway (fused layout), ``POST /v1/predict``;
- ``kserve``: KServe's ModelServer, a ``kserve.Model`` transformer, Triton over KServe's gRPC v2 client;
- ``bentoml``: a BentoML service, Triton over one tritonclient gRPC aio client;
- ``triton-alone``: Triton only, pre and post as Python-backend models in an ensemble around ``digits``, over
  Triton's HTTP/JSON with the same base64 PNG as a BYTES tensor (``loadtests/peers/triton_peer.py``).

KServe and BentoML run in venvs of their own (``.venv-peers/<peer>``, made on first use from the exact pins in
``loadtests/peers/requirements-<peer>.txt``). Triton's models for ``triton-alone`` are written into a model
repository of the bench's own (``<out>/peer-models``), served by the stack's tritonserver beside the product's.

Before measuring, each target must give the gateway's answer (label and confidence) for a few held-out digits;
a target that answers differently is not measured (the report says why, and the exit code is 1). Measuring
reuses bench.py: wrk (one thread, fixed body), and server CPU per request (psutil, every process of the system
under test: Triton for all, plus the Ray cluster for the gateway, plus the peer's server for KServe/BentoML).

Writes ``results.json``, ``results.md`` (the table) and ``peers.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import yaml

from loadtests.bench import (CONFIGS, CpuMeter, Measurement, Target, bench_settings, features_body, holdout_png,
                             plot, report, run_wrk, to_markdown, write_bodies)
from loadtests.peers import digits_io, triton_peer
from loadtests.peers.launch import PeerServer, peer_python, requirements
from services.runtime.processes import free_ports, wait_until
from services.runtime.stack import Stack
from services.settings import REPO_ROOT

PEERS = ("kserve", "bentoml", "triton-alone")
CONFIDENCE_TOLERANCE = 1e-4  # the gateway rounds to 6 decimals; Triton's own output is float32


def json_body(png: bytes) -> tuple[bytes, str]:
    """The gateway's /v1 JSON body of one image: the body of gateway-fused, kserve and bentoml alike."""
    return json.dumps({"instances": [{"image_b64": base64.b64encode(png).decode()}]}).encode(), "application/json"


def oip_image_body(png: bytes) -> tuple[bytes, str]:
    return triton_peer.request_body(base64.b64encode(png).decode()), "application/json"


def predictions_answer(body: dict) -> list[tuple[int, float]]:
    return [(p["label"], p["confidence"]) for p in body["predictions"]]


def oip_answer(body: dict) -> list[tuple[int, float]]:
    out = {o["name"]: o["data"] for o in body["outputs"]}
    return list(zip(out["label"], out["confidence"]))


def floor_answer(body: dict) -> list[tuple[int, float]]:
    """Triton direct answers raw scores: the label and confidence the postprocessing would make of them."""
    scores = body["outputs"][0]["data"]
    best = max(range(len(scores)), key=scores.__getitem__)
    return [(best, scores[best] / sum(scores))]


BODIES: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "json": json_body, "oip-image": oip_image_body, "features": features_body}
NOTES = {
    "kserve": "KServe's own forwarding reaches the bare Triton: kserve.Model.predict with predictor_host and "
              "protocol grpc-v2 (KServe's gRPC v2 client; Triton serves the same inference.GRPCInferenceService); "
              "one worker; uvicorn bound to 127.0.0.1 by a RESTServer subclass (KServe has no option); per-request "
              "log lines off (latency line, access log, kserve.trace timings), as the gateway runs",
    "bentoml": "one BentoML worker; tritonclient.grpc.aio client made on the serving loop; access log off",
}


@dataclass
class Peer:
    """One target: where wrk sends what, how to read its answer, and whose CPU time it costs."""

    name: str
    url: str
    body: str  # a key of BODIES
    answer: Callable[[dict], list[tuple[int, float]]]
    cpu: CpuMeter
    notes: list[str] = field(default_factory=list)


class PeersStack(Stack):
    """The bench's stack, its tritonserver also serving the bench's own repository of peer models."""

    def __init__(self, *args, peer_models: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.peer_models = peer_models

    def new_triton(self):
        triton = super().new_triton()
        triton.extra_args = (*triton.extra_args, f"--model-repository={self.peer_models}",
                             f"--load-model={triton_peer.PIPELINE}")
        return triton


def pinned(requirements_file: Path, name: str) -> str:
    """The exact version a requirements file pins `name` to ("?" if it does not)."""
    return next((line.split("==", 1)[1].strip() for line in requirements_file.read_text().splitlines()
                 if line.lower().startswith(f"{name}==")), "?")


def start_kserve(stack: Stack, out: Path, say: Callable[[str], None]) -> tuple[PeerServer, str]:
    python = peer_python("kserve", say)
    http, grpc = free_ports(2)
    argv = [str(python), "-m", "loadtests.peers.kserve_peer", "--http_port", str(http), "--grpc_port", str(grpc),
            "--enable_grpc", "false", "--workers", "1", "--enable_latency_logging", "false",
            "--predictor_host", f"127.0.0.1:{stack.settings.triton.grpc_port}", "--predictor_protocol", "grpc-v2"]
    model = f"http://127.0.0.1:{http}/v1/models/{digits_io.ENSEMBLE}"
    return PeerServer("kserve", argv, ready_url=model, log_file=out / "kserve" / "kserve.log"), f"{model}:predict"


def start_bentoml(stack: Stack, out: Path, say: Callable[[str], None]) -> tuple[PeerServer, str]:
    python = peer_python("bentoml", say)
    (port,) = free_ports(1)
    server = PeerServer("bentoml", [
        str(python), "-m", "bentoml", "serve", "loadtests.peers.bentoml_peer:DigitsService", "--host", "127.0.0.1",
        "--port", str(port), "--working-dir", str(REPO_ROOT)], ready_url=f"http://127.0.0.1:{port}/readyz",
        log_file=out / "bentoml" / "bentoml.log",
        env={"PEER_TRITON_GRPC": f"127.0.0.1:{stack.settings.triton.grpc_port}",
             "BENTOML_HOME": str(out / "bentoml" / "home"), "BENTOML_DO_NOT_TRACK": "True"})
    return server, f"http://127.0.0.1:{port}/predict"


def deploy_serve_floor(stack: Stack, out: Path) -> str:
    """``loadtests/peers/serve_floor.py`` as a second Serve application at /floor beside the gateway: its URL."""
    config = yaml.safe_load((stack.work_dir / "serve_config.yaml").read_text())
    config["applications"].append({"name": "serve-floor", "route_prefix": "/floor",
                                   "import_path": "loadtests.peers.serve_floor:app"})
    both = out / "serve-with-floor.yaml"
    both.write_text(yaml.safe_dump(config, sort_keys=False))
    stack.ray.serve_deploy(both)
    url = f"{stack.gateway_url}/floor"

    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.post(url, content=b"{}", timeout=5).status_code == 200
        return False

    wait_until(answers, timeout_s=120, what="the Serve floor application", interval_s=0.5)
    return url


def ask(peer: Peer, png: bytes) -> list[tuple[int, float]]:
    data, ctype = BODIES[peer.body](png)
    resp = httpx.post(peer.url, content=data, headers={"content-type": ctype}, timeout=30)
    resp.raise_for_status()
    return peer.answer(resp.json())


def check(peer: Peer, reference: list[list[tuple[int, float]]], pngs: list[bytes]) -> str | None:
    """None when `peer` answers every digit as the gateway does; else what differed."""
    for i, (png, expected) in enumerate(zip(pngs, reference)):
        try:
            got = ask(peer, png)
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            return f"digit {i}: no usable answer ({type(exc).__name__}: {str(exc)[:200]})"
        if len(got) != len(expected) or any(
                int(g[0]) != int(e[0]) or abs(float(g[1]) - float(e[1])) > CONFIDENCE_TOLERANCE
                for g, e in zip(got, expected)):
            return f"digit {i}: answered {got}, the gateway {expected}"
    return None


def summary_table(results: list[Measurement], concurrencies: list[int], targets: list[str]) -> str:
    """One row per target: p50 at the lowest concurrency, p50 and req/s at the others, CPU at the highest."""
    low, high = min(concurrencies), max(concurrencies)
    by = {(m.target, m.concurrency): m for m in results}
    heads = [f"c={low} p50 ms"]
    heads += [h for c in sorted(concurrencies) if c != low for h in (f"c={c} p50 ms", f"c={c} req/s")]
    heads += [f"server CPU ms/req at c={high}", f"req/s vs gateway at c={high}", "errors"]
    lines = ["| target | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    gateway = by.get(("gateway-fused", high))
    for t in targets:
        ms = [m for m in results if m.target == t]
        if not ms:
            continue
        cells = [f"{by[(t, low)].p50_ms:.2f}" if (t, low) in by else "-"]
        for c in sorted(concurrencies):
            if c != low:
                m = by.get((t, c))
                cells += [f"{m.p50_ms:.2f}", f"{m.rps:.0f}"] if m else ["-", "-"]
        top = by.get((t, high))
        cells.append(f"{top.server_cpu_ms_per_req:.2f}" if top and top.server_cpu_ms_per_req is not None else "-")
        cells.append(f"{top.rps / gateway.rps:.2f}x" if top and gateway else "-")
        cells.append(str(sum(m.errors for m in ms)))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: list[Measurement], args, peers: dict[str, Peer], not_measured: dict[str, str],
                 versions: dict[str, str]) -> str:
    names = [t for t in ("triton-direct", "serve-floor", "gateway-fused", *PEERS) if t in peers or t in not_measured]
    (out / "results.json").write_text(json.dumps({
        "measurements": [asdict(m) for m in results], "not_measured": not_measured, "versions": versions,
        "notes": {name: p.notes for name, p in peers.items() if p.notes},
        "duration_s": args.duration, "warmup_s": args.warmup, "checked_digits": args.check_digits}, indent=2))
    table = summary_table(results, args.concurrency, names)
    lines = [f"# Gateway and peers: same digit, same body, same pre/post, same Triton ensemble "
             f"({args.duration} s per point after {args.warmup} s warm-up)", "", table,
             "All points (floor: triton-direct):", "", to_markdown(results)]
    if not_measured:
        lines += ["Not measured:", ""] + [f"- {name}: {why}" for name, why in not_measured.items()] + [""]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += [f"- {name}: {note}" for name, p in peers.items() for note in p.notes]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if results:
        plot(results, out / "peers.png", title="Gateway and peers (same digit, same pre/post, same Triton, one run)")
    return table


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="the gateway beside KServe, BentoML and Triton alone")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per point")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per point")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--no-serve-floor", dest="serve_floor", action="store_false",
                        help="skip the Serve floor (an ingress that does no work, beside the gateway)")
    parser.add_argument("--check-digits", type=int, default=5, help="held-out digits every target must answer alike")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (make bench does this)")

    def say(message: str) -> None:
        print(message, flush=True)

    out = (args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("bench-peers-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for peer in ("kserve", "bentoml"):  # first use: install before anything runs, with pip's progress shown
        if peer in args.peers:
            peer_python(peer, say)
    png = holdout_png()
    pngs = [holdout_png(i) for i in range(args.check_digits)]
    bodies = write_bodies(out, {name: make(png) for name, make in BODIES.items()})
    settings = bench_settings(out)
    peer_models = triton_peer.write_repository(out / "peer-models", REPO_ROOT)
    versions = {"nvidia-pytriton (tritonserver)": pinned(REPO_ROOT / "requirements.lock", "nvidia-pytriton")}
    versions.update({peer: pinned(requirements(peer), peer) for peer in ("kserve", "bentoml") if peer in args.peers})
    results: list[Measurement] = []
    not_measured: dict[str, str] = {}
    with contextlib.ExitStack() as running:
        stack = running.enter_context(PeersStack(settings, CONFIGS / "inference-fused.yaml", peer_models=peer_models,
                                                 say=lambda m: say(f"[stack] {m}")))
        triton_pid = stack.triton.proc.pid
        triton_http = stack.triton.http_url
        peers = {
            "triton-direct": Peer("triton-direct", f"{triton_http}/v2/models/{digits_io.ENSEMBLE}/infer", "features",
                                  floor_answer, CpuMeter(triton_pid)),
            "gateway-fused": Peer("gateway-fused", f"{stack.gateway_url}/v1/predict", "json", predictions_answer,
                                  CpuMeter(triton_pid, stack.ray.proc.pid)),
        }
        if args.serve_floor:
            say("[peers] deploying the Serve floor (an ingress that does no work) beside the gateway ...")
            peers["serve-floor"] = Peer("serve-floor", deploy_serve_floor(stack, out), "json", predictions_answer,
                                        CpuMeter(triton_pid, stack.ray.proc.pid),
                                        ["the gateway's transport alone: Ray Serve (throughput mode) and HAProxy, an "
                                         "ingress that reads the body and answers a fixed JSON, no model, no Triton"])
        starters = {"kserve": start_kserve, "bentoml": start_bentoml}
        for name in args.peers:
            if name == "triton-alone":
                peers[name] = Peer(name, f"{triton_http}/v2/models/{triton_peer.PIPELINE}/infer", "oip-image",
                                   oip_answer, CpuMeter(triton_pid),
                                   ["pre and post are Python-backend models around `digits` in one Triton ensemble"])
                continue
            say(f"[peers] starting {name} ...")
            try:
                server, url = starters[name](stack, out, say)
                running.enter_context(server)
            except Exception as exc:  # one peer that cannot start does not cost the others their run
                not_measured[name] = f"did not start: {str(exc)[:300]}"
                say(f"[peers] {name} did not start: {exc}")
                continue
            peers[name] = Peer(name, url, "json", predictions_answer, CpuMeter(server.pid, triton_pid),
                               [NOTES[name]])

        say(f"[peers] checking every target answers {args.check_digits} held-out digits as the gateway does ...")
        reference = [ask(peers["gateway-fused"], p) for p in pngs]
        for name in list(peers):
            if name not in ("gateway-fused", "serve-floor") and (why := check(peers[name], reference, pngs)):
                not_measured[name] = f"answers differ from the gateway's: {why}"
                say(f"[peers] {name}: {not_measured[name]}")
                del peers[name]
        say(f"[peers] answers agree: {', '.join(peers)}")

        for c in args.concurrency:  # every target at one concurrency, then the next: the same machine state
            for name, peer in peers.items():
                target = Target(name, peer.url, *bodies[peer.body])
                results.append(report(run_wrk(target, c, args.duration, args.warmup, peer.cpu)))
    shutil.rmtree(settings.var_dir, ignore_errors=True)
    shutil.rmtree(settings.ray.temp_dir, ignore_errors=True)  # this process's own (/tmp/rts-bench-<pid>)
    table = write_report(out, results, args, peers, not_measured, versions)
    say("\n" + table + f"\nwritten to {out}")
    if not_measured:
        say("not measured: " + "; ".join(f"{k}: {v}" for k, v in not_measured.items()))
        sys.exit(1)
    return out


if __name__ == "__main__":
    main()

"""Benchmark: Triton called directly (the floor) vs the gateway pipeline, same inputs, one run.

Usage::

    make bench                                   # or: python -m loadtests.bench --duration 10
    python -m loadtests.bench --concurrency 1 8 32 --duration 8

Starts its own stack (tritonserver + Ray + Serve) on free ports, then for each target and
concurrency runs ``wrk`` (C, one thread: a Python client saturates 2 cores before the server
does) for a warm-up and a measured interval. Targets:

- ``triton-direct``: Triton's HTTP /v2 infer with the preprocessed 64 features (no pre/post);
- ``gateway-composed``: POST /v1/predict with the PNG, through Preprocess -> TritonEnsemble ->
  Postprocess deployments;
- ``gateway-fused``: the same request, all stages inside the ingress replica;
- ``gateway-fused-traced``: the fused layout redeployed with tracing on (OTLP/HTTP to a receiver in
  this process, every request sampled): what tracing costs, next to the same layout with it off;
- ``fastapi-onnxruntime``: what many users would write instead: one uvicorn process with the same
  preprocessing, the same ONNX files run by onnxruntime in-process, the same postprocessing.

Besides latency and throughput, each point reports the server side's CPU time per request (all
processes of the system under test: tritonserver, and for the gateway every process of the Ray
cluster; psutil): on a shared 2-core machine this moves far less with outside noise than req/s.

The stack runs without the retraining listener: one digit sent thousands of times is drifted
traffic by definition, and the drift watch would (rightly) request a retraining run that then
competes with the measurement for the same two cores.

Writes ``loadtests/results/bench-<time>/`` with ``results.json``, ``results.md`` and ``bench.png``.
``make bench`` then runs ``loadtests/bench_peers.py`` (KServe, BentoML, Triton alone) into its ``peers/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from services.modelkit.discovery import load_package
from services.models.digits.data import FileVariant, load_split, render
from services.runtime.processes import ManagedProcess, free_port, free_ports, wait_until
from services.runtime.stack import Stack, render_serve_config
from services.settings import REPO_ROOT, Settings
from services.telemetry.otlp_receiver import OtlpReceiver

LUA = Path(__file__).with_name("wrk_post.lua")
CONFIGS = REPO_ROOT / "ray_apps" / "configs"


@dataclass
class Target:
    name: str
    url: str
    body_file: Path
    content_type: str


@dataclass
class Measurement:
    target: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    server_cpu_ms_per_req: float | None = None


class CpuMeter:
    """CPU seconds (user + system) used so far by some processes and all their descendants."""

    def __init__(self, *pids: int) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def total(self) -> float:
        seen, used = set(), 0.0
        for root in self.roots:
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    t = proc.cpu_times()
                    used += t.user + t.system
                except psutil.Error:  # exited between listing and reading
                    pass
        return used


def holdout_png(index: int = 0) -> bytes:
    """Held-out digit `index` as a 28x28 PNG, dark ink on light paper (what users send)."""
    return render(load_split().holdout.x[index], FileVariant(28, "PNG", dark_ink=True))


def features_body(png: bytes) -> tuple[bytes, str]:
    """Triton's HTTP /v2 infer body of the image's 64 features (the floor: no pre/post in the server)."""
    features = load_package("services.models.digits").from_image(png)
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                   "data": [float(v) for v in features]}]}).encode(), "application/json"


def write_bodies(out: Path, bodies: dict[str, tuple[bytes, str]]) -> dict[str, tuple[Path, str]]:
    """Each body into ``out/body-<name>.bin`` (wrk reads it from there): name -> (path, content type)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (data, ctype) in bodies.items():
        path = out / f"body-{name}.bin"
        path.write_bytes(data)
        files[name] = (path, ctype)
    return files


def make_bodies(out: Path) -> dict[str, tuple[Path, str]]:
    """One held-out digit as a 28x28 PNG (gateway) and as its 64 features (Triton direct)."""
    png = holdout_png()
    boundary = uuid.uuid4().hex
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return write_bodies(out, {"gateway": (multipart, f"multipart/form-data; boundary={boundary}"),
                              "triton": features_body(png)})


def run_wrk(target: Target, concurrency: int, duration_s: int, warmup_s: int,
            cpu: CpuMeter | None = None) -> Measurement:
    def wrk(seconds: int) -> dict:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), target.url,
               "--", str(target.body_file), target.content_type]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
        match = re.search(r"WRK_JSON (\{.*\})", out)
        if not match:
            raise RuntimeError(f"wrk printed no summary:\n{out}")
        return json.loads(match.group(1))

    if warmup_s:
        wrk(warmup_s)
    cpu_before = cpu.total() if cpu else 0.0
    r = wrk(duration_s)
    cpu_ms = (cpu.total() - cpu_before) * 1000 / max(1, r["requests"]) if cpu else None
    return Measurement(target.name, concurrency, rps=r["requests"] / (r["duration_us"] / 1e6),
                       p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                       requests=r["requests"], errors=r["socket_errors"] + r["non_2xx"],
                       server_cpu_ms_per_req=cpu_ms)


def report(m: Measurement) -> Measurement:
    cpu = f"  server CPU {m.server_cpu_ms_per_req:5.2f} ms/req" if m.server_cpu_ms_per_req is not None else ""
    print(f"[bench] {m.target:20s} c={m.concurrency:<3d} p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  "
          f"{m.rps:8.0f} req/s  errors {m.errors}{cpu}", flush=True)
    return m


def to_markdown(results: list[Measurement], floor: str = "triton-direct") -> str:
    base = {(m.concurrency): m for m in results if m.target == floor}
    lines = ["| target | concurrency | p50 ms | p99 ms | req/s | p50 - floor ms | req/s vs floor | server CPU ms/req "
             "| errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in results:
        b = base.get(m.concurrency)
        extra = f"{m.p50_ms - b.p50_ms:+.2f} | {m.rps / b.rps:.2f}x" if b else "- | -"
        cpu = f"{m.server_cpu_ms_per_req:.2f}" if m.server_cpu_ms_per_req is not None else "-"
        lines.append(f"| {m.target} | {m.concurrency} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.rps:.0f} | "
                     f"{extra} | {cpu} | {m.errors} |")
    return "\n".join(lines) + "\n"


def plot(results: list[Measurement], path: Path,
         title: str = "Triton direct vs gateway (same digit, same run)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(m.target for m in results))
    concurrencies = sorted({m.concurrency for m in results})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        xs = [j + i * width for j in range(len(concurrencies))]
        by_c = {m.concurrency: m for m in results if m.target == t}
        for ax, attr in zip(axes, ("p50_ms", "p99_ms", "rps")):
            ax.bar(xs, [getattr(by_c[c], attr) if c in by_c else 0 for c in concurrencies], width, label=t)
    for ax, heading in zip(axes, ("p50 latency (ms)", "p99 latency (ms)", "throughput (req/s)")):
        ax.set_title(heading)
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(concurrencies))])
        ax.set_xticklabels([f"c={c}" for c in concurrencies])
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class BaselineServer(ManagedProcess):
    """``loadtests.baseline_server`` on a free port, serving the stack's version 1 of the digits files."""

    what = "baseline server"

    def __init__(self, repository: str, out: Path) -> None:
        super().__init__(out / "baseline-server.log")
        self.repository, self.port = repository, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "loadtests.baseline_server", "--repository", self.repository, "--version", "1",
                "--port", str(self.port)]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/docs").status_code == 200


def bench_baseline(stack: Stack, args, bodies, out: Path) -> list[Measurement]:
    with BaselineServer(stack.triton_repository, out) as server:
        target = Target("fastapi-onnxruntime", f"{server.url}/v1/predict", *bodies["gateway"])
        cpu = CpuMeter(server.pid)
        return [report(run_wrk(target, c, args.duration, args.warmup, cpu)) for c in args.concurrency]


def bench_settings(out: Path) -> Settings:
    """The bench's stack: its state under ``out/var``, every port free, no retraining listener (see the module
    docstring), Ray's temp dir short and outside the repository."""
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    return Settings(
        var_dir=out / "var", triton={"http_port": http, "grpc_port": grpc, "metrics_port": metrics},
        ray={"gcs_port": gcs, "dashboard_port": dashboard, "temp_dir": Path(f"/tmp/rts-bench-{os.getpid()}")},
        serve={"http_port": serve}, launcher={"metrics_port": launcher}, listener={"enabled": False})


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Triton direct vs gateway benchmark")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per point")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per point")
    parser.add_argument("--layouts", nargs="+", default=["composed", "fused"], choices=["composed", "fused"])
    parser.add_argument("--no-tracing", action="store_true", help="skip the fused layout with tracing on")
    parser.add_argument("--no-baseline", action="store_true", help="skip the FastAPI + onnxruntime server")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (make bench does this)")

    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("bench-%Y%m%d-%H%M%S")
    bodies = make_bodies(out)
    settings = bench_settings(out)
    var_dir = settings.var_dir
    results: list[Measurement] = []
    config_for = {"composed": CONFIGS / "inference.yaml", "fused": CONFIGS / "inference-fused.yaml"}
    with Stack(settings, config_for[args.layouts[0]], say=lambda m: print(f"[stack] {m}", flush=True)) as stack:
        triton = Target("triton-direct", f"{stack.triton.http_url}/v2/models/digits/infer", *bodies["triton"])
        triton_cpu = CpuMeter(stack.triton.proc.pid)
        system_cpu = CpuMeter(stack.triton.proc.pid, stack.ray.proc.pid)

        def deploy(layout: str, env_vars: dict[str, str] | None = None, suffix: str = "") -> None:
            rendered = render_serve_config(config_for[layout], out / f"serve-{layout}{suffix}.yaml",
                                           http_port=settings.serve.http_port, env_vars=env_vars)
            print(f"[bench] deploying the {layout} layout{suffix} ...", flush=True)
            stack.ray.serve_deploy(rendered)
            wanted = (env_vars or {})

            def rolled_out() -> bool:  # the new config is live and no old replica is still around
                app = stack.ray.serve_status()["applications"]["inference"]
                live_env = ((app.get("deployed_app_config") or {}).get("runtime_env") or {}).get("env_vars") or {}
                settled = all(len(d["replicas"]) == d["target_num_replicas"]
                              and all(r["state"] == "RUNNING" for r in d["replicas"])
                              for d in app["deployments"].values())
                return (app["status"] == "RUNNING" and all(live_env.get(k) == v for k, v in wanted.items())
                        and settled and stack.healthy())

            wait_until(rolled_out, timeout_s=120, what=f"the {layout} layout{suffix}", interval_s=0.5)

        def measure_gateway(name: str, c: int) -> None:
            gateway = Target(name, f"{stack.gateway_url}/v1/predict", *bodies["gateway"])
            results.append(report(run_wrk(gateway, c, args.duration, args.warmup, system_cpu)))

        for layout in args.layouts:
            if layout != args.layouts[0]:
                deploy(layout)
            for c in args.concurrency:
                # Measure the floor next to each gateway point so both see the same machine state.
                if layout == args.layouts[0]:
                    results.append(report(run_wrk(triton, c, args.duration, args.warmup, triton_cpu)))
                measure_gateway(f"gateway-{layout}", c)
        if not args.no_tracing and "fused" in args.layouts:
            with OtlpReceiver() as receiver:
                deploy("fused", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                 "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                 "OTEL_TRACES_SAMPLER": "parentbased_always_on"}, suffix="-traced")
                for c in args.concurrency:
                    measure_gateway("gateway-fused-traced", c)
                print(f"[bench] the receiver got {len(receiver.spans())} spans", flush=True)
        if not args.no_baseline:
            results += bench_baseline(stack, args, bodies, out)
    results.sort(key=lambda m: (m.concurrency, m.target != "triton-direct", m.target))
    (out / "results.json").write_text(json.dumps([asdict(m) for m in results], indent=2))
    table = to_markdown(results)
    (out / "results.md").write_text(table)
    plot(results, out / "bench.png")
    shutil.rmtree(var_dir, ignore_errors=True)
    shutil.rmtree(settings.ray.temp_dir, ignore_errors=True)  # Ray's session files of this bench (its logs too)
    print("\n" + table + f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    main()

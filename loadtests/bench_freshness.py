"""Benchmark: how fresh serving is, and how cold a start from zero is, measured the same way every time.

Usage::

    make bench-freshness                     # or: python -m loadtests.bench_freshness --trials 3

One stack as ``make up`` runs it (the fused gateway, the retraining listener on the local folder source, the
rollout controller, digits' shipped delivery policy), its own ports and folders. Two measurements:

- **new data -> a candidate serving**: a labelled file (300 training digits, a little fainter each trial) is
  written into ``datasets/digits/incoming/``; the clock stops when a version trained on it is in shadow, canary or
  production, i.e. answers or mirrors live requests. The report splits the time into the run's own steps (from
  the run record) and the rest: the listener's poll and debounce, the job's start, the controller's pick-up.
- **cold start from zero**: the autoscaling layout (``inference-autoscale.yaml``: Preprocess at zero replicas),
  one request after Preprocess has rested at zero; the clock is the client's, from sending to the answer. Beside
  it, the same way, Serve's own floor: an ingress asking a do-nothing deployment scaled to zero
  (``loadtests/peers/serve_floor.py``, ``cold_app``), whose replica imports nothing of ours.

Writes ``loadtests/results/freshness-<time>/`` with ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import yaml

from loadtests.bench import CONFIGS, bench_settings
from services.models.digits.data import load_split
from services.models.digits.samples import holdout_images
from services.registry.records import Records
from services.runtime.stack import Stack, render_serve_config
from services.settings import REPO_ROOT, Settings
from services.storage import data_store

MODEL = "digits"
ADMIN_TOKEN = "bench-freshness"
SERVING = ("shadow", "canary", "production")


def wait(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def freshness_trial(stack: Stack, records: Records, trial: int, say) -> dict:
    split = load_split()
    rows = slice(300 * trial, 300 * trial + 300)  # data no earlier trial sent: a run is never skipped as stale
    buf = io.BytesIO()
    np.savez(buf, images=np.clip(split.train.x[rows] * (0.95 - 0.02 * trial), 0, 16), labels=split.train.y[rows])
    incoming = Path(data_store(stack.settings).root) / f"datasets/{MODEL}/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    name = f"fresh-{trial}-{int(time.time())}.npz"
    before = {int(v) for v in (records.stages(MODEL) or {}).get("versions", {})}
    (incoming / f".{name}.part").write_bytes(buf.getvalue())
    (incoming / f".{name}.part").rename(incoming / name)  # lands whole, as an upload's final rename does
    dropped = time.time()
    say(f"[freshness] trial {trial}: {name} dropped; waiting for a version trained on it to serve ...")

    def serving_version():
        versions = (records.stages(MODEL) or {}).get("versions", {})
        new = [int(v) for v, stage in versions.items() if int(v) not in before and stage in SERVING]
        return max(new) if new else None

    version = wait(serving_version, 240, f"a new {MODEL} version in {'/'.join(SERVING)}")
    seen = time.time()
    book = records.stages(MODEL) or {}
    moves = [t for t in book.get("transitions", []) if t.get("version") == version]
    record = wait(lambda: records.version(MODEL, version), 60, f"v{version}'s record")  # written just after it goes live
    run_id = (record.get("lineage") or {}).get("run_id") or record.get("run_id")
    run = None
    if run_id:  # the run finishes its record just after its version goes live
        run = wait(lambda: (r := records.run(run_id)) and r.get("outcome") != "running" and r, 60,
                   f"run {run_id}'s final record")
    steps = {k: round(v.get("seconds") or 0.0, 2) for k, v in ((run or {}).get("stages") or {}).items()}
    first_serving = next((t for t in moves if t.get("to") in SERVING), None)
    result = {"trial": trial, "version": version, "seconds": round(seen - dropped, 2), "run_id": run_id,
              "run_steps_s": steps, "run_steps_total_s": round(sum(steps.values()), 2),
              "transitions": [{k: t.get(k) for k in ("from", "to", "at", "by")} for t in moves]}
    if run and run.get("started_at"):
        result["drop_to_run_start_s"] = round(epoch(run["started_at"]) - dropped, 2)
    if first_serving:
        result["drop_to_serving_by_registry_s"] = round(epoch(first_serving["at"]) - dropped, 2)
    candidate = next((t for t in moves if t.get("to") == "candidate"), None)
    if candidate and first_serving:
        result["candidate_to_serving_s"] = round(epoch(first_serving["at"]) - epoch(candidate["at"]), 2)
    say(f"[freshness] trial {trial}: v{version} serving ({first_serving and first_serving['to']}) after "
        f"{result['seconds']:.1f} s; run steps {steps}")
    return result


def cold_start_trials(stack: Stack, out: Path, trials: int, say) -> dict[str, list[float]]:
    rendered = render_serve_config(CONFIGS / "inference-autoscale.yaml", out / "serve-autoscale.yaml",
                                   http_port=stack.settings.serve.http_port)
    config = yaml.safe_load(rendered.read_text())
    zero = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Preprocess")["autoscaling_config"]
    config["applications"].append({
        "name": "cold-floor", "route_prefix": "/cold-floor", "import_path": "loadtests.peers.serve_floor:cold_app",
        "runtime_env": config["applications"][0].get("runtime_env", {}),
        "deployments": [{"name": "FloorNoop", "autoscaling_config": zero}]})
    rendered.write_text(yaml.safe_dump(config, sort_keys=False))
    stack.ray.serve_deploy(rendered)
    files = [("file", ("d.png", holdout_images(1)[0].data, "image/png"))]
    targets = {  # name: (application, deployment at zero, the request)
        "gateway (Preprocess from zero)": ("inference", "Preprocess",
                                           lambda: httpx.post(f"{stack.gateway_url}/v1/predict", files=files, timeout=60)),
        "Serve floor (a do-nothing deployment from zero)": (
            "cold-floor", "FloorNoop", lambda: httpx.post(f"{stack.gateway_url}/cold-floor", content=b"{}", timeout=60)),
    }

    def replicas(app_name: str, deployment: str) -> int:
        app = stack.ray.serve_status()["applications"].get(app_name)
        if not app or app["status"] != "RUNNING":
            return -1
        d = app["deployments"].get(deployment, {})
        return sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")

    times: dict[str, list[float]] = {name: [] for name in targets}
    for trial in range(1, trials + 1):
        for name, (app_name, deployment, send) in targets.items():
            wait(lambda: replicas(app_name, deployment) == 0, 120, f"{deployment} at zero replicas", interval_s=0.5)
            time.sleep(2)  # resting at zero, not just arrived there
            t0 = time.monotonic()
            response = send()
            seconds = time.monotonic() - t0
            response.raise_for_status()
            times[name].append(round(seconds, 3))
            say(f"[cold start] trial {trial}: {name}: first request answered in {seconds:.2f} s")
    return times


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="new data -> a candidate serving; cold start from zero")
    parser.add_argument("--trials", type=int, default=3, help="freshness trials (0: cold start only)")
    parser.add_argument("--cold-trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = (args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("freshness-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = bench_settings(out).model_dump(exclude_unset=True)
    settings = Settings(**{**base, "listener": {"enabled": True}, "admin": {"token": ADMIN_TOKEN}})

    def say(message: str) -> None:
        print(message, flush=True)

    with Stack(settings, CONFIGS / "inference-fused.yaml", say=lambda m: say(f"[stack] {m}")) as stack:
        records = Records(data_store(settings))
        fresh = [freshness_trial(stack, records, trial, say) for trial in range(1, args.trials + 1)]
        cold = cold_start_trials(stack, out, args.cold_trials, say)
    shutil.rmtree(settings.ray.temp_dir, ignore_errors=True)  # Ray's session files of this bench (its logs too)
    summary = {
        "new_data_to_candidate_serving_s": {"median": statistics.median(r["seconds"] for r in fresh) if fresh else None,
                                            "trials": [r["seconds"] for r in fresh]},
        "cold_start_from_zero_s": {name: {"median": statistics.median(ts), "trials": ts} for name, ts in cold.items()},
    }
    (out / "results.json").write_text(json.dumps({"summary": summary, "freshness": fresh, "cold_start": cold},
                                                 indent=2))
    lines = ["# Freshness and cold start", "",
             "| measure | median s | trials s |", "|---|---:|---|",
             *([f"| new data -> a candidate serving | {summary['new_data_to_candidate_serving_s']['median']:.1f} | "
                f"{', '.join(f'{s:.1f}' for s in summary['new_data_to_candidate_serving_s']['trials'])} |"] if fresh else []),
             *(f"| cold start from zero, {name}: first request | {statistics.median(ts):.2f} | "
               f"{', '.join(f'{s:.2f}' for s in ts)} |" for name, ts in cold.items()),
             "", "Where the freshness time goes, per trial:", ""]
    for r in fresh:
        lines.append(f"- trial {r['trial']} (v{r['version']}): {r['seconds']:.1f} s; drop -> run start "
                     f"{r.get('drop_to_run_start_s', '?')} s; run steps {r['run_steps_s']} "
                     f"(sum {r['run_steps_total_s']} s); candidate -> serving {r.get('candidate_to_serving_s', '?')} s")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    say("\n".join(lines) + f"\n\nwritten to {out}")
    return out


if __name__ == "__main__":
    main()

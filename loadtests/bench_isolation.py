"""Benchmark: does serving keep its throughput while a retraining run trains on the same machine?

Usage::

    make bench-isolation                     # or: python -m loadtests.bench_isolation --rounds 2

One stack (Triton, Ray, the fused gateway; no listener), one sitting. The gateway is measured with wrk as in
bench.py (the same JSON body as bench_peers), at c=1 and c=32, in three states, round by round:

- ``no run``: nothing else on the machine;
- ``run (as shipped)``: retraining runs of digits keep coming (a new one is submitted through the Ray Jobs
  API the moment the last one ends), with the shipped isolation: each Ray Train worker takes a unit of the
  ``training`` resource, runs at niceness ``RTS_RETRAIN_WORKER_NICE`` (19) with its BLAS/OpenMP threads capped;
- ``run (no isolation)``: the same runs with ``RTS_RETRAIN_WORKER_NICE=0``: workers at Ray's niceness, threads
  uncapped (what the machine did before).

The runs are forced (``rts models retrain --force``: they train on the data there is) and the model's delivery
policy is set to ``manual`` for the bench, so a run's candidate waits for an operator instead of taking a
share of the measured traffic. Every point says how many runs were in progress while it was measured, and the
report gives the runs' own durations in each state: what the isolation costs training.

Writes ``loadtests/results/isolation-<time>/`` with ``results.json``, ``results.md`` and ``isolation.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from loadtests.bench import CONFIGS, Measurement, Target, bench_settings, holdout_png, report, run_wrk, write_bodies
from loadtests.bench_peers import json_body
from services.registry.records import Records
from services.retraining.jobs import TERMINAL, RayJobs, submit_run
from services.retraining.run import FINISHED
from services.retraining.requests import retrain_request
from services.runtime.stack import Stack
from services.settings import REPO_ROOT, Settings
from services.storage import data_store

MODEL = "digits"
STATES = ("no run", "run (as shipped)", "run (no isolation)")
ADMIN_TOKEN = "bench-isolation"


@dataclass
class Run:
    run_id: str
    state: str
    submitted: float
    ended: float | None = None
    outcome: str = ""


@dataclass
class RunKeeper:
    """Keeps one retraining run in progress: submits the next one as soon as the last one ends."""

    settings: Settings
    state: str
    runs: list[Run] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.jobs = RayJobs(self.settings.ray.jobs_url)
        self.records = Records(data_store(self.settings))
        self.thread = threading.Thread(target=self._loop, name="run-keeper", daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            event = retrain_request(MODEL, "bench_isolation: a run in progress", source="loadtests/bench_isolation",
                                    force=True)
            run = Run(submit_run(self.settings, MODEL, [event]), self.state, time.monotonic())
            self.runs.append(run)
            while self.jobs.get_job_status(run.run_id) not in TERMINAL:
                if self.stop.wait(0.5):
                    self.jobs.stop_job(run.run_id)  # the bench is over: end it
                    break
            run.ended = time.monotonic()
            record = self.records.run(run.run_id) or {}
            run.outcome = str(record.get("outcome", "lost"))

    def training(self) -> bool:
        """A run has been submitted and has not ended."""
        return any(r.ended is None for r in self.runs)

    def __enter__(self) -> RunKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def variant(settings: Settings, **retrain) -> Settings:
    """The same settings with some RTS_RETRAIN_* values changed (they reach the run through its job's env)."""
    values = settings.model_dump(exclude_unset=True)
    values["retrain"] = {**values.get("retrain", {}), **retrain}
    return Settings(**values)


def set_manual_policy(gateway_url: str) -> None:
    response = httpx.put(f"{gateway_url}/admin/models/{MODEL}/policy", json={"yaml": "strategy: manual\n"},
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    response.raise_for_status()


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (c, attr, heading) in zip(axes, ((32, "rps", "c=32 throughput (req/s)"), (32, "p99_ms", "c=32 p99 (ms)"),
                                             (1, "p50_ms", "c=1 p50 (ms)"))):
        for i, state in enumerate(STATES):
            values = [r[attr] for r in results if r["state"] == state and r["concurrency"] == c]
            ax.scatter([i] * len(values), values, s=30)
            if values:
                ax.bar(i, statistics.median(values), alpha=0.35)
        ax.set_xticks(range(len(STATES)))
        ax.set_xticklabels(STATES, fontsize=8)
        ax.set_title(heading)
    fig.suptitle("The gateway with and without a retraining run on the same 2 cores (bars: medians, dots: rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="serving throughput with a retraining run in progress")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per point")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (make bench does this)")
    out = (args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("isolation-%Y%m%d-%H%M%S")).resolve()
    body = write_bodies(out, {"json": json_body(holdout_png())})["json"]
    base = bench_settings(out)
    settings = variant(Settings(**{**base.model_dump(exclude_unset=True), "admin": {"token": ADMIN_TOKEN}}))
    unisolated = variant(settings, worker_nice=0)
    results: list[dict] = []
    keepers: list[RunKeeper] = []
    with Stack(settings, CONFIGS / "inference-fused.yaml", say=lambda m: print(f"[stack] {m}", flush=True)) as stack:
        set_manual_policy(stack.gateway_url)
        target = Target("gateway-fused", f"{stack.gateway_url}/v1/predict", *body)
        for round_ in range(1, args.rounds + 1):
            for state in STATES:
                keeper = None
                if state != "no run":
                    keeper = RunKeeper(settings if state == "run (as shipped)" else unisolated, state).__enter__()
                    keepers.append(keeper)
                    time.sleep(8)  # past the job's start-up, into training
                for c in (1, 32):
                    print(f"[isolation] round {round_}/{args.rounds}: {state}, c={c} ...", flush=True)
                    m: Measurement = report(run_wrk(target, c, args.duration, args.warmup))
                    results.append({**asdict(m), "state": state, "round": round_,
                                    "runs_in_progress_at_end": int(keeper.training()) if keeper else 0})
                if keeper is not None:
                    keeper.__exit__()
                    print(f"[isolation] {state}: runs {[(r.run_id[-6:], r.outcome) for r in keeper.runs]}", flush=True)
    shutil.rmtree(settings.ray.temp_dir, ignore_errors=True)
    runs = [asdict(r) for k in keepers for r in k.runs]
    finished = {state: [r["ended"] - r["submitted"] for r in runs
                        if r["state"] == state and r["ended"] and r["outcome"] in FINISHED]
                for state in STATES[1:]}
    lines = [f"# Serving with a retraining run in progress ({args.rounds} rounds, {args.duration} s per point)", "",
             "| state | c=1 p50 ms | c=32 req/s | c=32 p99 ms | c=32 req/s vs no run | points measured with a run "
             "in progress |", "|---|---:|---:|---:|---:|---:|"]
    median = {}
    for state in STATES:
        mine = [r for r in results if r["state"] == state]
        c1 = statistics.median(r["p50_ms"] for r in mine if r["concurrency"] == 1)
        rps = statistics.median(r["rps"] for r in mine if r["concurrency"] == 32)
        p99 = statistics.median(r["p99_ms"] for r in mine if r["concurrency"] == 32)
        median[state] = rps
        busy = sum(r["runs_in_progress_at_end"] for r in mine) if state != "no run" else "-"
        lines.append(f"| {state} | {c1:.2f} | {rps:.0f} | {p99:.1f} | {rps / median['no run']:.2f}x | "
                     f"{busy if state == 'no run' else f'{busy} of {len(mine)}'} |")
    lines += ["", "Runs that ended while measured (submit to end, seconds): "
              + "; ".join(f"{state}: {', '.join(f'{d:.0f}' for d in ds) or 'none'}" for state, ds in finished.items()),
              "", "Every point:", "", "| round | state | c | p50 ms | p99 ms | req/s | run in progress at the end |",
              "|---:|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['round']} | {r['state']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | "
              f"{r['rps']:.0f} | {'yes' if r['runs_in_progress_at_end'] else '-'} |" for r in results]
    (out / "results.json").write_text(json.dumps({"points": results, "runs": runs}, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "isolation.png")
    print("\n".join(lines[:7]) + f"\n\nwritten to {out}", flush=True)
    return out


if __name__ == "__main__":
    main()

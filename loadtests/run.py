"""Run a load profile headless against a running stack and write a report folder.

Usage::

    python -m loadtests.run --profile ramp --host http://127.0.0.1:8000 --dashboard http://127.0.0.1:8265

Writes ``loadtests/results/<profile>-<time>/`` (or ``--out``): Locust's CSVs and HTML report,
``timings.csv`` (every request), ``stages.json`` / ``stages.md`` (p50/p90/p99 and throughput per
stage), ``replicas.csv`` (running replicas of each Serve deployment, polled from the Ray dashboard
every second) and ``load.png`` (users and req/s, latency, replicas against time). Stops by itself at
the end of the profile; prints progress every few seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from loadtests.profiles import PROFILES, timeline
from services.settings import REPO_ROOT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def poll_replicas(dashboard: str, app: str, out: Path, stop: threading.Event, interval_s: float = 1.0) -> None:
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "deployment", "running_replicas"])
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=3) as resp:
                    status = json.load(resp)
                deployments = status.get("applications", {}).get(app, {}).get("deployments", {})
                now = time.time()
                for name, d in deployments.items():
                    running = sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")
                    writer.writerow([f"{now:.3f}", name, running])
                f.flush()
            except OSError:
                pass
            stop.wait(interval_s)


def stage_summary(timings: np.ndarray, names: list[str], started: float, profile: str) -> list[dict]:
    rows = []
    for i, (start, end, stage) in enumerate(timeline(PROFILES[profile])):
        t = timings[(timings[:, 0] >= started + start) & (timings[:, 0] < started + end)] if len(timings) else timings
        ok = t[t[:, 2] == 1] if len(t) else t
        rows.append({
            "stage": i, "start_s": start, "duration_s": stage.duration_s, "users": stage.users,
            "requests": int(len(t)), "failures": int(len(t) - len(ok)),
            "rps": round(len(t) / stage.duration_s, 1),
            **{f"p{q}_ms": (round(float(np.percentile(ok[:, 1], q)), 1) if len(ok) else None) for q in (50, 90, 99)},
        })
    return rows


def plot(timings: np.ndarray, replicas_csv: Path, started: float, profile: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    tl = timeline(PROFILES[profile])
    xs = [p for s, e, st in tl for p in (s, e)]
    ys = [st.users for s, e, st in tl for _ in (0, 1)]
    axes[0].plot(xs, ys, color="grey", label="users")
    if len(timings):
        rel = timings[:, 0] - started
        bins = np.arange(0, max(rel.max(), 1) + 5, 5)
        counts, _ = np.histogram(rel, bins)
        ax2 = axes[0].twinx()
        ax2.plot(bins[:-1] + 2.5, counts / 5, color="tab:blue", label="req/s")
        ax2.set_ylabel("req/s")
        idx = np.digitize(rel, bins)
        for q, color in ((50, "tab:green"), (99, "tab:red")):
            vals = [np.percentile(timings[idx == b, 1], q) if (idx == b).any() else np.nan for b in range(1, len(bins))]
            axes[1].plot(bins[:-1] + 2.5, vals, color=color, label=f"p{q}")
    axes[0].set_ylabel("users")
    axes[1].set_ylabel("latency (ms)")
    axes[1].legend()
    with replicas_csv.open() as f:
        rows = list(csv.DictReader(f))
    for name in sorted({r["deployment"] for r in rows}):
        pts = [(float(r["time"]) - started, int(r["running_replicas"])) for r in rows if r["deployment"] == name]
        axes[2].step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    axes[2].set_ylabel("running replicas")
    axes[2].set_xlabel("seconds since start")
    axes[2].legend()
    fig.suptitle(f"load profile '{profile}'")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_profile(profile: str, host: str, dashboard: str, out: Path, app: str = "inference") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    total_s = sum(s.duration_s for s in PROFILES[profile])
    timings_path = out / "timings.csv"
    timings_path.unlink(missing_ok=True)
    stop = threading.Event()
    poller = threading.Thread(target=poll_replicas, args=(dashboard, app, out / "replicas.csv", stop), daemon=True)
    poller.start()
    started = time.time()
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
           "--load-profile", profile, "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
           "--stop-timeout", "10", "--only-summary", "--loglevel", "WARNING"]
    env = {**os.environ, "LOADTEST_TIMINGS": str(timings_path), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=open(out / "locust.log", "w"), stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None:
            time.sleep(5)
            elapsed = time.time() - started
            done = sum(1 for _ in timings_path.open()) if timings_path.exists() else 0
            print(f"[load] {profile}: {elapsed:5.0f}/{total_s} s, {done} requests", flush=True)
            if elapsed > total_s + 90:
                proc.terminate()
    finally:
        if proc.poll() is None:
            proc.kill()
        stop.set()
        poller.join(timeout=5)
    data = []
    if timings_path.exists():
        for line in timings_path.read_text().splitlines():
            t, rt, ok, _ = line.split(",", 3)
            data.append((float(t), float(rt), int(ok)))
    timings = np.array(data) if data else np.zeros((0, 3))
    stages = stage_summary(timings, [], started, profile)
    (out / "stages.json").write_text(json.dumps(stages, indent=2))
    header = "| stage | users | s | requests | failures | req/s | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    (out / "stages.md").write_text(header + "".join(
        f"| {s['stage']} | {s['users']} | {s['duration_s']} | {s['requests']} | {s['failures']} | {s['rps']} | "
        f"{s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |\n" for s in stages))
    plot(timings, out / "replicas.csv", started, profile, out / "load.png")
    return {"out": str(out), "stages": stages, "locust_exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description="run a load profile headless and write a report")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ramp")
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--dashboard", default="http://127.0.0.1:8265")
    parser.add_argument("--app", default="inference", help="Serve application whose replicas to follow")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime(f"{args.profile}-%Y%m%d-%H%M%S")
    result = run_profile(args.profile, args.host, args.dashboard, out, args.app)
    print((out / "stages.md").read_text())
    print(f"report: {out}")
    sys.exit(0 if result["locust_exit"] in (0, 1) else result["locust_exit"])


if __name__ == "__main__":
    main()

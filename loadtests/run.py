"""Run a load profile headless against a running stack and write a report folder.

Usage::

    python -m loadtests.run --profile ramp --host http://127.0.0.1:8000 --dashboard http://127.0.0.1:8265

Writes ``loadtests/results/<profile>-<time>/`` (or ``--out``): Locust's CSVs and HTML report,
``timings.csv`` (every request), ``stages.json`` / ``stages.md`` (p50/p90/p99 and throughput per
stage), ``replicas.csv`` (running replicas of each Serve deployment, polled from the Ray dashboard
every second) and ``load.png`` (users and req/s, latency, replicas against time). Stops by itself at
the end of the profile (or when the caller sets ``stop``); prints progress every few seconds.

With ``--rollout MODEL`` (and ``RTS_ADMIN_TOKEN``) it also follows the model's rollout: the
controller's timeline and decisions go to ``rollout-<model>.json``, and ``rollout-<model>.png``
plots the traffic share of each version (as routed, and as answered: from the version named in
each response), each version's p99 latency, live accuracy (or error) and shadow disagreement, with
every decision (shadow, canary step, promote, rollback) marked.
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


def read_timings(path: Path) -> tuple[np.ndarray, list[str]]:
    """(rows of time, ms, ok) and the model:version that answered each row ("" when none)."""
    data, answered = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            t, rt, ok, who, _ = line.split(",", 4)
            data.append((float(t), float(rt), int(ok)))
            answered.append(who)
    return (np.array(data) if data else np.zeros((0, 3))), answered


def fetch_rollout(host: str, model: str, token: str, seconds: int) -> dict | None:
    request = urllib.request.Request(f"{host}/admin/models/{model}/status?timeline={min(seconds, 7200)}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)
    except OSError as exc:
        print(f"[load] could not read the rollout of {model}: {exc}", flush=True)
        return None


def plot_rollout(status: dict, timings: np.ndarray, answered: list[str], started: float, path: Path) -> None:
    """Traffic share per version (routed and answered), p99, live quality and disagreement, decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, timeline_ = status["model"], status.get("timeline") or []
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    versions = sorted({v for p in timeline_ for v in (*p["shares"], *p["versions"])} |
                      {w.split(":", 1)[1] for w in answered if w.startswith(model + ":")}, key=int)
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(versions)}
    ts = [p["t"] - started for p in timeline_]
    for v in versions:
        axes[0].step(ts, [p["shares"].get(v, 0.0) for p in timeline_], where="post", color=colors[v],
                     linestyle="--", label=f"v{v} routed")
    if len(timings):
        rel = timings[:, 0] - started
        bins = np.arange(0, max(rel.max(), 1) + 5, 5)
        idx = np.digitize(rel, bins)
        mine = np.array([w.startswith(model + ":") for w in answered])
        for v in versions:
            hit = np.array([w == f"{model}:{v}" for w in answered])
            share = [hit[(idx == b) & mine].sum() / max(((idx == b) & mine).sum(), 1) for b in range(1, len(bins))]
            axes[0].plot(bins[:-1] + 2.5, share, color=colors[v], label=f"v{v} answered")
    axes[0].set_ylabel("traffic share")
    axes[0].set_ylim(-0.05, 1.05)
    quality = "accuracy" if any("accuracy" in s for p in timeline_ for s in p["versions"].values()) else "mean_abs_error"
    for v in versions:
        pts = [(p["t"] - started, p["versions"].get(v, {})) for p in timeline_]
        axes[1].plot([t for t, s in pts], [s.get("p99_ms") if s.get("p99_ms") is not None else s.get("shadow_p99_ms")
                                           for t, s in pts], color=colors[v], label=f"v{v}")
        axes[2].plot([t for t, s in pts], [s.get(quality) for t, s in pts], color=colors[v], label=f"v{v}")
        axes[3].plot([t for t, s in pts], [s["shadow_disagreements"] / s["shadow_requests"]
                                           if s.get("shadow_requests") else None for t, s in pts],
                     color=colors[v], label=f"v{v}")
    axes[1].set_ylabel("p99 latency (ms)\n(this stage's window)")
    axes[2].set_ylabel(f"live {quality}\n(from feedback)")
    axes[3].set_ylabel("disagreement with\nproduction (shadow)")
    axes[3].set_xlabel("seconds since the load started")
    for decision in status.get("decisions") or []:
        if decision["decision"] in ("fault", "policy"):
            continue
        x = decision["at"] - started
        for ax in axes:
            ax.axvline(x, color="grey", linewidth=0.8, linestyle=":")
        axes[0].annotate(f"v{decision['version']} {decision['decision']}", (x, 1.0), rotation=90, fontsize=7,
                         va="top", ha="right")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"rollout of {model}: traffic share and SLO signals per version")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_profile(profile: str, host: str, dashboard: str, out: Path, app: str = "inference",
                stop_early: threading.Event | None = None, rollout: tuple[str, ...] = (),
                env: dict[str, str] | None = None, admin_token: str | None = None) -> dict:
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
    stop_file = out / "stop"
    stop_file.unlink(missing_ok=True)
    env = {**os.environ, **(env or {}), "LOADTEST_TIMINGS": str(timings_path), "PYTHONPATH": str(REPO_ROOT),
           "LOADTEST_STOP_FILE": str(stop_file)}
    proc = subprocess.Popen(cmd, env=env, stdout=open(out / "locust.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    stopping_since = None
    stop_early = stop_early or threading.Event()
    try:
        while proc.poll() is None:
            if stopping_since is None:
                stop_early.wait(5)
            else:
                time.sleep(1)
            elapsed = time.time() - started
            done = sum(1 for _ in timings_path.open()) if timings_path.exists() else 0
            print(f"[load] {profile}: {elapsed:5.0f}/{total_s} s, {done} requests", flush=True)
            if stopping_since is None and (elapsed > total_s + 90 or stop_early.is_set()):
                # The shape ends the test when the stop file appears (Locust stops its users and writes its
                # reports); a SIGINT to a headless Locust running a shape did not stop its users (seen with 2.47).
                stop_file.touch()
                stopping_since = time.monotonic()
            elif stopping_since is not None and time.monotonic() - stopping_since > 60:  # reports written; a busy box is slow
                proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        poller.join(timeout=5)
    timings, answered = read_timings(timings_path)
    rollouts = {}
    token = admin_token or os.environ.get("RTS_ADMIN_TOKEN", "")
    for model in rollout:
        status = fetch_rollout(host, model, token, int(time.time() - started) + 5)
        if status is not None:
            rollouts[model] = status
            (out / f"rollout-{model}.json").write_text(json.dumps(status, indent=2, default=str))
            plot_rollout(status, timings, answered, started, out / f"rollout-{model}.png")
    stages = stage_summary(timings, [], started, profile)
    (out / "stages.json").write_text(json.dumps(stages, indent=2))
    header = "| stage | users | s | requests | failures | req/s | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    (out / "stages.md").write_text(header + "".join(
        f"| {s['stage']} | {s['users']} | {s['duration_s']} | {s['requests']} | {s['failures']} | {s['rps']} | "
        f"{s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |\n" for s in stages))
    plot(timings, out / "replicas.csv", started, profile, out / "load.png")
    versions = {}
    for who in answered:
        if who:
            versions[who] = versions.get(who, 0) + 1
    return {"out": str(out), "stages": stages, "locust_exit": proc.returncode, "answered": versions,
            "rollouts": rollouts, "timings": timings, "answered_by": answered, "started": started}


def main() -> None:
    parser = argparse.ArgumentParser(description="run a load profile headless and write a report")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ramp")
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--dashboard", default="http://127.0.0.1:8265")
    parser.add_argument("--app", default="inference", help="Serve application whose replicas to follow")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rollout", action="append", default=[], metavar="MODEL",
                        help="follow this model's rollout (traffic share and SLO signals per version); "
                             "needs RTS_ADMIN_TOKEN")
    args = parser.parse_args()
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime(f"{args.profile}-%Y%m%d-%H%M%S")
    result = run_profile(args.profile, args.host, args.dashboard, out, args.app, rollout=tuple(args.rollout))
    print((out / "stages.md").read_text())
    print(f"report: {out}")
    sys.exit(0 if result["locust_exit"] in (0, 1) else result["locust_exit"])


if __name__ == "__main__":
    main()

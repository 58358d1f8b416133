"""One retraining run of one model: validate -> train -> evaluate and gate -> publish -> load and verify -> go live.

Runs as a Ray Job (the dashboard shows it with its logs), submitted by the listener, the CLI, the
admin API or a serverless adapter through ``services.retraining.jobs``::

    python -m services.retraining.run --run-id 20261130-101500-ab12cd    # reads runs/<id>.request.json

The first version of a model is built by the same steps, in this process, with no Ray and no
Triton yet (``build_first_version``, what ``rts models init`` and ``make up`` run).

Each step is one function below. A run that fails at any step leaves serving untouched; its record
(``runs/<run_id>.json``) says which step and why. A run with no new accepted data since the newest
version in play publishes nothing and is recorded as ``skipped`` (unless a request says ``force``);
when drift asked for it, that is an alert (``rts_drift_alerts_total``), not a version. A version that
passed its gates goes live as the model's policy says: production at once (``direct``), or a
candidate the rollout controller takes through shadow and canary (``services/rollout``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import ray

from services.modelkit import Dataset, ModelPackage, row_hashes
from services.modelkit.discovery import load_models
from services.registry.publish import Registry
from services.registry.records import code_version, now
from services.registry.stages import LIVE
from services.retraining import dataset
from services.retraining.gates import gates_to_json, run_gates
from services.retraining.locking import exclusive_run
from services.retraining.requests import RunRequest, new_run_id
from services.retraining.training import lower_priority, train_here, train_on_ray
from services.rollout.controller import rollout_paused
from services.rollout.policy import Policy, load_policy
from services.settings import Settings, get_settings
from services.storage import ObjectStore, data_store
from services.telemetry import metrics
from services.telemetry.drift import ReferenceStats
from services.telemetry.tracing import attached_context, configure_tracing, force_flush, span
from services.triton.client import TritonClient
from services.triton.onnx_ensemble import OnnxEnsemble, as_inputs

log = logging.getLogger("retraining")

FINISHED = ("published", "gates_failed", "skipped")  # the run did its job, whatever it decided


class Stop(Exception):
    """A step decided the run ends here (skipped, gates failed); the record already says why."""


@dataclass
class Run:
    """What every step of one run shares."""

    run_id: str
    package: ModelPackage
    settings: Settings
    store: ObjectStore
    registry: Registry
    events: list[dict]
    force: bool
    policy: Policy = field(default_factory=Policy)
    record: dict = field(default_factory=dict)
    train: Callable[..., Any] | None = None  # (features, targets, params) -> trained
    # Around loading a new version beside the live ones and adding it to the stages: the rollout
    # controller decides nothing meanwhile (in a cluster), so their writes never interleave.
    going_live: Callable[[], AbstractContextManager] = nullcontext

    @property
    def model(self) -> str:
        return self.package.name

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        t0 = time.perf_counter()
        log.info("[%s] %s %s ...", self.run_id, self.model, name)
        entry = self.record["stages"].setdefault(name, {})
        try:
            with span(f"retraining.{name}", {"rts.run_id": self.run_id, "rts.model": self.model}):
                yield entry
        finally:
            seconds = time.perf_counter() - t0
            entry["seconds"] = round(seconds, 3)
            metrics.record_retraining_stage(name, seconds)
            self.registry.records.save_run(self.record)

    def finish(self, outcome: str, reason: str | None = None) -> None:
        self.record["outcome"] = outcome
        if reason:
            self.record["reason"] = reason


@dataclass
class TrainingData:
    train: Dataset  # base training rows plus accepted files, holdout rows removed
    files: list[dict]  # accepted files with their hashes (lineage)


@dataclass
class Candidate:
    onnx_files: dict[str, bytes]
    ensemble: OnnxEnsemble
    gates: list[dict]
    metrics: dict


# ---- the steps ----------------------------------------------------------------------------------

def validate(run: Run) -> TrainingData:
    """Check every incoming file (accepted/ or rejected/ with a report); decide whether there is anything new."""
    package, store = run.package, run.store
    split = package.base_data()
    with run.stage("validate") as st:
        accepted_parts, _ = dataset.load_accepted(store, package)
        known = dataset.Known()
        for part in accepted_parts:
            known.add(part)
        known.add(split.train, overwrite=False)
        limit = run.settings.retrain.max_file_mb * 1024 * 1024
        reports = [dataset.ingest(store, package, key, known, limit)[0]
                   for key in dataset.incoming_files(store, package)]
        st["files"] = [report.__dict__ for report in reports]
        st["accepted_files"] = [r.moved_to for r in reports if r.accepted]
        st["rejected_files"] = [r.moved_to for r in reports if not r.accepted]
        st["quarantined_files"] = quarantine_rolled_back(run)
        parts, files = dataset.load_accepted(store, package)
        feedback_parts, feedback_files = dataset.load_feedback(store, package)
        parts, files = parts + feedback_parts, files + feedback_files
        book = run.registry.stages(run.model)
        live = book.in_stage(*LIVE)
        basis = live[-1] if live else None  # the newest version in play: production, or a candidate on its way
        basis_record = run.registry.records.version(run.model, basis) if basis is not None else None
        trained_on = {f["sha256"] for f in ((basis_record or {}).get("data") or {}).get("files", [])}
        new = [f["key"] for f in files if f["sha256"] not in trained_on]
        st.update(serving_version=book.production, compared_with=basis, new_files=new)
        if basis is not None and not new and not run.force:
            drift = [e for e in run.events if (e.get("data") or {}).get("reason") == "drift"]
            if drift:  # drift tells the world moved; only new labels (files or feedback) can teach the model how
                metrics.record_drift_alert(run.model)
                log.warning("[%s] drift on %s with no new labelled data: an alert, no new version", run.run_id,
                            run.model)
            run.finish("skipped", f"no new accepted data since version {basis} (it was trained on the same "
                                  f"{len(files)} accepted and feedback files); nothing to publish"
                       + ("; drift alert raised" if drift else ""))
            raise Stop
        # The holdout never enters training, even if someone uploads its rows or sends them back as feedback
        # (feedback rows are the ensemble's input: the holdout's features).
        holdout = set(row_hashes(split.holdout.x)) | set(row_hashes(package.holdout_features()))
        extra = Dataset.concat(parts) if parts else None
        if extra is not None:
            extra = extra[np.array([h not in holdout for h in row_hashes(extra.x)], dtype=bool)]
        train = Dataset.concat([split.train, extra]) if extra is not None and len(extra) else split.train
        return TrainingData(train, files)


def quarantine_rolled_back(run: Run) -> list[str]:
    """Files that made a version its live signals rolled back are kept out of training, like a failed gate's."""
    book = run.registry.stages(run.model)
    reached_production = {t["version"] for t in book.transitions if t["to"] == "production"}
    rolled_back = [v for v, s in book.versions.items() if s == "archived" and v not in reached_production]
    production_files = set()
    if book.production is not None:
        production_files = {f["key"] for f in (((run.registry.records.version(run.model, book.production) or {})
                                                 .get("data") or {}).get("files", []))}
    moved = []
    for version in rolled_back:
        record = run.registry.records.version(run.model, version) or {}
        keys = [f["key"] for f in (record.get("data") or {}).get("files", []) if f["key"] not in production_files]
        moved += dataset.quarantine(run.store, run.package, keys, run.run_id,
                                    f"version {version}, trained on it, was rolled back by its live signals")
    return moved


def train(run: Run, data: TrainingData) -> Any:
    params = run.package.TrainParams()
    with run.stage("train") as st:
        training = run.package.training_set(data.train, params)
        trained = run.train(training.x, training.y, params)
        st.update(rows=len(data.train), training_rows=len(training), workers=run.settings.retrain.workers,
                  params=params.model_dump())
    return trained


def evaluate_and_gate(run: Run, trained: Any) -> Candidate:
    package = run.package
    with run.stage("evaluate_and_gate") as st:
        onnx_files = package.export(trained)
        candidate = OnnxEnsemble(package.family, onnx_files)
        serving = run.registry.production(run.model)
        production = (OnnxEnsemble(package.family, {m: run.registry.repository.read_member(m, serving)
                                                    for m in package.family.members})
                      if serving is not None else None)
        results, eval_metrics = run_gates(package, candidate, production, run.settings.retrain)
        gates = gates_to_json(results)
        st.update(production_version=serving, gates=gates, metrics=eval_metrics)
        run.record["gates"] = gates
        metrics.record_gates(results)
        failed = [r.name for r in results if not r.passed]
        if failed:
            run.finish("gates_failed", f"failed gates: {failed}")
            # The data new since the serving version made a worse model: keep it out of later runs.
            st["quarantined_files"] = dataset.quarantine(run.store, package, run.record["stages"]["validate"].get(
                "new_files", []), run.run_id, run.record["reason"])
            raise Stop
    return Candidate(onnx_files, candidate, gates, eval_metrics)


def publish(run: Run, candidate: Candidate) -> int:
    with run.stage("publish") as st:
        version = run.registry.repository.next_version(run.package.family)
        run.registry.publish(run.package.family, version, candidate.onnx_files)
        st["version"] = run.record["version"] = version
    return version


def load_and_verify(run: Run, candidate: Candidate, version: int) -> None:
    rows = run.package.holdout_features()[:64]
    with run.stage("load_and_verify") as st:
        st["seconds_in_triton"] = run.registry.load_and_verify(run.model, run.package.family, version, rows,
                                                               candidate.ensemble.run(as_inputs(run.package.family,
                                                                                                rows)))


def go_live(run: Run, version: int, candidate: Candidate) -> None:
    """Production at once when the policy is direct (and for a model's first version); else a candidate
    that the rollout controller takes through the policy (shadow, canary, ...)."""
    numbers = {"holdout": (candidate.metrics.get("candidate") or {}).get(run.package.task.primary_metric)}
    by = f"retraining run {run.run_id}"
    with run.stage("go_live") as st:
        if run.policy.strategy == "direct" or run.registry.production(run.model) is None:
            st["seconds_in_triton"] = run.registry.promote(run.model, run.package.family, version, by=by,
                                                           reason="passed its gates (policy: direct)",
                                                           numbers=numbers)
            st["stage"] = "production"
            metrics.set_served_version(run.model, version)
        else:
            run.registry.add_candidate(run.model, run.package.family, version, by=by, numbers=numbers,
                                       reason=f"passed its gates; the {run.policy.strategy} policy takes it live")
            st["stage"] = "candidate"
    run.record["stage"] = st["stage"]


def record_version(run: Run, data: TrainingData, candidate: Candidate, version: int) -> None:
    """Lineage of the new version, and the drift reference serving compares its traffic with."""
    package = run.package
    features = package.features(data.train.x)
    outputs = candidate.ensemble.primary(features)
    reference = ReferenceStats.from_training(package.drift_values(features), outputs, names=package.drift_features,
                                             kind=package.task.kind, meta={"version": version})
    run.registry.records.save_reference(run.model, version, reference.to_json())
    split = package.base_data()
    run.registry.records.save_version(run.model, {
        "model": run.model, "version": version, "created_at": now(), "run_id": run.run_id,
        "code_version": run.record["code_version"],
        "params": {**run.record["stages"]["train"]["params"], "workers": run.settings.retrain.workers},
        "data": {"base": split.description, "base_rows": len(split.train), "files": data.files,
                 "training_rows": run.record["stages"]["train"]["training_rows"]},
        "metrics": candidate.metrics, "gates": candidate.gates, "events": run.events,
        "timings": {k: v.get("seconds") for k, v in run.record["stages"].items()},
    })


# ---- a whole run --------------------------------------------------------------------------------

# What a server that could not be reached, or did not answer in time, raises through the clients the steps
# use (builtins, botocore, google-api-core, grpc via tritonclient). Named, not imported: not every
# deployment installs every client.
_UNREACHABLE = {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                "ServiceUnavailable", "DeadlineExceeded", "RetryError"}


def unreachable(exc: BaseException) -> bool:
    """True when `exc`, or what caused it, says a server was away (worth running again later), not that the
    run itself is wrong."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)) or _UNREACHABLE & {c.__name__ for c in type(exc).__mro__}:
            return True
        if type(exc).__name__ == "InferenceServerException" and "UNAVAILABLE" in str(getattr(exc, "status", lambda: "")()):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def execute(run: Run, *, with_triton: bool) -> dict:
    """Every step in order; always returns (and stores) the run record, whatever the outcome."""
    started = time.perf_counter()
    run.record.update(run_id=run.run_id, model=run.model, started_at=now(), events=run.events, stages={},
                      outcome="running", force=run.force, code_version=code_version(),
                      retrain=run.settings.retrain.model_dump())
    run.registry.records.save_run(run.record)
    try:
        data = validate(run)
        trained = train(run, data)
        candidate = evaluate_and_gate(run, trained)
        version = publish(run, candidate)
        with run.going_live():
            if with_triton:
                load_and_verify(run, candidate, version)
            go_live(run, version, candidate)
        record_version(run, data, candidate, version)
        run.finish("published")
    except Stop:
        pass
    except Exception as exc:  # the record must say what broke; serving stays as it was
        log.exception("run %s failed", run.run_id)
        run.finish("failed", f"{type(exc).__name__}: {exc}")
        run.record["traceback"] = traceback.format_exc()[-4000:]
        run.record["retryable"] = unreachable(exc)  # the listener runs it again later; a bug or bad data, never
    finally:
        run.record["finished_at"] = now()
        run.registry.records.save_run(run.record)
        metrics.record_retraining_run(run.record["outcome"], time.perf_counter() - started)
    return run.record


def retrain(request: RunRequest, settings: Settings) -> dict:
    """The run a job was submitted for: Ray Train for training, the stack's Triton for the switch."""
    package = load_models(settings)[request.model]
    with TritonClient(settings.triton.grpc_address) as triton:
        registry = Registry.open(settings, triton)
        run = Run(request.run_id, package, settings, data_store(settings), registry,
                  [json.loads(e.model_dump_json()) for e in request.events], request.force,
                  load_policy(package, registry.records))
        run.train = lambda x, y, params: train_on_ray(package, x, y, params, settings, request.run_id)
        run.going_live = lambda: rollout_paused(f"retraining run {request.run_id}")
        return execute(run, with_triton=True)


def build_first_version(package: ModelPackage, settings: Settings) -> dict:
    """Version 1 of a model with an empty repository: the same steps, trained here, pinned for Triton's start."""
    registry = Registry.open(settings)
    if registry.repository.versions(package.family.ensemble):
        raise FileExistsError(f"{settings.model_repository_uri} already has {package.family.ensemble} versions "
                              f"{registry.repository.versions(package.family.ensemble)}")
    run = Run(f"init-{package.name}-{new_run_id()}", package, settings, data_store(settings), registry, [],
              force=True)
    run.train = lambda x, y, params: train_here(package, x, y, params)
    return execute(run, with_triton=False)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description="one retraining run (a Ray Job)")
    parser.add_argument("--run-id", required=True, help="the run; its request is runs/<run-id>.request.json")
    args = parser.parse_args(argv)
    settings = get_settings()
    # The run's own steps (validation, gates, export, publishing) yield the cores to serving as its Ray Train
    # workers do (lower_priority there); the Ray Jobs supervisor starts this driver at niceness 0.
    lower_priority(settings.retrain.worker_nice)
    # And so do the actors Ray Train starts for the run (its controller, dataset and watcher actors): Ray starts
    # a job's worker processes at this niceness (the Jobs API leaves drivers' tasks at Ray's default, 15).
    nice = settings.retrain.worker_nice
    ray.init(address="auto", log_to_driver=True,
             runtime_env={"env_vars": {"RAY_worker_niceness": str(nice)}} if nice > 0 else None)
    configure_tracing("rts-retraining")
    metrics.configure_metrics()
    registry = Registry.open(settings)
    stored = registry.records.request(args.run_id)
    if stored is None:
        print(f"no request for run {args.run_id} in {settings.data_uri}/runs/", file=sys.stderr)
        return 2
    request = RunRequest.model_validate(stored)
    # Continue the trace the event carried (S3 metadata, SQS/Pub/Sub attributes, the admin request).
    traceparent = request.traceparent
    with attached_context({"traceparent": traceparent} if traceparent else None), \
            span("retraining.run", {"rts.run_id": request.run_id, "rts.model": request.model,
                                    "rts.events": len(request.events)}):
        with exclusive_run(request.run_id):  # runs see each other's moves of incoming files, never interleave
            record = retrain(request, settings)
    force_flush()
    print(json.dumps({k: record.get(k) for k in ("run_id", "model", "outcome", "version", "reason")}), flush=True)
    return 0 if record["outcome"] in FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())

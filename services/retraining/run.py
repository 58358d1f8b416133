"""One retraining run: validate new data -> train (Ray Train) -> gates -> publish -> load -> switch.

Runs as a Ray Job (visible in the dashboard with its logs), submitted by the listener, the CLI, the
HTTP admin endpoint or a serverless adapter::

    python -m services.retraining.run --events-json '[{"id": "...", "type": "rts.object.created", ...}]'

Configuration comes from the RTS_* settings of the job's environment (data bucket, model
repository, Triton URL) plus ``RetrainConfig`` (RTS_RETRAIN_* variables). A run that fails at any
step leaves serving untouched; its record says which step and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pickle
import sys
import tempfile
import time
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import get_settings
from services.model_repository import ModelRepository
from services.models.digits import train as digits
from services.retraining import dataset
from services.retraining.gates import GateConfig, OnnxEnsemble, gates_to_json, run_gates
from services.retraining.publish import TritonControl, load_and_verify, publish_version, switch_to
from services.retraining.records import Records, code_version, now
from services.observability import metrics
from services.observability.tracing import attached_context, configure_tracing, force_flush, span
from services.storage import open_store

log = logging.getLogger("retraining")


class RetrainConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTS_RETRAIN_", extra="ignore")

    workers: int = Field(1, description="Ray Train data-parallel workers (1 on a laptop, more on a cluster)")
    worker_cpus: float = Field(0.5, description="CPUs reserved per Ray Train worker")
    epochs: int = Field(60, description="training epochs (mini-batch passes over each worker's shard)")
    seed: int = Field(0)
    storage_path: str | None = Field(None, description="Ray Train storage (shared/cloud on a multi-node cluster)")
    gates: GateConfig = Field(default_factory=GateConfig)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def _weight_averager():
    import ray

    @ray.remote(num_cpus=0)
    class WeightAverager:
        """All-reduce (mean) of the workers' weights after every epoch: local SGD over Ray."""

        def __init__(self, world_size: int) -> None:
            self.world_size = world_size
            self.rounds: dict[int, dict] = {}

        async def average(self, round_no: int, params: dict) -> dict:
            entry = self.rounds.setdefault(round_no, {"items": [], "event": asyncio.Event(), "mean": None})
            entry["items"].append(params)
            if len(entry["items"]) == self.world_size:
                items = entry["items"]
                entry["mean"] = {k: [np.mean([p[k][i] for p in items], axis=0) for i in range(len(items[0][k]))]
                                 for k in items[0]}
                entry["event"].set()
            else:
                await entry["event"].wait()
            self.rounds.pop(round_no - 2, None)
            return entry["mean"]

    return WeightAverager


def _run_lock():
    import ray

    @ray.remote(num_cpus=0)
    class RunLock:
        """One retraining run at a time per cluster, with a lease so a crashed run cannot block forever."""

        def __init__(self) -> None:
            self.holder: str | None = None
            self.expires = 0.0

        def try_acquire(self, run_id: str, lease_s: float) -> str | None:
            if self.holder is None or time.time() > self.expires or self.holder == run_id:
                self.holder, self.expires = run_id, time.time() + lease_s
                return None
            return self.holder

        def release(self, run_id: str) -> None:
            if self.holder == run_id:
                self.holder = None

    return RunLock.options(name="retraining-run-lock", namespace="rts", get_if_exists=True,
                           lifetime="detached").remote()


@contextmanager
def exclusive_run(run_id: str, wait_s: float = 900.0, lease_s: float = 1800.0):
    import ray

    lock = _run_lock()
    deadline = time.monotonic() + wait_s
    while (holder := ray.get(lock.try_acquire.remote(run_id, lease_s))) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {holder} still holds the retraining lock after {wait_s:.0f}s")
        log.info("[%s] waiting for run %s to finish", run_id, holder)
        time.sleep(2)
    try:
        yield
    finally:
        ray.get(lock.release.remote(run_id))


def _train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    averager = config["averager"]
    rounds = iter(range(10**9))

    def average(params):
        return ray.get(averager.average.remote(next(rounds), params))

    models = digits.fit_members(config["features"], config["labels"], digits.TrainParams(**config["params"]),
                                rank=rank, world_size=world, average=average)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "models.pkl").write_bytes(pickle.dumps(models))
            ray.train.report({"trained_rows": len(config["labels"])},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"trained_rows": len(config["labels"])})


def train_with_ray(features: np.ndarray, labels: np.ndarray, cfg: RetrainConfig, run_id: str) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    averager = _weight_averager().remote(cfg.workers)
    storage = cfg.storage_path or str(get_settings().var_dir.resolve() / "ray_train")
    trainer = DataParallelTrainer(
        _train_loop_per_worker,
        train_loop_config={"features": features, "labels": labels, "averager": averager,
                           "params": {"epochs": cfg.epochs, "seed": cfg.seed}},
        scaling_config=ScalingConfig(num_workers=cfg.workers, resources_per_worker={"CPU": cfg.worker_cpus}),
        run_config=RunConfig(name=f"digits-{run_id}", storage_path=storage),
    )
    result = trainer.fit()
    ray.kill(averager)
    with result.checkpoint.as_directory() as ckpt:
        return pickle.loads((Path(ckpt) / "models.pkl").read_bytes())


def models_proba(models, features: np.ndarray) -> np.ndarray:
    return digits.ensemble_proba(models, features)


def st_files(run: dict) -> list[str]:
    return run["stages"].get("validate", {}).get("accepted_files", [])


def production_ensemble(repo: ModelRepository, version: int | None) -> OnnxEnsemble | None:
    if version is None:
        return None
    files = {m: repo.store.get_bytes(f"{m}/{version}/model.onnx") for m in digits.family().members}
    return OnnxEnsemble(files)


def retrain(events: list[dict], run_id: str | None = None, cfg: RetrainConfig | None = None) -> dict:
    """The whole run; always returns (and stores) its record, whatever the outcome."""
    settings = get_settings()
    cfg = cfg or RetrainConfig()
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    data = open_store(settings.data_uri)
    repo = ModelRepository(open_store(settings.model_repository_uri))
    records = Records(data)
    family = digits.family()
    started = time.perf_counter()
    run: dict = {"run_id": run_id, "started_at": now(), "events": events, "stages": {}, "outcome": "running",
                 "code_version": code_version(), "config": cfg.model_dump()}
    records.save_run(run)

    @contextmanager
    def stage(name: str):
        t0 = time.perf_counter()
        log.info("[%s] %s ...", run_id, name)
        try:
            with span(f"retraining.{name}", {"rts.run_id": run_id}):
                yield run["stages"].setdefault(name, {})
        finally:
            seconds = time.perf_counter() - t0
            run["stages"][name]["seconds"] = round(seconds, 3)
            metrics.record_retraining_stage(name, seconds)
            records.save_run(run)

    try:
        with stage("validate") as st:
            known = {}
            prev_x, prev_y, prev_files = dataset.load_accepted(data)
            for h, label in zip(dataset.image_hashes(prev_x), prev_y):
                known[h] = int(label)
            split = digits.load_split()
            for h, label in zip(dataset.image_hashes(split.train_images), split.train_labels):
                known.setdefault(h, int(label))
            holdout_hashes = set(dataset.image_hashes(split.holdout_images))
            reports = []
            for obj in list(data.list(dataset.INCOMING)):
                name = obj.key.rsplit("/", 1)[-1]
                if name.startswith(".") or not obj.key.endswith(dataset.SUFFIXES + (".tmp",)) or name.endswith(".tmp"):
                    continue
                report, x, y = dataset.ingest(data, obj.key, known)
                reports.append(report.__dict__)
                if x is not None:
                    for h, label in zip(dataset.image_hashes(x), y):
                        known[h] = int(label)
            st["files"] = reports
            new_x, new_y, files = dataset.load_accepted(data)
            # The holdout never enters training, even if someone uploads its images.
            keep = np.array([h not in holdout_hashes for h in dataset.image_hashes(new_x)], dtype=bool)
            new_x, new_y = new_x[keep], new_y[keep]
            st["accepted_files"] = [r["key"] for r in reports if r["accepted"]]
            st["rejected_files"] = [r["key"] for r in reports if not r["accepted"]]
            asked = any(e.get("type") == "rts.retrain.requested"
                        or dataset.REQUESTS in (e.get("data") or {}).get("key", "") for e in events)
            if not st["accepted_files"] and not asked:
                run["outcome"] = "no_new_data"
                return run

        with stage("train") as st:
            train_images = np.concatenate([split.train_images, new_x])
            train_labels = np.concatenate([split.train_labels, new_y])
            features = digits.featurize(train_images)
            models = train_with_ray(features, train_labels, cfg, run_id)
            st.update(rows=int(len(train_labels)), new_rows=int(len(new_y)), workers=cfg.workers)

        with stage("evaluate_and_gate") as st:
            onnx_files = digits.export_family(models)
            candidate = OnnxEnsemble(onnx_files)
            serving = repo.served_version(family)
            results, eval_metrics = run_gates(candidate, production_ensemble(repo, serving), split.holdout_images,
                                         split.holdout_labels, cfg.gates)
            st.update(production_version=serving, gates=gates_to_json(results), metrics=eval_metrics)
            run["gates"] = gates_to_json(results)
            metrics.record_gates(results)
            if not all(r.passed for r in results):
                failed = [r.name for r in results if not r.passed]
                run["outcome"] = "gates_failed"
                run["reason"] = f"failed gates: {failed}"
                # The data this run brought in made a worse model: keep it out of later runs.
                st["quarantined_files"] = dataset.quarantine(data, st_files(run), run_id, run["reason"])
                return run

        with stage("publish") as st:
            version = repo.next_version(family)
            publish_version(repo, family, version, onnx_files)
            st["version"] = version
            run["version"] = version

        triton = TritonControl(settings.effective_triton_url)
        try:
            with stage("load_and_verify") as st:
                holdout_features = digits.featurize(split.holdout_images)
                st["seconds_in_triton"] = load_and_verify(triton, repo, family, version, holdout_features,
                                                          candidate.predict_proba(holdout_features[:64]))
            with stage("switch") as st:
                st["seconds_in_triton"] = switch_to(triton, repo, family, version)
        finally:
            triton.close()
        records.set_serving(version, reason="retraining run passed its gates", run_id=run_id)
        metrics.set_served_version(family.ensemble, version)
        digits.write_reference(settings.data_uri, version, features, models_proba(models, features))

        records.save_version({
            "version": version, "created_at": now(), "run_id": run_id, "code_version": run["code_version"],
            "params": {"epochs": cfg.epochs, "seed": cfg.seed, "workers": cfg.workers},
            "data": {"base": "sklearn load_digits train split (fixed seed)", "base_rows": int(len(split.train_labels)),
                     "files": files},
            "metrics": eval_metrics, "gates": gates_to_json(results), "events": events,
            "timings": {k: v.get("seconds") for k, v in run["stages"].items()},
        })
        run["outcome"] = "published"
        return run
    except Exception as exc:  # the record must say what broke; serving stays as it was
        log.exception("run %s failed", run_id)
        run["outcome"] = "failed"
        run["reason"] = f"{type(exc).__name__}: {exc}"
        run["traceback"] = traceback.format_exc()[-4000:]
        return run
    finally:
        run["finished_at"] = now()
        records.save_run(run)
        metrics.record_retraining_run(run["outcome"], time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description="one retraining run")
    parser.add_argument("--events-json", default="[]", help="JSON list of the CloudEvents that triggered the run")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    import ray

    ray.init(address="auto", log_to_driver=True)
    run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    configure_tracing("rts-retraining")
    metrics.configure_metrics()
    events = json.loads(args.events_json)
    # Continue the trace the event carried (S3 metadata, SQS/Pub/Sub attributes, drift request).
    traceparent = next((e["traceparent"] for e in events if e.get("traceparent")), None)
    with attached_context({"traceparent": traceparent} if traceparent else None), \
            span("retraining.run", {"rts.run_id": run_id, "rts.events": len(events)}):
        with exclusive_run(run_id):  # runs see each other's moves of incoming files, never interleave
            run = retrain(events, run_id)
    force_flush()
    print(json.dumps({k: run.get(k) for k in ("run_id", "outcome", "version", "reason")}), flush=True)
    return 0 if run["outcome"] in ("published", "gates_failed", "no_new_data") else 1


if __name__ == "__main__":
    sys.exit(main())

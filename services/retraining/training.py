"""Where a model package's ``fit`` runs: on Ray Train's data-parallel workers, or here (the first build).

Usage::

    trained = train_on_ray(package, features, targets, params, settings, run_id)   # in a run (a Ray Job)
    trained = train_here(package, features, targets, params)                       # before any Ray exists

On Ray each worker trains on its shard and averages weights with the others after every epoch
through one actor (an all-reduce of means: local SGD); rank 0's result is the checkpoint. A run of one
worker (the default) is one Ray task instead of a Ray Train worker group, on the same resources and at
the same priority. Here, ``fit`` runs once as the only worker. Either way the package's code is the same.

Where a run's workers go: each asks for one unit of the custom resource ``training`` (plus
``RTS_RETRAIN_WORKER_CPUS`` logical CPUs), so they run only on nodes meant for retraining (the training
group on Kubernetes; the head under ``make up``), never on serving's CPUs. Ray's CPUs are logical: they
decide placement and limit nothing, so on a machine that also serves, each worker puts every thread of
its own below the Serve replicas' priority (``RTS_RETRAIN_WORKER_NICE``, 19, and the idle class; the
Serve configs run replicas at niceness 0) and the run's BLAS/OpenMP threads are capped (``jobs.thread_caps``,
set in the job's runtime_env by ``jobs.submit_run``): the kernel then gives serving the cores first.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel

from services.modelkit import ModelPackage, Worker
from services.modelkit.discovery import load_package
from services.settings import Settings


TRAINING = "training"  # the custom resource of nodes meant for retraining (infra/k8s/base/rayservice.yaml too)


def worker_resources(settings: Settings) -> dict[str, float]:
    """What one Ray Train worker asks for: a unit of ``training`` and its logical CPUs (none when 0)."""
    cpus = settings.retrain.worker_cpus
    return {TRAINING: 1.0, **({"CPU": cpus} if cpus > 0 else {})}


def lower_priority(niceness: int) -> int:
    """Raise every thread of this process to at least ``niceness`` (Linux: niceness is per thread, and Ray Train
    runs the loop in a thread of its own, beside threads the worker started before). Returns the threads changed.

    At 19, the lowest niceness, threads also go to ``SCHED_IDLE``: niceness only weighs shares, so a niced thread
    on serving's core still holds it for a scheduler slice each time a replica wakes up (measured: the replica fell
    from 98% to 72% of a core beside one nice-19 worker); an idle-class thread gives the core up at once."""
    changed = 0
    if niceness <= 0:
        return changed
    idle = niceness >= 19 and hasattr(os, "SCHED_IDLE")
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
            if idle and os.sched_getscheduler(tid) != os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # the thread ended meanwhile
            pass
    return changed


@ray.remote(num_cpus=0)
class WeightAverager:
    """All-reduce (mean) of the workers' weights, once per round: local SGD over Ray."""

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


def _announce(rank: int, world_size: int, lowered: int) -> None:
    """One line in the job's log: where the worker runs, at what priority, with how many BLAS threads."""
    print(f"training worker {rank}/{world_size} on node {ray.get_runtime_context().get_node_id()[:12]}: niceness "
          f"{os.getpriority(os.PRIO_PROCESS, 0)} ({lowered} threads lowered), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)


def _train_loop_per_worker(config: dict) -> None:
    import ray.train  # Ray Train only where a run has two workers or more: its import is 0.4 s of each process

    lowered = lower_priority(config.get("nice", 0))
    package = load_package(config["package"])
    ctx = ray.train.get_context()
    _announce(ctx.get_world_rank(), ctx.get_world_size(), lowered)
    averager = config["averager"]
    rounds = iter(range(10**9))
    worker = Worker(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                    average=lambda params: ray.get(averager.average.remote(next(rounds), params)))
    trained = package.fit(config["features"], config["targets"], package.TrainParams(**config["params"]), worker)
    if worker.rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "trained.pkl").write_bytes(pickle.dumps(trained))
            ray.train.report({"trained_rows": len(config["targets"])},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"trained_rows": len(config["targets"])})


@ray.remote(max_retries=1)
def _train_alone(package_path: str, features: np.ndarray, targets: np.ndarray, params: dict, nice: int) -> bytes:
    """The one worker of a one-worker run, as a Ray task: ``package.fit`` with nobody to average with."""
    lowered = lower_priority(nice)
    package = load_package(package_path)
    _announce(0, 1, lowered)
    return pickle.dumps(package.fit(features, targets, package.TrainParams(**params), Worker()))


def train_on_ray(package: ModelPackage, features: np.ndarray, targets: np.ndarray, params: BaseModel,
                 settings: Settings, run_id: str) -> Any:
    """``package.fit`` on ``RTS_RETRAIN_WORKERS`` Ray Train workers; returns rank 0's result.

    One worker (the default) runs as one Ray task with the same resources and priority: Ray Train's worker group
    (its controller, placement group, dataset, watcher and synchronisation actors) costs about ten seconds of a
    run here and brings nothing to a worker with nobody to average with (``make bench-freshness``).
    """
    workers = settings.retrain.workers
    if workers == 1:
        resources = worker_resources(settings)
        task = _train_alone.options(num_cpus=resources.pop("CPU", 0), resources=resources)
        return pickle.loads(ray.get(task.remote(package.import_path, features, targets, params.model_dump(),
                                                settings.retrain.worker_nice)))
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    averager = WeightAverager.remote(workers)
    try:
        trainer = DataParallelTrainer(
            _train_loop_per_worker,
            train_loop_config={"package": package.import_path, "features": features, "targets": targets,
                               "params": params.model_dump(), "averager": averager,
                               "nice": settings.retrain.worker_nice},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker=worker_resources(settings)),
            run_config=RunConfig(name=f"{package.name}-{run_id}",
                                 storage_path=settings.retrain.storage_path
                                 or str(settings.var_dir.resolve() / "ray_train")),
        )
        result = trainer.fit()
    finally:
        ray.kill(averager)
    with result.checkpoint.as_directory() as checkpoint:
        return pickle.loads((Path(checkpoint) / "trained.pkl").read_bytes())


def train_here(package: ModelPackage, features: np.ndarray, targets: np.ndarray, params: BaseModel) -> Any:
    """``package.fit`` in this process, as the only worker."""
    return package.fit(features, targets, params, Worker())

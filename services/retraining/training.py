"""Where a model package's ``fit`` runs: on Ray Train's data-parallel workers, or here (the first build).

Usage::

    trained = train_on_ray(package, features, targets, params, settings, run_id)   # in a run (a Ray Job)
    trained = train_here(package, features, targets, params)                       # before any Ray exists

On Ray each worker trains on its shard and averages weights with the others after every epoch
through one actor (an all-reduce of means: local SGD); rank 0's result is the checkpoint. Here,
``fit`` runs once as the only worker. Either way the package's code is the same.
"""

from __future__ import annotations

import asyncio
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from pydantic import BaseModel
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from services.modelkit import ModelPackage, Worker
from services.modelkit.discovery import load_package
from services.settings import Settings


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


def _train_loop_per_worker(config: dict) -> None:
    package = load_package(config["package"])
    ctx = ray.train.get_context()
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


def train_on_ray(package: ModelPackage, features: np.ndarray, targets: np.ndarray, params: BaseModel,
                 settings: Settings, run_id: str) -> Any:
    """``package.fit`` on ``RTS_RETRAIN_WORKERS`` Ray Train workers; returns rank 0's result."""
    workers = settings.retrain.workers
    averager = WeightAverager.remote(workers)
    try:
        trainer = DataParallelTrainer(
            _train_loop_per_worker,
            train_loop_config={"package": package.import_path, "features": features, "targets": targets,
                               "params": params.model_dump(), "averager": averager},
            scaling_config=ScalingConfig(num_workers=workers,
                                         resources_per_worker={"CPU": settings.retrain.worker_cpus}),
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

"""Publish a model version into the repository, load it in Triton, switch traffic, roll back.

The switch order keeps serving untouched until the new version has answered:

1. write the members' new version folders and the ensemble's (Triton ignores them until told);
2. load the members through the model control API: with ``latest {num_versions: 3}`` the new
   version loads beside the serving one;
3. infer the holdout through each new member version and check it matches what the gates saw;
4. pin the ensemble config to the new version and load the ensemble: Triton swaps it in once the
   new ensemble is ready, and the gateway (which asks for the ensemble's default version) follows.

Rolling back is steps 2 and 4 for an older version, which stays in the repository.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from services.model_repository import ModelFamily, ModelRepository
from services.models.digits.train import COMBINER, MEMBERS

log = logging.getLogger(__name__)


class TritonControl:
    """Model control and checks over Triton's gRPC API (works for the bundled and external Triton)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
        self.timeout_s = timeout_s

    def load(self, model: str) -> None:
        self.client.load_model(model, client_timeout=self.timeout_s)

    def ready_versions(self, model: str) -> list[int]:
        index = self.client.get_model_repository_index(as_json=True).get("models", [])
        return sorted(int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY"
                      and m.get("version"))

    def infer(self, model: str, version: int | str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), "FP32")
            t.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            tensors.append(t)
        result = self.client.infer(model, tensors, model_version=str(version),
                                   outputs=[grpcclient.InferRequestedOutput("probabilities")],
                                   client_timeout=self.timeout_s)
        return result.as_numpy("probabilities")

    def served_version(self, model: str) -> str:
        return self.client.get_model_metadata(model, as_json=True)["versions"][-1]

    def close(self) -> None:
        self.client.close()


def publish_version(repo: ModelRepository, family: ModelFamily, version: int, onnx_files: dict[str, bytes]) -> None:
    """Write every member's version, then the ensemble's. Nothing is loaded or switched yet."""
    for member in family.members:
        repo.write_version(member, version, {"model.onnx": onnx_files[member]})
    repo.write_ensemble_version(family.ensemble, version)


def load_and_verify(triton: TritonControl, repo: ModelRepository, family: ModelFamily, version: int,
                    features: np.ndarray, expected: np.ndarray, atol: float = 1e-4) -> float:
    """Load the members' `version` beside the serving one and check they answer as the gates saw.

    Returns the seconds it took. Raises RuntimeError (serving untouched) if anything disagrees.
    """
    started = time.perf_counter()
    repo.keep_member_loadable(family, version)
    for member in family.members:
        triton.load(member)
        if version not in triton.ready_versions(member):
            raise RuntimeError(f"Triton did not load {member} version {version}")
    x = features[:64]
    outs = {m: triton.infer(m, version, {"pixels": x}) for m in MEMBERS}
    combined = triton.infer(COMBINER, version, {f"probs_{m.split('_', 1)[1]}": outs[m] for m in MEMBERS})
    if not np.allclose(combined, expected[: len(x)], atol=atol):
        worst = float(np.abs(combined - expected[: len(x)]).max())
        raise RuntimeError(f"Triton's answers for version {version} differ from the evaluated model by {worst:.2g}")
    return time.perf_counter() - started


def switch_to(triton: TritonControl, repo: ModelRepository, family: ModelFamily, version: int) -> float:
    """Pin the ensemble to `version` and reload it; returns seconds. The members must be loaded."""
    started = time.perf_counter()
    repo.pin_ensemble(family, version)
    triton.load(family.ensemble)
    served = triton.served_version(family.ensemble)
    if served != str(version):
        raise RuntimeError(f"Triton serves {family.ensemble} version {served} after switching to {version}")
    return time.perf_counter() - started


def rollback(triton: TritonControl, repo: ModelRepository, family: ModelFamily, version: int) -> float:
    """Serve an earlier (complete) version again: load its members if needed, then switch."""
    if version not in repo.complete_versions(family):
        raise ValueError(f"version {version} is not a complete published version "
                         f"(have {repo.complete_versions(family)})")
    started = time.perf_counter()
    repo.keep_member_loadable(family, version)
    for member in family.members:
        triton.load(member)
    switch_to(triton, repo, family, version)
    return time.perf_counter() - started

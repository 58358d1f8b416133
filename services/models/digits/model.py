"""Handwritten digits: an image classifier, two models averaged by a Triton ensemble.

Serving: image files (PNG, JPEG, BMP, any size, grey or colour, either polarity) as multipart parts
or base64 in JSON, or the 8x8 pixel grid of ``load_digits`` itself (0..16). Each becomes the 64
features of ``features.normalize_digit``; training computes its features with the same function,
on the same kind of files (``training_set``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from services.errors import InvalidInput
from services.modelkit import Classification, Dataset, ModelPackage, Split, TensorSpec, Worker, decode_gray, rows
from services.models.digits import data, gates, training
from services.models.digits.features import GRID, MAX_VALUE, normalize_digit, pixels_to_gray

TASK = Classification(labels=range(10), default_top_k=3)
PIXELS = GRID * GRID


class DigitInstance(BaseModel):
    """One digit: an image file (base64) or an 8x8 pixel grid on the 0..16 scale."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str | None = Field(None, description="A PNG/JPEG/BMP file, base64-encoded")
    pixels: Any = Field(None, description="8 rows of 8 numbers (or 64 numbers), 0..16 as in load_digits",
                        json_schema_extra={"type": "array", "items": {"type": "array", "items": {"type": "number"}}})

    @model_validator(mode="after")
    def _exactly_one(self) -> "DigitInstance":
        given = [name for name in ("image_b64", "pixels") if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError("bad_instance", "send exactly one of 'image_b64' or 'pixels', got {given}",
                                      {"given": given or "neither"})
        return self


def pixels_features(array: Any) -> np.ndarray:
    try:
        a = np.asarray(array) if not isinstance(array, np.ndarray) else array
    except (TypeError, ValueError):  # ragged rows
        raise InvalidInput("pixels must be a rectangular list of numbers", code="wrong_shape") from None
    if a.dtype == object and a.ndim >= 1:
        raise InvalidInput("pixels must be a rectangular list of numbers", code="wrong_shape")
    if not (np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_):  # "1" and true are not pixels
        raise InvalidInput("pixels must be numbers on the 0..16 scale, not true/false, text or null",
                           code="wrong_type")
    if a.shape == (PIXELS,):
        a = a.reshape(GRID, GRID)
    if a.shape != (GRID, GRID):
        raise InvalidInput(f"pixels must be {GRID} rows of {GRID} numbers (or 64 numbers), got shape {list(a.shape)}",
                           code="wrong_shape")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InvalidInput("pixels must be finite numbers (no NaN or infinity)", code="wrong_value")
    if a.min() < 0 or a.max() > MAX_VALUE:
        raise InvalidInput(f"pixels must be in 0..16 (the load_digits scale), got {a.min():g}..{a.max():g}",
                           code="wrong_value")
    return normalize_digit(pixels_to_gray(a))


class Digits(ModelPackage):
    name = "digits"
    task = TASK
    Instance = DigitInstance
    Options = TASK.options()
    accepts_files = True
    oip_inputs = (
        TensorSpec("image", "BYTES"),
        TensorSpec("pixels", "FP32", (GRID, GRID), accepts=("FP32", "FP64", "FP16", "UINT8", "INT32", "INT64"),
                   alternative_shapes=((PIXELS,),)),
    )
    oip_input_sets = (frozenset({"image"}), frozenset({"pixels"}))
    data_suffixes = (".npz", ".csv")
    data_format = ("`.npz` with `images` (n, 8, 8) or (n, 64) and `labels` (n,), or CSV with 64 pixel columns and "
                   "`label`; pixels 0..16, labels 0..9")
    TrainParams = training.TrainParams
    drift_features = ("mean_intensity", "ink_share", "midtone_share")

    # ---- serving ---------------------------------------------------------------------------------
    def from_image(self, data_: bytes) -> np.ndarray:
        return normalize_digit(decode_gray(data_, self.limits.max_image_pixels))

    def _one(self, value: Any) -> np.ndarray:
        if isinstance(value, (bytes, bytearray)):
            return self.from_image(bytes(value))
        if value.image_b64 is not None:
            try:
                return self.from_image(base64.b64decode(value.image_b64, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidInput("image_b64 is not valid base64", code="bad_base64") from None
        return pixels_features(value.pixels)

    def preprocess(self, inputs: Sequence[Any]) -> np.ndarray:
        return rows(inputs, self._one, PIXELS)

    def from_tensors(self, tensors: dict[str, Any]) -> list[Any]:
        if "image" in tensors:
            return list(tensors["image"])
        return [DigitInstance.model_construct(image_b64=None, pixels=row) for row in tensors["pixels"]]

    # ---- retraining ------------------------------------------------------------------------------
    def parse_data(self, name: str, data_: bytes) -> Dataset:
        return data.parse_file(name, data_)

    def base_data(self) -> Split:
        return data.load_split()

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.stack([normalize_digit(pixels_to_gray(img)) for img in x]).astype(np.float32)

    def training_set(self, dataset: Dataset, params: training.TrainParams) -> Dataset:
        """Every digit as its exact features, plus `augment_files` copies of it as random user files
        (size, format, colour, polarity) read back through the serving decoder: training sees what serving sees."""
        parts = [Dataset(self.features(dataset.x), dataset.y)]
        rng = np.random.default_rng(params.seed)
        for _ in range(params.augment_files):
            files = [data.render(img, data.random_variant(rng)) for img in dataset.x]
            parts.append(Dataset(self.preprocess(files), dataset.y))
        return Dataset.concat(parts)

    def fit(self, features: np.ndarray, targets: np.ndarray, params: training.TrainParams, worker: Worker) -> Any:
        return training.fit_members(features, targets, params, worker)

    def export(self, trained: Any) -> dict[str, bytes]:
        return training.export_family(trained, self.family)

    def gates(self):
        return gates.GATES

    def drift_values(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return np.stack([x.mean(axis=1), (x > 2).mean(axis=1), ((x > 3) & (x < 13)).mean(axis=1)], axis=1)

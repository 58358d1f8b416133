"""Helpers for a package's ``preprocess``: rows with per-item errors, safe image decoding, tabular instances.

Usage::

    def preprocess(self, inputs):
        return rows(inputs, self.one_row, width=64)          # "item 3: ..." on a bad one

    gray = decode_gray(data, max_pixels=self.limits.max_image_pixels)   # PNG/JPEG/BMP... -> (h, w) in 0..1

    Instance = numeric_instance("ChurnInstance", {"tenure": (0, 600, "months as a customer"), ...})
    matrix = instances_matrix(instances, FEATURES)
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from services.errors import InvalidInput, PayloadTooLarge, ServingError

IMAGE_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"}


def rows(inputs: Sequence[Any], one: Callable[[Any], np.ndarray], width: int | tuple[int, ...]) -> np.ndarray:
    """Apply `one` to every input into a float32 batch; a user error names the item it came from."""
    shape = (width,) if isinstance(width, int) else tuple(width)
    out = np.empty((len(inputs), *shape), dtype=np.float32)
    for i, value in enumerate(inputs):
        try:
            out[i] = one(value)
        except ServingError as exc:
            if len(inputs) > 1:
                exc.message = f"item {i}: {exc.message}"
                exc.args = (exc.message,)
            raise
    return out


def decode_gray(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an image file to grey 0..1 (transparent areas on white). Raises InvalidInput / PayloadTooLarge only.

    The pixel limit is checked from the header, so a decompression bomb is never decoded.
    """
    # Imported here: what only names model packages (the serverless adapters) does without Pillow.
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("the image file is empty", code="empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in IMAGE_FORMATS:
                raise InvalidInput(f"image format {img.format} is not supported; send PNG, JPEG or BMP",
                                   code="unsupported_format")
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                                      code="image_too_large")
            if width < 1 or height < 1:
                raise InvalidInput("image has no pixels", code="undecodable_image")
            img.load()
    except (InvalidInput, PayloadTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}", code="image_too_large") from None
    except UnidentifiedImageError:
        raise InvalidInput("the file is not an image Pillow can read (PNG, JPEG or BMP expected)",
                           code="not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"the image file is truncated or corrupt: {exc}", code="undecodable_image") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent images on white so a transparent background is not read as black ink.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    grey = img.convert("L") if img.mode != "F" else img
    arr = np.asarray(grey, dtype=np.float32)
    return arr / 255.0 if img.mode != "F" else arr


def numeric_instance(name: str, fields: Mapping[str, tuple[float, float, str]], doc: str = "") -> type[BaseModel]:
    """A pydantic model of one tabular instance: every field a required number within [low, high].

    Strict: strings, booleans, null, NaN and fields not listed are refused, each naming the field.
    """
    definitions = {
        field: (float, Field(ge=low, le=high, description=f"{description} ({low:g}..{high:g})"))
        for field, (low, high, description) in fields.items()
    }
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra={"description": doc})
    return create_model(name, __config__=config, **definitions)


def instances_matrix(instances: Sequence[BaseModel], columns: Sequence[str]) -> np.ndarray:
    """Validated tabular instances -> a float32 (n, len(columns)) matrix in `columns` order."""
    return np.asarray([[getattr(inst, c) for c in columns] for inst in instances], dtype=np.float32)


# pydantic error types -> our error codes (a custom PydanticCustomError keeps its own type as the code)
_CODES = {"missing": "missing_field", "extra_forbidden": "unknown_field", "float_type": "wrong_type",
          "float_parsing": "wrong_type", "int_type": "wrong_type", "int_parsing": "wrong_type",
          "bool_type": "wrong_type", "string_type": "wrong_type", "finite_number": "wrong_value",
          "greater_than_equal": "out_of_range", "less_than_equal": "out_of_range", "greater_than": "out_of_range",
          "less_than": "out_of_range", "model_type": "bad_instance", "dict_type": "bad_instance"}


def invalid_instance(errors: list[dict], index: int | None = None) -> InvalidInput:
    """Pydantic's errors on one instance (``exc.errors()``) as a 400 that names the instance and the field."""
    error = errors[0]
    loc = [str(p) for p in error.get("loc", ())]
    where = f"instance {index}: " if index is not None else ""
    field = f"field {'.'.join(loc)!r} " if loc else ""
    message = error.get("msg", "is invalid")
    if error["type"] == "missing":
        message = "is missing"
    elif error["type"] == "extra_forbidden":
        message = "is not a field of this model"
    elif field:
        message = message[:1].lower() + message[1:]
    more = len(errors) - 1
    return InvalidInput(f"{where}{field}{message}" + (f" (and {more} more problems)" if more > 0 else ""),
                        code=_CODES.get(error["type"], error["type"]))


def validate_instances(instance: type[BaseModel], rows: Sequence[Mapping[str, Any]]) -> list[BaseModel]:
    """Validate dicts (e.g. OIP columns, row by row) as instances; the first bad one is a 400 naming it."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(instance.model_validate(row))
        except ValidationError as exc:
            raise invalid_instance(exc.errors(), i) from None
    return out


def _number(value: Any) -> Any:
    """A tensor element as the plain number a strict schema takes. A float32 goes through its shortest
    decimal form, so 0.23 sent as FP32 is 0.23 again, not 0.2300000042 (which a limit of 0.23 would refuse)."""
    if isinstance(value, np.floating):
        return float(str(value)) if value.dtype == np.float32 or value.dtype == np.float16 else float(value)
    if isinstance(value, np.integer):
        return float(value)  # a count sent as INT64: still a number for a float field
    return value


def instances_from_columns(instance: type[BaseModel], columns: Mapping[str, Sequence[Any]]) -> list[BaseModel]:
    """OIP columns (one tensor per field, N values each) -> N validated instances, the first bad one a 400."""
    n = len(next(iter(columns.values())))
    return validate_instances(instance, [{name: _number(column[i]) for name, column in columns.items()}
                                         for i in range(n)])

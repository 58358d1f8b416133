"""Preprocessing for the digits model: image files or 8x8 pixel grids -> 64 features.

Images: PNG, JPEG, BMP (and whatever else Pillow reads), any size, grey or colour, either polarity.
Limits come from Settings (``RTS_MAX_IMAGE_PIXELS``) so a decompression bomb is refused from the
header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidInput, PayloadTooLarge
from services.models.digits.features import GRID, normalize_digit, pixels_to_gray

ALLOWED_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"}


class DigitsPreprocess:
    def __init__(self, max_image_pixels: int = 16_000_000) -> None:
        self.max_image_pixels = max_image_pixels

    def from_image(self, data: bytes) -> np.ndarray:
        return normalize_digit(decode_gray(data, self.max_image_pixels))

    def from_array(self, array: np.ndarray) -> np.ndarray:
        a = np.asarray(array)
        if a.shape == (GRID * GRID,):
            a = a.reshape(GRID, GRID)
        if a.shape != (GRID, GRID):
            raise InvalidInput(
                f"pixels must be {GRID} rows of {GRID} numbers (or 64 numbers), got shape {list(a.shape)}",
                code="wrong_shape",
            )
        if not np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
            raise InvalidInput("pixels must be numbers", code="wrong_type")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise InvalidInput("pixels must be finite numbers (no NaN or infinity)", code="wrong_value")
        if a.min() < 0 or a.max() > 16:
            raise InvalidInput(
                f"pixels must be in 0..16 (the load_digits scale), got {a.min():g}..{a.max():g}",
                code="wrong_value",
            )
        return normalize_digit(pixels_to_gray(a))


def decode_gray(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an image file to grey 0..1. Raises InvalidInput / PayloadTooLarge, never anything else."""
    if not data:
        raise InvalidInput("the image file is empty", code="empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise InvalidInput(
                    f"image format {img.format} is not supported; send PNG, JPEG or BMP", code="unsupported_format"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                    code="image_too_large",
                )
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
        # Composite transparent images on white so transparent background is not read as black ink.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    grey = img.convert("L") if img.mode != "F" else img
    arr = np.asarray(grey, dtype=np.float32)
    if img.mode != "F":
        arr = arr / 255.0
    return arr

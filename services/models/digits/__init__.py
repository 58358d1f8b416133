"""The bundled reference image model: handwritten digits (sklearn's load_digits), two classifiers
averaged by the Triton ensemble in ``triton_models/digits*``. See ``model.py``."""

from services.models.digits.model import Digits as MODEL

__all__ = ["MODEL"]

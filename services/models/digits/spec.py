"""The digits model as the platform sees it: Triton folders triton_models/digits*, plus this spec."""

from services.common.settings import get_settings
from services.models.base import ModelSpec
from services.models.classification import ClassificationPostprocess
from services.models.digits.preprocess import DigitsPreprocess

LABELS = tuple(range(10))


def make_preprocess() -> DigitsPreprocess:
    return DigitsPreprocess(max_image_pixels=get_settings().max_image_pixels)


def make_postprocess() -> ClassificationPostprocess:
    return ClassificationPostprocess(LABELS)


DIGITS = ModelSpec(
    name="digits",
    triton_model="digits",
    triton_input="pixels",
    triton_output="probabilities",
    feature_shape=(64,),
    array_input="pixels",
    array_shape=(8, 8),
    preprocessor="services.models.digits.spec:make_preprocess",
    postprocessor="services.models.digits.spec:make_postprocess",
    labels=LABELS,
)

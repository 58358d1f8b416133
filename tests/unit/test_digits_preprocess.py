"""The digits package's preprocessing: image files and pixel grids -> the features training used."""

import io

import numpy as np
import pytest
from PIL import Image

from services.errors import InvalidInput, PayloadTooLarge
from services.modelkit.discovery import load_package
from services.models.digits.data import FileVariant, load_split, render
from services.models.digits.features import normalize_digit, pixels_to_gray
from services.models.digits.model import DigitInstance
from services.models.digits.samples import VARIANTS
from services.settings import LimitsSettings

SPLIT = load_split()
DIGITS = load_package("services.models.digits", LimitsSettings(max_image_pixels=4_000_000))
HOLDOUT = SPLIT.holdout.x


def train_features(pixels):
    return normalize_digit(pixels_to_gray(pixels))


def from_array(array):
    return DIGITS.preprocess([DigitInstance(pixels=array)])[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_rendered_image_matches_training_features(variant):
    """Serving an image of a digit must give (nearly) the features training computed: no skew."""
    gaps = [np.abs(DIGITS.from_image(render(p, variant)) - train_features(p)).mean() for p in HOLDOUT[:40]]
    # Features are on a 0..16 scale. Sizes that are not multiples of 8 render cells 3 or 4 pixels
    # wide, and JPEG adds ringing; both stay well under one grey level on average.
    tolerance = 1.0 if variant.fmt == "JPEG" else 0.4
    assert np.mean(gaps) < tolerance


def test_polarity_does_not_matter():
    pixels = HOLDOUT[3]
    light = DIGITS.from_image(render(pixels, FileVariant(32, "PNG", dark_ink=False)))
    dark = DIGITS.from_image(render(pixels, FileVariant(32, "PNG", dark_ink=True)))
    np.testing.assert_allclose(light, dark, atol=1e-5)


def test_digit_position_and_scale_are_normalized():
    """A small digit in the corner of a large page gives the same features as the digit alone."""
    pixels = HOLDOUT[5]
    small = Image.open(io.BytesIO(render(pixels, FileVariant(40, "PNG", dark_ink=True))))
    page = Image.new("L", (300, 200), 255)
    page.paste(small, (10, 150))
    buf = io.BytesIO()
    page.save(buf, "PNG")
    np.testing.assert_allclose(DIGITS.from_image(buf.getvalue()), DIGITS.from_image(render(pixels, FileVariant(40, "PNG", dark_ink=True))), atol=0.5)


def test_array_input_equals_training_path():
    pixels = HOLDOUT[0]
    np.testing.assert_allclose(from_array(pixels), train_features(pixels))
    np.testing.assert_allclose(from_array(pixels.reshape(-1)), train_features(pixels))


def test_transparent_png_is_read_on_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (12, 4, 20, 28))  # a black bar: a "1"
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    features = DIGITS.from_image(buf.getvalue()).reshape(8, 8)
    # Transparent pixels are background: the bar is the only ink, centred, edges empty.
    assert features.max() == pytest.approx(16.0)
    assert features[:, 0].sum() == 0 and features[:, -1].sum() == 0
    assert features[:, 3:5].min() == pytest.approx(16.0)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "empty_file"),
        (b"this is not an image at all", "not_an_image"),
        (render(np.eye(8) * 16, FileVariant(64, "PNG", dark_ink=True))[:60], "undecodable_image"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_image_files_are_invalid_input(data, code):
    with pytest.raises(InvalidInput) as err:
        DIGITS.from_image(data)
    assert err.value.code == code and err.value.status == 400


def test_decompression_bomb_refused_from_header():
    img = Image.new("1", (5000, 5000), 1)  # 25 Mpx, a few KB as PNG
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(PayloadTooLarge) as err:
        DIGITS.from_image(buf.getvalue())
    assert err.value.status == 413 and "pixels" in err.value.message


@pytest.mark.parametrize(
    "value, code",
    [([[1, 2], [3, 4]], "wrong_shape"), (np.full((8, 8), 17.0), "wrong_value"),
     (np.full((8, 8), np.nan), "wrong_value"), (np.full((8, 8), -1.0), "wrong_value")],
    ids=["shape", "too-big", "nan", "negative"],
)
def test_bad_pixel_arrays(value, code):
    with pytest.raises(InvalidInput) as err:
        from_array(np.asarray(value, dtype=np.float64))
    assert err.value.code == code


def test_a_batch_names_the_bad_item():
    good = render(HOLDOUT[0], FileVariant(28, "PNG"))
    with pytest.raises(InvalidInput) as err:
        DIGITS.preprocess([good, b"not an image", good])
    assert err.value.message.startswith("item 1:") and err.value.code == "not_an_image"


def test_an_instance_is_an_image_or_pixels_not_both():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        DigitInstance(pixels=[[0] * 8] * 8, image_b64="AA==")
    assert err.value.errors()[0]["type"] == "bad_instance"
    with pytest.raises(ValidationError):
        DigitInstance()

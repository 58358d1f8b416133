import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidInput, PayloadTooLarge
from services.models.digits.features import normalize_digit, pixels_to_gray
from services.models.digits.preprocess import DigitsPreprocess
from services.models.digits.train import load_split
from services.models.digits.samples import VARIANTS, render

SPLIT = load_split()
PRE = DigitsPreprocess(max_image_pixels=4_000_000)


def train_features(pixels):
    return normalize_digit(pixels_to_gray(pixels))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['fmt']}-{v['size']}-{'dark' if v['dark_ink'] else 'light'}")
def test_rendered_image_matches_training_features(variant):
    """Serving an image of a digit must give (nearly) the features training computed: no skew."""
    gaps = [np.abs(PRE.from_image(render(p, **variant)) - train_features(p)).mean() for p in SPLIT.holdout_images[:40]]
    # Features are on a 0..16 scale. Sizes that are not multiples of 8 render cells 3 or 4 pixels
    # wide, and JPEG adds ringing; both stay well under one grey level on average.
    tolerance = 1.0 if variant["fmt"] == "JPEG" else 0.4
    assert np.mean(gaps) < tolerance


def test_polarity_does_not_matter():
    pixels = SPLIT.holdout_images[3]
    light = PRE.from_image(render(pixels, size=32, fmt="PNG", dark_ink=False))
    dark = PRE.from_image(render(pixels, size=32, fmt="PNG", dark_ink=True))
    np.testing.assert_allclose(light, dark, atol=1e-5)


def test_digit_position_and_scale_are_normalized():
    """A small digit in the corner of a large page gives the same features as the digit alone."""
    pixels = SPLIT.holdout_images[5]
    small = Image.open(io.BytesIO(render(pixels, size=40, fmt="PNG", dark_ink=True)))
    page = Image.new("L", (300, 200), 255)
    page.paste(small, (10, 150))
    buf = io.BytesIO()
    page.save(buf, "PNG")
    np.testing.assert_allclose(PRE.from_image(buf.getvalue()), PRE.from_image(render(pixels, size=40, fmt="PNG",
                                                                                       dark_ink=True)), atol=0.5)


def test_array_input_equals_training_path():
    pixels = SPLIT.holdout_images[0]
    np.testing.assert_allclose(PRE.from_array(pixels), train_features(pixels))
    np.testing.assert_allclose(PRE.from_array(pixels.reshape(-1)), train_features(pixels))


def test_transparent_png_is_read_on_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (12, 4, 20, 28))  # a black bar: a "1"
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    features = PRE.from_image(buf.getvalue()).reshape(8, 8)
    # Transparent pixels are background: the bar is the only ink, centred, edges empty.
    assert features.max() == pytest.approx(16.0)
    assert features[:, 0].sum() == 0 and features[:, -1].sum() == 0
    assert features[:, 3:5].min() == pytest.approx(16.0)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "empty_file"),
        (b"this is not an image at all", "not_an_image"),
        (render(np.eye(8) * 16, size=64, fmt="PNG", dark_ink=True)[:60], "undecodable_image"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_image_files_are_invalid_input(data, code):
    with pytest.raises(InvalidInput) as err:
        PRE.from_image(data)
    assert err.value.code == code and err.value.status == 400


def test_decompression_bomb_refused_from_header():
    img = Image.new("1", (5000, 5000), 1)  # 25 Mpx, a few KB as PNG
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(PayloadTooLarge) as err:
        PRE.from_image(buf.getvalue())
    assert err.value.status == 413 and "pixels" in err.value.message


@pytest.mark.parametrize(
    "value, code",
    [([[1, 2], [3, 4]], "wrong_shape"), (np.full((8, 8), 17.0), "wrong_value"),
     (np.full((8, 8), np.nan), "wrong_value"), (np.full((8, 8), -1.0), "wrong_value")],
    ids=["shape", "too-big", "nan", "negative"],
)
def test_bad_pixel_arrays(value, code):
    with pytest.raises(InvalidInput) as err:
        PRE.from_array(np.asarray(value, dtype=np.float64))
    assert err.value.code == code

"""Training-serving skew: held-out digits sent as the files users send are recognised within one point
of the same digits as exact 8x8 PNGs (the pixels training sees). ``python -m loadtests.skew`` reports
the same measurement with the no-augmentation baseline beside it, by image size, with a plot."""

from loadtests.skew import trained_predictor
from services.models.digits.model import Digits
from services.models.digits.samples import skew


def test_user_files_are_recognised_within_one_point_of_exact_digits():
    result = skew(trained_predictor(Digits.TrainParams().augment_files))
    assert result["files"] == 5 * result["digits"] == 1800
    assert result["exact_8x8_png"] > 0.97, result
    assert result["gap_points"] <= 1.0, result
    assert min(result["by_size"].values()) >= result["exact_8x8_png"] - 0.02, result["by_size"]

"""The diabetes model's own gates, beside the platform's holdout-RMSE and latency gates.

Directional expectations: a higher body mass index (``bmi``) or a higher serum triglycerides
level (``s5``, the two features most correlated with the target, +0.59 and +0.57) must not
predict less progression. Each one raises that feature on every holdout row by ``STEP`` and
requires the prediction not to go down on at least ``MIN_SHARE`` of the rows. Not all of them:
the tree member is piecewise constant and need not be monotone, and averaging with the linear
member usually but not always makes up for that.
"""

from __future__ import annotations

import numpy as np

from services.modelkit import GateContext, GateResult
from services.models.diabetes.data import FEATURES, FIELDS

# About 0.4 standard deviations of a scaled feature. The declared ranges extend 0.05 beyond the
# data, so a raised holdout row is still a valid instance.
STEP = 0.02
MIN_SHARE = 0.9
TOLERANCE = 1e-3  # float32 rounding of predictions near 100..300, not a real decrease


def directional(ctx: GateContext, column: str) -> GateResult:
    j = FEATURES.index(column)
    raised = np.array(ctx.holdout.x, dtype=np.float64, copy=True)
    raised[:, j] += STEP
    if raised[:, j].max() > FIELDS[column][1]:  # a raising gate fails: the platform reports this message
        raise ValueError(f"{column} + {STEP} leaves the declared range on some holdout rows")
    base = ctx.predict(ctx.holdout_features)
    change = ctx.predict(ctx.features(raised)) - base
    share = float((change >= -TOLERANCE).mean())
    return GateResult(f"directional_{column}", share >= MIN_SHARE, share, MIN_SHARE,
                      f"share of holdout rows whose prediction does not go down when {column} rises by {STEP} "
                      f"(mean change {change.mean():+.2f})")


def bmi_raises_progression(ctx: GateContext) -> GateResult:
    return directional(ctx, "bmi")


def s5_raises_progression(ctx: GateContext) -> GateResult:
    return directional(ctx, "s5")


GATES = (bmi_raises_progression, s5_raises_progression)

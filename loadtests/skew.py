"""Training-serving skew of the digits model: held-out digits as exact 8x8 PNGs vs as the files users send.

Usage::

    python -m loadtests.skew              # ~20 s; writes loadtests/results/skew-<time>/ (results.md, skew.png)

Trains the digits ensemble twice in one run, with the shipped parameters (training also sees each
digit rendered as random user files and read back through the serving decoder) and without that
(``augment_files=0``, the baseline), and measures both on the same 360 held-out digits: as the
exact 8x8 grey PNG, and as 5 random files each of the kind users send (PNG/JPEG/BMP, 8-100 px,
grey/RGB/RGBA, both polarities), the same files for both. What a model loses between the two is the skew.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.modelkit import Worker  # noqa: E402
from services.models.digits.model import Digits  # noqa: E402
from services.models.digits.samples import skew  # noqa: E402
from services.settings import REPO_ROOT  # noqa: E402
from services.triton.onnx_ensemble import OnnxEnsemble  # noqa: E402


def trained_predictor(augment_files: int):
    digits = Digits()
    params = digits.TrainParams(augment_files=augment_files)
    training = digits.training_set(digits.base_data().train, params)
    ensemble = OnnxEnsemble(digits.family, digits.export(digits.fit(training.x, training.y, params, Worker())))
    return lambda features: ensemble.primary(features).argmax(axis=1)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files-per-digit", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("skew-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    shipped = Digits.TrainParams().augment_files
    results = {}
    for name, augment in (("without file augmentation (baseline)", 0), (f"shipped ({shipped} files per digit)", shipped)):
        print(f"[skew] training {name} ...", flush=True)
        results[name] = skew(trained_predictor(augment), files_per_digit=args.files_per_digit)
    bands = list(next(iter(results.values()))["by_size"])
    lines = ["| training | exact 8x8 PNG | user files | gap (points) | " + " | ".join(bands) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(bands)]
    for name, r in results.items():
        lines.append(f"| {name} | {r['exact_8x8_png']:.4f} | {r['user_files']:.4f} | {r['gap_points']:+.2f} | "
                     + " | ".join(f"{r['by_size'][b]:.3f}" for b in bands) + " |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(results)
    for k, (name, r) in enumerate(results.items()):
        values = [r["exact_8x8_png"], *r["by_size"].values()]
        ax.bar([j + k * width for j in range(len(values))], values, width, label=name)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(bands) + 1)])
    ax.set_xticklabels(["exact 8x8", *bands])
    ax.set_ylim(0.7, 1.0)
    ax.set_ylabel("accuracy on the held-out digits")
    ax.set_title(f"digits as files users send, by image size ({next(iter(results.values()))['files']} files)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "skew.png", dpi=110)
    print("\n" + table + f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    main()

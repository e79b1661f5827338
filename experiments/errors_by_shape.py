"""Where the classifier's errors are: its val error rate by quintile of each chromosome's shape features.

Reads the trainer's per-chromosome val probabilities (``<run>/val_probs.npz``, written at the end of every
``train_classification.py`` run) and the val instance cache the run read (``--cache-dir``; the val file is
``<name>-<key>-val-...npz``), and prints, for each feature asked for, the argmax error rate in each
quintile and the share of all errors it holds. A feature whose top quintile holds most of the errors
says which inputs the classifier fails on (e.g. ``width_cv``, how irregular the mask's width is along
the straightened chromosome: high for merged neighbours, overlaps and badly straightened bends).

    python experiments/errors_by_shape.py --val-probs runs/cls_resnet18_extra3/val_probs.npz \\
        --cache runs/instance_cache/voc-8ab9d72b-val-vf0.1-s0-maxall-96x32.npz

Prints a Markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_FEATURES = ("width_cv", "straightness", "aspect_ratio", "rel_length")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val-probs", required=True, help="a training run's val_probs.npz")
    p.add_argument("--cache", required=True, help="the val instance cache (.npz) that run was validated on")
    p.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES), help="feature columns to bin by")
    p.add_argument("--bins", type=int, default=5, help="equal-count bins per feature (5: quintiles)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from datasets.instances import load_instance_cache
    from features.triad import FEATURE_NAMES
    from metrics.identification import error_by_quantile

    if args.bins < 1:
        sys.exit(f"error: --bins must be at least 1, got {args.bins}")
    for path in (args.val_probs, args.cache):
        if not Path(path).is_file():
            sys.exit(f"error: {path} does not exist")
    unknown = [f for f in args.features if f not in FEATURE_NAMES]
    if unknown:
        sys.exit(f"error: unknown feature(s) {unknown}; choose among {', '.join(FEATURE_NAMES)}")
    try:
        arrays, _, _ = load_instance_cache(args.cache)
        with np.load(args.val_probs, allow_pickle=False) as z:
            probs, labels = z["probs"], z["labels"]
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"error: cannot read {args.val_probs} / {args.cache}: {exc}")
    if len(labels) != len(arrays["labels"]) or not np.array_equal(labels, arrays["labels"]):
        sys.exit(
            f"error: {args.val_probs} ({len(labels)} chromosomes) was not made on {args.cache} ({len(arrays['labels'])})"
        )
    wrong = probs.argmax(1) != labels
    print(f"{len(labels)} chromosomes, argmax error {wrong.mean():.2%}\n")
    print("| feature | " + " | ".join(f"bin {b + 1} of {args.bins}" for b in range(args.bins)) + " |")
    print("| --- |" + " --- |" * args.bins)
    out = {"chromosomes": int(len(labels)), "error_rate": float(wrong.mean()), "features": {}}
    for name in args.features:
        rows = error_by_quantile(arrays["features"][:, FEATURE_NAMES.index(name)], wrong, args.bins)
        out["features"][name] = rows
        cells = [
            f"{r['lo']:.2f}-{r['hi']:.2f}: {r['error_rate']:.1%} ({r['share_of_errors']:.0%} of errors)" for r in rows
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Are the classifier's inputs and probabilities the same before and after a change to the crop code?

Run once with ``--save before.npz`` on the old code, once with ``--compare before.npz`` on the new code. It records,
for the bundled example (the whole pipeline with the shipped weights) and for a few synthetic spreads (the whole
pipeline, and :func:`karyotyping.identify.measure_and_classify` on their true masks, also with a 3x3 speck added
that is below ``MIN_AREA``), the feature rows, every fitted crop that each classifier member received (captured
at :func:`models.classifier.prepare_crops`), the probabilities, the karyogram's crops, and the training path's
arrays (:func:`datasets.instances.spread_instances_by_mode`) of the synthetic spreads. The comparison prints the
largest difference of each array and, last, one JSON line; cases named in ``--expect-change`` may differ.

    python experiments/crop_identity.py --save /tmp/crops_before.npz
    python experiments/crop_identity.py --compare /tmp/crops_before.npz --expect-change gt_speck
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _capture():
    """Patch ``models.classifier.prepare_crops`` to record what each member gets; returns the record list."""
    import models.classifier as mc

    seen: list[tuple[str, np.ndarray]] = []
    real = mc.prepare_crops

    def spy(crops, config):
        out = real(crops, config)
        seen.append((config.crop_mode, np.array(out, np.float32)))
        return out

    mc.prepare_crops = spy
    return seen


def _natural(crops) -> dict[str, np.ndarray]:
    """The karyogram's crops as arrays (a list of [h, w] of any size -> one flat array and the shapes)."""
    flat = [np.asarray(c, np.float32).reshape(-1) for c in crops]
    return {
        "natural_shapes": np.array([np.asarray(c).shape for c in crops], np.int64).reshape(-1, 2),
        "natural_values": np.concatenate(flat) if flat else np.zeros(0, np.float32),
    }


def collect(n_synthetic: int) -> dict[str, np.ndarray]:
    from datasets.instances import spread_instances_by_mode
    from datasets.synthetic import SyntheticDataset
    from karyotyping.core import KaryotypePipeline
    from karyotyping.identify import measure_and_classify

    seen = _capture()
    out: dict[str, np.ndarray] = {}

    def add(case: str, arrays: dict[str, np.ndarray]) -> None:
        for k, v in arrays.items():
            out[f"{case}/{k}"] = np.asarray(v)

    def inputs() -> dict[str, np.ndarray]:
        got = {f"input_{i}_{mode}": a for i, (mode, a) in enumerate(seen)}
        seen.clear()
        return got

    pipe = KaryotypePipeline(str(ROOT / "weights/segmentation.pt"), str(ROOT / "weights/classifier.pt"), device="cpu")
    members = pipe.cls_members
    specs = {c.crop_mode: (c.crop_height, c.crop_width) for _, c in members}
    seen.clear()
    pred = pipe.process(ROOT / "examples/cil_104023.jpg")
    add("example", {"features": pred.features, "probs": pred.probs, **inputs(), **_natural(pred.crops)})
    ds = SyntheticDataset(n=n_synthetic, seed=7)
    for k in range(len(ds)):
        rec = ds[k]
        pred = pipe.run(rec.image)
        add(
            f"synthetic{k}_pipeline",
            {"features": pred.features, "probs": pred.probs, **inputs(), **_natural(pred.crops)},
        )
        found = measure_and_classify(members, rec.image, rec.masks, rec.boxes)
        add(f"synthetic{k}_gt", {"features": found.x, "probs": found.probs, **inputs(), **_natural(found.crops)})
        arrays, _ = spread_instances_by_mode(rec, specs)
        add(
            f"synthetic{k}_train",
            {"features": arrays["features"], "labels": arrays["labels"], "lengths": arrays["lengths"]}
            | {f"crops_{m}": c for m, c in arrays["crops_by_mode"].items()},
        )
    # a 3x3 speck (below MIN_AREA) beside the chromosomes of the first spread: the case the MIN_AREA fix changes
    rec = ds[0]
    speck = np.zeros((1, *rec.masks.shape[1:]), np.uint8)
    free = np.argwhere(~rec.masks.any(0))
    y, x = (int(v) for v in free[len(free) // 2])
    y, x = min(max(y, 1), speck.shape[1] - 2), min(max(x, 1), speck.shape[2] - 2)
    speck[0, y - 1 : y + 2, x - 1 : x + 2] = 1
    masks = np.concatenate([rec.masks, speck])
    boxes = np.concatenate([rec.boxes, np.array([[x - 1, y - 1, x + 2, y + 2]], np.float32)])
    found = measure_and_classify(members, rec.image, masks, boxes)
    add("gt_speck", {"features": found.x, "probs": found.probs, **inputs(), **_natural(found.crops)})
    return out


def compare(before: dict[str, np.ndarray], after: dict[str, np.ndarray], expect: set[str], tol: float) -> dict:
    cases = sorted({k.split("/")[0] for k in before} | {k.split("/")[0] for k in after})
    report = {}
    for case in cases:
        keys = sorted({k for k in before if k.startswith(case + "/")} | {k for k in after if k.startswith(case + "/")})
        worst, problems = 0.0, []
        for k in keys:
            if k not in before or k not in after:
                problems.append(f"{k} only {'after' if k in after else 'before'}")
                continue
            a, b = before[k], after[k]
            if a.shape != b.shape:
                problems.append(f"{k} shape {a.shape} -> {b.shape}")
                continue
            if a.size:
                d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                worst = max(worst, d)
                if d > tol:
                    problems.append(f"{k} differs by {d:.3g}")
        same = not problems
        report[case] = {
            "identical": same,
            "max_abs_diff": worst,
            "problems": problems,
            "expected_change": case in expect,
        }
        mark = "same" if same else ("changed (expected)" if case in expect else "CHANGED")
        print(f"{case:24s} {mark:20s} max |diff| {worst:.3g}" + ("".join(f"\n    {p}" for p in problems[:8])))
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path, help="write this code's arrays to this .npz")
    g.add_argument("--compare", type=Path, help="compare this code's arrays with a --save file")
    p.add_argument("--synthetic", type=int, default=3, help="synthetic spreads (default 3)")
    p.add_argument("--tol", type=float, default=1e-6, help="largest difference counted as identical")
    p.add_argument("--expect-change", nargs="*", default=[], help="cases allowed to differ")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    arrays = collect(args.synthetic)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save, **arrays)
        print(json.dumps({"saved": str(args.save), "arrays": len(arrays)}))
        return 0
    with np.load(args.compare) as z:
        before = {k: z[k] for k in z.files}
    report = compare(before, arrays, set(args.expect_change), args.tol)
    ok = all(r["identical"] or r["expected_change"] for r in report.values())
    print(json.dumps({"ok": ok, "cases": report}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

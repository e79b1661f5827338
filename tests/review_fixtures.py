"""Results folders for the review app's tests, in the layout ``inference_pipeline.py`` writes.

:func:`write_synthetic_cell` writes ``<stem>.json`` (+ overlay PNG) for a synthetic metaphase with known
labels and a few deliberate mistakes, in seconds and without models; :func:`pipeline_results` runs the
real pipeline with the shipped weights on the bundled example.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cil_104023.jpg"


def write_synthetic_cell(
    out_dir: Path, stem: str, *, seed: int = 0, karyotype: str = "46,XY", image_dir: Path | None = None
) -> dict[str, Any]:
    """A pipeline-layout result of a synthetic spread: true labels except that one chromosome 1 is labelled 3
    (flagged ``low_confidence`` and ``extra``; its homolog ``unpaired``), plus a round speck of debris
    (label 0, ``unassigned``). The image goes to ``image_dir`` (default ``out_dir``). Returns the JSON."""
    from datasets.io import atomic_write_image
    from datasets.synthetic import SyntheticConfig, generate_spread
    from karyogram.render import render_overlay

    cfg = SyntheticConfig(image_size=(420, 520), scale=(700.0, 900.0), debris=(0, 3), nuclei_mean=0.0)
    rec = generate_spread(np.random.default_rng(seed), cfg, karyotype)
    h, w = rec.image.shape
    image_dir = image_dir or out_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    img_path = image_dir / f"{stem}.png"
    atomic_write_image(img_path, np.round(rec.image * 255).astype(np.uint8))
    # a speck of debris where no chromosome is
    free = rec.masks.sum(0) == 0
    yy, xx = np.mgrid[0:h, 0:w]
    speck = None
    for cy, cx in ((20, 20), (h - 20, w - 20), (20, w - 20), (h - 20, 20)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        if free[disc].all():
            speck = disc.astype(np.uint8)
            break
    assert speck is not None, "no free corner for the debris speck"
    masks = np.concatenate([rec.masks, speck[None]])
    labels = [int(v) for v in rec.labels] + [0]
    ones = [i for i, k in enumerate(labels) if k == 1]
    wrong = ones[0]
    labels[wrong] = 3
    n = len(labels)
    flags: list[list[str]] = [[] for _ in range(n)]
    flags[wrong] = ["low_confidence", "extra"]
    flags[ones[1]] = ["unpaired"]
    flags[n - 1] = ["unassigned"]
    pair = [-1] * n
    for k in range(1, 25):
        members = [i for i in range(n) if labels[i] == k and i != wrong]
        for a, b in zip(members[0::2], members[1::2]):
            pair[a], pair[b] = b, a
    confidence = [0.4 if i == wrong else 0.95 for i in range(n)]
    cens = [rec.centromeres[i] if i < len(rec) else None for i in range(n)]
    data = _result_json(img_path, masks, labels, flags, pair, confidence, cens)
    (out_dir / f"{stem}.json").write_text(json.dumps(data))
    render_overlay(rec.image, masks, labels, flags=flags, path=out_dir / f"{stem}_overlay.png")
    return data


def _result_json(
    img_path: Path,
    masks: np.ndarray,
    labels: list[int],
    flags: list[list[str]],
    pair: list[int],
    confidence: list[float],
    centromeres: list[Any],
) -> dict[str, Any]:
    """The pipeline's JSON of instances ``masks`` uint8 [N, H, W] with these labels (probability 0.99 each)."""
    from datasets.coco import encode_mask
    from karyogram.iscn import iscn_string
    from karyogram.labels import name_of
    from metrics.karyotype import sanity_score

    n, h, w = masks.shape
    chromosomes = []
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        probs = np.full(24, 0.01 / 23)
        if labels[i]:
            probs[labels[i] - 1] = 0.99
        cen = centromeres[i] if centromeres[i] is not None else [float(xs.mean()), float(ys.mean())]
        chromosomes.append(
            {
                "id": i,
                "label": labels[i],
                "name": name_of(labels[i]),
                "score": 0.99,
                "probs": [round(float(p), 5) for p in probs],
                "confidence": confidence[i],
                "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "mask": encode_mask(masks[i]),
                "length_px": float(max(np.ptp(xs), np.ptp(ys))),
                "centromere_index": 0.4,
                "centromere_xy": [round(float(v), 2) for v in cen],
                "polarity_ok": True,
                "pair": pair[i] if pair[i] >= 0 else None,
                "flags": flags[i],
            }
        )
    return {
        "image": str(img_path),
        "width": int(w),
        "height": int(h),
        "processing_scale": 1.0,
        "karyotype": iscn_string(labels),
        "sex": "XY" if 24 in labels else "XX",
        "count": sum(1 for k in labels if k),
        "detections": n,
        "sanity_score": round(float(sanity_score(labels)), 4),
        "chromosomes": chromosomes,
        "timings_s": {},
        "models": {"segmentation": "synthetic", "classifier": "synthetic"},
        "notes": [],
    }


#: the rods of :func:`write_rods_cell`: name -> (end, end) in (x, y) pixels, all 8 px wide
RODS = {
    "cross_a": ((30, 70), (150, 70)),  # crosses cross_b: the two are one instance
    "cross_b": ((90, 15), (90, 125)),
    "whole": ((190, 20), (190, 140)),  # one chromosome, to cut
    "piece_1": ((40, 170), (100, 170)),  # one chromosome found as two pieces with a gap of 6 px
    "piece_2": ((107, 170), (160, 170)),
    "far": ((220, 190), (260, 190)),  # far from the pieces
}
ROD_WIDTH = 8


def rod_mask(name: str, shape: tuple[int, int] = (220, 280)) -> np.ndarray:
    """uint8 [H, W] of one rod of :data:`RODS`."""
    import cv2

    m = np.zeros(shape, np.uint8)
    cv2.line(m, *RODS[name], 1, thickness=ROD_WIDTH)
    return m


def write_rods_cell(out_dir: Path, stem: str = "rods") -> dict[str, Any]:
    """A hand-made cell of dark rods on white with known answers (:data:`RODS`): instance 0 is the two
    crossing rods found as one, 1 a rod to cut, 2 and 3 the two pieces of one rod, 4 a rod far away."""
    from datasets.io import atomic_write_image
    from karyogram.render import render_overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (220, 280)
    masks = np.stack(
        [
            rod_mask("cross_a") | rod_mask("cross_b"),
            rod_mask("whole"),
            rod_mask("piece_1"),
            rod_mask("piece_2"),
            rod_mask("far"),
        ]
    )
    image = np.where(masks.any(0), 0.3, 0.95).astype(np.float32)
    # a band or two, so that the measurements see a chromosome
    image[masks.any(0) & ((np.arange(shape[1])[None, :] // 9) % 3 == 0)] = 0.15
    img_path = out_dir / f"{stem}.png"
    atomic_write_image(img_path, np.round(image * 255).astype(np.uint8))
    labels = [1, 2, 3, 3, 4]
    flags = [["suspected_overlap"], [], ["unpaired"], ["extra"], ["unpaired"]]
    pair = [-1, -1, 3, 2, -1]
    data = _result_json(img_path, masks, labels, flags, pair, [0.5] * 5, [None] * 5)
    (out_dir / f"{stem}.json").write_text(json.dumps(data))
    render_overlay(image, masks, labels, flags=flags, path=out_dir / f"{stem}_overlay.png")
    return data


def pipeline_results(out_dir: Path) -> Path:
    """Run ``inference_pipeline.py`` with the shipped weights on the bundled example into ``out_dir``."""
    import inference_pipeline

    args = inference_pipeline.get_args_parser().parse_args(
        ["--image", str(EXAMPLE), "--out", str(out_dir), "--quiet", "--threads", "1"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inference_pipeline.main(args) == 0
    return out_dir / f"{EXAMPLE.stem}.json"


def smoke_train_both(coco_json: Path, tmp: Path) -> dict[str, Any]:
    """Fine-tuning smoke runs of both trainers on a reviewed COCO file (1 step each, CPU)."""
    import train_classification
    import train_segmentation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = train_segmentation.main(
            train_segmentation.get_args_parser().parse_args(
                ["--dataset", "coco", "--data-root", str(coco_json), "--agnostic", "--smoke", "--val-fraction", "0.5",
                 "--device", "cpu", "--output-dir", str(tmp / "seg")]
            )
        )  # fmt: skip
        cls = train_classification.main(
            train_classification.get_args_parser().parse_args(
                ["--dataset", "coco", "--data-root", str(coco_json), "--epochs", "1", "--steps-per-epoch", "1",
                 "--crop-height", "32", "--crop-width", "16", "--batch-size", "8", "--workers", "0",
                 "--val-fraction", "0.5", "--device", "cpu", "--output-dir", str(tmp / "cls"),
                 "--cache-dir", str(tmp / "cache"), "--no-progress"]
            )
        )  # fmt: skip
    return {"seg": seg, "cls": cls}


def write_merged_cell(out_dir: Path, stem: str = "merged", seed: int = 7) -> dict[str, Any]:
    """A synthetic spread in which, as a detector might, two crossing chromosomes were found as one instance and
    two touching ones as one. Returns the pipeline JSON's instance ids and the known answers: ``crossing``
    (``id``, the true masks ``first`` and ``second``, ``path`` along the first: the centre line, 4 px beyond
    each end) and ``touching`` (``id``, the true masks ``first`` and ``second``, a ``line`` across their
    contact)."""
    import cv2

    from datasets.io import atomic_write_image
    from datasets.synthetic import SyntheticConfig, generate_spread
    from features.geometry import centerline
    from karyogram.render import render_overlay
    from review.geometry import mask_width

    cfg = SyntheticConfig(
        image_size=(420, 520), scale=(700.0, 900.0), debris=(0, 3), nuclei_mean=0.0, p_cross=0.25, p_touch=0.25
    )
    rec = generate_spread(np.random.default_rng(seed), cfg, "46,XY")
    m = rec.masks.astype(np.uint8)
    n = len(m)
    k3 = np.ones((3, 3), np.uint8)
    near = np.array([[(cv2.dilate(m[i], k3) & m[j]).sum() if i != j else 0 for j in range(n)] for i in range(n)])
    over = np.array([[(m[i] & m[j]).sum() if i != j else 0 for j in range(n)] for i in range(n)])
    alone = [int((near[i] > 0).sum()) == 1 for i in range(n)]
    cross = next((i, j) for i in range(n) for j in range(i + 1, n) if over[i, j] > 20 and alone[i] and alone[j])
    touch = next((i, j) for i in range(n) for j in range(i + 1, n) if over[i, j] == 0 and near[i, j] > 3 and alone[i] and alone[j])  # fmt: skip
    # the path: the first chromosome's centre line, on beyond both ends
    line = centerline(m[cross[0]]).astype(np.float64)
    a, b = line[0] - line[min(3, len(line) - 1)], line[-1] - line[max(-4, -len(line))]
    path = np.concatenate([[line[0] + 4 * a / np.hypot(*a)], line, [line[-1] + 4 * b / np.hypot(*b)]])
    # the cut: across the contact, perpendicular to the line between the two
    k, q = touch
    c = np.argwhere((cv2.dilate(m[k], k3) & m[q]) | (cv2.dilate(m[q], k3) & m[k]))[:, ::-1].astype(np.float64)
    ctr = c.mean(0)
    d = np.argwhere(m[q])[:, ::-1].mean(0) - np.argwhere(m[k])[:, ::-1].mean(0)
    u = np.array([-d[1], d[0]]) / np.hypot(*d)
    ext = np.abs((c - ctr) @ u).max() + 0.5 * max(mask_width(m[k]), mask_width(m[q])) + 4
    cut_line = np.array([ctr - ext * u, ctr + ext * u])
    keep = [i for i in range(n) if i not in (cross[1], touch[1])]
    masks = np.stack(
        [m[i] | m[cross[1]] if i == cross[0] else m[i] | m[touch[1]] if i == touch[0] else m[i] for i in keep]
    )
    labels = [int(rec.labels[i]) for i in keep]
    flags = [["suspected_overlap"] if i in (cross[0], touch[0]) else [] for i in keep]
    out_dir.mkdir(parents=True, exist_ok=True)
    img_path = out_dir / f"{stem}.png"
    atomic_write_image(img_path, np.round(rec.image * 255).astype(np.uint8))
    pair = [-1] * len(keep)
    data = _result_json(img_path, masks, labels, flags, pair, [0.9] * len(keep), [None] * len(keep))
    (out_dir / f"{stem}.json").write_text(json.dumps(data))
    render_overlay(rec.image, masks, labels, flags=flags, path=out_dir / f"{stem}_overlay.png")
    return {
        "json": data,
        "crossing": {"id": keep.index(cross[0]), "first": m[cross[0]], "second": m[cross[1]], "path": path},
        "touching": {"id": keep.index(touch[0]), "first": m[touch[0]], "second": m[touch[1]], "line": cut_line},
    }

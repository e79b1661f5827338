"""Adapters at the edge: a :class:`~karyotyping.core.KaryotypePrediction` as JSON, COCO results and pictures.

* :func:`to_json_dict` / :func:`from_json_dict`: the ``<stem>.json`` document ``inference_pipeline.py`` writes
  (numbers rounded for reading: scores and confidences to 4 decimals, probabilities to 5, pixels to 2; masks
  as COCO RLE at the original resolution) and back; its schema (:data:`SCHEMA_VERSIONS`, the keys, the checks
  of :func:`check_json_dict`) is owned here, and the review app reads the files through this module;
* :func:`coco_results`: COCO results-format entries of the assigned chromosomes
  (:func:`datasets.coco.records_to_coco_results`, unrounded);
* :func:`write_outputs`: ``<stem>.json``, ``<stem>_karyogram.<fmt>`` and ``<stem>_overlay.<fmt>``, atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from karyogram.labels import NUM_CLASSES
from karyotyping.core import KaryotypePrediction, resize_masks, to_processing

__all__ = ["SCHEMA_VERSIONS", "check_json_dict", "coco_results", "from_json_dict", "to_json_dict", "write_outputs"]

#: versions of the per-image JSON document :func:`from_json_dict` reads. :func:`to_json_dict` writes no version key
#: yet: an absent ``schema_version`` means 1, today's layout; a layout change writes the next number and adds it here
SCHEMA_VERSIONS = (1,)
#: keys every document has, and every chromosome entry
TOP_KEYS = ("image", "width", "height", "karyotype", "sex", "sanity_score", "chromosomes")
CHROMOSOME_KEYS = ("id", "label", "score", "probs", "confidence", "box", "mask", "length_px", "centromere_index",
                   "centromere_xy", "polarity_ok", "pair", "flags")  # fmt: skip


def to_json_dict(pred: KaryotypePrediction) -> dict[str, Any]:
    """The JSON document of one image (layout in the README, "Inference"); ``timings_s`` is copied."""
    from datasets.coco import encode_mask
    from karyogram.labels import name_of

    chromosomes = []
    for i in range(len(pred)):
        lab = int(pred.labels[i])
        pair = int(pred.pair_of[i])
        chromosomes.append(
            {
                "id": i,
                "label": lab,
                "name": name_of(lab),  # "?" when unassigned
                "score": round(float(pred.scores[i]), 4),
                "probs": [round(float(p), 5) for p in pred.probs[i]],
                "confidence": round(float(pred.confidence[i]), 4),
                "box": [round(float(v), 2) for v in pred.boxes[i]],
                "mask": encode_mask(pred.masks[i]),
                "length_px": round(float(pred.length_px[i]), 2),
                "centromere_index": round(float(pred.centromere_index[i]), 4),
                "centromere_xy": [round(float(v), 2) for v in pred.centromere_xy[i]],
                "polarity_ok": bool(pred.polarity_ok[i]),
                "pair": pair if pair >= 0 else None,
                "flags": list(pred.flags[i]),
            }
        )
    return {
        "image": pred.image,
        "width": int(pred.width),
        "height": int(pred.height),
        "processing_scale": round(float(pred.processing_scale), 6),
        "karyotype": pred.karyotype,
        "sex": pred.sex,
        "count": pred.count,
        "detections": len(pred),
        "sanity_score": round(float(pred.sanity_score), 4),
        "chromosomes": chromosomes,
        "timings_s": {k: round(v, 4) for k, v in pred.timings_s.items()},
        "models": dict(pred.models),
        "notes": list(pred.notes),
        "image_checks": None if pred.image_checks is None else pred.image_checks.to_dict(),
    }


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def check_json_dict(data: Any) -> None:
    """Check a per-image JSON document against the schema :func:`to_json_dict` writes: a version this module reads,
    every key, ids 0..N-1 in order, labels in 0..24, boxes of four numbers, masks RLE of the image's size, pairs
    between two chromosomes, 24 probabilities.

    Raises:
        ValueError: what is wrong, naming the key or ``chromosomes[i]``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a pipeline result must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        raise ValueError(
            f"schema_version {version!r} is not one this version of the pipeline reads ({known}); "
            "use the review app of the same version as the pipeline that wrote it"
        )
    missing = [k for k in TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f"not a pipeline result: missing key(s) {', '.join(missing)}")
    w, h = data["width"], data["height"]
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise ValueError(f"width/height must be positive integers, got {w!r} x {h!r}")
    chroms = data["chromosomes"]
    if not isinstance(chroms, list):
        raise ValueError(f"'chromosomes' must be a list, got {type(chroms).__name__}")
    for i, c in enumerate(chroms):
        where = f"chromosomes[{i}]"
        if not isinstance(c, dict):
            raise ValueError(f"{where} must be an object")
        miss = [k for k in CHROMOSOME_KEYS if k not in c]
        if miss:
            raise ValueError(f"{where} lacks {', '.join(miss)}")
        if c["id"] != i:
            raise ValueError(f"{where} has id {c['id']!r}; ids must be 0..N-1 in order")
        lab = c["label"]
        if not isinstance(lab, int) or isinstance(lab, bool) or not 0 <= lab <= NUM_CLASSES:
            raise ValueError(f"{where}: label must be an integer 0..{NUM_CLASSES}, got {lab!r}")
        box = c["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise ValueError(f"{where}: box must be [x1, y1, x2, y2] numbers, got {box!r}")
        m = c["mask"]
        if not (isinstance(m, dict) and isinstance(m.get("counts"), str) and m.get("size") == [h, w]):
            raise ValueError(f"{where}: mask must be a compressed RLE of size [{h}, {w}]")
        if not (isinstance(c["flags"], list) and all(isinstance(f, str) for f in c["flags"])):
            raise ValueError(f"{where}: flags must be a list of strings")
        pair = c["pair"]
        if pair is not None and not (isinstance(pair, int) and 0 <= pair < len(chroms) and pair != i):
            raise ValueError(f"{where}: pair must be null or another chromosome's id, got {pair!r}")
        probs = c["probs"]
        if not (isinstance(probs, list) and len(probs) == NUM_CLASSES and all(_number(v) for v in probs)):
            raise ValueError(f"{where}: probs must be {NUM_CLASSES} numbers")


def from_json_dict(d: dict[str, Any]) -> KaryotypePrediction:
    """A prediction from its JSON document (values as rounded there; no features or crops, and a
    :func:`datasets.record.blank_image` for the record's pixels, which the document does not hold).

    Raises:
        ValueError: the document fails :func:`check_json_dict` or a chromosome entry is otherwise malformed (the
            message names it).
    """
    from pycocotools import mask as mask_utils

    from datasets.record import KaryoRecord, blank_image
    from karyotyping.image_checks import ImageChecks

    check_json_dict(d)
    try:
        width, height = int(d["width"]), int(d["height"])
        chroms = list(d["chromosomes"])
        n = len(chroms)
        masks = np.zeros((n, height, width), np.uint8)
        for i, c in enumerate(chroms):  # (check_json_dict: every mask an RLE of the image's size)
            rle = c["mask"]
            masks[i] = mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
        record = KaryoRecord(
            image=blank_image(height, width),
            boxes=np.array([c["box"] for c in chroms], np.float64).reshape(n, 4),
            labels=np.array([c["label"] for c in chroms], np.int64),
            masks=masks,
            scores=np.array([c["score"] for c in chroms], np.float32),
        )
        return KaryotypePrediction(
            image=d.get("image"),
            record=record,
            processing_scale=float(d.get("processing_scale", 1.0)),
            probs=np.array([c["probs"] for c in chroms], np.float32).reshape(n, -1)
            if n
            else np.zeros((0, NUM_CLASSES)),
            confidence=np.array([c["confidence"] for c in chroms], np.float64),
            pair_of=np.array([-1 if c["pair"] is None else c["pair"] for c in chroms], np.int64),
            flags=[list(c["flags"]) for c in chroms],
            karyotype=d["karyotype"],
            sex=d["sex"],
            sanity_score=float(d["sanity_score"]),
            length_px=np.array([c["length_px"] for c in chroms], np.float64),
            centromere_index=np.array([c["centromere_index"] for c in chroms], np.float64),
            centromere_xy=np.array([c["centromere_xy"] for c in chroms], np.float64).reshape(n, 2),
            polarity_ok=np.array([c["polarity_ok"] for c in chroms], bool),
            timings_s=dict(d.get("timings_s", {})),
            models=dict(d.get("models", {})),
            notes=list(d.get("notes", [])),
            image_checks=None if d.get("image_checks") is None else ImageChecks.from_dict(d["image_checks"]),
        )
    except KeyError as exc:
        raise ValueError(f"not a karyotype JSON document: missing key {exc}") from None


def coco_results(pred: KaryotypePrediction, image_id: int) -> list[dict[str, Any]]:
    """COCO results-format entries (bbox xywh, category 1..24, score, RLE) of one image's assigned chromosomes.

    Unassigned chromosomes (label 0) are left out; ``score`` is the detection score times the assignment
    confidence of the chromosome's label (:meth:`KaryotypePrediction.assigned`, which ``evaluate.py --stage full``
    scores its system-level 24-class AP on too).
    """
    from datasets.coco import records_to_coco_results

    out = records_to_coco_results([pred.assigned()], [image_id])
    name = Path(pred.image).name if pred.image else None
    return [
        {"image_id": r["image_id"], "file_name": name, **{k: v for k, v in r.items() if k != "image_id"}} for r in out
    ]


def write_outputs(
    pred: KaryotypePrediction, out_dir: str | Path, *, fmt: str = "png", stem: str | None = None
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>_karyogram.<fmt>`` and ``<stem>_overlay.<fmt>`` (atomically).

    ``stem`` defaults to the image's file stem. The rendering time is added to ``pred.timings_s``.

    Raises:
        ValueError: the prediction was read back from JSON: it has no pixels or crops to draw.
    """
    from datasets.io import atomic_write_json
    from karyogram.render import render_karyogram

    if pred.features is None:
        raise ValueError("this prediction was read back from JSON: it holds no image or crops to draw")
    stem = stem or (Path(pred.image).stem if pred.image else "image")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the overlay is drawn at the processing scale, where chromosomes have the size the drawing is proportioned for
    # (and a huge image stays cheap to draw): the image as the models saw it, the masks brought to its size
    image = to_processing(pred.record.image, pred.processing_scale)
    masks = resize_masks(pred.masks, *image.shape)
    title = pred.karyotype or "no chromosomes found"
    paths = {
        "karyogram": render_karyogram(
            pred.crops,
            pred.centromere_rows,
            pred.labels,
            pair_of=[int(p) for p in pred.pair_of],
            flags=pred.flags,
            title=f"{title}   ({stem})",
            path=out_dir / f"{stem}_karyogram.{fmt}",
        ),
        "overlay": _write_overlay(image, masks, pred.labels, pred.flags, out_dir / f"{stem}_overlay.{fmt}"),
    }
    pred.timings_s["rendering"] = time.perf_counter() - t0
    paths["json"] = out_dir / f"{stem}.json"
    atomic_write_json(paths["json"], to_json_dict(pred))
    return paths


def _write_overlay(image: np.ndarray, masks: np.ndarray, labels: np.ndarray, flags: list, path: Path) -> Path:
    """The annotated spread at ``path``: PNG directly; SVG/PDF embed the same raster at its pixel size
    (OpenCV cannot encode vector formats, and a vector overlay of thousands of mask contours is no use)."""
    from karyogram.render import render_overlay

    if path.suffix.lower() == ".png":
        return render_overlay(image, masks, labels, flags=flags, path=path)
    import tempfile

    import cv2
    from matplotlib.figure import Figure

    from datasets.io import atomic_save_figure

    with tempfile.TemporaryDirectory() as tmp:
        png = render_overlay(image, masks, labels, flags=flags, path=Path(tmp) / "overlay.png")
        rgb = cv2.imread(str(png), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = rgb.shape[:2]
    dpi = 100
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    fig.figimage(rgb, 0, 0, origin="upper")
    atomic_save_figure(fig, path, dpi=dpi)
    return path

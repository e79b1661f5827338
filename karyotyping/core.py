"""The pipeline core: a grey metaphase image array in, one typed :class:`KaryotypePrediction` out.

    from karyotyping import KaryotypePipeline
    pipe = KaryotypePipeline("weights/segmentation.pt", "weights/classifier.pt", device="cpu")
    pred = pipe.run(image)          # ndarray [H, W] (8/16-bit, float, RGB-that-is-grey): nothing touches the disk
    pred.karyotype, pred.labels, pred.masks, pred.probs, pred.processing_scale

Stages: segmentation (:mod:`models.segmentation` through :func:`karyotyping.detection.detect`, then mask-level
suppression of duplicates, exclusive masks and their trimming to the image's foreground:
:func:`karyotyping.masks.keep_instances`, by one :class:`karyotyping.masks.MaskConfig`), features (:func:`features.triad.spread_features`), classification
(:func:`models.classifier.predict_members`: each classifier of the file on its own crops, optionally also turned
upside down), karyotype assignment (:func:`karyogram.assign.assign_karyotype`). JSON, COCO results and the karyogram / overlay pictures are
adapters in :mod:`karyotyping.export` that read the prediction (the JSON document's writer and reader:
``export.to_json_dict(pred)``, ``export.from_json_dict(d)``); this module imports none of them.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.record import KaryoRecord
from karyotyping.detection import SCORE_THRESH
from karyotyping.masks import DEFAULT as DEFAULT_MASKS
from karyotyping.masks import MASK_FLAGS, MaskConfig

__all__ = [
    "DEFAULT_CLS_WEIGHTS",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_SEG_WEIGHTS",
    "FLIP_TTA",
    "KaryotypePipeline",
    "KaryotypePrediction",
    "PipelineError",
    "PIPELINE_OPTIONS",
    "add_pipeline_args",
    "pipeline_options",
]

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEG_WEIGHTS = _ROOT / "weights" / "segmentation.pt"
DEFAULT_CLS_WEIGHTS = _ROOT / "weights" / "classifier.pt"
#: images whose longer side exceeds this are downscaled for processing (outputs are mapped back)
DEFAULT_MAX_SIDE = 2048
#: whether the pipeline also classifies each crop upside down and averages (the ``flip_tta`` argument; a flag
#: of ``evaluate.py`` only, not of the inference CLI since issue 26), chosen per shipped classifier on the CIL
#: val split (docs/experiments.md): on for run 4, off since run 7, which gains nothing from it on the true
#: instances nor in the whole pipeline, and it would double its cost
FLIP_TTA = False


class PipelineError(RuntimeError):
    """A problem the user must fix (missing weights, CUDA asked for but absent, ...)."""


@dataclass
class KaryotypePrediction:
    """Everything the pipeline found in one image.

    The geometry lives once, in ``record``, in the original image's pixels; the image may have been processed
    resized by ``processing_scale`` (processing pixels per original pixel, 1 = as it is). ``boxes``, ``scores``, ``masks``,
    ``labels``, ``width`` and ``height`` read it; the other per-instance arrays are its extras, in the same order.

    Attributes:
        image: the image's name or path (None for an anonymous array).
        record: the chromosomes as a :class:`datasets.record.KaryoRecord` at the original resolution: ``image``
            the grey image dark-on-light as the models saw it (inverted when the image was light-on-dark; a
            :func:`datasets.record.blank_image` when read back from JSON), ``boxes`` float32 [N, 4] xyxy unrounded,
            ``scores`` float32 [N] detection scores unrounded and descending, ``masks`` uint8 [N, height, width],
            ``labels`` int64 [N] final labels after the karyotype assignment (1..24, 0 = unassigned).
        processing_scale: processing pixels per original pixel (the JSON's ``processing_scale``).
        probs: float32 [N, 24] classifier probabilities (column k - 1 for class k).
        confidence: float [N] assignment confidence of each label.
        pair_of: int64 [N] homolog of each instance, -1 if none.
        flags: per instance, a list of :data:`karyogram.assign.FLAGS`.
        karyotype: ISCN string (None when no chromosome was found).
        sex: sex chromosomes of the assignment (None when no chromosome was found).
        sanity_score: :func:`metrics.karyotype.sanity_score` of the labels.
        length_px: float [N] centre-line length, original pixels.
        centromere_index: float [N] p / (p + q).
        centromere_xy: float [N, 2] centromere ``(x, y)``, original pixels.
        polarity_ok: bool [N] the p arm is known (polarity confidence >= 0.5).
        features: float32 [N, F] the classifier's feature triad (None when read back from JSON).
        assignment: the full :class:`karyogram.assign.KaryotypeResult` (None when read back from JSON).
        crops / centromere_rows: straightened crops (p arm up) and centromere rows, what the karyogram draws.
        timings_s, models, notes: seconds per stage, the weights files, messages for the user.
        image_checks: polarity, chromosome width, processing scale, contrast and the reasons the image is outside
            what the models know (:class:`karyotyping.image_checks.ImageChecks`; None for an older JSON).
    """

    image: str | None
    record: KaryoRecord
    processing_scale: float
    probs: np.ndarray
    confidence: np.ndarray
    pair_of: np.ndarray
    flags: list[list[str]]
    karyotype: str | None
    sex: str | None
    sanity_score: float
    length_px: np.ndarray
    centromere_index: np.ndarray
    centromere_xy: np.ndarray
    polarity_ok: np.ndarray
    features: np.ndarray | None = None
    assignment: Any = None
    crops: list[np.ndarray] = field(default_factory=list)
    centromere_rows: list[float] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    image_checks: Any = None

    def __len__(self) -> int:
        return len(self.record)

    @property
    def width(self) -> int:
        """Width of the original image (pixels)."""
        return self.record.width

    @property
    def height(self) -> int:
        """Height of the original image (pixels)."""
        return self.record.height

    @property
    def boxes(self) -> np.ndarray:
        return self.record.boxes

    @property
    def scores(self) -> np.ndarray:
        return self.record.scores

    @property
    def masks(self) -> np.ndarray:
        return self.record.masks

    @property
    def labels(self) -> np.ndarray:
        return self.record.labels

    @property
    def count(self) -> int:
        """Number of assigned chromosomes (the ISCN count)."""
        return int((np.asarray(self.labels) > 0).sum())

    def assigned(self) -> KaryoRecord:
        """The assigned chromosomes (label > 0) scored for class-aware AP: ``scores`` the detection score times the
        assignment confidence of the label (the detector is class-agnostic, so the class evidence comes from the
        classifier and the karyotype assignment); what COCO results and ``evaluate.py``'s system AP read."""
        keep = np.flatnonzero(np.asarray(self.labels) > 0)
        rec = self.record.select(keep)
        score = np.asarray(rec.scores, np.float64) * np.asarray(self.confidence, np.float64)[keep]
        rec.scores = score.astype(np.float32)
        return rec


#: the :class:`KaryotypePipeline` arguments that :func:`add_pipeline_args` adds as flags of the same names (the
#: mask flags, :data:`karyotyping.masks.MASK_FLAGS`, go into its one ``masks`` argument)
PIPELINE_OPTIONS = ("polarity", "chromosome_width", "auto_scale")


def pipeline_options(args: Any) -> dict[str, Any]:
    """Parsed arguments (from :func:`add_pipeline_args`) as keyword arguments of :class:`KaryotypePipeline`: the
    :data:`PIPELINE_OPTIONS` and ``masks``, a :class:`karyotyping.masks.MaskConfig` of the mask flags.

    Raises:
        PipelineError: a mask flag out of its range.
    """
    try:
        masks = MaskConfig(**{name: getattr(args, name) for name in MASK_FLAGS})
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    return {"masks": masks, **{name: getattr(args, name) for name in PIPELINE_OPTIONS}}


def add_pipeline_args(group: Any) -> None:
    """The pipeline's mask and crop flags (``--mask-overlap``, ``--mask-thresh``, ``--[no-]exclusive-masks``,
    ``--[no-]trim-masks``, ``--[no-]smooth-masks``, ``--polarity`` ...) on an argparse parser or group, their
    defaults those of :class:`karyotyping.masks.MaskConfig`; read them back with :func:`pipeline_options`."""
    import argparse

    def on_off(flag: str) -> str:
        return "on" if getattr(DEFAULT_MASKS, flag) else "off"

    group.add_argument(
        "--mask-overlap",
        type=float,
        default=DEFAULT_MASKS.mask_overlap,
        help="drop a detection whose mask is more than this fraction covered by better ones (1 = off)",
    )
    group.add_argument(
        "--mask-thresh",
        type=float,
        default=DEFAULT_MASKS.mask_thresh,
        help="mask probability a chromosome pixel must exceed",
    )
    group.add_argument(
        "--exclusive-masks",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MASKS.exclusive_masks,
        help="give a pixel that several chromosomes claim to the one whose mask is surest of it "
        f"(default: {on_off('exclusive_masks')})",
    )
    group.add_argument(
        "--trim-masks",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MASKS.trim_masks,
        help="trim each mask to the chromosome pixels by the image's own contrast "
        f"(Otsu; default: {on_off('trim_masks')})",
    )
    group.add_argument(
        "--smooth-masks",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MASKS.smooth_masks,
        help="after the trim, make each mask whole and smooth: closed and opened, holes filled, its largest piece "
        f"(karyotyping.masks.smooth_masks; default: {on_off('smooth_masks')})",
    )
    group.add_argument(
        "--prefer-parts",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MASKS.prefer_parts,
        help="drop a detection whose mask is the union of two or more other detections, so that the parts are "
        f"kept (karyotyping.masks.prefer_parts; default: {on_off('prefer_parts')})",
    )
    from karyotyping.image_checks import POLARITIES

    group.add_argument(
        "--polarity",
        choices=("auto", *POLARITIES),
        default="auto",
        help="the image's polarity: auto (recognised from its background), dark-on-light (G-banded bright field) "
        "or light-on-dark (fluorescence, DAPI, inverted display: inverted for the models)",
    )
    group.add_argument(
        "--chromosome-width",
        type=float,
        default=None,
        metavar="PX",
        help="median chromosome width in the image's pixels, if you know your calibration (default: measured)",
    )
    group.add_argument(
        "--auto-scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bring images whose chromosomes are wider or narrower than the models' training images to their "
        "scale before detection (default: on)",
    )


def to_processing(grey: np.ndarray, factor: float) -> np.ndarray:
    """``grey`` float32 [H, W] as the models see it at the processing scale ``factor`` (the one resize of the
    pipeline's image: area when shrinking, cubic when enlarging, clipped to [0, 1]; the same array at 1)."""
    if factor == 1.0:
        return grey
    import cv2

    height, width = grey.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    out = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), np.float32)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Instance masks uint8 [N, h, w] at ``height`` x ``width`` pixels, nearest neighbour (the same array when the
    size is theirs). Enlarging takes OpenCV's nearest pixel (the source pixel at ``floor(i * h / height)``);
    shrinking takes the one at ``ceil(i * h / height)``, which undoes an enlargement exactly: masks mapped to the
    original resolution come back at the processing scale as the pipeline made them (the overlay's)."""
    h, w = masks.shape[1:]
    if (h, w) == (height, width):
        return masks
    if height <= h and width <= w:
        ys = np.minimum(np.ceil(np.arange(height) * (h / height)).astype(np.int64), h - 1)
        xs = np.minimum(np.ceil(np.arange(width) * (w / width)).astype(np.int64), w - 1)
        return np.ascontiguousarray(masks[:, ys[:, None], xs[None, :]])
    import cv2

    out = np.zeros((len(masks), height, width), np.uint8)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    return out


@contextmanager
def _timer(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


class KaryotypePipeline:
    """Segmentation model + classifier + karyotype assignment, loaded once and applied per image.

    Args:
        seg_weights: segmentation checkpoint (models.segmentation format).
        cls_weights: classifier checkpoint (models.classifier format).
        device: "auto", "cpu", "cuda" or "cuda:N" (:func:`karyotyping.runtime.resolve_device`: under torchrun
            "auto" and "cuda" mean ``cuda:$LOCAL_RANK``).
        score_thresh: minimum detection score kept (default :data:`karyotyping.detection.SCORE_THRESH`).
        masks: the mask post-processing after detection, its thresholds and switches
            (:class:`karyotyping.masks.MaskConfig`; the CLI's mask flags through :func:`pipeline_options`).
        flip_tta: classify each crop also upside down and average (:func:`models.classifier.predict_proba`
            ``flip``).
        max_side: images with a longer side are downscaled to it for processing (warned).
        polarity: "auto" (:func:`karyotyping.image_checks.detect_polarity`), "dark-on-light" or "light-on-dark"
            (inverted before the models).
        chromosome_width: the chromosomes' median width in the image's pixels when the user knows it; None:
            measured (:func:`karyotyping.image_checks.estimate_chromosome_width`).
        auto_scale: resize the image by :func:`karyotyping.image_checks.processing_factor` before detection, so
            that its chromosomes have the size the models were trained at (results mapped back).

    Raises:
        PipelineError: a weights file is missing, unreadable or refused (not weights-only), a threshold is out
            of range, or the device is not available.
    """

    def __init__(
        self,
        seg_weights: str | os.PathLike = DEFAULT_SEG_WEIGHTS,
        cls_weights: str | os.PathLike = DEFAULT_CLS_WEIGHTS,
        *,
        device: str = "auto",
        score_thresh: float = SCORE_THRESH,
        masks: MaskConfig = DEFAULT_MASKS,
        flip_tta: bool = FLIP_TTA,
        max_side: int = DEFAULT_MAX_SIDE,
        polarity: str = "auto",
        chromosome_width: float | None = None,
        auto_scale: bool = True,
    ) -> None:
        from karyogram.assign import config_for_classifier
        from karyotyping.runtime import resolve_device
        from models.classifier import load_classifier_members
        from models.segmentation import load_segmentation_checkpoint

        for what, p in (("segmentation", seg_weights), ("classifier", cls_weights)):
            if not Path(p).is_file():
                raise PipelineError(
                    f"{what} weights not found: {p}. Pass --{'seg' if what == 'segmentation' else 'cls'}-weights PATH "
                    "(a checkpoint written by train_segmentation.py / train_classification.py) or restore the "
                    "shipped files in weights/."
                )
        if not 0.0 <= score_thresh <= 1.0:
            raise PipelineError(f"--score-thresh must be in [0, 1], got {score_thresh}")
        if not isinstance(masks, MaskConfig):
            raise PipelineError(f"masks must be a karyotyping.masks.MaskConfig, got {type(masks).__name__}")
        if max_side < 32:
            raise PipelineError(f"--max-side must be >= 32 pixels, got {max_side}")
        from karyotyping.image_checks import POLARITIES

        if polarity not in ("auto", *POLARITIES):
            raise PipelineError(f"--polarity must be auto, {' or '.join(POLARITIES)}, got {polarity!r}")
        if chromosome_width is not None and not 1.0 <= chromosome_width <= 500.0:
            raise PipelineError(f"--chromosome-width must be in [1, 500] pixels, got {chromosome_width}")
        try:
            self.device = resolve_device(device)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        try:  # a truncated, empty, foreign or unsafe weights file: a message, not a traceback
            self.seg_model, self.seg_config = load_segmentation_checkpoint(seg_weights, self.device)
            # one classifier, or an ensemble (e.g. one per crop mode) whose probabilities are combined
            self.cls_members = load_classifier_members(cls_weights, self.device)
        except (ValueError, FileNotFoundError) as exc:
            msg = str(exc).rstrip(".")
            raise PipelineError(f"{msg}. Pass a checkpoint written by the training scripts.") from None
        self.seg_model.eval()
        self.cls_model, self.cls_config = self.cls_members[0]  # (the members share their feature groups)
        self.score_thresh = score_thresh
        self.masks = masks
        self.flip_tta = flip_tta
        self.max_side = max_side
        self.polarity = polarity
        self.chromosome_width = chromosome_width
        self.auto_scale = auto_scale
        self.seg_weights = str(seg_weights)
        self.cls_weights = str(cls_weights)
        # priors only for the evidence the classifier has not seen already (see config_for_classifier)
        self.assign_config = config_for_classifier(self.cls_config.feature_groups)

    # ------------------------------------------------------------------ stages
    def segment(self, image: np.ndarray) -> KaryoRecord:
        """Image float32 [H, W] -> the kept detections (masks uint8 [M, H, W], unrounded scores, labels 0)."""
        from karyotyping.detection import detect_soft, detections_to_record
        from karyotyping.masks import keep_instances

        out = detect_soft(self.seg_model, image, score_thresh=self.score_thresh, device=self.device)
        det = detections_to_record(out, image, mask_thresh=self.masks.mask_thresh)
        # empty masks go; duplicates and fragments of a better detection go (descending score order kept); then
        # a pixel claimed by several kept detections goes to the surest, the masks are trimmed to the
        # chromosome pixels, and a detection left with nothing goes too
        keep, masks = keep_instances(det.masks, det.scores, out["masks"], image, self.masks)
        det = det.select(keep)
        det.masks = masks
        det.labels = np.zeros(len(det.scores), np.int64)
        return det

    # ------------------------------------------------------------------ one image
    def run(
        self,
        image: np.ndarray,
        *,
        name: str | None = None,
        timings: dict[str, float] | None = None,
        notes: list[str] | None = None,
    ) -> KaryotypePrediction:
        """Run the whole pipeline on one image array; nothing is read or written.

        Args:
            image: [H, W], [H, W, 1] or [H, W, 3|4] array, uint8, uint16 or float
                (:func:`datasets.io.to_grey_float`).
            name: the image's name or path, kept in the prediction (and in its JSON ``image``).
            timings / notes: stages already timed and messages already collected (by :meth:`process`).
        """
        from datasets.io import to_grey_float

        timings = {} if timings is None else timings
        notes = [] if notes is None else notes
        label = name or "image"
        with _timer(timings, "load"):
            full = to_grey_float(image, name)
        with _timer(timings, "image_checks"):
            grey, work, checks, wanted = self.prepare(full, label, notes)
            del full
        with _timer(timings, "segmentation"):
            rec = self.segment(work)
        pred = self._identify(
            rec,
            work,
            grey,
            name=name,
            processing_scale=checks.processing_scale,
            timings=timings,
            notes=notes,
        )
        from karyotyping.image_checks import out_of_range

        checks.out_of_range = out_of_range(checks, count=pred.count, sanity=pred.sanity_score, factor_wanted=wanted)
        pred.image_checks = checks
        pred.notes += [f"{label}: outside what the models were trained on: {m}" for m in checks.out_of_range]
        return pred

    def prepare(self, full: np.ndarray, label: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray, Any, float]:
        """The image the models see: ``full`` float32 [H, W] made dark-on-light and brought to the models' scale.

        Returns (the image dark-on-light at the original resolution, the image at processing resolution (the same
        array when not resized), :class:`karyotyping.image_checks.ImageChecks` without its ``out_of_range`` yet, the
        scale correction the measure asked for before the ``max_side`` cap). Every change is said in ``notes``
        (and warned).
        """
        from karyotyping.image_checks import (
            SCALE_RANGE,
            ImageChecks,
            detect_polarity,
            estimate_chromosome_width,
            grey_range,
            processing_factor,
        )

        height, width = full.shape
        lo, _, hi = grey_range(full)
        polarity = detect_polarity(full) if self.polarity == "auto" else self.polarity
        checks = ImageChecks(polarity=polarity, contrast=hi - lo)
        if polarity == "light-on-dark":
            full = 1.0 - full
            checks.inverted = True
            notes.append(f"{label}: light chromosomes on a dark background: inverted for the models")
        if self.chromosome_width is not None:
            checks.chromosome_width_px, checks.width_source = float(self.chromosome_width), "given"
        else:
            checks.chromosome_width_px = estimate_chromosome_width(full)
        wanted = processing_factor(checks.chromosome_width_px) if self.auto_scale else 1.0
        # a correction beyond the range the detector was trained for is more likely a wrong measure (one nucleus,
        # debris) than such an image: it goes only to the range's end, and out_of_range flags the image
        clamped = float(np.clip(wanted, *SCALE_RANGE))
        cap = self.max_side / max(height, width)
        f = min(clamped, cap)
        grey = np.ascontiguousarray(full, np.float32)
        work = to_processing(grey, f)
        if f != 1.0:
            size = work.shape[::-1]
            verb = "downscaled" if f < 1 else "upscaled"
            msg = f"{label}: {width}x{height} image {verb} to {size[0]}x{size[1]} for processing"
            if cap < clamped:  # the cap, not the chromosomes' scale, set the size: the models see smaller chromosomes
                msg += f" (longer side capped at --max-side {self.max_side})"
                warnings.warn(msg, stacklevel=3)
            elif clamped != wanted:
                msg += f" (chromosomes {checks.chromosome_width_px:.1f} px wide; the correction stops at the models' range)"
            else:
                msg += f" (chromosomes {checks.chromosome_width_px:.1f} px wide, the models' scale)"
            notes.append(msg)
        checks.processing_scale = float(f)
        return grey, work, checks, wanted

    def process(self, image_path: str | os.PathLike) -> KaryotypePrediction:
        """Read one image file (:func:`datasets.io.read_image`; its warnings become notes) and :meth:`run` it."""
        from datasets.io import read_image

        timings: dict[str, float] = {}
        notes: list[str] = []
        path = Path(image_path)
        with _timer(timings, "load"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                full = read_image(path)
            notes += [str(w.message) for w in caught]
        return self.run(full, name=str(path), timings=timings, notes=notes)

    def _identify(
        self,
        rec: KaryoRecord,
        image: np.ndarray,
        grey: np.ndarray,
        *,
        name: str | None,
        processing_scale: float,
        timings: dict[str, float],
        notes: list[str],
    ) -> KaryotypePrediction:
        """Features, classification and karyotype assignment of the detections ``rec`` in ``image`` float32 [h, w]
        (both at processing resolution), mapped back to ``grey``, the image float32 [H, W] at the original
        resolution."""
        from karyogram.assign import assign_karyotype
        from karyotyping.identify import measure_and_classify
        from metrics.karyotype import sanity_score

        n = len(rec)
        ident = measure_and_classify(self.cls_members, image, rec.masks, rec.boxes, flip=self.flip_tta, timings=timings)
        x, feats, crops, probs = ident.x, ident.feats, ident.crops, ident.probs
        with _timer(timings, "assignment"):
            lengths = np.array([f.length_px for f in feats], np.float64)
            ci = np.array([f.centromere_index for f in feats], np.float64)
            res = assign_karyotype(
                probs,
                lengths=lengths if n else None,
                centromere_index=ci if n else None,
                config=self.assign_config,
            )
        labels = np.asarray(res.labels, np.int64)
        inv = 1.0 / processing_scale
        height, width = grey.shape
        masks = resize_masks(rec.masks, height, width)
        pair_of = (np.asarray(res.pair_of, np.int64) if res.pair_of is not None else np.full(n, -1, np.int64)).reshape(
            n
        )
        record = KaryoRecord(
            image=grey,
            boxes=rec.boxes.astype(np.float64) * inv,
            labels=labels,
            masks=masks,
            scores=rec.scores,
            meta={} if name is None else {"path": name, "image_id": Path(name).stem},
        )
        return KaryotypePrediction(
            image=name,
            record=record,
            processing_scale=float(processing_scale),
            probs=probs,
            confidence=np.asarray(res.confidence, np.float64).reshape(n),
            pair_of=pair_of,
            flags=[list(f) for f in res.flags],
            karyotype=res.iscn if n else None,
            sex=res.sex if n else None,
            sanity_score=float(sanity_score(labels)),
            length_px=np.array([float(f.length_px) * inv for f in feats], np.float64),
            centromere_index=ci,
            centromere_xy=np.array([[float(v) * inv for v in f.centromere_xy] for f in feats], np.float64).reshape(
                n, 2
            ),
            polarity_ok=np.array([bool(f.polarity_conf >= 0.5) for f in feats], bool),
            features=np.asarray(x, np.float32),
            assignment=res,
            crops=crops,
            centromere_rows=[float(getattr(f, "centromere_row", 0.0)) for f in feats],
            timings_s=timings,
            models={"segmentation": self.seg_weights, "classifier": self.cls_weights},
            notes=notes + ([] if n else ["no chromosome found in this image"]),
        )

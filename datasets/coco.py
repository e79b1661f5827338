"""COCO instance-segmentation JSON: a loader (:class:`COCODataset`) and writers (:func:`records_to_coco`).

Reading
-------
The root is a COCO JSON file, or a folder holding ``annotations.json``, ``annotations/instances_*.json``
or a single ``*.json``. Each image's ``file_name`` is looked up relative to the JSON's folder, then in
``images/`` beside it (and beside its parent folder, for the ``annotations/`` layout), unless
``image_dir=`` is given.

Segmentations may be polygons (a list of ``[x1, y1, x2, y2, ...]`` lists), uncompressed RLE (``counts``
a list of run lengths) or compressed RLE (``counts`` a string); all are decoded with
``pycocotools.mask``. Annotations with a ``bbox`` and no segmentation get filled-box masks and the
record is flagged ``masks_derived=True``.

Category names map to class ids through :func:`karyogram.labels.id_of` ("1".."22", "X", "Y", CIL names
such as "A1", "chr7"). A category named "chromosome" (or "chromosomes") gives label 0 (class-agnostic).
A category with an unrecognised name but an id in 1..24 uses its id (with one warning). Instances
whose ``category_id`` is not among the categories, or whose category is no chromosome (AutoKary2022
has stray labels -1 and 119), are skipped with a counted warning, as are empty or degenerate
segmentations and boxes and annotations of images missing on disk.

Extra fields written by :func:`records_to_coco` are read back: ``centromere: [x, y]`` and
``p_dir: [dx, dy]`` per annotation, ``karyotype`` / ``sex`` per image.

Writing
-------
:func:`records_to_coco` writes ground truth or predictions as a COCO instance document (compressed RLE
masks, :func:`encode_masks`, the project's one RLE encoder), :func:`coco_document` assembles one from entries
(a file updated image by image: the synthetic generator's, the review app's ``reviewed_coco.json``),
:func:`records_to_coco_results` the COCO *results* list that ``pycocotools.cocoeval`` reads
(``inference_pipeline.py``'s ``coco_results.json``). Every COCO file of the project is written through them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from karyogram.labels import CLASS_NAMES, NUM_CLASSES, UnknownClassError, denver_group, id_of

from .base import RecordDataset
from .errors import AnnotationError, DataError
from .io import read_image
from .record import KaryoRecord, boxes_to_masks, masks_to_boxes

#: category names that mean "a chromosome of unknown class" (label 0)
AGNOSTIC_NAMES = frozenset({"chromosome", "chromosomes"})


# ---------------------------------------------------------------------------------- reading helpers
def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; raise :class:`AnnotationError` naming the file for empty, truncated or invalid JSON."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(p, "annotation file does not exist")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(p, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise AnnotationError(p, "file is empty (expected JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            p, f"invalid or truncated JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def find_coco_json(root: str | os.PathLike, ann_file: str | os.PathLike | None = None) -> Path:
    """The COCO annotation file of a dataset root (see the module docstring for the search order)."""
    r = Path(root)
    if ann_file is not None:
        a = Path(ann_file)
        if not a.is_absolute() and not a.exists():
            a = r / a
        if not a.is_file():
            raise DataError(a, "COCO annotation file given by ann_file= does not exist")
        return a
    if r.is_file():
        return r
    if (r / "annotations.json").is_file():
        return r / "annotations.json"
    inst = sorted((r / "annotations").glob("instances_*.json")) if (r / "annotations").is_dir() else []
    if len(inst) == 1:
        return inst[0]
    if len(inst) > 1:
        names = ", ".join(p.name for p in inst)
        raise DataError(r / "annotations", f"several COCO files ({names}): choose one with ann_file=")
    js = sorted(p for p in r.glob("*.json") if not p.name.startswith("."))
    if len(js) == 1:
        return js[0]
    if len(js) > 1:
        raise DataError(r, f"several JSON files ({', '.join(p.name for p in js)}): choose one with ann_file=")
    raise DataError(r, "no COCO annotation file found (annotations.json, annotations/instances_*.json or *.json)")


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range (JSON allows 1e400 written as an integer)
        return False


def _xy_pair(v: Any) -> np.ndarray | None:
    """A finite [x, y] pair as float32 [2], or None."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(t) for t in v):
        return np.asarray(v, np.float32)
    return None


def _decode_segmentation(seg: Any, h: int, w: int, where: str, path: Path) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to uint8 [H, W]."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list)]
        if len(polys) != len(seg) or not all(all(_is_number(t) for t in p) for p in polys):
            raise AnnotationError(path, f"{where}: polygon segmentation must be a list of lists of numbers")
        polys = [[float(t) for t in p] for p in polys if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return np.zeros((h, w), np.uint8)
        # pycocotools allocates memory in proportion to the perimeter and crashes (SIGSEGV) near 4e8 px
        lim = 4 * max(h, w) + 64
        if any(abs(t) > lim for p in polys for t in p):
            raise AnnotationError(
                path, f"{where}: polygon coordinates lie far outside the {w}x{h} image (|x| or |y| > {lim})"
            )
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(t, int) for t in size)):
            raise AnnotationError(path, f"{where}: RLE 'size' must be [height, width], got {size!r}")
        if tuple(size) != (h, w):
            raise AnnotationError(path, f"{where}: RLE size {size} does not match the image size [{h}, {w}]")
        if isinstance(counts, list):
            if not all(isinstance(t, int) and t >= 0 for t in counts) or sum(counts) != h * w:
                raise AnnotationError(
                    path, f"{where}: uncompressed RLE counts must be non-negative ints summing to H*W"
                )
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}
        else:
            raise AnnotationError(
                path, f"{where}: RLE 'counts' must be a list or a string, got {type(counts).__name__}"
            )
        try:
            m = mask_utils.decode(rle)
        except Exception as exc:  # pycocotools raises bare exceptions on corrupt strings
            raise AnnotationError(path, f"{where}: corrupt RLE ({exc})") from None
        return np.ascontiguousarray(m, dtype=np.uint8)
    raise AnnotationError(
        path, f"{where}: segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}"
    )


def _segmentation_present(seg: Any) -> bool:
    return seg is not None and not (isinstance(seg, (list, dict)) and len(seg) == 0)


class COCODataset(RecordDataset):
    """Chromosome instances from a COCO instance-segmentation JSON.

    Args:
        root: a COCO JSON file or a folder holding one (see the module docstring).
        split, val_fraction, test_fraction, seed, transforms: as in :class:`~datasets.base.RecordDataset`.
        ann_file: the annotation file (absolute, or relative to ``root``) when the folder has several.
        image_dir: the folder that ``file_name`` is relative to (default: the JSON's folder, then ``images/``).
        group_key: an image field (e.g. ``"slide"``) whose value groups images for splitting; default
            the image id.

    Records carry ``meta``: ``source="coco"``, ``image_id`` (str of the COCO id), ``coco_id``, ``path``,
    ``file_name``, ``group``, ``karyotype`` / ``sex`` when present, ``skipped`` (counts by reason).
    """

    source = "coco"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "all",
        *,
        ann_file: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        group_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.ann_file_arg = ann_file
        self.image_dir = None if image_dir is None else Path(image_dir)
        self.group_key = group_key
        self._load_warned: set[str] = set()
        super().__init__(root, split, **kwargs)

    # ------------------------------------------------------------------ index
    def _category_table(self, cats: Any, path: Path) -> dict[Any, int | None]:
        """category id -> class id (0 agnostic) or None (no chromosome)."""
        if not isinstance(cats, list):
            raise AnnotationError(path, f"'categories' must be a list, got {type(cats).__name__}")
        table: dict[Any, int | None] = {}
        by_id: list[str] = []
        for i, c in enumerate(cats):
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise AnnotationError(path, f"categories[{i}] must be an object with 'id' and 'name'")
            cid, name = c["id"], c["name"]
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise AnnotationError(path, f"categories[{i}] id must be an integer, got {cid!r}")
            key = str(name).strip().lower()
            if key in AGNOSTIC_NAMES:
                table[cid] = 0
                continue
            try:
                table[cid] = id_of(str(name))
            except UnknownClassError:
                if 1 <= cid <= NUM_CLASSES:
                    table[cid] = cid
                    by_id.append(f"{name!r}->{cid}")
                else:
                    table[cid] = None
        if by_id:
            warnings.warn(
                f"{path}: category names not recognised as chromosomes, their ids used as classes: {', '.join(by_id)}",
                stacklevel=3,
            )
        return table

    def _resolve_image(self, json_dir: Path, file_name: str) -> Path | None:
        fn = Path(file_name.replace("\\", "/"))
        if self.image_dir is not None:
            cands = [self.image_dir / fn, self.image_dir / fn.name]
        else:
            cands = [
                json_dir / fn,
                json_dir / "images" / fn,
                json_dir.parent / "images" / fn,
                json_dir / "images" / fn.name,
                json_dir.parent / "images" / fn.name,
            ]
        if fn.is_absolute():
            cands.insert(0, fn)
        return next((c for c in cands if c.is_file()), None)

    def index(self) -> tuple[list[dict[str, Any]], list[str]]:
        path = find_coco_json(self.root, self.ann_file_arg)
        self.ann_file = path
        data = load_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(path, f"a COCO file must hold a JSON object, got {type(data).__name__}")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise AnnotationError(path, f"missing key {key!r} (is this a COCO instances file?)")
        images, anns = data["images"], data["annotations"]
        if not isinstance(images, list):
            raise AnnotationError(path, f"'images' must be a list, got {type(images).__name__}")
        if not isinstance(anns, list):
            raise AnnotationError(path, f"'annotations' must be a list, got {type(anns).__name__}")
        cat_table = self._category_table(data["categories"], path)

        img_by_id: dict[Any, dict[str, Any]] = {}
        for i, im in enumerate(images):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise AnnotationError(path, f"images[{i}] must be an object with 'id' and 'file_name'")
            if not isinstance(im["file_name"], str) or not im["file_name"]:
                raise AnnotationError(path, f"images[{i}] 'file_name' must be a non-empty string")
            for k in ("width", "height"):
                if k in im and (not isinstance(im[k], int) or isinstance(im[k], bool) or im[k] <= 0):
                    raise AnnotationError(path, f"images[{i}] {k!r} must be a positive integer, got {im[k]!r}")
            if isinstance(im["id"], (list, dict)):
                raise AnnotationError(
                    path, f"images[{i}] 'id' must be a number or string, got a {type(im['id']).__name__}"
                )
            if im["id"] in img_by_id:
                raise AnnotationError(path, f"images[{i}]: duplicate image id {im['id']!r}")
            img_by_id[im["id"]] = im

        per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        bad_cat: Counter[Any] = Counter()
        no_chrom: Counter[Any] = Counter()
        counts: Counter[str] = Counter()
        for j, a in enumerate(anns):
            where = f"annotations[{j}] (id {a.get('id')!r})" if isinstance(a, dict) else f"annotations[{j}]"
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise AnnotationError(path, f"{where} must be an object with 'image_id' and 'category_id'")
            if isinstance(a["image_id"], (list, dict)):
                raise AnnotationError(
                    path, f"{where}: image_id must be a number or string, got a {type(a['image_id']).__name__}"
                )
            if a["image_id"] not in img_by_id:
                counts[f"annotation of an image id not in 'images' ({a['image_id']!r})"] += 1
                continue
            cid = a["category_id"]
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise AnnotationError(path, f"{where}: category_id must be an integer, got {cid!r}")
            if cid not in cat_table:
                bad_cat[cid] += 1
                continue
            if cat_table[cid] is None:
                no_chrom[cid] += 1
                continue
            if a.get("iscrowd", 0) not in (0, False):
                counts["iscrowd annotation"] += 1
                continue
            bbox = a.get("bbox")
            if bbox is not None:
                if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(t) for t in bbox)):
                    raise AnnotationError(path, f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
            seg = a.get("segmentation")
            if not _segmentation_present(seg):
                if bbox is None:
                    counts["annotation with neither segmentation nor bbox"] += 1
                    continue
                if bbox[2] <= 0 or bbox[3] <= 0:
                    counts["degenerate bbox (width or height <= 0)"] += 1
                    continue
            elif isinstance(seg, list) and all(isinstance(p, list) for p in seg):
                if not any(len(p) >= 6 and len(p) % 2 == 0 for p in seg):
                    counts["degenerate polygon (fewer than 3 points)"] += 1
                    continue
            for k in ("centromere", "p_dir"):
                if k in a and a[k] is not None and _xy_pair(a[k]) is None:
                    raise AnnotationError(path, f"{where}: {k} must be [x, y] numbers, got {a[k]!r}")
            per_image[a["image_id"]].append({**a, "_label": cat_table[cid], "_where": where})

        for v, n in sorted(bad_cat.items(), key=lambda t: str(t[0])):
            self.skip(path, f"category_id {v} is not among the categories", n)
        for v, n in sorted(no_chrom.items(), key=lambda t: str(t[0])):
            self.skip(path, f"category_id {v} is not a chromosome class", n)
        for reason, n in counts.items():
            self.skip(path, reason, n)

        items: list[dict[str, Any]] = []
        groups: list[str] = []
        json_dir = path.parent
        missing: list[str] = []
        for iid, im in img_by_id.items():
            img_path = self._resolve_image(json_dir, im["file_name"])
            if img_path is None:
                missing.append(im["file_name"])
                continue
            if self.group_key is not None:
                if self.group_key not in im:
                    raise AnnotationError(path, f"image {iid!r} has no field {self.group_key!r} (group_key)")
                group = str(im[self.group_key])
            else:
                group = str(iid)
            items.append({"image": im, "path": img_path, "anns": per_image.get(iid, []), "group": group})
            groups.append(group)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            self.skip(path, f"image file missing on disk ({shown})", len(missing))
        return items, groups

    # ------------------------------------------------------------------ load
    def _load_skip(self, key: str, path: Path, reason: str, n: int, local: Counter[str]) -> None:
        local[reason] += n
        if key not in self._load_warned:
            self.skip(path, reason, n)

    def load(self, item: dict[str, Any]) -> KaryoRecord:
        im, img_path = item["image"], item["path"]
        path = self.ann_file
        image = read_image(img_path)
        h, w = image.shape
        if ("height" in im and im["height"] != h) or ("width" in im and im["width"] != w):
            raise AnnotationError(
                path,
                f"image {im['id']!r} is {im.get('width')}x{im.get('height')} in the JSON but {img_path} is {w}x{h}",
            )
        key = str(im["id"])
        local: Counter[str] = Counter()
        boxes, labels, masks, cents, pdirs = [], [], [], [], []
        derived = False
        for a in item["anns"]:
            where = a["_where"]
            seg = a.get("segmentation")
            bbox = a.get("bbox")
            if _segmentation_present(seg):
                m = _decode_segmentation(seg, h, w, where, path)
                if not m.any():
                    self._load_skip(key, path, "empty segmentation", 1, local)
                    continue
                box = masks_to_boxes(m[None])[0]
                if bbox is not None:
                    bx = np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], np.float32)
                    bx = np.clip(bx, 0, [w, h, w, h])
                    if bx[2] > bx[0] and bx[3] > bx[1]:
                        box = bx
            else:
                box = np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], np.float32)
                box = np.clip(box, 0, [w, h, w, h])
                if not (box[2] > box[0] and box[3] > box[1]):
                    self._load_skip(key, path, "bbox outside the image", 1, local)
                    continue
                m = boxes_to_masks(box[None], h, w)[0]
                derived = True
            boxes.append(box)
            labels.append(a["_label"])
            masks.append(m)
            c, d = _xy_pair(a.get("centromere")), _xy_pair(a.get("p_dir"))
            cents.append(np.full(2, np.nan, np.float32) if c is None else c)
            pdirs.append(np.full(2, np.nan, np.float32) if d is None else d)
        self._load_warned.add(key)
        n = len(labels)
        has_c = any("centromere" in a for a in item["anns"])
        has_d = any("p_dir" in a for a in item["anns"])
        meta: dict[str, Any] = {
            "source": self.source,
            "image_id": key,
            "coco_id": im["id"],
            "path": str(img_path),
            "file_name": im["file_name"],
            "group": item["group"],
            "skipped": dict(local),
        }
        for k in ("karyotype", "sex"):
            if k in im:
                meta[k] = im[k]
        return KaryoRecord(
            image=image,
            boxes=np.asarray(boxes, np.float32).reshape(n, 4),
            labels=np.asarray(labels, np.int64),
            masks=np.asarray(masks, np.uint8).reshape(n, h, w),
            masks_derived=derived,
            centromeres=np.asarray(cents, np.float32).reshape(n, 2) if has_c else None,
            p_dir=np.asarray(pdirs, np.float32).reshape(n, 2) if has_d else None,
            meta=meta,
        )


# ---------------------------------------------------------------------------------- writing
def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed COCO RLE of binary masks [N, H, W] (any non-zero pixel is foreground), JSON-ready:
    ``{"size": [H, W], "counts": str}`` each. The project's one RLE encoder (pycocotools reads str counts too).
    """
    from pycocotools import mask as mask_utils

    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"expected masks [N, H, W], got shape {m.shape}")
    if len(m) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray((m > 0).transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of one binary mask [H, W] (:func:`encode_masks`)."""
    return encode_masks(np.asarray(mask)[None])[0]


def _xywh(box: np.ndarray, decimals: int | None = None) -> list[float]:
    x1, y1, x2, y2 = (float(t) for t in box)
    return [_round(v, decimals) for v in (x1, y1, x2 - x1, y2 - y1)]


def _round(v: float, decimals: int | None) -> float:
    return float(v) if decimals is None else round(float(v), decimals)


#: decimals of a ``p_dir`` unit vector when :func:`records_to_coco` rounds
P_DIR_DECIMALS = 5


def categories() -> list[dict[str, Any]]:
    """COCO categories 1..24: names "1".."22", "X", "Y"; supercategory the Denver group letter."""
    return [{"id": i, "name": CLASS_NAMES[i - 1], "supercategory": denver_group(i)} for i in range(1, NUM_CLASSES + 1)]


def coco_document(
    images: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]], *, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A COCO instances document of image and annotation entries (those of :func:`records_to_coco`, and those of a
    file being updated): ``info`` when given, the images in id order, the annotations with ids renumbered 1..N in
    order (in place), the categories 1..24 (:func:`categories`) plus 0 "chromosome" when an annotation has
    category 0."""
    anns = list(annotations)
    for k, a in enumerate(anns, start=1):
        a["id"] = k
    cats = categories()
    if any(a["category_id"] == 0 for a in anns):
        cats = [{"id": 0, "name": "chromosome", "supercategory": "unknown"}, *cats]
    head = {} if info is None else {"info": info}
    return head | {"images": sorted(images, key=lambda im: im["id"]), "annotations": anns, "categories": cats}


def records_to_coco(
    records: Sequence[KaryoRecord],
    file_names: Sequence[str],
    *,
    include_masks: bool = True,
    image_ids: Sequence[int] | None = None,
    image_info: Sequence[dict[str, Any]] | None = None,
    decimals: int | None = None,
) -> dict[str, Any]:
    """A COCO instances dict of ``records`` (ground truth or predictions; :func:`coco_document`).

    Images get ids ``image_ids`` (default 1..len(records), in order), with ``file_name``, ``width``, ``height``,
    ``karyotype`` / ``sex`` when in ``meta``, and the keys of ``image_info`` (one dict per record, e.g. who
    reviewed it). Categories are 1..24 (see :func:`categories`), plus id 0 "chromosome" if a record has unknown
    (0) labels. Each instance gets ``bbox`` [x, y, w, h] pixels from ``record.boxes``, ``area`` (mask pixels, or
    box area), ``iscrowd`` 0, a compressed RLE ``segmentation`` when ``include_masks`` and the record has
    annotated (not box-derived) masks, ``score`` when ``record.scores`` is set, and ``centromere`` [x, y] /
    ``p_dir`` [dx, dy] where finite. ``decimals``: round the pixel coordinates (bbox, centromere) to that many
    decimals and ``p_dir`` to :data:`P_DIR_DECIMALS` (None: as they are).
    """
    n = len(records)
    if len(file_names) != n:
        raise ValueError(f"{n} records but {len(file_names)} file names")
    ids = list(range(1, n + 1)) if image_ids is None else [int(i) for i in image_ids]
    extra = [{}] * n if image_info is None else list(image_info)
    if len(ids) != n or len(extra) != n:
        raise ValueError(f"{n} records but {len(ids)} image ids and {len(extra)} image_info entries")
    images, anns = [], []
    for i, rec, fn, more in zip(ids, records, file_names, extra):
        img: dict[str, Any] = {"id": i, "file_name": str(fn), "width": rec.width, "height": rec.height}
        for k in ("karyotype", "sex"):
            if rec.meta.get(k) is not None:
                img[k] = rec.meta[k]
        images.append(img | dict(more))
        write_masks = include_masks and rec.masks is not None and not rec.masks_derived
        for j in range(len(rec)):
            label = int(rec.labels[j])
            box = rec.boxes[j]
            a: dict[str, Any] = {
                "id": 0,  # numbered by coco_document
                "image_id": i,
                "category_id": label,
                "iscrowd": 0,
                "bbox": _xywh(box, decimals),
            }
            if rec.masks is not None:
                a["area"] = float(rec.masks[j].sum())
            else:
                a["area"] = float((box[2] - box[0]) * (box[3] - box[1]))
            if write_masks:
                a["segmentation"] = encode_mask(rec.masks[j])
            if rec.scores is not None:
                a["score"] = float(rec.scores[j])
            for k, arr, nd in (
                ("centromere", rec.centromeres, decimals),
                ("p_dir", rec.p_dir, None if decimals is None else P_DIR_DECIMALS),
            ):
                if arr is not None and np.isfinite(arr[j]).all():
                    a[k] = [_round(arr[j, 0], nd), _round(arr[j, 1], nd)]
            anns.append(a)
    return coco_document(images, anns)


def records_to_coco_results(
    records: Sequence[KaryoRecord], image_ids: Sequence[int], *, include_masks: bool = True
) -> list[dict[str, Any]]:
    """COCO *results* (detections) list: one dict per instance with ``image_id``, ``category_id``,
    ``bbox`` [x, y, w, h] pixels, ``score`` (1.0 when the record has no scores) and, when
    ``include_masks`` and the record has masks, a compressed RLE ``segmentation``.
    """
    if len(records) != len(image_ids):
        raise ValueError(f"{len(records)} records but {len(image_ids)} image ids")
    out: list[dict[str, Any]] = []
    for rec, iid in zip(records, image_ids):
        for j in range(len(rec)):
            r: dict[str, Any] = {
                "image_id": int(iid),
                "category_id": int(rec.labels[j]),
                "bbox": _xywh(rec.boxes[j]),
                "score": 1.0 if rec.scores is None else float(rec.scores[j]),
            }
            if include_masks and rec.masks is not None:
                r["segmentation"] = encode_mask(rec.masks[j])
            out.append(r)
    return out


__all__ = [
    "COCODataset",
    "categories",
    "coco_document",
    "encode_mask",
    "encode_masks",
    "find_coco_json",
    "load_json",
    "records_to_coco",
    "records_to_coco_results",
]

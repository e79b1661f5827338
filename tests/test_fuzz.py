"""Fuzzing every reader with bad input: random, truncated, mutated, empty and misnamed files.

The contract under test: a bad file gives a :class:`datasets.errors.DataError` (``ImageReadError`` for
images, ``AnnotationError`` for annotations) or a counted skip, never another exception, never a hang
(each case runs under a wall-clock alarm) and never a crash of the process.

Every case tried is counted by kind in ``CASES``; at the end of the module the totals are printed and
written to ``<pytest basetemp>/fuzz_counts.json``. See them with::

    python -m pytest tests/test_fuzz.py -q -s -p no:cacheprovider

Hypothesis runs derandomized (the same examples every run, so CI is stable); set
``KARYO_FUZZ_EXAMPLES=500 KARYO_FUZZ_RANDOM=1`` for a longer, random exploration.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.errors import DataError, ImageReadError

cv2.utils.logging.setLogLevel(
    cv2.utils.logging.LOG_LEVEL_SILENT
)  # corrupt files make OpenCV log an error per case; the test checks what it raises

CASES: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("KARYO_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("KARYO_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=list(HealthCheck),
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: wall-clock limit of one case, seconds (a hang fails the test instead of blocking the suite)
CASE_TIMEOUT = 20


@pytest.fixture(scope="module", autouse=True)
def _report_counts(tmp_path_factory):
    yield
    total = sum(CASES.values())
    out = tmp_path_factory.getbasetemp() / "fuzz_counts.json"
    out.write_text(json.dumps({"total": total, "by_kind": dict(sorted(CASES.items()))}, indent=1))
    lines = [f"  {k:40s} {v}" for k, v in sorted(CASES.items())]
    print(f"\n[fuzz] {total} bad inputs tried ({len(CASES)} kinds) -> {out}\n" + "\n".join(lines))


@contextlib.contextmanager
def no_hang(seconds: float = CASE_TIMEOUT):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``."""

    def _alarm(signum, frame):
        raise TimeoutError(f"fuzz case ran longer than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def attempt(kind: str, fn):
    """Count one bad-input case; return fn()'s value or the DataError it raised. Anything else fails."""
    CASES[kind] += 1
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn()
        except DataError as exc:
            assert str(exc), "a DataError must say what is wrong"
            return exc


def load_all(kind: str, make_dataset):
    """Build a dataset and load every item; each step may only end in a DataError."""
    ds = attempt(kind, make_dataset)
    if isinstance(ds, DataError):
        return ds
    out = []
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(ds)):
            try:
                rec = ds[i]
            except DataError as exc:
                out.append(exc)
                continue
            assert rec.image.dtype == np.float32 and rec.image.ndim == 2
            assert np.isfinite(rec.image).all()
            out.append(rec)
    return out


@contextlib.contextmanager
def scratch():
    d = Path(tempfile.mkdtemp(prefix="fuzz_"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def check_image_result(res):
    if isinstance(res, DataError):
        assert isinstance(res, ImageReadError)
    else:
        assert res.dtype == np.float32 and res.ndim == 2 and min(res.shape) >= 2
        assert np.isfinite(res).all() and res.min() >= 0.0 and res.max() <= 1.0


# ------------------------------------------------------------------------------------ valid seeds
def _encode(ext: str, img: np.ndarray) -> bytes:
    if ext in (".tif", ".tiff"):
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, img)
        return buf.getvalue()
    ok, b = cv2.imencode(ext, img)
    assert ok
    return b.tobytes()


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 255, (12, 16), dtype=np.uint8)
    g16 = rng.integers(0, 65535, (12, 16), dtype=np.uint16)
    rgb = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    return {
        "png8": _encode(".png", g8),
        "png16": _encode(".png", g16),
        "png_rgb": _encode(".png", rgb),
        "jpg": _encode(".jpg", g8),
        "bmp": _encode(".bmp", rgb),
        "tif16": _encode(".tif", g16),
        "tif8_cv2": cv2.imencode(".tif", g8)[1].tobytes(),
    }


SEEDS = _seed_images()
SEED_EXT = {"png8": ".png", "png16": ".png", "png_rgb": ".png", "jpg": ".jpg", "bmp": ".bmp"}
SEED_EXT |= {"tif16": ".tif", "tif8_cv2": ".tif"}


@st.composite
def mutated_bytes(draw):
    """A valid encoded image, then truncated, bit-flipped and/or spliced with random bytes."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    b = bytearray(SEEDS[name])
    op = draw(st.sampled_from(["truncate", "flip", "splice", "truncate+flip"]))
    if "flip" in op:
        for _ in range(draw(st.integers(1, 12))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
    if op == "splice":
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(min_size=1, max_size=64))
    if "truncate" in op:
        b = b[: draw(st.integers(0, len(b) - 1))]
    ext = draw(st.sampled_from([SEED_EXT[name], *IMAGE_EXTS]))
    return name, op, bytes(b), ext


# ------------------------------------------------------------------------------------ images
@FUZZ
@given(data=st.binary(max_size=4096), ext=st.sampled_from(IMAGE_EXTS))
def test_read_image_random_bytes(data, ext):
    from datasets.io import read_image

    with scratch() as d:
        p = d / f"x{ext}"
        p.write_bytes(data)
        check_image_result(attempt("image: random bytes", lambda: read_image(p)))


@FUZZ
@given(
    data=st.binary(max_size=512),
    magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM"]),
)
def test_read_image_magic_then_garbage(data, magic):
    from datasets.io import read_image

    with scratch() as d:
        for ext in (".png", ".tif"):
            p = d / f"x{ext}"
            p.write_bytes(magic + data)
            check_image_result(attempt("image: valid magic + random bytes", lambda p=p: read_image(p)))


@FUZZ
@given(m=mutated_bytes())
def test_read_image_mutated_valid_files(m):
    from datasets.io import read_image

    name, op, data, ext = m
    with scratch() as d:
        p = d / f"x{ext}"
        p.write_bytes(data)
        check_image_result(attempt(f"image: {op} valid file", lambda: read_image(p)))


def _patch_tiff_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    off = struct.unpack("<I", b[4:8])[0]
    for i in range(struct.unpack("<H", b[off : off + 2])[0]):
        e = off + 2 + 12 * i
        tag, typ = struct.unpack("<HH", b[e : e + 4])
        if tag in (256, 257, 278):
            v = w if tag == 256 else h
            b[e + 8 : e + 12] = struct.pack("<I", v) if typ == 4 else struct.pack("<HH", min(v, 65535), 0)
    return bytes(b)


def _patch_png_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


def _special_files() -> dict[str, tuple[str, bytes]]:
    """Hand-made bad files: name -> (file name, bytes)."""
    import tifffile

    def tif(arr, **kw):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        return buf.getvalue()

    g8 = np.full((10, 12), 100, np.uint8)
    nan = np.full((8, 8), np.nan, np.float32)
    out = {f"empty{e}": (f"empty{e}", b"") for e in IMAGE_EXTS}
    out |= {
        "text named .tif": ("notes.tif", b"this is a text file, not a TIFF\n" * 4),
        "text named .png": ("notes.png", b"hello"),
        "html named .jpg": ("page.jpg", b"<html><body>404 Not Found</body></html>"),
        "zip named .tiff": ("a.tiff", b"PK\x03\x04" + b"\x00" * 40),
        "1x1 png": ("tiny.png", _encode(".png", np.zeros((1, 1), np.uint8))),
        "1x500 png": ("line.png", _encode(".png", np.zeros((1, 500), np.uint8))),
        "multipage tif": ("stack.tif", tif(np.zeros((5, 8, 8), np.uint16))),
        "4-D tif": ("hyper.tif", tif(np.zeros((2, 3, 8, 8), np.uint8))),
        "5-channel tif": ("multi.tif", tif(np.zeros((8, 8, 5), np.uint8), photometric="minisblack")),
        "NaN float tif": ("nan.tif", tif(nan)),
        "TIFF header claims 60000x60000": (
            "huge.tif",
            _patch_tiff_size(tif(np.zeros((8, 8), np.uint16)), 60000, 60000),
        ),
        "zlib TIFF claims 60000x60000": (
            "hugez.tif",
            _patch_tiff_size(tif(np.zeros((8, 8), np.uint16), compression="zlib"), 60000, 60000),
        ),
        "PNG header claims 100000x100000": ("huge.png", _patch_png_size(_encode(".png", g8), 100000, 100000)),
        "PNG header claims 0x0": ("zero.png", _patch_png_size(_encode(".png", g8), 0, 0)),
        "truncated header png": ("cut.png", _encode(".png", g8)[:20]),
        "truncated data png": ("half.png", _encode(".png", g8)[:-30]),
        "truncated jpg": ("half.jpg", _encode(".jpg", g8)[:40]),
        "truncated tif": ("half.tif", tif(np.zeros((64, 64), np.uint16))[:300]),
    }
    return out


SPECIALS = _special_files()


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_read_image_special_bad_files(tmp_path, name):
    from datasets.io import read_image

    fname, data = SPECIALS[name]
    p = tmp_path / fname
    p.write_bytes(data)
    res = attempt(f"image: special ({name})", lambda: read_image(p))
    assert isinstance(res, ImageReadError), (
        f"{name}: expected ImageReadError, got an image {getattr(res, 'shape', res)}"
    )
    assert str(p) in str(res)


@pytest.mark.parametrize(
    "real,named", [(".jpg", ".png"), (".png", ".jpg"), (".png", ".tif"), (".bmp", ".png"), (".tif", ".jpg")]
)
def test_read_image_wrong_extension_still_reads(tmp_path, real, named):
    """An image with the wrong extension is read by its content (the decoders sniff the bytes)."""
    from datasets.io import read_image

    img = np.tile(np.arange(16, dtype=np.uint8) * 16, (12, 1))
    p = tmp_path / f"x{named}"
    p.write_bytes(_encode(real, img))
    res = attempt("image: wrong extension", lambda: read_image(p))
    assert not isinstance(res, DataError), res
    assert res.shape == (12, 16)


def test_read_image_missing_and_folder(tmp_path):
    from datasets.io import read_image

    (tmp_path / "dir.png").mkdir()
    for p in (tmp_path / "missing.png", tmp_path / "dir.png"):
        assert isinstance(attempt("image: missing file or folder", lambda p=p: read_image(p)), ImageReadError)


# ------------------------------------------------------------------------------------ shared strategies
NASTY_NUMBER_STRINGS = ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e9", "-1e9", "", " ", "0x10", "1,5", "-0"]
nasty_text = st.one_of(
    st.sampled_from(NASTY_NUMBER_STRINGS),
    st.text(max_size=20),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.sampled_from([10**400, -(10**400), 1e9, -1e9, 1e300, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_value = st.recursive(
    json_scalar,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)


def _set_path(doc, path, value, delete=False):
    """Put ``value`` at ``path`` (a tuple of keys/indices) of a nested JSON doc; returns the doc."""
    if not path:
        return value
    cur = doc
    for k in path[:-1]:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return doc
    k = path[-1]
    try:
        if delete:
            del cur[k]
        else:
            cur[k] = value
    except (KeyError, IndexError, TypeError):
        pass
    return doc


def _write_png(path: Path, h: int = 20, w: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), 200, np.uint8)
    img[5:12, 6:10] = 40
    cv2.imwrite(str(path), img)


def _truncations(text: str) -> st.SearchStrategy[str]:
    return st.integers(0, max(0, len(text) - 1)).map(lambda n: text[:n])


# ------------------------------------------------------------------------------------ VOC
VOC_XML = (
    "<annotation><filename>a.png</filename><size><width>{w}</width><height>{h}</height></size>"
    "<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
    "</bndbox></object><object><name>X</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>14</ymax>"
    "</bndbox></object></annotation>"
)
VALID_VOC = VOC_XML.format(w=30, h=20, name="1", x1=5, y1=4, x2=12, y2=13)


def _voc_case(xml: bytes | str, csv_bytes: bytes | None = None):
    from datasets.voc import VOCDataset

    with scratch() as d:
        _write_png(d / "JEPG" / "a.png")
        (d / "annotations").mkdir()
        (d / "annotations" / "a.xml").write_bytes(xml.encode("utf-8", "surrogatepass") if isinstance(xml, str) else xml)
        if csv_bytes is not None:
            (d / "normal.csv").write_bytes(csv_bytes)
        return load_all("voc: bad xml/csv", lambda: VOCDataset(d, val_fraction=0.0))


@FUZZ
@given(
    xml=st.one_of(
        st.binary(max_size=600),
        _truncations(VALID_VOC),
        st.builds(
            VOC_XML.format,
            w=nasty_text,
            h=nasty_text,
            name=nasty_text,
            x1=nasty_text,
            y1=nasty_text,
            x2=nasty_text,
            y2=nasty_text,
        ),
    )
)
def test_voc_fuzzed_annotations(xml):
    _voc_case(xml)


@FUZZ
@given(
    csv_bytes=st.one_of(
        st.binary(max_size=300), st.sampled_from([b"a\x00b,1\n", b'"unterminated\n', b"x," + b"y" * 140_000])
    )
)
def test_voc_fuzzed_karyotype_tables(csv_bytes):
    _voc_case(VALID_VOC, csv_bytes)


def test_voc_bad_layouts(tmp_path):
    from datasets.voc import VOCDataset

    (tmp_path / "empty").mkdir()
    load_all("voc: no folders", lambda: VOCDataset(tmp_path / "empty"))
    load_all("voc: missing root", lambda: VOCDataset(tmp_path / "nope"))
    r = tmp_path / "broken_image"
    (r / "JEPG").mkdir(parents=True)
    (r / "annotations").mkdir()
    (r / "JEPG" / "a.jpg").write_bytes(b"")
    (r / "JEPG" / "b.jpg").write_bytes(_encode(".jpg", np.zeros((9, 9), np.uint8))[:50])
    for s in "ab":
        (r / "annotations" / f"{s}.xml").write_text(VALID_VOC)
    out = load_all("voc: broken image files", lambda: VOCDataset(r, val_fraction=0.0))
    assert len(out) == 2 and all(isinstance(e, ImageReadError) for e in out)


# ------------------------------------------------------------------------------------ COCO
def _coco_doc():
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [5, 4, 7, 9],
                "segmentation": [[5, 4, 12, 4, 12, 13, 5, 13]],
                "iscrowd": 0,
                "centromere": [8, 8],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "segmentation": {"size": [20, 30], "counts": "Y26b1;00000O1000000000000000000000000000"},
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 1,
                "category_id": 3,
                "segmentation": {"size": [20, 30], "counts": [100, 20, 480]},
                "bbox": [3, 0, 2, 20],
            },
        ],
        "categories": [{"id": 1, "name": "1"}, {"id": 2, "name": "X"}, {"id": 3, "name": "chromosome"}],
    }


COCO_PATHS = [
    (),
    ("images",),
    ("images", 0),
    ("images", 0, "id"),
    ("images", 0, "file_name"),
    ("images", 0, "width"),
    ("images", 0, "height"),
    ("annotations",),
    ("annotations", 0),
    ("annotations", 0, "image_id"),
    ("annotations", 0, "category_id"),
    ("annotations", 0, "bbox"),
    ("annotations", 0, "bbox", 2),
    ("annotations", 0, "segmentation"),
    ("annotations", 0, "segmentation", 0),
    ("annotations", 0, "segmentation", 0, 2),
    ("annotations", 0, "segmentation", 0, 5),
    ("annotations", 0, "iscrowd"),
    ("annotations", 0, "centromere"),
    ("annotations", 1, "segmentation"),
    ("annotations", 1, "segmentation", "counts"),
    ("annotations", 1, "segmentation", "size"),
    ("annotations", 2, "segmentation", "counts", 1),
    ("annotations", 2, "bbox"),
    ("categories",),
    ("categories", 0),
    ("categories", 0, "id"),
    ("categories", 0, "name"),
    ("categories", 2, "name"),
]


def _coco_case(kind: str, payload: bytes):
    from datasets.coco import COCODataset

    with scratch() as d:
        _write_png(d / "a.png")
        (d / "annotations.json").write_bytes(payload)
        return load_all(kind, lambda: COCODataset(d, val_fraction=0.0))


@FUZZ
@given(muts=st.lists(st.tuples(st.sampled_from(COCO_PATHS), json_value, st.booleans()), min_size=1, max_size=3))
def test_coco_mutated_documents(muts):
    doc = _coco_doc()
    for path, value, delete in muts:
        doc = _set_path(doc, path, value, delete)
    _coco_case("coco: mutated document", json.dumps(doc).encode())


@FUZZ
@given(payload=st.one_of(st.binary(max_size=400), _truncations(json.dumps(_coco_doc())).map(str.encode)))
def test_coco_random_and_truncated_files(payload):
    _coco_case("coco: random or truncated file", payload)


@pytest.mark.parametrize("coord", [1e6, 1e9, -1e9, 4e8, 1e300, 2**40])
def test_coco_polygon_far_outside_image(coord):
    """pycocotools allocates ~perimeter x 40 bytes and crashes (SIGSEGV) past ~4e8: such polygons must be refused."""
    doc = _coco_doc()
    doc["annotations"][0]["segmentation"] = [[0, 0, coord, 0, coord, coord, 0, 5]]
    out = _coco_case("coco: polygon far outside the image", json.dumps(doc).encode())
    assert isinstance(out, list) and len(out) == 1


# ------------------------------------------------------------------------------------ LabelMe
def _labelme_doc():
    return {
        "version": "5.2.1",
        "shapes": [
            {"label": "1", "points": [[5, 4], [12, 4], [12, 13], [5, 13]], "shape_type": "polygon"},
            {"label": "X", "points": [[2, 2], [9, 14]], "shape_type": "rectangle"},
        ],
        "imagePath": "a.png",
        "imageData": None,
        "imageHeight": 20,
        "imageWidth": 30,
    }


LABELME_PATHS = [
    (),
    ("shapes",),
    ("shapes", 0),
    ("shapes", 0, "label"),
    ("shapes", 0, "points"),
    ("shapes", 0, "points", 0),
    ("shapes", 0, "points", 1, 0),
    ("shapes", 0, "shape_type"),
    ("shapes", 1, "points"),
    ("shapes", 1, "points", 1, 1),
    ("shapes", 1, "shape_type"),
    ("imagePath",),
    ("imageData",),
    ("imageHeight",),
    ("imageWidth",),
]


def _labelme_case(kind: str, payload: bytes, with_image: bool = True):
    from datasets.labelme import LabelMeDataset

    with scratch() as d:
        if with_image:
            _write_png(d / "a.png")
        (d / "a.json").write_bytes(payload)
        return load_all(kind, lambda: LabelMeDataset(d, val_fraction=0.0))


@FUZZ
@given(
    muts=st.lists(st.tuples(st.sampled_from(LABELME_PATHS), json_value, st.booleans()), min_size=1, max_size=3),
    with_image=st.booleans(),
)
def test_labelme_mutated_documents(muts, with_image):
    doc = _labelme_doc()
    for path, value, delete in muts:
        doc = _set_path(doc, path, value, delete)
    _labelme_case("labelme: mutated document", json.dumps(doc).encode(), with_image)


@FUZZ
@given(
    payload=st.one_of(st.binary(max_size=400), _truncations(json.dumps(_labelme_doc())).map(str.encode)),
)
def test_labelme_random_and_truncated_files(payload):
    _labelme_case("labelme: random or truncated file", payload)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), mutated_bytes().map(lambda m: m[2])), as_text=st.booleans())
def test_labelme_bad_image_data(raw, as_text):
    import base64

    doc = _labelme_doc()
    doc["imagePath"] = "missing.png"
    doc["imageData"] = raw.decode("latin-1") if as_text else base64.b64encode(raw).decode()
    _labelme_case("labelme: bad imageData", json.dumps(doc).encode(), with_image=False)


@pytest.mark.parametrize("coord", [1e9, -1e9, 1e300, 2**40, 10**400])
def test_labelme_points_far_outside_image(coord):
    """cv2.fillPoly with coordinates near INT32_MIN takes tens of seconds: such shapes must be refused."""
    doc = _labelme_doc()
    doc["shapes"][0]["points"] = [[0, 0], [coord, 0], [coord, coord], [0, 5]]
    out = _labelme_case("labelme: points far outside the image", json.dumps(doc).encode())
    assert out is not None


# ------------------------------------------------------------------------------------ YOLO
label_token = st.one_of(
    st.sampled_from(
        ["0", "1", "23", "-1", "0.5", "1.0", "2.5", "nan", "inf", "1e400", "0.1", "0.9", "x", "", "1e-320"]
    ),
    st.floats(-2, 2).map(lambda v: f"{v:.3f}"),
)
label_line = st.lists(label_token, max_size=11).map(" ".join)


def _yolo_case(kind: str, yaml_text: bytes | None, labels: bytes | None, image: bytes | None = None, split="all"):
    from datasets.yolo import YOLODataset

    with scratch() as d:
        (d / "images").mkdir()
        (d / "labels").mkdir()
        _write_png(d / "images" / "a.png")
        if image is not None:
            (d / "images" / "b.png").write_bytes(image)
            (d / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (d / "images" / "notes.png").write_bytes(b"not an image")
        (d / "list.txt").write_text("images/a.png\n")
        (d / "binary_list.txt").write_bytes(b"\xff\xfe\x00\x89PNG")
        if yaml_text is not None:
            (d / "data.yaml").write_bytes(yaml_text)
        if labels is not None:
            (d / "labels" / "a.txt").write_bytes(labels)
        return load_all(kind, lambda: YOLODataset(d, split, val_fraction=0.0))


@FUZZ
@given(lines=st.lists(label_line, max_size=8), raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_yolo_fuzzed_label_files(lines, raw):
    labels = raw if raw is not None else "\n".join(lines).encode()
    _yolo_case("yolo: bad label file", b"names: ['1', 'X', 'chromosome', 'junk']\n", labels)


yaml_value = st.one_of(
    json_value, st.sampled_from(["images", "list.txt", "binary_list.txt", "images/a.png", "../x", "a\x00b", "/"])
)


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={"names": yaml_value, "nc": yaml_value, "train": yaml_value, "val": yaml_value, "path": yaml_value},
    ),
    split=st.sampled_from(["all", "train", "val"]),
)
def test_yolo_fuzzed_data_yaml(doc, split):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, UnicodeEncodeError):
        text = b"names: [1]\n"
    _yolo_case("yolo: bad data.yaml", text, b"0 0.5 0.5 0.2 0.2\n", split=split)


@FUZZ
@given(
    text=st.one_of(
        st.binary(max_size=300),
        _truncations("names:\n  0: '1'\n  1: X\ntrain: images\nval: list.txt\n").map(str.encode),
    )
)
def test_yolo_random_and_truncated_yaml(text):
    _yolo_case("yolo: random or truncated yaml", text, b"0 0.5 0.5 0.2 0.2\n")


@pytest.mark.parametrize(
    "yaml_text",
    [
        b"names: ['1']\ntrain: binary_list.txt\n",
        b"names: ['1']\ntrain: images/a.png\n",
        b"",
        b"names: !!python/object/apply:os.system ['true']\n",
        b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        b"f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
        b"h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\nnames: ['1']\nnc: [*h, *h]\ntrain: [*h, *h]\n",
    ],
    ids=["binary list file", "image as list file", "empty yaml", "python tag", "alias bomb"],
)
def test_yolo_special_yaml(yaml_text):
    _yolo_case("yolo: special yaml", yaml_text, b"0 0.5 0.5 0.2 0.2\n", split="train")


@FUZZ
@given(m=mutated_bytes())
def test_yolo_broken_image_beside_good_one(m):
    out = _yolo_case("yolo: broken image file", b"names: ['1']\n", b"0 0.5 0.5 0.2 0.2\n", image=m[2])
    assert isinstance(out, list) and any(not isinstance(r, DataError) for r in out)


# ------------------------------------------------------------------------------------ M-FISH label maps
def _tif(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


label_map = st.one_of(
    st.tuples(
        st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32]),
        st.sampled_from([(16, 16), (16, 16, 3), (2, 16, 16), (8, 16), (16, 16, 2)]),
        st.integers(-5, 300),
    ),
)


def _mfish_case(kind: str, d_bytes: bytes, k_bytes: bytes):
    from datasets.mfish import MFISHDataset

    with scratch() as d:
        cell = d / "A01__XY"
        cell.mkdir()
        (cell / "A0101D.tif").write_bytes(d_bytes)
        (cell / "A0101K.tif").write_bytes(k_bytes)
        good = np.zeros((16, 16), np.uint8)
        good[2:8, 3:6] = 1
        (cell / "A0102D.tif").write_bytes(_tif(np.full((16, 16), 300, np.uint16)))
        (cell / "A0102K.tif").write_bytes(_tif(good))
        return load_all(kind, lambda: MFISHDataset(d, val_fraction=0.0, min_area=2))


@FUZZ
@given(spec=label_map, seed=st.integers(0, 2**16))
def test_mfish_fuzzed_label_maps(spec, seed):
    dtype, shape, hi = spec
    rng = np.random.default_rng(seed)
    arr = rng.integers(min(0, hi), max(hi, 1), shape, endpoint=True).astype(dtype)
    if dtype == np.float32 and seed % 3 == 0:
        arr.flat[0] = np.nan
    _mfish_case("mfish: odd label map", _tif(np.full((16, 16), 300, np.uint16)), _tif(arr))


@FUZZ
@given(
    d_bytes=st.one_of(st.binary(max_size=300), mutated_bytes().map(lambda m: m[2])),
    k_bytes=st.one_of(st.binary(max_size=300), mutated_bytes().map(lambda m: m[2])),
)
def test_mfish_random_and_truncated_files(d_bytes, k_bytes):
    _mfish_case("mfish: random or truncated tif", d_bytes, k_bytes)


@pytest.mark.parametrize("which", ["D", "K", "both"])
def test_mfish_tiff_claiming_huge_size(which):
    huge = SPECIALS["TIFF header claims 60000x60000"][1]
    ok_d, ok_k = _tif(np.full((16, 16), 300, np.uint16)), _tif(np.ones((16, 16), np.uint8))
    out = _mfish_case(
        "mfish: tif claiming 60000x60000",
        huge if which in ("D", "both") else ok_d,
        huge if which in ("K", "both") else ok_k,
    )
    assert isinstance(out, list) and len(out) >= 1


# ------------------------------------------------------------------------------------ crops
@FUZZ
@given(m=mutated_bytes())
def test_crops_broken_file_in_folder(m):
    from datasets.crops import CropDataset

    with scratch() as d:
        (d / "7").mkdir()
        _write_png(d / "7" / "good.png")
        (d / "7" / f"bad{m[3]}").write_bytes(m[2])
        (d / "7" / "empty.jpg").write_bytes(b"")
        load_all("crops: broken file in folder", lambda: CropDataset(d, val_fraction=0.0))


# ------------------------------------------------------------------------------------ inference CLI
@pytest.fixture(scope="module")
def smoke_weights(tmp_path_factory):
    """Untrained tiny models saved in the inference format (a bad input fails before the models matter)."""
    import torch

    from models import classifier, segmentation

    d = tmp_path_factory.mktemp("fuzz_weights")
    torch.manual_seed(0)
    scfg = segmentation.SegConfig(backbone="resnet18_fpn", min_size=128, max_size=128, box_detections_per_img=100)
    segmentation.save_weights(segmentation.build_segmentation_model(scfg), scfg, d / "seg.pth")
    ccfg = classifier.ClsConfig(crop_height=32, crop_width=16)
    classifier.save_weights(classifier.build_classifier(ccfg), ccfg, d / "cls.pth")
    return d / "seg.pth", d / "cls.pth"


CLI_BAD = {
    "truncated png": ("cut.png", _encode(".png", np.zeros((40, 40), np.uint8))[:60]),
    "empty jpg": ("empty.jpg", b""),
    "text named tif": ("notes.tif", b"plain text\n"),
    "random bytes bmp": ("noise.bmp", bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8))),
}


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name", sorted(CLI_BAD))
def test_inference_cli_broken_image(tmp_path, capsys, smoke_weights, name, strict):
    import inference_pipeline

    fname, data = CLI_BAD[name]
    p = tmp_path / fname
    p.write_bytes(data)
    seg, cls = smoke_weights
    argv = ["--image", str(p), "--out", str(tmp_path / "out"), "--seg-weights", str(seg), "--cls-weights", str(cls)]
    argv += ["--device", "cpu", "--quiet"] + (["--strict"] if strict else [])
    rc = attempt(f"cli: broken image ({'strict' if strict else 'default'})", lambda: inference_pipeline.cli(argv))
    err = capsys.readouterr().err
    assert rc in (1, 2), rc
    assert "error" in err.lower() and "Traceback" not in err
    assert fname in err


@pytest.mark.parametrize("what", ["seg", "cls"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_inference_cli_broken_weights(tmp_path, capsys, smoke_weights, what, damage):
    import inference_pipeline

    seg, cls = smoke_weights
    src = seg if what == "seg" else cls
    bad = tmp_path / f"bad_{what}.pth"
    raw = src.read_bytes()
    bad.write_bytes({"truncated": raw[: len(raw) // 3], "empty": b"", "text": b"not a checkpoint"}[damage])
    _write_png(tmp_path / "a.png", 64, 64)
    argv = ["--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    argv += ["--seg-weights", str(bad if what == "seg" else seg), "--cls-weights", str(bad if what == "cls" else cls)]
    rc = attempt("cli: broken weights file", lambda: inference_pipeline.cli(argv))
    err = capsys.readouterr().err
    assert rc == 2, rc
    assert "error" in err.lower() and "Traceback" not in err and bad.name in err

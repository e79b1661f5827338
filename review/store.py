"""The results folder under review: its cells, their reviews, and the files a save writes.

A save never touches the pipeline's files. It writes, each atomically (temp file + rename):

* ``<stem>.reviewed.json``: the pipeline's JSON with the corrected labels, pairs, flags, karyotype, count
  and sanity score, each chromosome's ``pipeline_label`` / ``pipeline_flags``, a ``review`` block (format
  version, revision, reviewer, time, status, every edit with its before/after) and ``revisions``: every
  revision saved so far (who, when, which status, which edits), oldest first. A file of format version 1
  (one ``review`` block, no ``revisions``) is read as one revision;
* ``<stem>_karyogram.reviewed.png`` and ``.pdf``: the karyogram of the corrected labels, titled with its
  status ("draft", "accepted by NAME on DATE" or "unanalysable");
* ``reviewed_images/<stem>.<ext>``: a copy of the source image, so the folder is a self-contained dataset;
* ``reviewed_coco.json``: COCO instances of every reviewed cell (this cell's entry replaced), masks as
  RLE, categories 1..24 (``"1"``..``"22"``, ``"X"``, ``"Y"``) plus 0 ``"chromosome"`` for instances
  left unassigned; "not a chromosome" instances are left out, and so are cells marked unanalysable. ``train_segmentation.py`` and
  ``train_classification.py`` read it with ``--dataset coco --data-root RESULTS_DIR/reviewed_coco.json``.

Two saves of one cell from two pages: each save names the revision it started from; a save that did
not start from the latest revision is refused (:class:`ConflictError`), never merged silently.

Sign-off: a save has a status, ``"saved"`` (a draft), ``"accepted"`` or ``"unanalysable"`` (the cell cannot
be analysed: kept out of the training data). Accepting a cell with flagged chromosomes or a count other
than 46 is refused (:class:`ConfirmError`) unless the request says ``confirmed``: the page asks first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fileio import atomic_write, atomic_write_json
from karyogram.labels import name_of

from .edits import EditError, apply_edits, n_flagged, summary
from .geometry import GeometryError
from .imagery import Crop, chromosome_crops, find_image, locate_image, outlines, png_bytes, read_grey, turned
from .result import Cell, CellError, check_result, image_warnings, load_cell, read_json
from .segment import Identifier, decode, identifier_for, make_edit

REVIEW_FORMAT = "karyotype-review"
REVIEW_VERSION = 2
#: format versions of ``<stem>.reviewed.json`` this app reads (1: one ``review`` block, no ``revisions``)
REVIEW_VERSIONS_READ = (1, 2)
#: what a save can make of a cell
STATUSES = ("saved", "accepted", "unanalysable")
#: a normal count; accepting another asks for confirmation
NORMAL_COUNT = 46
REVIEWED_SUFFIX = ".reviewed.json"
COCO_NAME = "reviewed_coco.json"
IMAGES_DIR = "reviewed_images"
#: JSON files of a results folder that are not cells
_NOT_CELLS = re.compile(r"^(summary|coco_results)(\.rank\d+)?\.json$|^reviewed_coco\.json$")
_STEM_OK = re.compile(r"^[^/\\\x00]+$")
#: edit fields kept in the reviewed JSON (others the browser sends are dropped)
_EDIT_KEYS = ("op", "id", "ids", "before", "after", "at", "line", "path", "half_width", "outline", "stroke", "radius",
              "removed", "added")  # fmt: skip


class ReviewError(ValueError):
    """A request the app refuses, with the HTTP status that says why."""

    status = 400


class NotFoundError(ReviewError):
    status = 404


class OutsideError(ReviewError):
    status = 403


class ConflictError(ReviewError):
    status = 409


class ConfirmError(ReviewError):
    """An accept that needs the reviewer's confirmation (flags, count); ``reasons`` says why."""

    status = 428

    def __init__(self, message: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


def accept_doubts(st: dict[str, Any]) -> list[str]:
    """Why accepting a cell in state ``st`` (:func:`review.edits.summary`) needs a confirmation: flagged
    chromosomes, a count other than :data:`NORMAL_COUNT`; [] when none."""
    out = []
    if st["n_flagged"]:
        out.append(f"{st['n_flagged']} chromosome(s) still flagged")
    if st["count"] != NORMAL_COUNT:
        out.append(f"count {st['count']}, not {NORMAL_COUNT}")
    return out


def next_revision(name: str, last: dict[str, Any] | None, base_revision: int, reload_hint: str) -> int:
    """The revision a save of ``name`` makes after the ``last`` saved block (None: nothing saved yet).

    Raises:
        ConflictError: the page did not start from the last revision (it was saved since, by whom and when);
            ``reload_hint`` says what to do.
    """
    current = last["revision"] if last else 0
    if base_revision != current:
        who = f" by {last.get('reviewer')} at {last.get('saved_at')}" if last else ""
        raise ConflictError(
            f"not saved: {name} was saved{who} (revision {current}) after this page loaded revision {base_revision}; "
            f"nothing was overwritten. {reload_hint}"
        )
    return current + 1


def revisions_of(rv: dict[str, Any]) -> list[dict[str, Any]]:
    """Every saved revision of a review file (:meth:`ResultsFolder.reviewed`), oldest first; a version 1
    file has only its last one."""
    if isinstance(rv.get("revisions"), list):
        return rv["revisions"]
    r = rv["review"]
    return [{k: r.get(k) for k in ("revision", "reviewer", "saved_at", "edits")} | {"status": status_of(r)}]


def status_of(review: dict[str, Any]) -> str:
    """The status of a ``review`` block (version 1 has only ``accepted``)."""
    st = review.get("status")
    return st if st in STATUSES else ("accepted" if review.get("accepted") else "saved")


@dataclass
class LoadedCell:
    """A cell with what the page needs: source image, crops and mask outlines (cached per file version)."""

    cell: Cell
    image_path: Path
    image: np.ndarray
    crops: list[Crop]
    outlines: list[Any]
    key: tuple[int, ...]


#: cells kept decoded in memory (masks, image, crops)
CELLS_IN_MEMORY = 4
#: crops and outlines of instances added by segmentation edits kept in memory
PIECES_IN_MEMORY = 512


def _version(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _remember(cache: OrderedDict, key: Any, value: Any, keep: int = CELLS_IN_MEMORY) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > keep:
        cache.popitem(last=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sign_off(review: dict[str, Any]) -> str:
    """What a reviewed karyogram says of its status: "accepted by NAME on DATE", "unanalysable (NAME, DATE)"
    or "draft (NAME, DATE; not accepted)"."""
    who, day = review["reviewer"], str(review["saved_at"])[:10]
    status = status_of(review)
    if status == "accepted":
        return f"accepted by {who} on {day}"
    if status == "unanalysable":
        return f"unanalysable ({who}, {day})"
    return f"draft ({who}, {day}; not accepted)"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ResultsFolder:
    """The folder ``inference_pipeline.py`` wrote, as the review app sees it.

    Args:
        root: the results folder.
        image_dirs: folders to look for source images in when the recorded path does not exist.

    Raises:
        ReviewError: ``root`` is not a folder.
    """

    def __init__(self, root: str | os.PathLike, image_dirs: tuple[str | os.PathLike, ...] = ()) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ReviewError(f"results folder {root} does not exist or is not a folder")
        self.image_dirs = tuple(Path(d) for d in image_dirs)
        self._lock = threading.Lock()
        # the last few cells opened (a cell holds its masks and image: tens of MB), and the index rows of all
        self._loaded: OrderedDict[str, LoadedCell] = OrderedDict()
        self._cells: OrderedDict[str, tuple[tuple[int, int], Cell]] = OrderedDict()
        self._rows: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._pieces: OrderedDict[tuple[str, str], tuple[Crop, Any]] = OrderedDict()

    # ------------------------------------------------------------------ paths
    def resolve(self, rel: str) -> Path:
        """A path inside the results folder; :class:`OutsideError` for anything that leaves it."""
        if "\x00" in rel:
            raise OutsideError(f"refused: {rel!r} is not a valid path")
        p = (self.root / rel).resolve()
        if p != self.root and self.root not in p.parents:
            raise OutsideError(f"refused: {rel!r} is outside the results folder {self.root}")
        return p

    def json_path(self, stem: str) -> Path:
        if not _STEM_OK.match(stem) or stem in (".", "..") or stem.endswith(".reviewed"):
            raise OutsideError(f"refused: {stem!r} is not a cell name")
        return self.resolve(f"{stem}.json")

    def reviewed_path(self, stem: str) -> Path:
        return self.json_path(stem).with_name(stem + REVIEWED_SUFFIX)

    def stems(self) -> list[str]:
        """Cells of the folder: every ``<stem>.json`` that is not a summary, a COCO file or a review, plus
        images listed as processed in ``summary.json`` whose JSON is missing."""
        names = {
            p.name[: -len(".json")]
            for p in self.root.glob("*.json")
            if not p.name.endswith(REVIEWED_SUFFIX) and not _NOT_CELLS.match(p.name)
        }
        for s in self.root.glob("summary*.json"):
            with contextlib.suppress(Exception):
                for item in read_json(s).get("processed", []):
                    names.add(Path(item["json"]).name[: -len(".json")])
        names |= {p.name[: -len("_karyogram.png")] for p in self.root.glob("*_karyogram.png")}
        names -= {n for n in names if n.endswith(".reviewed") or n.endswith("_karyogram")}
        return sorted(names)

    # ------------------------------------------------------------------ reading
    def _result_file(self, stem: str) -> tuple[Path, tuple[int, int]]:
        """``<stem>.json`` and its version; :class:`NotFoundError` when it is missing."""
        p = self.json_path(stem)
        if not p.exists():
            raise NotFoundError(f"{p}: missing (no pipeline result for {stem!r}); run inference_pipeline.py on it")
        return p, _version(p)

    def cell(self, stem: str) -> Cell:
        """The pipeline's result for ``stem`` (read once per version of its file)."""
        p, key = self._result_file(stem)
        hit = self._cells.get(stem)
        if hit is not None and hit[0] == key:
            self._cells.move_to_end(stem)
            return hit[1]
        cell = load_cell(p)
        _remember(self._cells, stem, (key, cell))
        return cell

    def reviewed(self, stem: str) -> dict[str, Any] | None:
        """The saved review of a cell (validated), or None when there is none."""
        p = self.reviewed_path(stem)
        if not p.exists():
            return None
        data = read_json(p, "move it away to review the cell again (the pipeline's own files are untouched)")
        rv = data.get("review") if isinstance(data, dict) else None
        if not isinstance(rv, dict) or rv.get("format") != REVIEW_FORMAT:
            raise CellError(
                p, "not a review file of this app (no 'review' block); move it away to review the cell again"
            )
        if rv.get("version") not in REVIEW_VERSIONS_READ:
            raise CellError(
                p,
                f"review format version {rv.get('version')!r} is not one this app reads "
                f"({', '.join(map(str, REVIEW_VERSIONS_READ))}); use the app that wrote it, or move the file away to "
                "review the cell again",
            )
        if not isinstance(rv.get("revision"), int) or not isinstance(rv.get("edits"), list):
            raise CellError(p, "its 'review' block lacks an integer 'revision' or an 'edits' list")
        revs = data.get("revisions", [])
        if not (isinstance(revs, list) and all(isinstance(r, dict) and isinstance(r.get("edits"), list) for r in revs)):
            raise CellError(p, "'revisions' must be a list of objects with an 'edits' list")
        return data

    def load(self, stem: str) -> LoadedCell:
        """The cell with its image, crops and outlines (computed once per version of its JSON)."""
        p = self.json_path(stem)
        cell = self.cell(stem)
        img_path = find_image(cell, self.root, self.image_dirs)
        key = (*_version(p), *_version(img_path))
        hit = self._loaded.get(stem)
        if hit is not None and hit.key == key:
            self._loaded.move_to_end(stem)
            return hit
        image = read_grey(img_path, cell)
        masks = cell.prediction.masks
        loaded = LoadedCell(cell, img_path, image, chromosome_crops(image, masks), outlines(masks), key)
        _remember(self._loaded, stem, loaded)
        return loaded

    def _pipeline_row(self, stem: str) -> dict[str, Any]:
        """What the index shows of the pipeline's result (read and checked, masks not decoded)."""
        p, key = self._result_file(stem)
        hit = self._rows.get(stem)
        if hit is not None and hit[0] == key:
            return hit[1]
        data = read_json(p)
        check_result(data, p)
        row = {
            "karyotype": data.get("karyotype"),
            "count": data.get("count"),
            "sanity_score": data.get("sanity_score"),
            "n_flagged": n_flagged([c["flags"] for c in data["chromosomes"]]),
            "image": str(data["image"]),
            "out_of_range": image_warnings(data, p),
        }
        self._rows[stem] = (key, row)
        return row

    def index(self, stems: list[str] | None = None) -> list[dict[str, Any]]:
        """One row per cell (of ``stems``, default all): name, ISCN, count, sanity score, flagged chromosomes,
        review status and revision, or the error that keeps the cell from being reviewed."""
        rows = []
        for stem in self.stems() if stems is None else stems:
            row: dict[str, Any] = {"stem": stem, "error": None, "status": "not reviewed"}
            try:
                pipe = self._pipeline_row(stem)
                row |= pipe
                row["pipeline_karyotype"] = pipe["karyotype"]
                # a cell whose image is missing is named here, not only on its page
                locate_image(pipe["image"], self.json_path(stem), self.root, self.image_dirs)
                rv = self.reviewed(stem)
                if rv is not None:
                    r = rv["review"]
                    row |= {
                        "karyotype": rv.get("karyotype"),
                        "count": rv.get("count"),
                        "sanity_score": rv.get("sanity_score"),
                        "n_flagged": n_flagged([c.get("flags", []) for c in rv.get("chromosomes", [])]),
                        "status": status_of(r),
                        "revision": r.get("revision"),
                        "reviewer": r.get("reviewer"),
                        "saved_at": r.get("saved_at"),
                        "n_edits": len(r.get("edits", [])),
                        "n_revisions": len(revisions_of(rv)),
                    }
            except (CellError, ReviewError) as exc:
                row["error"] = str(exc)
            row["thumbnail"] = (self.root / f"{stem}_overlay.png").is_file()
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ state
    def state(self, stem: str, edits: list[Any]) -> dict[str, Any]:
        """The cell after ``edits`` (see :func:`review.edits.summary`), plus ``added``: what the page shows of
        each instance a segmentation edit added (:meth:`piece_info`); :class:`ReviewError` if an edit does
        not apply."""
        cell = self.cell(stem)
        try:
            st = apply_edits(cell.labels, edits, [cell.height, cell.width])
        except EditError as exc:
            raise ReviewError(str(exc)) from None
        out = summary(st, cell.flags, cell.pair_of) | {"_state": st}
        loaded = self.load(stem) if st.added else None
        out["added"] = [self.piece_info(stem, loaded, st.n_pipeline + k, a) for k, a in enumerate(st.added)]
        return out

    def piece(self, stem: str, loaded: LoadedCell, added: dict[str, Any]) -> tuple[Crop, Any]:
        """The crop and outline of an instance a segmentation edit added (computed once per mask)."""
        key = (stem, added["mask"]["counts"])
        hit = self._pieces.get(key)
        if hit is None:
            m = decode(added["mask"])[None]
            hit = (chromosome_crops(loaded.image, m)[0], outlines(m)[0])
            _remember(self._pieces, key, hit, PIECES_IN_MEMORY)
        return hit

    def piece_info(self, stem: str, loaded: Any, i: int, added: dict[str, Any]) -> dict[str, Any]:
        """What the page shows of added instance ``i``: outline, crop (size, centromere row, PNG as a data
        URL), the classifier's top classes."""
        import base64

        crop, outline = self.piece(stem, loaded, added)
        h, w = crop.image.shape
        probs = np.asarray(added["probs"], np.float64)
        best = np.argsort(-probs, kind="stable")[:3]
        return {
            "id": i,
            "pipeline_label": 0,
            "pipeline_flags": [],
            "confidence": None,
            "top": [{"class": int(j) + 1, "name": name_of(int(j) + 1), "p": round(float(probs[j]), 3)} for j in best],
            "crop": {"w": w, "h": h, "cen": round(crop.centromere_row, 2)},
            "outline": outline,
            "png": "data:image/png;base64," + base64.b64encode(png_bytes(crop.image)).decode("ascii"),
            "from": added.get("from", []),
        }

    def segment(self, stem: str, edits: list[Any], tool: str, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A segmentation edit on the cell after ``edits`` (:func:`review.segment.make_edit`).

        Raises:
            ReviewError: the edits do not apply, or the gesture makes no edit (the geometry's message).
        """
        st = self.state(stem, edits)["_state"]
        try:
            return make_edit(self.load(stem), st, tool, params, self.identifier(stem))
        except GeometryError as exc:
            raise ReviewError(f"not done: {exc}") from None

    def warm(self, stem: str) -> None:
        """Load the cell's classifier in the background (seconds), so that the first segmentation edit is quick;
        a file that cannot be read is reported by that edit."""

        def load() -> None:
            with contextlib.suppress(Exception):
                self.identifier(stem).load()

        threading.Thread(target=load, daemon=True).start()

    def identifier(self, stem: str) -> Identifier:
        """The classifier the pipeline used for this cell (its JSON's ``models.classifier`` when that file is
        here), else the shipped one; loaded once per file and process."""
        rec = (self.cell(stem).data.get("models") or {}).get("classifier")
        path = Path(rec) if isinstance(rec, str) and Path(rec).is_file() else None
        return identifier_for(path)

    # ------------------------------------------------------------------ saving
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One save at a time: a thread lock, and a file lock for several servers on one folder."""
        with self._lock, open(self.root / ".review.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save(
        self,
        stem: str,
        edits: list[Any],
        *,
        base_revision: int,
        reviewer: str,
        status: str = "saved",
        confirmed: bool = False,
        note: str = "",
    ) -> dict[str, Any]:
        """Write the review of a cell (module docstring); returns the new revision and the files written.

        Args:
            status: one of :data:`STATUSES`.
            confirmed: the reviewer confirmed accepting a cell with flags or an abnormal count.
            note: the reviewer's remark (why a cell is unanalysable), kept with the revision.

        Raises:
            ConflictError: the cell was saved since ``base_revision`` (by another page or person).
            ConfirmError: an accept of a doubtful cell (:func:`accept_doubts`) without ``confirmed``.
            ReviewError: an edit does not apply, a reviewer name is missing or the status is unknown.
        """
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ReviewError("a reviewer name is needed to save: type who reviewed this cell")
        if status not in STATUSES:
            raise ReviewError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if not isinstance(note, str):
            raise ReviewError(f"note must be text, got {note!r}")
        if not isinstance(base_revision, int) or isinstance(base_revision, bool):
            raise ReviewError(f"base_revision must be an integer, got {base_revision!r}")
        with self._locked():
            prev = self.reviewed(stem)
            again = "Reload the cell to see that version, then redo your edits"
            revision = next_revision(stem, prev["review"] if prev else None, base_revision, again)
            loaded = self.load(stem)
            cell = loaded.cell
            st = self.state(stem, edits)
            state = st.pop("_state")
            doubts = accept_doubts(st) if status == "accepted" else []
            if doubts and not confirmed:
                raise ConfirmError(
                    f"not accepted: {'; '.join(doubts)}. Confirm to accept it as it is (nothing was written)", doubts
                )
            now = _now()
            kept = [{k: e[k] for k in _EDIT_KEYS if k in e} for e in edits]
            files = {
                "reviewed_json": f"{stem}{REVIEWED_SUFFIX}",
                "karyogram_png": f"{stem}_karyogram.reviewed.png",
                "karyogram_pdf": f"{stem}_karyogram.reviewed.pdf",
                # named by the cell, not by the image file: two slides' images may share a name
                "image": f"{IMAGES_DIR}/{stem}{loaded.image_path.suffix}",
                "coco": COCO_NAME,
            }
            out = dict(cell.data)
            # the instances present after the edits, numbered 0..M-1 as the pipeline numbers them; review_id is
            # the number the edit log uses (pipeline ids, then the added ones)
            n = state.n_pipeline
            present = [i for i in range(len(state.labels)) if state.alive[i]]
            new_id = {i: k for k, i in enumerate(present)}
            crops = [loaded.crops[i] if i < n else self.piece(stem, loaded, state.added[i - n])[0] for i in present]
            chroms = []
            for i in present:
                k = st["labels"][i]
                if i < n:
                    c = cell.data["chromosomes"][i]
                    base = {**c, "pipeline_label": c["label"], "pipeline_flags": c["flags"]}
                else:
                    a = state.added[i - n]
                    base = {k_: a[k_] for k_ in ("probs", "box", "mask", "length_px", "centromere_index")}
                    base |= {
                        "score": 1.0,  # drawn or cut by the reviewer, not detected
                        "confidence": round(max(a["probs"]), 4),
                        "centromere_xy": a.get("centromere_xy"),
                        "polarity_ok": bool(a.get("polarity_ok", False)),
                        "pipeline_label": None,
                        "pipeline_flags": [],
                        "made_from": a.get("from", []),
                    }
                pr = st["pair"][i]
                chroms.append(
                    base
                    | {
                        "id": new_id[i],
                        "review_id": i,
                        "label": k,
                        "name": name_of(k),
                        "pair": new_id.get(pr) if pr >= 0 else None,
                        "flags": st["flags"][i],
                        "not_chromosome": state.debris[i],
                        "polarity_flipped": state.flipped[i],
                    }
                )
            out.update(
                karyotype=st["karyotype"],
                sex=st["sex"],
                count=st["count"],
                sanity_score=st["sanity_score"],
                chromosomes=chroms,
                detections=len(chroms),
            )
            this = {
                "revision": revision,
                "reviewer": reviewer.strip(),
                "saved_at": now,
                "status": status,
                "confirmed": doubts if doubts else None,
                "note": note.strip() or None,
                "edits": kept,
            }
            out["review"] = {
                "format": REVIEW_FORMAT,
                "version": REVIEW_VERSION,
                "revision": revision,
                "reviewer": reviewer.strip(),
                "saved_at": now,
                "status": status,
                "accepted": status == "accepted",
                "note": this["note"],
                "source": f"{stem}.json",
                "source_sha256": sha256_of(cell.path),
                "pipeline_karyotype": cell.data.get("karyotype"),
                "pipeline_sanity_score": cell.data.get("sanity_score"),
                "edits": kept,
                "files": files,
            }
            out["revisions"] = [*(revisions_of(prev) if prev else []), this]
            # before writing: a bad COCO file stops all
            coco = self._coco_with(stem, out, crops, loaded.image, files["image"])
            self._render(stem, out, crops, files)
            self._copy_image(loaded.image_path, self.root / files["image"])
            atomic_write_json(self.reviewed_path(stem), out)
            atomic_write_json(self.root / COCO_NAME, coco)
        return {
            "revision": revision,
            "saved_at": now,
            "files": files,
            "status": status,
            "accepted": status == "accepted",
        }

    def _render(self, stem: str, reviewed: dict[str, Any], crops: list[Crop], files: dict[str, str]) -> None:
        """The karyogram of the reviewed chromosomes (``crops`` one per entry), titled with the sign-off."""
        from karyogram.render import render_karyogram

        chroms = reviewed["chromosomes"]
        keep = [i for i, c in enumerate(chroms) if not c["not_chromosome"]]
        shown = [turned(crops[i]) if chroms[i]["polarity_flipped"] else crops[i] for i in keep]
        new_index = {i: j for j, i in enumerate(keep)}
        pair = [new_index.get(chroms[i]["pair"], -1) if chroms[i]["pair"] is not None else -1 for i in keep]
        title = f"{reviewed['karyotype'] or 'no chromosomes'}   ({stem}: {sign_off(reviewed['review'])})"
        for key in ("karyogram_png", "karyogram_pdf"):
            render_karyogram(
                [c.image for c in shown],
                [c.centromere_row for c in shown],
                [chroms[i]["label"] for i in keep],
                pair_of=pair,
                flags=[chroms[i]["flags"] for i in keep],
                title=title,
                path=self.root / files[key],
            )

    def _copy_image(self, src: Path, dst: Path) -> None:
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_of(dst) == sha256_of(src):
            return
        with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)

    def _coco_with(
        self, stem: str, reviewed: dict[str, Any], crops: list[Crop], image: np.ndarray, image_rel: str
    ) -> dict[str, Any]:
        """``reviewed_coco.json`` with this cell's image and instances replaced by the reviewed ones (removed
        when the cell is unanalysable), written by :mod:`datasets.coco` from a record of the reviewed chromosomes
        (``image`` the cell's grey image)."""
        from datasets.coco import coco_document, records_to_coco

        path = self.root / COCO_NAME
        if path.exists():
            data = read_json(path, "move it away and save again: it is rebuilt from the saves that follow")
            ok = isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations"))
            if not ok:
                raise CellError(
                    path, "not a COCO instances file (images/annotations lists); move it away and save again"
                )
        else:
            data = {"images": [], "annotations": []}
        old = [im for im in data["images"] if im.get("review_stem") == stem]
        old_ids = {im.get("id") for im in old}
        images = [im for im in data["images"] if im.get("review_stem") != stem]
        anns = [a for a in data["annotations"] if a.get("image_id") not in old_ids]
        ids = [im["id"] for im in data["images"] if isinstance(im.get("id"), int)]
        image_id = old[0]["id"] if old and isinstance(old[0].get("id"), int) else max(ids, default=0) + 1
        info = {"description": "chromosomes corrected in review.py", "written_at": _now()}
        rv = reviewed["review"]
        if rv["status"] != "unanalysable":  # not training data: its entry goes, nothing comes in
            rec = _reviewed_record(reviewed, crops, image)
            more = {k: reviewed[k] for k in ("karyotype", "sex")}
            more |= {"review_stem": stem, "reviewer": rv["reviewer"], "reviewed_at": rv["saved_at"]}
            more["accepted"] = rv["accepted"]
            # pixels to 2 decimals, as in the JSON the boxes and centromeres come from
            part = records_to_coco([rec], [image_rel], image_ids=[image_id], image_info=[more], decimals=2)
            images += part["images"]
            anns += part["annotations"]
        return coco_document(images, anns, info=info)


def _reviewed_record(reviewed: dict[str, Any], crops: list[Crop], image: np.ndarray) -> Any:
    """The reviewed chromosomes of a cell, those that are chromosomes, as a :class:`datasets.record.KaryoRecord`
    (``crops`` one per chromosome entry, for the p-arm direction; ``image`` the cell's grey image)."""
    from datasets.record import KaryoRecord

    keep = [i for i, c in enumerate(reviewed["chromosomes"]) if not c["not_chromosome"]]
    chroms = [reviewed["chromosomes"][i] for i in keep]
    nan2 = (np.nan, np.nan)
    p_dir = []
    for i, c in zip(keep, chroms):
        d = crops[i].p_dir if i < len(crops) else None
        if d is not None and c["polarity_flipped"]:
            d = (-d[0], -d[1])
        # rounded as written, so the file's numbers do not carry the record's float32 noise
        p_dir.append(nan2 if d is None else tuple(round(v, 5) for v in d))
    h, w = int(reviewed["height"]), int(reviewed["width"])
    return KaryoRecord(
        image=image,
        boxes=np.array([c["box"] for c in chroms], np.float64).reshape(-1, 4),
        labels=np.array([c["label"] for c in chroms], np.int64),
        masks=np.array([decode(c["mask"]) for c in chroms], np.uint8).reshape(-1, h, w),
        centromeres=np.array([nan2 if c.get("centromere_xy") is None else c["centromere_xy"] for c in chroms]),
        p_dir=np.array(p_dir, np.float64).reshape(-1, 2),
    )

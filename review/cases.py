"""Cases: the cells of one patient sample, counted and analysed together, signed off with one ISCN karyotype
and written up as a PDF report.

Grouping (:func:`case_of`): a cell's case is its name (the stem of ``<stem>.json``) up to the first ``_``:
``P0153_01`` and ``P0153_02.tif``'s cell ``P0153_02`` are two cells of case ``P0153``; a name without
``_`` (or one that starts with it) is a case of its own. Name the images ``<case>_<cell>`` (no ``_`` inside
the case id) before running the pipeline.

A case's sign-off is written, atomically, to ``cases/<case>/case.reviewed.json`` in the results folder: the
case karyotype (ISCN, typed by the reviewer; the page suggests one from the accepted cells,
:func:`suggest_iscn`), the number of cells counted, the cells analysed (those shown in the report) with a
snapshot of each one's karyotype and review revision, the reviewer and time, and ``revisions``: every save,
oldest first. Two saves from two pages: the one that did not start from the latest revision is refused
(:class:`~review.store.ConflictError`), as for cells. The PDF report (:mod:`review.report`) is made from the
saved case into ``cases/<case>/<case>_report.pdf``.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fileio import atomic_write_json
from karyogram.iscn import parse_iscn

from .result import CellError, read_json
from .store import ConflictError, NotFoundError, OutsideError, ResultsFolder, ReviewError, next_revision

#: a cell's case is its name up to the first of these
CASE_SEPARATOR = "_"
#: the folder of the results folder that holds one folder per signed case
CASES_DIR = "cases"
CASE_FILE = "case.reviewed.json"
CASE_FORMAT = "karyotype-case-review"
CASE_VERSION = 1
#: the most cells a case can say it counted
MAX_COUNTED = 1000
#: the longest case karyotype accepted (characters)
MAX_ISCN = 300
#: the normal constitutional karyotypes (listed last in a mosaic)
NORMAL = ("46,XX", "46,XY")

_CASE_OK = re.compile(r"^[^/\\\x00]+$")
#: what ISCN writes: digits, letters, , + - / ( ) [ ] ; : . ~ ? and a space (after mos, chi, ish); < > only
#: around a ploidy (``69<3n>``)
_ISCN_CHAR = re.compile(r"[0-9A-Za-z ,+\-/()\[\];:.~?]")
_PLOIDY = re.compile(r"<\d(\.\d)?n>")
_PREFIX = re.compile(r"^(mos|chi) ")
_CELL_COUNT = re.compile(r"\[(\d+)\]$")
#: a cell line starts with its count (``46``, ``45~48``, ``69<3n>``) and a comma
_LINE_START = re.compile(r"^\d{1,3}(~\d{1,3})?(" + _PLOIDY.pattern + r")?,\S")
#: the fields of a numerical karyotype (sex chromosomes, whole-chromosome gains and losses)
_NUMERICAL_FIELD = re.compile(r"^[XY]+$|^[+-](\d{1,2}|X|Y)$")
#: what a case karyotype looks like, for messages
_EXAMPLE = "e.g. 46,XX, 47,XY,+21 or mos 47,XX,+21[3]/46,XX[17]"


def case_of(stem: str) -> str:
    """The case of the cell ``stem``: the name up to the first :data:`CASE_SEPARATOR`, else the whole name."""
    head, sep, _ = stem.partition(CASE_SEPARATOR)
    return head if sep and head not in ("", ".", "..") else stem


def group_cases(stems: list[str]) -> dict[str, list[str]]:
    """Cells by case (:func:`case_of`), cases and their cells in name order."""
    out: dict[str, list[str]] = {}
    for s in sorted(stems):
        out.setdefault(case_of(s), []).append(s)
    return dict(sorted(out.items()))


def check_case_iscn(text: Any) -> str:
    """The case karyotype as saved (whitespace runs made one space), checked lightly: not empty, ISCN's
    characters only, each cell line (``/``) starting with a count, a mosaic's lines with their cell counts
    ``[n]``, and a numerical line (count, sex chromosomes, gains, losses) whose count agrees with its content
    (:func:`karyogram.iscn.parse_iscn`). Structural rearrangements are not checked.

    Raises:
        ReviewError: what is wrong, with an example.
    """
    if not isinstance(text, str) or not text.strip():
        raise ReviewError(f"the case karyotype (ISCN) is empty: type it ({_EXAMPLE})")
    s = " ".join(text.split())
    if len(s) > MAX_ISCN:
        raise ReviewError(f"the case karyotype is {len(s)} characters long: at most {MAX_ISCN}")
    bad = sorted({c for c in _PLOIDY.sub("", s) if not _ISCN_CHAR.fullmatch(c)})
    if bad:
        raise ReviewError(f"the case karyotype {s!r} has character(s) ISCN does not use: {' '.join(bad)}")
    lines = _PREFIX.sub("", s).split("/")
    for line in lines:
        m = _CELL_COUNT.search(line)
        core = line[: m.start()] if m else line
        if len(lines) > 1 and not m:
            raise ReviewError(
                f"the case karyotype {s!r}: each cell line of a mosaic needs its number of cells in brackets, "
                f"{line!r} has none (e.g. mos 47,XX,+21[3]/46,XX[17])"
            )
        if m and int(m.group(1)) == 0:
            raise ReviewError(f"the case karyotype {s!r}: the cell line {line!r} has 0 cells")
        if not _LINE_START.match(core):
            raise ReviewError(
                f"the case karyotype {s!r}: {line!r} does not start with a chromosome count and a comma ({_EXAMPLE})"
            )
        count, *fields = core.split(",")
        if count.isdigit() and all(_NUMERICAL_FIELD.match(f) for f in fields):
            try:
                parse_iscn(core)
            except ValueError as exc:
                raise ReviewError(f"the case karyotype: {exc}") from None
    return s


def _smallest_clone(karyotype: str) -> int:
    """How many cells make a line a clone (ISCN): a normal line 1; a line that only loses chromosomes 3;
    any other (a gain, a structural change) 2."""
    if karyotype in NORMAL:
        return 1
    try:
        p = parse_iscn(karyotype)
    except ValueError:
        return 2
    return 3 if not p["gains"] and p["count"] < 46 else 2


def _cells(n: int) -> str:
    return f"{n} cell{'s' if n != 1 else ''}"


def suggest_iscn(karyotypes: list[str | None]) -> tuple[str, str]:
    """A case karyotype from the accepted cells' karyotypes, and how it was made.

    The most common karyotype (ties: a normal one first, then by name) is the main line; another line is kept
    when it is a clone (:func:`_smallest_clone`), else left out as a single-cell change and named in the
    reason. One line: that karyotype; several: ``mos`` with each line's cells in brackets, the abnormal lines
    largest first and the normal one last (``mos 47,XX,+21[3]/46,XX[17]``). No karyotype: ``""``.
    """
    lines = Counter(k for k in karyotypes if k)
    n = sum(lines.values())
    if not n:
        return "", "no accepted cell yet: accept cells on their pages, or type the karyotype"
    order = sorted(lines, key=lambda k: (-lines[k], k not in NORMAL, k))
    kept = [k for k in order if k == order[0] or lines[k] >= _smallest_clone(k)]
    left = [k for k in order if k not in kept]
    if len(kept) == 1:
        text = kept[0]
    else:
        ordered = [k for k in kept if k not in NORMAL] + [k for k in kept if k in NORMAL]
        text = "mos " + "/".join(f"{k}[{lines[k]}]" for k in ordered)
    why = f"from {n} accepted cell{'s' if n != 1 else ''}"
    if left:
        why += (
            "; not a clone, left out (ISCN: a clone is 2 cells with the same gain, 3 with the same loss): "
            + ", ".join(f"{k} ({_cells(lines[k])})" for k in left)
        )
    return text, why


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _selectable(row: dict[str, Any]) -> str | None:
    """Why a cell cannot be one of the analysed cells (None: it can)."""
    if row["error"] is not None:
        return f"cannot be read: {row['error']}"
    if row["status"] == "unanalysable":
        return "is marked unanalysable"
    return None


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class CaseBook:
    """The cases of a results folder (:func:`group_cases` of its cells), their sign-off and PDF reports."""

    def __init__(self, folder: ResultsFolder) -> None:
        self.folder = folder

    # ------------------------------------------------------------------ paths
    def stems_of(self, case_id: str) -> list[str]:
        """The cells of a case; :class:`OutsideError` for a name that is no case name, :class:`NotFoundError`
        for a case the folder does not have."""
        if not _CASE_OK.match(case_id) or case_id in (".", ".."):
            raise OutsideError(f"refused: {case_id!r} is not a case name")
        stems = group_cases(self.folder.stems()).get(case_id)
        if not stems:
            raise NotFoundError(
                f"no case {case_id!r} in {self.folder.root}: a case is the cells named {case_id}_<cell> "
                "(or one cell of that name)"
            )
        return stems

    def case_dir(self, case_id: str) -> Path:
        """``cases/<case>`` of a case the folder has (:meth:`stems_of`)."""
        self.stems_of(case_id)
        return self._dir(case_id)

    def _dir(self, case_id: str) -> Path:
        return self.folder.resolve(f"{CASES_DIR}/{case_id}")

    def case_path(self, case_id: str) -> Path:
        return self.case_dir(case_id) / CASE_FILE

    def report_path(self, case_id: str) -> Path:
        return self.case_dir(case_id) / f"{case_id}_report.pdf"

    def report_url(self, case_id: str) -> str:
        return f"/case/{quote(case_id, safe='')}/report.pdf"

    # ------------------------------------------------------------------ reading
    def reviewed(self, case_id: str) -> dict[str, Any] | None:
        """The saved sign-off of a case (validated), or None when there is none."""
        return self._read(self.case_path(case_id))

    @staticmethod
    def _read(p: Path) -> dict[str, Any] | None:
        if not p.exists():
            return None
        hint = "move it away to sign the case again (the cells' files are untouched)"
        data = read_json(p, hint)
        c = data.get("case") if isinstance(data, dict) else None
        if not isinstance(c, dict) or c.get("format") != CASE_FORMAT:
            raise CellError(p, f"not a case file of this app (no 'case' block); {hint}")
        if c.get("version") != CASE_VERSION:
            raise CellError(p, f"case format version {c.get('version')!r} is not {CASE_VERSION}; {hint}")
        ok = (
            _whole(c.get("revision"))
            and isinstance(c.get("analysed"), list)
            and all(isinstance(s, str) for s in c["analysed"])
            and isinstance(data.get("cells"), list)
            and isinstance(data.get("revisions"), list)
        )
        if not ok:
            raise CellError(
                p, f"it lacks the case's integer 'revision', its 'analysed' cell names or the 'cells' and 'revisions' "
                f"lists; {hint}"
            )  # fmt: skip
        return data

    def summary(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per case for the index, from the cells' index rows: cells, accepted, unanalysable and
        unreadable cells, and the saved case karyotype with who signed it (or the case file's error)."""
        by_case: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: r["stem"]):
            by_case.setdefault(case_of(r["stem"]), []).append(r)
        out = []
        for case_id, members in sorted(by_case.items()):
            status = Counter(r["status"] for r in members if r["error"] is None)
            row: dict[str, Any] = {
                "id": case_id,
                "n_cells": len(members),
                "n_accepted": status["accepted"],
                "n_unanalysable": status["unanalysable"],
                "n_errors": sum(1 for r in members if r["error"] is not None),
                "case": None,
                "error": None,
            }
            try:
                rv = self._read(self._dir(case_id) / CASE_FILE)  # a case of these rows: no need to list the folder
                row["case"] = rv["case"] if rv else None
            except (CellError, ReviewError) as exc:
                row["error"] = str(exc)
            out.append(row)
        return out

    def case(self, case_id: str) -> dict[str, Any]:
        """What the case page shows: the cells (index rows, with ``selectable`` and ``why_not``), the saved
        sign-off (``case``, ``revisions``), the suggested karyotype and why, the cells' karyotypes with how
        many cells have each (and how many of those are accepted), the default number of cells counted, and the
        report when one was written."""
        stems = self.stems_of(case_id)
        cells = self.folder.index(stems)
        for r in cells:
            r["why_not"] = _selectable(r)
            r["selectable"] = r["why_not"] is None
        rv = self.reviewed(case_id)
        accepted = [r["karyotype"] for r in cells if r["error"] is None and r["status"] == "accepted"]
        suggestion, why = suggest_iscn(accepted)
        seen = Counter(r["karyotype"] or "none" for r in cells if r["selectable"])
        acc = Counter(k or "none" for k in accepted)
        report = self.report_path(case_id)
        return {
            "id": case_id,
            "cells": cells,
            "case": rv["case"] if rv else None,
            "revisions": rv["revisions"] if rv else [],
            "suggestion": suggestion,
            "suggestion_reason": why,
            "karyotypes": [{"karyotype": k, "cells": n, "accepted": acc[k]} for k, n in seen.most_common()],
            "default_counted": sum(1 for r in cells if r["selectable"]),
            "default_analysed": [r["stem"] for r in cells if r["selectable"] and r["status"] == "accepted"],
            "report": (
                {
                    "url": self.report_url(case_id),
                    "file": report.relative_to(self.folder.root).as_posix(),
                    "written_at": datetime.fromtimestamp(report.stat().st_mtime, timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                }
                if report.is_file()
                else None
            ),
        }

    # ------------------------------------------------------------------ saving
    def _analysed_rows(self, case_id: str, analysed: Any) -> list[dict[str, Any]]:
        """The index rows of the cells ``analysed`` names, in its order.

        Raises:
            ReviewError: not a list of names, empty, a name twice, a cell of another case, or one that cannot
                be analysed (unreadable, unanalysable).
        """
        if not (isinstance(analysed, list) and all(isinstance(s, str) for s in analysed)):
            raise ReviewError(f"'analysed' must be a list of cell names, got {analysed!r}")
        if not analysed:
            raise ReviewError("no cells selected: tick the cells analysed (those shown in the report)")
        twice = sorted({s for s in analysed if analysed.count(s) > 1})
        if twice:
            raise ReviewError(f"cell(s) selected twice: {', '.join(twice)}")
        stems = self.stems_of(case_id)
        other = [s for s in analysed if s not in stems]
        if other:
            raise ReviewError(
                f"not cell(s) of case {case_id}: {', '.join(map(repr, other))} (its cells: {', '.join(stems)})"
            )
        rows = {r["stem"]: r for r in self.folder.index(analysed)}
        for s in analysed:
            why = _selectable(rows[s])
            if why:
                raise ReviewError(f"cell {s} {why}: it cannot be one of the analysed cells")
        return [rows[s] for s in analysed]

    def save(
        self,
        case_id: str,
        *,
        base_revision: Any,
        reviewer: Any,
        iscn: Any,
        counted: Any,
        analysed: Any,
        note: Any = "",
    ) -> dict[str, Any]:
        """Sign off a case (module docstring); returns the new revision and the file written.

        Args:
            base_revision: the revision the page loaded (0: none).
            reviewer: the name typed on the page.
            iscn: the case karyotype (:func:`check_case_iscn`).
            counted: the cells counted, at least the cells analysed.
            analysed: the cells of the case shown in the report, in order.
            note: the reviewer's remark.

        Raises:
            ConflictError: the case was saved since ``base_revision``.
            ReviewError: a field is missing or wrong (the message says which).
        """
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ReviewError("a reviewer name is needed to save the case: type who signs it")
        if not _whole(base_revision):
            raise ReviewError(f"base_revision must be an integer, got {base_revision!r}")
        if not isinstance(note, str):
            raise ReviewError(f"note must be text, got {note!r}")
        text = check_case_iscn(iscn)
        rows = self._analysed_rows(case_id, analysed)
        if not (_whole(counted) and len(rows) <= counted <= MAX_COUNTED):
            raise ReviewError(
                f"cells counted must be a whole number from {len(rows)} (the cells analysed) to {MAX_COUNTED}, "
                f"got {counted!r}"
            )
        with self.folder._locked():
            prev = self.reviewed(case_id)
            revision = next_revision(
                f"case {case_id}", prev["case"] if prev else None, base_revision, "Reload the case to see that version"
            )
            now = _now()
            this = {
                "revision": revision,
                "reviewer": reviewer.strip(),
                "saved_at": now,
                "iscn": text,
                "counted": counted,
                "analysed": [r["stem"] for r in rows],
                "note": note.strip() or None,
            }
            out = {
                "case": {"format": CASE_FORMAT, "version": CASE_VERSION, "id": case_id} | this,
                # each analysed cell as it was when the case was signed: its report page must show that version
                "cells": [
                    {k: r.get(k) for k in ("stem", "karyotype", "count", "status", "revision", "reviewer", "saved_at")}
                    for r in rows
                ],
                "revisions": [*(prev["revisions"] if prev else []), this],
            }
            path = self.case_path(case_id)
            atomic_write_json(path, out)
        return {"revision": revision, "saved_at": now, "file": path.relative_to(self.folder.root).as_posix()}

    # ------------------------------------------------------------------ the report
    def karyogram_of(self, row: dict[str, Any], scratch: Path) -> tuple[Path, str]:
        """The karyogram picture of a cell and where it comes from (words for the report): the reviewed one when
        the cell was saved in the review app, else the pipeline's ``<stem>_karyogram.png``, drawn into
        ``scratch`` from the cell's JSON and image when the pipeline wrote none (``--format svg`` or ``pdf``).

        Raises:
            CellError: a reviewed cell's karyogram is missing.
        """
        stem = row["stem"]
        if row["status"] == "not reviewed":
            p = self.folder.json_path(stem).with_name(f"{stem}_karyogram.png")
            if p.is_file():
                return p, f"karyogram: {p.name}"
            drawn = self._draw_pipeline_karyogram(stem, scratch / f"{stem}_karyogram.png")
            return drawn, f"karyogram drawn from {stem}.json (the pipeline wrote no PNG)"
        p = self.folder.json_path(stem).with_name(f"{stem}_karyogram.reviewed.png")
        if not p.is_file():
            raise CellError(
                p, "missing: the report shows each analysed cell's karyogram; save the cell again in the review app"
            )
        return p, f"karyogram: {p.name}"

    def _draw_pipeline_karyogram(self, stem: str, path: Path) -> Path:
        """The pipeline's labels of a cell drawn as a karyogram (with the crops the cell page shows)."""
        from karyogram.render import render_karyogram

        loaded = self.folder.load(stem)
        cell = loaded.cell
        return render_karyogram(
            [c.image for c in loaded.crops],
            [c.centromere_row for c in loaded.crops],
            cell.labels,
            pair_of=cell.pair_of,
            flags=cell.flags,
            title=f"{cell.data.get('karyotype') or 'no chromosomes'}   ({stem}: the pipeline's result, not reviewed)",
            path=path,
        )

    def report(self, case_id: str, revision: Any = None) -> dict[str, Any]:
        """Write the PDF report of the saved case (:func:`review.report.write_case_report`): a summary page,
        then one page per analysed cell. ``revision``: the case revision the page shows (refused when it is
        not the saved one).

        Raises:
            ConflictError: no saved case, another revision, or an analysed cell saved again since the case was.
            ReviewError: the saved case names no cell, or a cell that is not (or no longer) one it can show.
            CellError: a reviewed cell's karyogram picture is missing.
        """
        from .report import write_case_report

        rv = self.reviewed(case_id)
        if rv is None:
            raise ConflictError(
                f"case {case_id} is not saved yet: the report is made from the saved case (reviewer, karyotype, "
                "cells analysed); save it first"
            )
        c = rv["case"]
        if revision is not None and revision != c["revision"]:
            raise ConflictError(
                f"case {case_id} was saved by {c['reviewer']} at {c['saved_at']} (revision {c['revision']}) after "
                f"this page loaded revision {revision!r}; reload the case"
            )
        rows = self._analysed_rows(case_id, c["analysed"])
        signed = {s.get("stem"): s for s in rv["cells"] if isinstance(s, dict)}
        for r in rows:
            then = signed.get(r["stem"], {}).get("revision")
            if then != r.get("revision"):
                raise ConflictError(
                    f"cell {r['stem']} was saved again (review revision {r.get('revision')}, by {r.get('reviewer')} "
                    f"at {r.get('saved_at')}) after case {case_id} was saved with its revision {then}: check the case "
                    "karyotype and save the case again"
                )
        path = self.report_path(case_id)
        with tempfile.TemporaryDirectory(prefix="karyo-report-") as scratch:
            pictures = {r["stem"]: self.karyogram_of(r, Path(scratch)) for r in rows}
            pages = write_case_report(
                path, c, cells=self.folder.index(self.stems_of(case_id)), analysed=rows, pictures=pictures
            )
        return {
            "file": path.relative_to(self.folder.root).as_posix(),
            "url": self.report_url(case_id),
            "pages": pages,
            "revision": c["revision"],
        }

"""A case for the review app's tests: synthetic cells named ``<case>_<n>`` (tests/review_fixtures.py), some of them
reviewed through the app's own store, with the fixture's deliberate mistake corrected so that each reviewed cell's
karyotype is the one it was made with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.review_fixtures import write_synthetic_cell


def fix_edit(data: dict[str, Any]) -> dict[str, Any]:
    """The edit that corrects a synthetic cell's mistake (:func:`write_synthetic_cell`: a 1 labelled 3)."""
    wrong = next(c["id"] for c in data["chromosomes"] if "extra" in c["flags"])
    return {"op": "move", "id": wrong, "before": 3, "after": 1, "at": "2026-01-01T00:00:00Z"}


def write_case(
    out_dir: Path, case_id: str, cells: list[tuple[str, str]], *, image_dir: Path | None = None, seed: int = 20
) -> dict[str, dict[str, Any]]:
    """Write the cells ``[(karyotype, review), ...]`` of one case as ``<case_id>_<n>`` (n = 1, 2, ...) and review
    them as asked: ``""`` (not reviewed), ``"saved"``, ``"accepted"`` (both corrected, by "Dr Case") or
    ``"unanalysable"``. Returns each cell's pipeline JSON by name."""
    from review.store import ResultsFolder

    written = {}
    for n, (karyotype, _) in enumerate(cells, start=1):
        stem = f"{case_id}_{n}"
        written[stem] = write_synthetic_cell(out_dir, stem, seed=seed + n, karyotype=karyotype, image_dir=image_dir)
    folder = ResultsFolder(out_dir)
    for (stem, data), (_, review) in zip(written.items(), cells):
        if review:
            edits = [] if review == "unanalysable" else [fix_edit(data)]
            folder.save(stem, edits, base_revision=0, reviewer="Dr Case", status=review, confirmed=True)
    return written


def pdf_pages(path: Path) -> int:
    """Pages of a PDF file: its page objects, checked against the page tree's count (and the file complete)."""
    data = path.read_bytes()
    assert data[:5] == b"%PDF-" and data.rstrip().endswith(b"%%EOF"), f"{path}: not a complete PDF"
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    counts = [int(n) for n in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", data)]
    counts += [int(n) for n in re.findall(rb"/Count\s+(\d+)[^>]*?/Type\s*/Pages\b", data)]
    assert counts == [pages], f"{path}: {pages} page objects, page tree count(s) {counts}"
    return pages

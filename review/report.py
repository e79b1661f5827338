"""The PDF report of a signed case (matplotlib's PdfPages; A4 portrait): a summary page (case id, reviewer,
date, case karyotype, cells counted and analysed, a table of the case's cells), then one page per analysed
cell with its karyogram (the reviewed one, else the pipeline's), karyotype and review status."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fileio import atomic_write

from .store import sign_off

#: A4 portrait, inches
PAGE = (8.27, 11.69)
#: the table rows that fit the summary page at the full font size; more rows get a smaller font
TABLE_ROWS = 34


def cell_status(row: dict[str, Any]) -> str:
    """A cell's review status in words: "accepted by NAME on DATE", "draft (...)", "unanalysable (...)",
    "not reviewed (the pipeline's result)" or "cannot be read"."""
    if row.get("error") is not None:
        return "cannot be read"
    if row["status"] == "not reviewed":
        return "not reviewed (the pipeline's result)"
    return sign_off(row)


def _page(pdf: Any, fig: Any, number: int, total: int, case_id: str) -> None:
    fig.text(0.5, 0.02, f"case {case_id}  ·  page {number} of {total}  ·  review.py", ha="center", fontsize=8,
             color="#555555")  # fmt: skip
    pdf.savefig(fig)


def _summary_page(case: dict[str, Any], cells: list[dict[str, Any]], analysed: list[str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=PAGE)
    fig.text(0.07, 0.95, f"Karyotype report: case {case['id']}", fontsize=17, weight="bold", va="top")
    facts = [
        ("Case karyotype (ISCN)", case["iscn"]),
        ("Reviewer", case["reviewer"]),
        ("Date", f"{case['saved_at'][:10]} (signed {case['saved_at']}, case revision {case['revision']})"),
        ("Cells counted", str(case["counted"])),
        ("Cells analysed", f"{len(analysed)} (their karyograms follow, one per page)"),
        ("Report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    if case.get("note"):
        facts.append(("Note", case["note"]))
    y = 0.91
    for k, v in facts:
        fig.text(0.07, y, k, fontsize=10, color="#444444", va="top")
        fig.text(0.34, y, v, fontsize=11 if k.startswith("Case") else 10, weight="bold" if k.startswith("Case") else None,
                 va="top", wrap=True)  # fmt: skip
        y -= 0.027
    fig.text(0.07, y - 0.01, f"The case's cells ({len(cells)}):", fontsize=10, va="top")
    top = y - 0.035
    ax = fig.add_axes((0.07, 0.06, 0.86, top - 0.06))
    ax.axis("off")
    header = ["cell", "count", "karyotype", "review", "analysed"]
    body = [
        [r["stem"], "" if r.get("count") is None else str(r["count"]), r.get("karyotype") or "-", cell_status(r),
         "yes" if r["stem"] in analysed else ""]
        for r in cells
    ]  # fmt: skip
    size = 8.0 if len(body) <= TABLE_ROWS else max(3.5, 8.0 * TABLE_ROWS / len(body))
    row_h = min(0.05, 1.0 / (len(body) + 1))
    table = ax.table(cellText=body, colLabels=header, loc="upper left", cellLoc="left",
                     colWidths=[0.19, 0.07, 0.25, 0.37, 0.09])  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    for (i, _), cell in table.get_celld().items():
        cell.set_height(row_h)
        cell.set_linewidth(0.3)
        if i == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8ecf0")
    return fig


def _cell_page(case_id: str, row: dict[str, Any], picture: tuple[Path, str]) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    fig = Figure(figsize=PAGE)
    fig.text(0.07, 0.96, f"Case {case_id}  ·  cell {row['stem']}", fontsize=14, weight="bold", va="top")
    fig.text(0.07, 0.93, f"karyotype {row.get('karyotype') or '-'}   ·   count {row.get('count')}   ·   "
             f"{row.get('n_flagged', 0)} flagged", fontsize=11, va="top")  # fmt: skip
    fig.text(0.07, 0.905, f"{cell_status(row)}   ·   {picture[1]}", fontsize=9, color="#444444",
             va="top")  # fmt: skip
    ax = fig.add_axes((0.05, 0.05, 0.9, 0.83))
    ax.imshow(imread(picture[0]), interpolation="antialiased")
    ax.set_anchor("N")
    ax.axis("off")
    return fig


def write_case_report(
    path: str | Path,
    case: dict[str, Any],
    *,
    cells: list[dict[str, Any]],
    analysed: list[dict[str, Any]],
    pictures: dict[str, tuple[Path, str]],
) -> int:
    """Write the report atomically (temp file + rename); returns its number of pages (1 + the analysed cells).

    Args:
        path: the PDF file.
        case: the saved case block (``id``, ``iscn``, ``reviewer``, ``saved_at``, ``revision``, ``counted``,
            ``note``).
        cells: every cell of the case (the review app's index rows), for the summary's table.
        analysed: the analysed cells' index rows, one page each in this order.
        pictures: each analysed cell's karyogram PNG, and where it comes from in words.
    """
    from matplotlib.backends.backend_pdf import PdfPages

    total = 1 + len(analysed)
    stems = [r["stem"] for r in analysed]
    meta = {
        "Title": f"Karyotype report, case {case['id']}",
        "Author": case["reviewer"],
        "Subject": f"{case['iscn']}; {case['counted']} cells counted, {len(analysed)} analysed",
        "Creator": "review.py (karyotype)",
    }
    with atomic_write(path, "wb") as f, PdfPages(f, metadata=meta) as pdf:
        _page(pdf, _summary_page(case, cells, stems), 1, total, case["id"])
        for k, r in enumerate(analysed, start=2):
            _page(pdf, _cell_page(case["id"], r, pictures[r["stem"]]), k, total, case["id"])
    return total

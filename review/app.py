"""The review web app (Flask) over one results folder: an index of the cases and cells, a page per cell and per case.

Pages: ``/`` (index of the cases and the cells, ``?sort=doubt|name|sanity|flagged|count|status``),
``/cell/<stem>``, ``/case/<case>`` (review/cases.py: its cells, the case karyotype, the report). JSON:
``GET /api/cell/<stem>``, ``POST /api/cell/<stem>/state`` (the cell after a list of edits),
``POST /api/cell/<stem>/segment`` (a cut, join, separation, drawing or erasure -> one edit),
``POST /api/cell/<stem>/save``, ``GET /api/ideogram/<class>?resolution=400`` (G-bands), ``GET /api/case/<case>``,
``POST /api/case/<case>/save`` (the case's sign-off), ``POST /api/case/<case>/report`` (writes the PDF).
Pictures: ``/cell/<stem>/image.png``, ``/cell/<stem>/crop/<i>.png``, ``/thumb/<stem>.png``; the case report:
``/case/<case>/report.pdf``; any file of the folder: ``/files/<path>`` (refused outside it). Every script
and style comes from ``review/static``: the page works without internet.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from karyogram.labels import NUM_CLASSES, name_of
from karyogram.render import FLAG_WORDS, LAYOUT, class_colour

from .cases import CaseBook, case_of
from .edits import NOT_CHROMOSOME
from .imagery import png_bytes, thumbnail_png
from .result import CellError
from .store import (
    ConfirmError,
    NotFoundError,
    OutsideError,
    ResultsFolder,
    ReviewError,
    accept_doubts,
    revisions_of,
    sha256_of,
    status_of,
)

#: index orders: key -> (row sort key, reverse); "doubt" puts the cells most in need of a look first
SORTS: dict[str, Any] = {
    "doubt": (lambda r: (r["error"] is None, r["status"] != "not reviewed", r.get("sanity_score") or 0.0,
                         -(r.get("n_flagged") or 0), r["stem"]), False),
    "name": (lambda r: r["stem"], False),
    "sanity": (lambda r: (r.get("sanity_score") is None, r.get("sanity_score") or 0.0, r["stem"]), False),
    "flagged": (lambda r: (r.get("n_flagged") or 0, r["stem"]), True),
    "count": (lambda r: (r.get("count") or 0, r["stem"]), False),
    "status": (lambda r: (r["status"], r["stem"]), False),
}  # fmt: skip


def sorted_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    if key not in SORTS:
        raise ReviewError(f"unknown sort {key!r}: use one of {', '.join(SORTS)}")
    fn, rev = SORTS[key]
    return sorted(rows, key=fn, reverse=rev)


def _css_colour(k: int) -> str:
    r, g, b = class_colour(k)
    return f"rgb({r}, {g}, {b})"


def _layout() -> list[list[dict[str, Any]]]:
    return [[{"id": k, "name": name_of(k), "colour": _css_colour(k)} for k in row] for row in LAYOUT]


def _public(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("_")}


def with_doubts(state: dict[str, Any]) -> dict[str, Any]:
    """The state with ``accept_doubts``: what an accept must be confirmed for (the page asks before sending)."""
    return state | {"accept_doubts": accept_doubts(state)}


def create_app(results_dir: str | Path, *, image_dirs: tuple[str | Path, ...] = ()) -> Flask:
    """The app over ``results_dir`` (see the module docstring). The reviewer's name is typed on the page:
    there is no default (a login name would sign cells for whoever started the server).

    Args:
        results_dir: the folder ``inference_pipeline.py`` wrote.
        image_dirs: folders holding the source images when the recorded paths do not exist here.
    """
    folder = ResultsFolder(results_dir, image_dirs)
    cases = CaseBook(folder)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config["RESULTS"] = folder
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def is_api() -> bool:
        return request.path.startswith("/api/")

    @app.before_request
    def _local_only():
        # the server binds 127.0.0.1; a page of another site that resolves its own name to 127.0.0.1
        # (DNS rebinding) still sends its name as Host: refuse it
        if request.host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
            raise OutsideError(f"refused: this review app answers only to 127.0.0.1, not to host {request.host!r}")

    @app.errorhandler(ReviewError)
    def _review_error(exc: ReviewError):
        if is_api():
            extra = {"confirm": exc.reasons} if isinstance(exc, ConfirmError) else {}
            return jsonify(error=str(exc), **extra), exc.status
        return render_template("error.html", message=str(exc), status=exc.status), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Flask's own answers (no such route, wrong method) in the app's words, as JSON for the API
        status = exc.code or 500
        message = f"{request.path}: {exc.name.lower()}" + (
            " (no page or file of the review app has this address)" if status == 404 else f" ({exc.description})"
        )
        if is_api():
            return jsonify(error=message), status
        return render_template("error.html", message=message, status=status), status

    @app.errorhandler(CellError)
    def _cell_error(exc: CellError):
        if is_api():
            return jsonify(error=str(exc)), 422
        return render_template("error.html", message=str(exc), status=422), 422

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ReviewError("the request body must be a JSON object")
        return data

    def edits_of(data: dict[str, Any]) -> list[Any]:
        edits = data.get("edits", [])
        if not isinstance(edits, list):
            raise ReviewError("'edits' must be a list")
        return edits

    # ------------------------------------------------------------------ pages
    @app.get("/")
    def index():
        key = request.args.get("sort", "doubt")
        rows = sorted_rows(folder.index(), key)
        return render_template(
            "index.html", rows=rows, cases=cases.summary(rows), case_of=case_of, sort=key, sorts=list(SORTS),
            root=str(folder.root),
        )  # fmt: skip

    @app.get("/cell/<stem>")
    def cell_page(stem: str):
        folder.cell(stem)  # a missing or broken cell answers here, before the page's script runs
        folder.warm(stem)  # the classifier of segmentation edits loads while the reviewer looks
        return render_template("cell.html", stem=stem, flag_words=FLAG_WORDS)

    @app.get("/case/<case_id>")
    def case_page(case_id: str):
        return render_template("case.html", case=cases.case(case_id))

    # ------------------------------------------------------------------ JSON
    @app.get("/api/case/<case_id>")
    def case_json(case_id: str):
        return jsonify(cases.case(case_id))

    @app.post("/api/case/<case_id>/save")
    def case_save(case_id: str):
        """``{"base_revision", "reviewer", "iscn", "counted", "analysed": [stems], "note"}`` -> the new revision."""
        data = body()
        fields = ("base_revision", "reviewer", "iscn", "counted", "analysed")
        return jsonify(cases.save(case_id, **{k: data.get(k) for k in fields}, note=data.get("note") or ""))

    @app.post("/api/case/<case_id>/report")
    def case_report(case_id: str):
        """``{"revision": n}`` (the case revision the page shows) -> the PDF written: file, url, pages."""
        return jsonify(cases.report(case_id, body().get("revision")))

    @app.get("/api/cell/<stem>")
    def cell_json(stem: str):
        loaded = folder.load(stem)
        cell = loaded.cell
        rv = folder.reviewed(stem)
        edits = rv["review"]["edits"] if rv else []
        try:
            state = folder.state(stem, edits)
        except ReviewError as exc:
            raise CellError(
                folder.reviewed_path(stem), f"its saved edits no longer fit {cell.path.name} ({exc}); move it away"
            ) from None
        notes = []
        if rv and rv["review"].get("source_sha256") != sha256_of(cell.path):
            notes.append(
                f"{cell.path.name} has changed since this review was saved ({rv['review'].get('saved_at')}): "
                "check the saved edits against the new result"
            )
        order = [r["stem"] for r in sorted_rows(folder.index(), "doubt")]
        pos = order.index(stem) if stem in order else -1
        chroms = []
        pred = cell.prediction
        for i, (crop, outline) in enumerate(zip(loaded.crops, loaded.outlines)):
            best = np.argsort(-pred.probs[i], kind="stable")[:3]
            h, w = crop.image.shape
            chroms.append(
                {
                    "id": i,
                    "pipeline_label": int(pred.labels[i]),
                    "pipeline_flags": list(pred.flags[i]),
                    "confidence": float(pred.confidence[i]),
                    "top": [{"class": int(j) + 1, "name": name_of(int(j) + 1), "p": round(float(pred.probs[i, j]), 3)}
                            for j in best],
                    "crop": {"w": w, "h": h, "cen": round(crop.centromere_row, 2)},
                    "outline": outline,
                }
            )  # fmt: skip
        review = (
            {k: rv["review"].get(k) for k in ("revision", "reviewer", "saved_at", "edits", "note")}
            | {"status": status_of(rv["review"]), "n_revisions": len(revisions_of(rv))}
            if rv
            else {"revision": 0, "reviewer": None, "saved_at": None, "status": None, "edits": [], "n_revisions": 0}
        )
        return jsonify(
            stem=stem,
            width=cell.width,
            height=cell.height,
            image=str(loaded.image_path),
            layout=_layout(),
            colours={k: _css_colour(k) for k in range(NUM_CLASSES + 1)},
            names={k: name_of(k) for k in range(NUM_CLASSES + 1)},
            chromosomes=chroms,
            pipeline={"karyotype": cell.data.get("karyotype"), "sanity_score": cell.data.get("sanity_score")},
            review=review,
            state=_public(with_doubts(state)),
            prev=order[pos - 1] if pos > 0 else None,
            next=order[pos + 1] if 0 <= pos < len(order) - 1 else None,
            not_chromosome=NOT_CHROMOSOME,
            notes=notes,
        )

    @app.get("/api/ideogram/<k>")
    def ideogram(k: str):
        """The G-bands of class ``k`` (1..24) at ``?resolution=400|550|850`` (ISCN, GRCh38; see
        :func:`karyogram.reference.bands`): fractions of the length from the p-arm end."""
        from karyogram.reference import RESOLUTIONS, bands

        res = request.args.get("resolution", "400")
        if not (res.isdigit() and int(res) in RESOLUTIONS):
            raise ReviewError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))} bands, got {res!r}")
        if not (k.isdigit() and 1 <= int(k) <= NUM_CLASSES):
            raise NotFoundError(f"no chromosome class {k!r}: classes are 1..24 (23 = X, 24 = Y)")
        bs = bands(int(res))[int(k)]
        cen = next((b.start for b in bs if b.arm == "q"), 0.0)
        return jsonify(
            {
                "class": int(k),
                "name": name_of(int(k)),
                "resolution": int(res),
                "centromere": round(cen, 5),
                "bands": [
                    {"name": b.name, "arm": b.arm, "start": round(b.start, 5), "stop": round(b.stop, 5),
                     "stain": b.stain, "density": b.density}
                    for b in bs
                ],
            }
        )  # fmt: skip

    @app.post("/api/cell/<stem>/state")
    def cell_state(stem: str):
        return jsonify(_public(with_doubts(folder.state(stem, edits_of(body())))))

    @app.post("/api/cell/<stem>/segment")
    def cell_segment(stem: str):
        """A segmentation edit: ``{"edits": [...], "tool": "cut", "line": [[x, y], ...]}`` (see
        :func:`review.segment.make_edit`) -> ``{"edit", "message", "state"}`` (the state after the edit)."""
        data = body()
        edits = edits_of(data)
        params = {k: v for k, v in data.items() if k not in ("edits", "tool")}
        edit, message = folder.segment(stem, edits, data.get("tool"), params)
        return jsonify(edit=edit, message=message, state=_public(with_doubts(folder.state(stem, [*edits, edit]))))

    @app.post("/api/cell/<stem>/save")
    def cell_save(stem: str):
        data = body()
        edits = edits_of(data)
        # "accepted": true is how pages before the sign-off rules asked for an accept
        status = data.get("status", "accepted" if data.get("accepted") is True else "saved")
        confirmed = data.get("confirmed", False)
        if not isinstance(confirmed, bool):
            raise ReviewError(f"'confirmed' must be true or false, got {confirmed!r}")
        res = folder.save(
            stem,
            edits,
            base_revision=data.get("base_revision"),
            reviewer=data.get("reviewer", ""),
            status=status,
            confirmed=confirmed,
            note=data.get("note") or "",
        )
        return jsonify(res | {"state": _public(with_doubts(folder.state(stem, edits)))})

    # ------------------------------------------------------------------ pictures and files
    def png(data: bytes):
        resp = send_file(io.BytesIO(data), mimetype="image/png")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @app.get("/cell/<stem>/image.png")
    def cell_image(stem: str):
        return png(png_bytes(folder.load(stem).image))

    @app.get("/cell/<stem>/crop/<i>.png")
    def cell_crop(stem: str, i: str):
        crops = folder.load(stem).crops
        if not (i.isdigit() and int(i) < len(crops)):
            raise NotFoundError(f"{stem} has no chromosome {i!r} (its chromosomes are 0..{len(crops) - 1})")
        return png(png_bytes(crops[int(i)].image))

    @app.get("/thumb/<stem>.png")
    def thumb(stem: str):
        p = folder.json_path(stem).with_name(f"{stem}_overlay.png")
        if not p.is_file():
            raise NotFoundError(f"{p}: no such overlay picture (inference_pipeline.py writes it with the JSON)")
        try:
            return png(thumbnail_png(p))
        except ValueError as exc:
            raise CellError(p, str(exc)) from None

    @app.get("/case/<case_id>/report.pdf")
    def case_report_pdf(case_id: str):
        p = cases.report_path(case_id)
        if not p.is_file():
            raise NotFoundError(f"case {case_id} has no report yet: make it on the case page (after saving the case)")
        resp = send_file(p, mimetype="application/pdf", as_attachment=True, download_name=p.name)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @app.get("/files/<path:rel>")
    def files(rel: str):
        p = folder.resolve(rel)
        if not p.is_file():
            raise NotFoundError(f"{rel}: no such file in the results folder")
        resp = send_file(p)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    return app


def make_server(app: Flask, port: int, host: str = "127.0.0.1"):
    """A threaded WSGI server for ``app`` on ``host:port`` (0 = a free port), bound but not yet serving.

    Raises:
        ReviewError: the port is in use or cannot be bound (with what to do).
    """
    import socket

    from werkzeug.serving import make_server as _make_server

    if host != "127.0.0.1":
        raise ReviewError("the review app binds 127.0.0.1 only (it has no login): reach it through an SSH tunnel")
    in_use = ReviewError(
        f"port {port} on {host} is in use (another review.py or another program?): pass --port N with a free port, "
        "or --port 0 to pick one"
    )
    # werkzeug reports a busy port by printing and exiting: try the port first to say it in our words
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise in_use from None
            raise ReviewError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        return _make_server(host, port, app, threaded=True)
    except SystemExit:  # taken between the probe and the bind
        raise in_use from None

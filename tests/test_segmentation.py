"""models/segmentation.py and train_segmentation.py: builders, checkpoint files, smoke training, resume, flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from models.segmentation import (
    BACKBONES,
    SegConfig,
    build_segmentation_model,
    load_segmentation_checkpoint,
    predict,
    save_weights,
)
from train_segmentation import get_args_parser, main

# few proposals so an untrained model's forward stays cheap on a shared CPU
FAST = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_test=20, rpn_post_nms_top_n_test=2, box_detections_per_img=100)


def _image(seed: int = 0) -> np.ndarray:
    """A 64x64 grey 'spread': light background, three dark bars."""
    img = np.full((64, 64), 0.9, np.float32)
    img[5:30, 8:16] = 0.3
    img[40:60, 30:38] = 0.35
    img[10:22, 40:60] = 0.25
    return img + np.random.default_rng(seed).normal(0, 0.01, img.shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------- config and builder
def test_config_defaults_and_validation():
    assert SegConfig().num_classes == 2 and SegConfig(agnostic=False).num_classes == 25
    with pytest.raises(ValueError, match="num_classes=25"):
        SegConfig(agnostic=True, num_classes=25)
    with pytest.raises(ValueError, match="unknown backbone"):
        SegConfig(backbone="vgg16")
    c = SegConfig(backbone="resnet34_fpn", anchor_sizes=[[8], [16], [32], [64], [128]])
    assert SegConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_config_defaults_are_the_shipped_detector_and_stored_configs_keep_their_meaning():
    """SegConfig() is weights/segmentation.pt's model; a stored config missing a key whose default changed since
    (issue 26) reads it as it was written: torchvision's full-size 24-class Mask R-CNN fitted to min/max size."""
    import dataclasses

    from datasets.io import load_torch_file
    from models.segmentation import STORED_CONFIG_DEFAULTS

    root = Path(__file__).resolve().parents[1]
    stored = load_torch_file(root / "weights" / "segmentation.pt")["config"]
    shipped = SegConfig.from_dict(stored)
    # the shipped file is the fine-tuned stage 3 (trainable_layers 5, frozen norm as the stages gave them)
    assert shipped == dataclasses.replace(SegConfig(), trainable_layers=5, norm="frozen")
    assert (shipped.backbone, shipped.agnostic, shipped.fixed_scale) == ("efficientnet_lite0_fpn", True, 0.75)
    assert (shipped.box_batch_size_per_image, shipped.box_head_dim, shipped.mask_head_layers) == (128, 256, (128, 128))
    old = SegConfig.from_dict(
        {k: v for k, v in stored.items() if k not in STORED_CONFIG_DEFAULTS} | {"num_classes": 25}
    )
    assert (old.backbone, old.agnostic, old.fixed_scale) == ("resnet50_fpn", False, None)
    assert (old.box_batch_size_per_image, old.box_head_dim, old.mask_head_layers) == (512, 1024, (256,) * 4)
    assert SegConfig.from_dict({}) == SegConfig(**STORED_CONFIG_DEFAULTS)
    assert SegConfig.from_dict({"box_head_dim": 256}).mask_head_layers == (256,) * 4  # each key on its own
    for name, value in STORED_CONFIG_DEFAULTS.items():
        assert getattr(SegConfig(), name) != value, name  # only the fields whose default changed


def test_the_trainers_model_flags_default_to_the_configs():
    """Each model flag's default is its config's (one owner): the flags alone build SegConfig() / ClsConfig(),
    the detector from the ImageNet weights unless a --pretrained file or --no-imagenet says otherwise."""
    import train_classification
    from models.classifier import ClsConfig
    from train_segmentation import build_model_config

    parse = get_args_parser().parse_args
    assert build_model_config(parse([])) == SegConfig(imagenet=True)
    assert build_model_config(parse(["--no-imagenet"])) == SegConfig()
    assert build_model_config(parse(["--pretrained", "x.pth"])) == SegConfig(pretrained_path="x.pth")
    assert build_model_config(parse(["--backbone", "resnet18_fpn"])) == SegConfig(backbone="resnet18_fpn")
    assert build_model_config(parse(["--no-agnostic", "--fixed-scale", "0"])) == SegConfig(
        agnostic=False, fixed_scale=None, imagenet=True
    )
    a, cfg = train_classification.get_args_parser().parse_args([]), ClsConfig()
    got = (a.arch, a.crop_height, a.crop_width, a.crop_mode, a.mlp_hidden, a.dropout, a.imagenet, a.stem)
    assert got == (cfg.arch, cfg.crop_height, cfg.crop_width, cfg.crop_mode, cfg.mlp_hidden, cfg.dropout, False, None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_and_runs_in_both_modes(backbone):
    img = torch.from_numpy(_image())[None]
    for agnostic in (False, True):
        torch.manual_seed(0)
        model = build_segmentation_model(SegConfig(backbone=backbone, agnostic=agnostic, **FAST)).eval()
        n_cls = 2 if agnostic else 25
        assert model.roi_heads.box_predictor.cls_score.out_features == n_cls
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == n_cls
        if backbone.startswith("resnet"):
            stem = model.backbone.body.conv1
        elif backbone.startswith("efficientnet"):
            stem = model.backbone.body.conv_stem
        else:
            stem = model.backbone.body["0"][0]
        assert stem.in_channels == 1  # a true grey stem
        assert model.rpn.head.cls_logits.out_channels == 5  # 1 size x 5 aspect ratios per level
        with torch.no_grad():
            (out,) = model([img])
        m = out["boxes"].shape[0]
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        assert out["boxes"].shape == (m, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (m,) and out["labels"].dtype == torch.int64
        assert out["scores"].shape == (m,) and out["masks"].shape == (m, 1, 64, 64)
        assert m <= 100 and (m <= 2 if agnostic else m <= 2 * 24)  # <= proposals x foreground classes
        if m:
            assert out["labels"].min() >= 1 and out["labels"].max() <= n_cls - 1
            assert 0 <= out["masks"].min() and out["masks"].max() <= 1


def test_predict_contract():
    torch.manual_seed(0)
    model = build_segmentation_model(SegConfig(backbone="resnet18_fpn", agnostic=True, box_score_thresh=0.0, **FAST))
    img = _image()
    res = predict(model, [img, torch.from_numpy(img)], score_thresh=0.0, device="cpu")
    assert len(res) == 2
    r = res[0]
    m = len(r["scores"])
    assert m >= 1 and r["masks"].shape == (m, 1, 64, 64) and r["masks"].dtype == torch.float32
    assert r["boxes"].dtype == torch.float32 and r["labels"].dtype == torch.int64 and (r["labels"] == 1).all()
    assert torch.all(r["scores"][:-1] >= r["scores"][1:])  # sorted by score
    torch.testing.assert_close(res[1]["boxes"], r["boxes"])  # numpy and torch input agree
    thr = float(r["scores"].max()) + 1e-6
    assert len(predict(model, [img], score_thresh=thr)[0]["scores"]) == 0
    u8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    assert len(predict(model, [u8], score_thresh=0.0)[0]["scores"]) >= 1  # uint8 is accepted (/255)
    with pytest.raises(ValueError, match="grey image"):
        predict(model, [np.zeros((3, 8, 8), np.float32)], score_thresh=0.5)


# ---------------------------------------------------------------------------------------------- files
def test_save_weights_half_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = SegConfig(backbone="resnet18_fpn", agnostic=True, **FAST)
    model = build_segmentation_model(cfg).eval()
    save_weights(model, cfg, tmp_path / "w16.pth", half=True)
    save_weights(model, cfg, tmp_path / "w32.pth")
    assert (tmp_path / "w16.pth").stat().st_size < 0.6 * (tmp_path / "w32.pth").stat().st_size
    m16, c16 = load_segmentation_checkpoint(tmp_path / "w16.pth")
    m32, c32 = load_segmentation_checkpoint(tmp_path / "w32.pth")
    assert c16 == cfg and c32 == cfg and not m16.training
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(m32.state_dict()[k], v), k
    w, w16 = model.backbone.body.layer1[0].conv1.weight, m16.backbone.body.layer1[0].conv1.weight
    torch.testing.assert_close(w16, w.half().float())


def test_bare_state_dict_needs_sibling_config(tmp_path):
    cfg = SegConfig(backbone="resnet18_fpn", **FAST)
    model = build_segmentation_model(cfg)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(FileNotFoundError, match="bare.json"):
        load_segmentation_checkpoint(tmp_path / "bare.pth")
    (tmp_path / "bare.json").write_text(json.dumps(cfg.to_dict()))
    loaded, c = load_segmentation_checkpoint(tmp_path / "bare.pth")
    assert c == cfg and torch.equal(loaded.backbone.body.conv1.weight, model.backbone.body.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_segmentation_checkpoint(tmp_path / "nothere.pth")


def test_pretrained_path_rgb_stem_is_summed_and_missing_file(tmp_path, capsys):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    clf = resnet18(weights=None)
    torch.save(clf.state_dict(), tmp_path / "r18.pth")
    model = build_segmentation_model(
        SegConfig(backbone="resnet18_fpn", pretrained_path=str(tmp_path / "r18.pth"), **FAST)
    )
    torch.testing.assert_close(model.backbone.body.conv1.weight, clf.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.body.layer2[0].conv1.weight, clf.layer2[0].conv1.weight)
    assert "missing" in capsys.readouterr().out  # the heads are reported as missing
    # with a pretrained file the default is FrozenBatchNorm and 3 trainable stages
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_segmentation_model(SegConfig(backbone="resnet18_fpn", pretrained_path=str(tmp_path / "nope.pth")))


def test_norm_flag_keeps_batchnorm_when_going_on_from_own_weights(tmp_path):
    from train_segmentation import build_model_config

    torch.manual_seed(2)
    own = build_segmentation_model(SegConfig(backbone="resnet18_fpn", **FAST))
    torch.save(own.state_dict(), tmp_path / "own.pth")
    base = ["--backbone", "resnet18_fpn", "--pretrained", str(tmp_path / "own.pth"), "--min-size", "64"]
    auto = build_model_config(get_args_parser().parse_args(base))
    assert auto.resolved_norm == "frozen"
    cfg = build_model_config(get_args_parser().parse_args([*base, "--norm", "batch", "--trainable-layers", "5"]))
    assert cfg.resolved_norm == "batch" and cfg.trainable_layers == 5
    model = build_segmentation_model(cfg)
    assert type(model.backbone.body.bn1).__name__ == "BatchNorm2d"
    assert model.backbone.body.conv1.weight.requires_grad
    torch.testing.assert_close(model.backbone.body.bn1.running_var, own.backbone.body.bn1.running_var)
    torch.testing.assert_close(model.backbone.body.layer1[0].conv1.weight, own.backbone.body.layer1[0].conv1.weight)
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--norm", "group"])


# ---------------------------------------------------------------------------------------------- training
def _args(tmp_path, *extra: str):
    return get_args_parser().parse_args(
        [
            "--smoke",
            "--device",
            "cpu",
            "--no-progress",
            "--output-dir",
            str(tmp_path),
            "--min-size",
            "64",
            "--max-size",
            "64",
        ]
        + list(extra)
    )


def test_smoke_training_resume_and_rebuild(tmp_path, monkeypatch):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    flags = ["--epochs", "2", "--max-steps-per-epoch", "1", "--eval-every", "2", "--warmup-steps", "0"]
    saved, save = [], engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, **kw: (saved.append(Path(path).name), save(path, **kw)))
    res_a = main(_args(run_a, *flags, "--keep-checkpoints"))
    monkeypatch.setattr(engine, "save_checkpoint", save)
    # best.pth is written before the last.pth that records its metric, so a kill between the two cannot leave
    # a resumable run without its best.pth (the CI failure of run_training.sh --smoke killed mid-epoch)
    assert saved == ["last.pth", "epoch_000.pth", "best.pth", "last.pth", "epoch_001.pth"], saved
    for name in (
        "last.pth",
        "best.pth",
        "epoch_000.pth",
        "log.csv",
        "log.jsonl",
        "args.json",
        "env.json",
        "config.json",
    ):
        assert (run_a / name).is_file(), name
    assert (run_a / "tb").is_dir()
    ck = engine.load_checkpoint(run_a / "last.pth")
    assert ck["epoch"] == 1 and ck["scheduler"]["last_epoch"] == 2 and ck["config"]["backbone"] == "resnet18_fpn"
    rows = [json.loads(x) for x in (run_a / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    # cosine over 2 steps, no warmup, from the default AdamW 3e-4: 3e-4 -> 1.5e-4 -> 0
    assert [r["lr_start"] for r in rows] == pytest.approx([3e-4, 1.5e-4]) and rows[1]["lr"] == pytest.approx(0.0)
    assert "val_bbox_AP50" in rows[1] and "val_bbox_AP50" not in rows[0]
    v = rows[1]["val_bbox_AP50"]
    assert v is None or v == -1 or 0.0 <= v <= 1.0
    assert res_a["start_epoch"] == 0 and res_a["last_epoch"] == 1

    # resume from the epoch-0 checkpoint: epoch 1 again, at the same LR, to the same weights; its saved args
    # carry a flag removed since (--copy-paste, issue 26), as runs started before the removal do
    ck0 = engine.load_checkpoint(run_a / "epoch_000.pth")
    ck0["args"]["copy_paste"] = 0
    torch.save(ck0, run_a / "epoch_000.pth")
    res_b = main(_args(run_b, *flags, "--resume", str(run_a / "epoch_000.pth")))
    assert res_b["start_epoch"] == 1 and [h["epoch"] for h in res_b["history"]] == [1]
    assert res_b["history"][0]["lr_start"] == pytest.approx(rows[1]["lr_start"])
    ck_b = engine.load_checkpoint(run_b / "last.pth")
    assert ck_b["epoch"] == 1 and ck_b["scheduler"]["last_epoch"] == 2
    for k, v in ck["model"].items():
        torch.testing.assert_close(ck_b["model"][k], v, msg=lambda m, k=k: f"{k}: {m}")

    # --resume auto on a finished run has nothing left to do
    res_c = main(_args(run_a, *flags, "--resume", "auto"))
    assert res_c["start_epoch"] == 2 and res_c["history"] == []
    # a run resumed under other flags than it was started with (e.g. the defaults before issue 26) is refused, by
    # name; a config without fixed_scale (written before the field) was a run without a fixed scale
    for other, msg in [(["--fixed-scale", "0"], "fixed_scale=0.75"), (["--optimizer", "sgd"], "--optimizer adamw")]:
        with pytest.raises(ValueError, match=msg):
            main(_args(run_a, *flags, *other, "--resume", "auto"))
    del ck0["config"]["fixed_scale"]
    torch.save(ck0, run_a / "epoch_000.pth")
    with pytest.raises(ValueError, match="fixed_scale=None but the flags give 0.75"):
        main(_args(run_b, *flags, "--resume", str(run_a / "epoch_000.pth")))

    # the checkpoint alone rebuilds the model, with no flags
    model, cfg = load_segmentation_checkpoint(run_a / "last.pth")
    assert cfg.backbone == "resnet18_fpn" and cfg.min_size == 64 and cfg.agnostic and cfg.fixed_scale == 0.75
    for k, v in ck["model"].items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize(
    "extra,exc,msg",
    [
        (["--dataset", "pascal"], ValueError, "unknown --dataset 'pascal'"),
        (["--dataset", "voc", "--data-root", "/no/such/folder"], ValueError, "/no/such/folder"),
        (["--dataset", "voc", "mfish", "--data-root", "/tmp"], ValueError, "one root per dataset"),
        (["--resume", "/no/such/ckpt.pth"], FileNotFoundError, "/no/such/ckpt.pth"),
        (["--epochs", "0"], ValueError, "--epochs"),
        (["--detections-per-img", "50"], ValueError, "detections-per-img"),
        (["--derive-crossings", "axis"], ValueError, "--derive-crossings applies to voc"),
        (["--lab-augment", "--fixed-scale", "0"], ValueError, "--lab-augment needs --fixed-scale"),
        (["--crop-size", "256", "--fixed-scale", "0"], ValueError, "--crop-size needs --fixed-scale"),
        (["--max-steps-per-epoch", "-1"], ValueError, "--max-steps-per-epoch"),
        (["--imagenet"], ValueError, "--imagenet needs an efficientnet_lite"),  # --smoke builds resnet18_fpn
        (["--imagenet", "--pretrained", __file__], ValueError, "--imagenet and --pretrained"),
        (["--scale-jitter", "0.5", "2"], ValueError, "--scale-jitter needs --lab-augment"),
        (["--scale-jitter", "2", "0.5"], ValueError, "0 < LO <= HI"),
    ],
)
def test_bad_flags_fail_clearly(tmp_path, extra, exc, msg):
    with pytest.raises(exc, match=msg):
        main(_args(tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_fails(tmp_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        main(_args(tmp_path / "run", "--device", "cuda"))


def test_empty_dataset_fails(tmp_path):
    empty = tmp_path / "empty_voc"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_voc"):
        main(_args(tmp_path / "run", "--dataset", "voc", "--data-root", str(empty)))


# ---------------------------------------------------------------------------------------------- run_training.sh
RECIPE_STAGES = [
    "seg_1_imagenet", "seg_2", "seg_3", "cls_cache_straight", "cls_cache_axis", "cls_run1", "cls_run2", "cls_run3",
    "cls_run3_fp16", "cls_run4", "cls_run5", "cls_run6", "cls_run7", "cls_run9", "cls_run12", "cls_run13",
    "cls_run14", "cls_run16", "export_seg", "export_cls",
]  # fmt: skip
#: flags that say where (data, folders, caches) or how fast (workers, device, bars), not what is trained
_PLACE_FLAGS = {"--dataset", "--data-root", "--train-only-data", "--output-dir", "--pretrained", "--cache-dir",
                "--workers", "--device", "--resume", "--no-progress", "--out", "--seg", "--cls"}  # fmt: skip


def _flags(argv: list[str]) -> dict[str, tuple[str, ...]]:
    """``--flag value ...`` of a command line, as flag -> its values, without the :data:`_PLACE_FLAGS`."""
    out: dict[str, tuple[str, ...]] = {}
    flag = None
    for a in argv:
        if a.startswith("--"):
            flag = a
            out[flag] = ()
        elif flag is not None:
            out[flag] += (a,)
    return {k: v for k, v in out.items() if k not in _PLACE_FLAGS}


def _recipe(argv: list[str]) -> dict:
    """What a trainer's command line trains: its flags over the trainer's defaults (as its ``check_args`` resolves
    them, without reading any file), without the :data:`_PLACE_FLAGS` but whether it starts from a file."""
    import train_classification
    import train_segmentation

    trainer = train_segmentation if any(a.endswith("train_segmentation.py") for a in argv) else train_classification
    flags = _flags(argv)
    given = [x for k, v in flags.items() for x in (k, *v)]
    args = trainer.get_args_parser().parse_args([*given, *(["--pretrained", "F"] if "--pretrained" in argv else [])])
    trainer._apply_defaults(args)
    out = {k: v for k, v in vars(args).items() if f"--{k.replace('_', '-')}" not in _PLACE_FLAGS}
    if trainer is train_segmentation:
        out["imagenet"] = train_segmentation.start_from_imagenet(args)
    elif args.stem is None and "--pretrained" not in argv:  # a new classifier's stem is its config's default
        from models.classifier import ClsConfig

        out["stem"] = ClsConfig().stem
    return out | {"pretrained": "--pretrained" in argv}


def _documented_runs() -> dict[str, list[str]]:
    """The commands of docs/training.md's "How the shipped weights were made", by their --output-dir's name."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    text = text[text.index("## How the shipped weights were made") :]
    common = text[text.index('COMMON="') + 8 :]
    common = common[: common.index('"')].replace("\\\n", " ")
    runs = {}
    for line in text.replace("\\\n", " ").replace("$COMMON", common).splitlines():
        if not line.startswith(("python train_", "OMP_NUM_THREADS=")):
            continue
        argv = shlex.split(line.partition("#")[0])
        if "--output-dir" in argv and "--prepare-only" not in argv:
            runs[Path(argv[argv.index("--output-dir") + 1]).name] = argv
    return runs


def _run_training_stub(tmp_path):
    """run_training.sh with a stand-in interpreter that records its arguments (no training), and its env."""
    import os

    calls = tmp_path / "calls.txt"
    stub = tmp_path / "py.sh"
    stub.write_text(
        '#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n'
        'if [[ -n "${FAIL_AT:-}" && "$*" == *"/$FAIL_AT "* ]]; then echo boom; exit 3; fi\n'
        'prev=; for a in "$@"; do [[ "$prev" == --output-dir ]] && out=$a; prev=$a; done\n'
        'if [[ "$*" == *--keep-checkpoints* ]]; then touch "$out/epoch_000.pth" "$out/epoch_002.pth"; fi\n'
    )
    stub.chmod(0o755)
    (tmp_path / "extra").mkdir()
    env = dict(os.environ, PYTHON=str(stub), CALLS=str(calls), OUT=str(tmp_path / "out"), DATA_ROOT=str(tmp_path))
    return calls, dict(env, TRAIN_ONLY=f"voc {tmp_path / 'extra'}", EXTRA_SEG_ARGS="--amp --batch-size 4")


def _run(env, *args, **extra):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "run_training.sh"
    return subprocess.run(["bash", str(script), *args], env=dict(env, **extra), capture_output=True, text=True)


def test_run_training_is_the_shipped_recipe(tmp_path):
    """run_training.sh runs the chain of the shipped weights, with the flags docs/training.md gives each run."""
    from pathlib import Path

    calls, env = _run_training_stub(tmp_path)
    r = _run(env)
    assert r.returncode == 0, r.stderr
    lines = [x.split() for x in calls.read_text().splitlines()]
    out = str(tmp_path / "out")

    def stage(argv):
        return Path(argv[argv.index("--output-dir") + 1]).name if "--output-dir" in argv else argv[-1]

    by_stage = {}
    for argv in lines:
        name = stage(argv)
        if argv[:2] == ["-m", "models.export"]:
            name = {"--seg": "export_seg"}.get(argv[2], "export_cls" if "weights" in argv[-1] else "cls_run3_fp16")
        by_stage[name] = argv
    assert list(by_stage) == RECIPE_STAGES
    docs = _documented_runs()
    same = {"seg_1_imagenet": "seg_effl0_fs075", "seg_2": "seg_cont_cp0", "seg_3": "seg_cont3", "cls_run1": "cls_cil_all",
            "cls_run2": "cls_cil_all_ft", "cls_run4": "cls_resnet18_extra", "cls_run7": "cls_r18_s16",
            "cls_run9": "cls_axis9", "cls_run12": "cls_axis12", "cls_run13": "cls_axis13", "cls_run14": "cls_axis14",
            "cls_run16": "cls_axis16"}  # fmt: skip
    # the trainers' defaults are each chain's first stage: it gives no flag but where its data and files go
    assert _flags(by_stage["seg_1_imagenet"]) == {"--amp": (), "--batch-size": ("4",)}  # EXTRA_SEG_ARGS
    assert _flags(by_stage["cls_run1"]) == {}
    recipes = {}
    for ours, theirs in same.items():
        argv = by_stage[ours]
        if ours.startswith("seg"):  # EXTRA_SEG_ARGS come last and win
            assert argv[-3:] == ["--amp", "--batch-size", "4"]
            argv = argv[:-3]
        got = recipes[ours] = _recipe(argv)
        want = _recipe(docs[theirs])
        got.pop("keep_checkpoints", None)  # seg_3's epoch 2 is exported from its own file, not a copy
        want.pop("keep_checkpoints", None)
        assert got == want, (ours, theirs, {k: (v, want.get(k)) for k, v in got.items() if v != want.get(k)})
    # stage 1 of the detector, in full: the trainer's defaults
    seg1 = {k: recipes["seg_1_imagenet"][k] for k in (
        "backbone", "imagenet", "agnostic", "box_head_dim", "mask_head_layers", "roi_batch_size", "batch_size",
        "optimizer", "lr", "warmup_steps", "epochs", "max_steps_per_epoch", "fixed_scale", "crop_size", "max_size",
        "test_fraction", "trainable_layers", "norm")}  # fmt: skip
    assert seg1 == dict(
        backbone="efficientnet_lite0_fpn", imagenet=True, agnostic=True, box_head_dim=256, mask_head_layers=[128, 128],
        roi_batch_size=128, batch_size=2, optimizer="adamw", lr=3e-4, warmup_steps=50, epochs=12,
        max_steps_per_epoch=200, fixed_scale=0.75, crop_size=512, max_size=1333, test_fraction=0.1,
        trainable_layers=None, norm="auto",
    )  # fmt: skip
    # the chain's last stage builds the model of weights/segmentation.pt (the file keeps no start: its own weights)
    import dataclasses

    from datasets.io import load_torch_file
    from train_segmentation import build_model_config

    flags = [x for k, v in _flags(by_stage["seg_3"][:-3]).items() for x in (k, *v)]
    seg3 = build_model_config(get_args_parser().parse_args([*flags, "--pretrained", "F"]))
    stored = load_torch_file(Path(__file__).resolve().parents[1] / "weights" / "segmentation.pt")["config"]
    assert (seg3.pretrained_path, seg3.imagenet) == ("F", False)
    assert dataclasses.replace(seg3, pretrained_path=None) == SegConfig.from_dict(stored)
    # the classifier's run 1, in full: the trainer's defaults, the shipped straight member's model
    cls1 = {k: recipes["cls_run1"][k] for k in (
        "arch", "stem", "features", "crop_mode", "epochs", "steps_per_epoch", "batch_size", "lr", "warmup_epochs",
        "test_fraction", "balanced", "pretrained")}  # fmt: skip
    assert cls1 == dict(
        arch="resnet18", stem="imagenet", features="all", crop_mode="straight", epochs=3, steps_per_epoch=200,
        batch_size=128, lr=2e-3, warmup_epochs=1.0, test_fraction=0.0, balanced=True, pretrained=False,
    )  # fmt: skip

    # the chain: each run goes on from the one before it; the files land in $OUT/weights, not weights/
    def pre(name):
        argv = by_stage[name]
        return argv[argv.index("--pretrained") + 1]

    assert pre("seg_2") == f"{out}/seg_1_imagenet/best.pth" and pre("seg_3") == f"{out}/seg_2/best.pth"
    assert pre("cls_run4") == f"{out}/cls_run3_fp16/classifier.pt" and pre("cls_run9") == f"{out}/cls_run7/best.pth"
    assert pre("cls_run16") == f"{out}/cls_run14/best.pth" and pre("cls_run7") == f"{out}/cls_run6/best.pth"
    assert by_stage["export_seg"][3:] == [f"{out}/seg_3/epoch_002.pth", "--out", f"{out}/weights"]
    assert by_stage["export_cls"][3:] == [f"{out}/cls_run6/best.pth", f"{out}/cls_run16/best.pth", "--out",
                                          f"{out}/weights"]  # fmt: skip
    # TRAIN_ONLY goes to every training stage but the classifier's runs 1-3, which saw the one folder
    extra = f"--train-only-data voc {tmp_path / 'extra'}"
    for name in RECIPE_STAGES:
        if not name.startswith("export") and name != "cls_run3_fp16":
            assert (extra in " ".join(by_stage[name])) is (name not in ("cls_run1", "cls_run2", "cls_run3")), name


def test_run_training_skip_resume_failure_and_bad_variables(tmp_path):
    """The recipe's control flow: finished stages skipped, a failing one stops it with its code, then resumes."""
    calls, env = _run_training_stub(tmp_path)
    out = tmp_path / "out"
    r = _run(env, FAIL_AT="cls_run9")
    assert r.returncode == 3 and "[cls_run9] FAILED" in r.stderr
    assert (out / "cls_run7" / "DONE").is_file() and not (out / "cls_run9" / "DONE").exists()
    n = len(calls.read_text().splitlines())
    assert n == RECIPE_STAGES.index("cls_run9") + 1
    r = _run(env)  # only the unfinished stages run
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already done") == RECIPE_STAGES.index("cls_run9")
    assert len(calls.read_text().splitlines()) == n + len(RECIPE_STAGES) - RECIPE_STAGES.index("cls_run9")
    r = _run(env)
    assert r.returncode == 0 and r.stdout.count("already done") == len(RECIPE_STAGES)
    # --smoke: no data flags, each trainer's --smoke last but for the extra flags, into its own folder
    smoke = tmp_path / "smoke"
    r = _run(dict(env, OUT=str(smoke), DATA_ROOT="/no/such/data"), "--smoke", EXTRA_SEG_ARGS="--epochs 2")
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()[-len(RECIPE_STAGES) :]
    assert not any("--data-root" in x or "--imagenet" in x for x in lines)
    assert lines[0].endswith("--smoke --epochs 1 --max-steps-per-epoch 1 --epochs 2")
    assert lines[5].endswith("--smoke --epochs 1") and f"--cache-dir {smoke}/instance_cache" in lines[5]
    assert lines[-2].split()[3] == f"{smoke}/seg_3/epoch_000.pth"
    for bad, msg in [({"NGPU": "two"}, "NGPU"), ({"DATA_ROOT": "/no/such/data"}, "DATA_ROOT"),
                     ({"TRAIN_ONLY": "voc /no/such/extra"}, "does not exist"), ({"SMOKE": "yes"}, "SMOKE")]:  # fmt: skip
        r = _run(dict(env, OUT=str(tmp_path / "bad")), **bad)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)
    r = _run(env, "--fast")
    assert r.returncode == 2 and "--smoke" in r.stderr


def test_small_box_head_shrinks_model_and_keeps_outputs():
    """--box-head-dim 256: the CPU-friendly head (the shipped model) has far fewer parameters, same outputs."""
    import torch

    from models.segmentation import SegConfig, build_segmentation_model

    small = build_segmentation_model(
        SegConfig(backbone="mobilenet_v3_fpn", agnostic=True, box_head_dim=256, min_size=64, max_size=64)
    )
    big = build_segmentation_model(  # torchvision's head
        SegConfig(backbone="mobilenet_v3_fpn", agnostic=True, box_head_dim=1024, min_size=64, max_size=64)
    )
    assert SegConfig().box_head_dim == 256  # the default
    n_small = sum(p.numel() for p in small.parameters())
    n_big = sum(p.numel() for p in big.parameters())
    assert n_big - n_small == (256 * 49 * 1024 + 1024 * 1024 + 2048 + 1024 * 10) - (
        256 * 49 * 256 + 256 * 256 + 512 + 256 * 10
    )
    small.eval()
    with torch.no_grad():
        out = small([torch.rand(1, 64, 64)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}


def test_light_mask_head_roundtrips_through_config(tmp_path):
    import torch

    from models.segmentation import SegConfig, build_segmentation_model, load_segmentation_checkpoint, save_weights

    cfg = SegConfig(
        backbone="mobilenet_v3_fpn",
        agnostic=True,
        box_head_dim=256,
        mask_head_layers=(128, 128),
        min_size=64,
        max_size=64,
    )
    model = build_segmentation_model(cfg)
    assert [m.out_channels for m in model.roi_heads.mask_head if hasattr(m, "out_channels")][:2] == [128, 128]
    save_weights(model, cfg, tmp_path / "w.pt")
    model2, cfg2 = load_segmentation_checkpoint(tmp_path / "w.pt")
    assert tuple(cfg2.mask_head_layers) == (128, 128)
    model2.eval()
    with torch.no_grad():
        assert model2([torch.rand(1, 64, 64)])[0]["masks"].shape[1:] in ((1, 64, 64),)


def test_suppress_overlapping_masks_known_answers():
    from karyotyping.masks import suppress_overlapping_masks

    m = np.zeros((5, 40, 40), np.uint8)
    m[0, 5:35, 10:14] = 1  # a long vertical chromosome, best score
    m[1, 20:30, 10:14] = 1  # a fragment of it (fully covered) -> dropped
    m[2, 18:22, 2:30] = 1  # a chromosome crossing it (16 of 112 px shared) -> kept
    m[3, 30:38, 30:34] = 1  # a separate one -> kept
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])  # index 4: empty mask, highest score -> never kept
    keep = suppress_overlapping_masks(m, scores, 0.5)
    assert keep.tolist() == [0, 2, 3]
    assert suppress_overlapping_masks(m, scores, 1.0).tolist() == [0, 1, 2, 3]  # off: only empties go
    # the fragment survives when the bar is above its coverage... never: it is 100 % covered
    assert 1 not in suppress_overlapping_masks(m, scores, 0.99).tolist()
    assert suppress_overlapping_masks(m[:0], scores[:0], 0.5).tolist() == []
    with pytest.raises(ValueError, match="scores"):
        suppress_overlapping_masks(m, scores[:2], 0.5)


def test_exclusive_masks_known_answers():
    """Shared pixels go to the instance whose mask probability is highest there; the rest stay as they were."""
    from karyotyping.masks import exclusive_masks

    m = np.zeros((3, 20, 20), np.uint8)
    m[0, 2:18, 8:12] = 1  # a vertical chromosome
    m[1, 8:12, 0:20] = 1  # a horizontal one crossing it: 16 shared pixels
    m[2, 0:2, 0:2] = 1  # alone
    prob = np.full((3, 1, 20, 20), 0.1, np.float32)
    prob[0, 0, :, 8:10] = 0.9  # instance 0 is surer of the left half of the crossing
    prob[1, 0, :, 10:12] = 0.95  # instance 1 of the right half
    out = exclusive_masks(m, prob)
    assert out.dtype == np.uint8 and out.shape == m.shape
    assert out.sum(0).max() == 1  # disjoint
    assert np.all(out <= m)  # each a subset of its input
    assert out[0, 8:12, 8:10].all() and not out[0, 8:12, 10:12].any()
    assert out[1, 8:12, 10:12].all() and not out[1, 8:12, 8:10].any()
    assert (out[0] != m[0]).sum() == 8 and (out[1] != m[1]).sum() == 8 and np.array_equal(out[2], m[2])
    # ties go to the earlier (better-scoring) instance; the inputs are never changed in place
    tie = exclusive_masks(m[:2], np.full((2, 20, 20), 0.5, np.float32))
    assert tie[0, 8:12, 8:12].all() and not tie[1, 8:12, 8:12].any() and m[1, 8:12, 8:12].all()
    assert exclusive_masks(m[:1], prob[:1]).sum() == m[0].sum() and exclusive_masks(m[:0], prob[:0]).shape[0] == 0
    with pytest.raises(ValueError, match="shape"):
        exclusive_masks(m, prob[:2])


def test_trim_to_foreground_known_answers():
    """Masks keep their chromosome pixels (dark on light or bright on dark), their own holes, not a neighbour's."""
    from karyotyping.masks import MaskConfig, keep_instances, trim_to_foreground

    img = np.ones((40, 40), np.float32)
    img[5:35, 10:16] = 0.3  # a dark vertical chromosome, 6 px wide
    img[18:20, 12:14] = 0.9  # a pale spot inside it (a hole of the foreground)
    img[20:24, 16:36] = 0.2  # a dark horizontal one touching it
    m = np.zeros((3, 40, 40), np.uint8)
    m[0, 3:37, 8:18] = 1  # the vertical one with a 2-px rim of background (and 2 columns of its neighbour)
    m[0, 18:26, 16:18] = 0  # ... which the neighbour holds: exclusive, as the pipeline's masks are
    m[1, 18:26, 16:38] = 1  # the horizontal one, with rims
    m[2, 0:3, 30:40] = 1  # a detection on background only
    out = trim_to_foreground(img, m)
    assert out.dtype == np.uint8 and out.shape == m.shape and np.all(out.sum(0) <= 1)
    truth0 = np.zeros((40, 40), bool)
    truth0[5:35, 10:16] = True  # the rim is gone, the pale spot (an enclosed hole) is back
    assert np.array_equal(out[0].astype(bool), truth0)
    truth1 = np.zeros((40, 40), bool)
    truth1[20:24, 16:36] = True
    extra = np.argwhere(out[1].astype(bool) & ~truth1)  # the smoothing darkens the corners of the junction
    assert np.all(out[1][truth1]) and extra.tolist() == [[19, 16], [24, 16]]
    assert not out[2].any()
    # a neighbour lying inside a hole stays the neighbour's
    ring = np.zeros((2, 40, 40), np.uint8)
    ring[0, 5:35, 5:35] = 1
    ring[0, 15:25, 15:25] = 0
    ring[1, 15:25, 15:25] = 1
    dark = np.ones((40, 40), np.float32)
    dark[4:36, 4:36] = 0.3  # a px wider than the mask: the 1-px smoothing rounds a square's corners
    t = trim_to_foreground(dark, ring)
    assert np.array_equal(t, ring)
    # bright objects on a dark background (fluorescence): the same masks
    assert np.array_equal(trim_to_foreground(1.0 - img, m), out)
    # keep_instances with the image trims and drops the detection left empty
    keep, kept = keep_instances(m, np.array([0.9, 0.8, 0.7]), m.astype(np.float32), img, MaskConfig(mask_overlap=1.0))
    assert keep.tolist() == [0, 1] and np.array_equal(kept, out[:2])
    assert trim_to_foreground(img, m[:0]).shape == (0, 40, 40)
    with pytest.raises(ValueError, match="match"):
        trim_to_foreground(img, m[:, :20])
    with pytest.raises(ValueError, match="float image"):
        trim_to_foreground((img * 255).astype(np.uint8), m)
    # overlapping (not exclusive) masks keep their shared foreground: a crossing stays in both, twins stay
    cross = np.zeros((2, 40, 40), np.uint8)
    cross[0, 3:37, 8:18] = 1
    cross[1, 18:26, 8:38] = 1
    both = trim_to_foreground(img, cross)
    assert both[0, 20:24, 10:16].all() and both[1, 20:24, 10:16].all()
    twins = trim_to_foreground(img, np.stack([m[0], m[0]]))
    assert np.array_equal(twins[0], out[0]) and np.array_equal(twins[1], out[0])
    # masks that leave no background around them: nothing to tell the polarity by, returned as they are
    full = np.ones((1, 40, 40), np.uint8)
    assert np.array_equal(trim_to_foreground(img, full), full)


def test_finer_mask_grid_predicts_56px_masks_and_warm_starts_from_14(tmp_path):
    import torch

    from models.segmentation import SegConfig, build_segmentation_model, load_pretrained, save_weights

    kw = dict(backbone="mobilenet_v3_fpn", agnostic=True, box_head_dim=256, mask_head_layers=(64,), min_size=64)
    coarse = build_segmentation_model(SegConfig(**kw, max_size=64))
    fine_cfg = SegConfig(**kw, max_size=64, mask_roi_size=28)
    fine = build_segmentation_model(fine_cfg)
    assert fine.roi_heads.mask_roi_pool.output_size == (28, 28)
    x = fine.roi_heads.mask_head(torch.rand(3, 256, 28, 28))
    assert fine.roi_heads.mask_predictor(x).shape == (3, 2, 56, 56)
    save_weights(coarse, SegConfig(**kw, max_size=64), tmp_path / "coarse.pt")
    report = load_pretrained(fine, tmp_path / "coarse.pt")  # the head's weights do not depend on the grid
    assert not report.get("skipped") and not report.get("missing")
    with pytest.raises(ValueError, match="mask_roi_size"):
        SegConfig(**kw, max_size=64, mask_roi_size=2)


def test_smooth_masks_fills_bites_and_holes_drops_specks_and_stays_in_bounds():
    from karyotyping.masks import smooth_masks

    bounds = np.zeros((2, 60, 60), np.uint8)
    bounds[0, 10:50, 20:34] = 1  # a rod 14 px wide, as the detector drew it
    bounds[1, 30:44, 34:50] = 1  # a neighbour touching it on the right
    trimmed = bounds.copy()
    trimmed[0, 28:30, 20:34] = 0  # a pale band cut right across the rod: two pieces
    trimmed[0, 15:18, 25:28] = 0  # a hole
    trimmed[0, 40:43, 20:23] = 0  # a bite at the edge
    trimmed[0, 10:12, 20:34] = 0
    trimmed[0, 10:11, 20:21] = 1  # a speck left of a trimmed end
    out = smooth_masks(trimmed, bounds, radius=3)
    rod = out[0].astype(bool)
    assert rod[28:30, 22:32].all() and rod[15:18, 25:28].all() and rod[41, 22]  # band, hole and bite closed
    assert not rod[10, 20]  # the speck went
    assert not (rod & ~bounds[0].astype(bool)).any()  # never outside its own mask
    assert not (rod & trimmed[1].astype(bool)).any()  # never into the neighbour's pixels
    from scipy import ndimage

    assert ndimage.label(rod)[1] == 1  # one piece
    assert out[1].sum() >= 0.9 * trimmed[1].sum() and not (out[1] & ~bounds[1]).any()  # corners rounded only
    with pytest.raises(ValueError, match="differ in shape"):
        smooth_masks(trimmed, bounds[:1])


def test_prefer_parts_keeps_the_two_members_of_an_x_over_their_union():
    """An X of two bars detected three times: each bar (0.8, 0.7) and the union (0.95). Without the rule the
    union's better score wins and the bars go as covered; with it the union goes and both bars stay. A bar
    with one fragment inside it, or a mask whose 'parts' are the same chromosome twice, stays."""
    from karyotyping.masks import MaskConfig, keep_instances, prefer_parts

    h = np.zeros((40, 40), np.uint8)
    h[18:22, 4:36] = 1
    v = np.zeros((40, 40), np.uint8)
    v[4:36, 18:22] = 1
    union = h | v
    m = np.stack([union, h, v])
    s = np.array([0.95, 0.8, 0.7])
    assert prefer_parts(m, s).tolist() == [1, 2]
    untrimmed = MaskConfig(exclusive_masks=False, trim_masks=False)
    assert keep_instances(m, s, m.astype(np.float32), None, untrimmed)[0].tolist() == [0]
    parts = MaskConfig(exclusive_masks=False, trim_masks=False, prefer_parts=True)
    keep, kept = keep_instances(m, s, m.astype(np.float32), None, parts)
    assert keep.tolist() == [1, 2] and np.array_equal(kept, np.stack([h, v]))
    # one part only (a fragment of the bar): nothing goes
    frag = np.zeros((40, 40), np.uint8)
    frag[18:22, 4:16] = 1
    assert prefer_parts(np.stack([h, frag, np.zeros_like(h)]), np.array([0.9, 0.8, 0.7])).tolist() == [0, 1, 2]
    # two near-identical 'parts' (IoU >= 0.5) are one chromosome: the whole stays
    twin = h.copy()
    twin[18:22, 4:8] = 0
    assert prefer_parts(np.stack([union, h, twin]), s).tolist() == [0, 1, 2]
    # fewer than three detections, or none: nothing to do
    assert prefer_parts(m[:2], s[:2]).tolist() == [0, 1] and prefer_parts(m[:0], s[:0]).tolist() == []

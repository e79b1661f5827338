"""models.export: fp16 inference files rebuild the same models from the file alone."""

from __future__ import annotations

import pytest
import torch

from models import classifier, export, segmentation


def test_export_roundtrip(tmp_path):
    torch.manual_seed(0)
    scfg = segmentation.SegConfig(
        backbone="mobilenet_v3_fpn", agnostic=True, box_head_dim=256, min_size=64, max_size=64
    )
    smodel = segmentation.build_segmentation_model(scfg)
    segmentation.save_weights(smodel, scfg, tmp_path / "seg32.pt")
    ccfg = classifier.ClsConfig(arch="resnet18", n_features=0, feature_groups="none", crop_height=32, crop_width=16)
    cmodel = classifier.build_classifier(ccfg)
    classifier.save_weights(cmodel, ccfg, tmp_path / "cls32.pt")
    args = export.get_args_parser().parse_args(
        ["--seg", str(tmp_path / "seg32.pt"), "--cls", str(tmp_path / "cls32.pt"), "--out", str(tmp_path / "w")]
    )
    seg_path, cls_path = export.main(args)
    assert seg_path.stat().st_size < 0.6 * (tmp_path / "seg32.pt").stat().st_size  # fp16
    m2, c2 = segmentation.load_segmentation_checkpoint(seg_path)
    assert c2.box_head_dim == 256 and c2.backbone == "mobilenet_v3_fpn"
    for k, v in smodel.state_dict().items():
        w = m2.state_dict()[k]
        assert w.dtype == v.dtype
        if v.is_floating_point():
            torch.testing.assert_close(w, v, atol=2e-3, rtol=2e-3)
    m3, c3 = classifier.load_classifier_checkpoint(cls_path)
    assert c3.crop_height == 32 and next(m3.parameters()).dtype == torch.float32


def test_export_needs_an_input():
    with pytest.raises(ValueError, match="--split"):
        export.main(export.get_args_parser().parse_args([]))


def test_ensemble_export_reads_back_and_combines(tmp_path):
    """Two --cls files make one ensemble file: every member comes back with its crop mode, the combined
    probabilities are the normalised geometric mean, and one-classifier readers refuse the file clearly."""
    import dataclasses

    import numpy as np

    torch.manual_seed(0)
    cfg = classifier.ClsConfig(arch="resnet18", n_features=0, feature_groups="none", crop_height=32, crop_width=16)
    a, b = classifier.build_classifier(cfg), classifier.build_classifier(cfg)
    cfg_b = dataclasses.replace(cfg, crop_mode="axis")
    classifier.save_weights(a, cfg, tmp_path / "a.pt")
    classifier.save_weights(b, cfg_b, tmp_path / "b.pt")
    (path,) = export.main(
        export.get_args_parser().parse_args(
            ["--cls", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "w")]
        )
    )
    members = classifier.load_classifier_members(path)
    assert [c.crop_mode for _, c in members] == ["straight", "axis"]
    # int8 weights: about a quarter of float32, and each weight within half a step of its channel's scale
    assert path.stat().st_size < 0.3 * 2 * (tmp_path / "a.pt").stat().st_size
    for (m, _), src in zip(members, (a, b)):
        for k, v in src.state_dict().items():
            w = m.state_dict()[k]
            if v.is_floating_point() and v.ndim >= 2 and v.numel() >= classifier.INT8_MIN_NUMEL:
                step = v.reshape(len(v), -1).abs().amax(1) / 127.0
                err = (w - v).reshape(len(v), -1).abs().amax(1)
                assert (err <= step * 0.5 + 1e-6).all(), k
            elif v.is_floating_point():
                torch.testing.assert_close(w, v, atol=2e-3, rtol=2e-3)
    assert len(classifier.load_classifier_members(tmp_path / "a.pt")) == 1  # a plain file is one member
    with pytest.raises(ValueError, match="ensemble of 2 classifiers"):
        classifier.load_classifier_checkpoint(path)
    rng = np.random.default_rng(0)
    crops = {"straight": rng.random((5, 32, 16), dtype=np.float32), "axis": rng.random((5, 32, 16), dtype=np.float32)}
    p = classifier.predict_members(members, crops)
    pa = classifier.predict_proba(members[0][0], members[0][1], crops["straight"])
    pb = classifier.predict_proba(members[1][0], members[1][1], crops["axis"])
    g = np.sqrt(pa * pb)
    np.testing.assert_allclose(p, g / g.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(classifier.predict_members(members[:1], crops), pa)  # one member: its own output
    # --split: each member back as a file of its own, the same weights (as the ensemble file holds them)
    split = export.main(export.get_args_parser().parse_args(["--split", str(path), "--out", str(tmp_path / "s")]))
    assert [q.name for q in split] == ["classifier_member0.pt", "classifier_member1.pt"]
    for q, (m, c) in zip(split, members):
        m2, c2 = classifier.load_classifier_checkpoint(q)
        assert c2 == c
        for k, v in m.state_dict().items():
            torch.testing.assert_close(m2.state_dict()[k], v)
    with pytest.raises(ValueError, match="no 'axis' crops"):
        classifier.predict_members(members, {"straight": crops["straight"]})
    with pytest.raises(ValueError, match="at least two"):
        classifier.save_ensemble(members[:1], tmp_path / "one.pt")
    other = dataclasses.replace(cfg, n_features=2, feature_groups="scale", feature_names=["x", "y"])
    with pytest.raises(ValueError, match="different feature groups"):
        classifier.save_ensemble([members[0], (classifier.build_classifier(other), other)], tmp_path / "mix.pt")


def test_loaded_classifier_runs_channels_last_with_the_same_outputs(tmp_path):
    """The loaders put the weights in the channels-last layout (faster on a CPU); the outputs do not change."""
    import numpy as np

    torch.manual_seed(0)
    cfg = classifier.ClsConfig(arch="resnet18", n_features=0, feature_groups="none", crop_height=32, crop_width=16)
    plain = classifier.build_classifier(cfg).eval()
    classifier.save_weights(plain, cfg, tmp_path / "c.pt")
    model, _ = classifier.load_classifier_checkpoint(tmp_path / "c.pt")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    crops = np.random.default_rng(1).random((7, 32, 16), dtype=np.float32)
    np.testing.assert_allclose(
        classifier.predict_proba(model, cfg, crops), classifier.predict_proba(plain, cfg, crops), atol=1e-5
    )

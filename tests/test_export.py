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
    with pytest.raises(ValueError, match="--seg"):
        export.main(export.get_args_parser().parse_args([]))

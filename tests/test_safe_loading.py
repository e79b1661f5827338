"""Checkpoints are read with ``weights_only=True``: a malicious pickle is refused by every entry point.

The "malicious" file is a checkpoint-shaped dict whose config's ``__reduce__`` would create a marker file
when unpickled with ``weights_only=False``. Each entry point that opens a weights file (``--seg-weights``,
``--cls-weights``, ``--pretrained``, ``--resume``) must stop with an error naming the file, and the marker
must not exist afterwards.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from datasets.io import UnsafeCheckpointError, load_torch_file
from tests.test_pipeline import weights  # noqa: F401  (module-scoped smoke checkpoints)


class _CreatesAFile:
    """Unpickling this (without weights_only) calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _CreatesAFile(marker), "epoch": 0}, path)
    return path, marker


def test_the_malicious_file_really_runs_code_when_unpickled_unsafely(evil):
    """The check of the fixture itself: loading it the unsafe way does create the marker."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_torch_file_refuses_and_reads_ours(evil, tmp_path):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match="refused to load.*evil.pth|evil.pth.*refused to load"):
        load_torch_file(path)
    assert not marker.exists()
    import engine

    ours = tmp_path / "ours.pth"
    engine.save_checkpoint(
        ours, model=torch.nn.Linear(2, 1), optimizer=None, scheduler=None, scaler=None, epoch=3, args={}, config={}
    )
    assert engine.load_checkpoint(ours)["epoch"] == 3  # torch_version (a TorchVersion) is allowed


@pytest.mark.parametrize("flag", ["--seg-weights", "--cls-weights"])
def test_inference_pipeline_refuses(flag, evil, weights, tmp_path, capsys):  # noqa: F811
    import inference_pipeline as ip

    path, marker = evil
    w = {"--seg-weights": str(weights[0]), "--cls-weights": str(weights[1]), flag: str(path)}
    argv = [*[x for kv in w.items() for x in kv], "--device", "cpu", "--quiet", "--out", str(tmp_path / "o")]
    assert ip.cli(argv) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and str(path) in err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("stage", "flag"), [("seg", "--seg-weights"), ("cls", "--cls-weights"), ("full", "--cls-weights")]
)
def test_evaluate_refuses(stage, flag, evil, weights, tmp_path):  # noqa: F811
    import evaluate

    path, marker = evil
    w = {"--seg-weights": str(weights[0]), "--cls-weights": str(weights[1]), flag: str(path)}
    argv = ["--dataset", "synthetic", "--synthetic-n", "1", "--synthetic-size", "128", "--stage", stage]
    argv += [*[x for kv in w.items() for x in kv], "--device", "cpu", "--quiet", "--no-plots"]
    args = evaluate.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "e")])
    with pytest.raises((UnsafeCheckpointError, evaluate.PipelineError), match="refused to load"):
        evaluate.main(args)
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
def test_train_segmentation_refuses(flag, evil, tmp_path):
    from train_segmentation import get_args_parser, main

    path, marker = evil
    argv = ["--smoke", "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "run"), flag, str(path)]
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        main(get_args_parser().parse_args([*argv, "--min-size", "64", "--max-size", "64"]))
    assert not marker.exists()
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
def test_train_classification_refuses(flag, evil, tmp_path):
    from train_classification import get_args_parser, main

    path, marker = evil
    argv = ["--smoke", "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    with warnings.catch_warnings(), pytest.raises(UnsafeCheckpointError, match="refused to load"):
        warnings.simplefilter("ignore")
        main(get_args_parser().parse_args([*argv, flag, str(path)]))
    assert not marker.exists()
    assert not (tmp_path / "run" / "last.pth").exists()

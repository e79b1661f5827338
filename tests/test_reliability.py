"""Reliability: training killed at a random moment resumes to the same end, runs are deterministic,
a folder with broken files is processed around them, and tiny and huge images are handled.

The trainers run as subprocesses (``--smoke``, one CPU thread); each is SIGKILLed at a random moment
after its first checkpoint appears and restarted with ``--resume auto``. The kills survived are
counted and printed at the end of the module (``-s`` shows it)::

    python -m pytest tests/test_reliability.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SEG_ARGS = ["--smoke", "--epochs", "3", "--max-steps-per-epoch", "1", "--eval-every", "0", "--val-fraction", "0"]
SEG_ARGS += ["--no-progress", "--device", "cpu", "--seed", "3"]
CLS_ARGS = ["--smoke", "--epochs", "4", "--no-progress", "--device", "cpu", "--cache-dir", "none", "--seed", "3"]
SCRIPTS = {"seg": ("train_segmentation.py", SEG_ARGS, 3), "cls": ("train_classification.py", CLS_ARGS, 4)}
KILLS: list[dict] = []
RNG = random.Random(int(os.environ.get("KARYO_KILL_SEED", "0")))


@pytest.fixture(scope="module", autouse=True)
def _report_kills():
    yield
    print(f"\n[reliability] {len(KILLS)} SIGKILLs survived: {json.dumps(KILLS)}")


def _train(kind: str, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    script, args, _ = SCRIPTS[kind]
    cmd = [sys.executable, script, *args, "--output-dir", str(out), *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def _kill_after_first_checkpoint(cmd: list[str], ckpt: Path, what: str, *, cwd=ROOT, env=ENV, timeout=600) -> dict:
    """Start ``cmd`` in its own process group; SIGKILL the group at a random moment after ``ckpt`` appears."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    t0 = time.monotonic()
    alive = False
    try:
        while not ckpt.is_file():
            assert proc.poll() is None, f"{what} ended (rc {proc.returncode}) before writing {ckpt}"
            assert time.monotonic() - t0 < timeout, f"{what}: no {ckpt} after {timeout} s"
            time.sleep(0.05)
        delay = RNG.uniform(0.0, 1.5)
        time.sleep(delay)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert alive, f"{what} finished before the kill; give it more epochs"
    rec = {"what": what, "delay_after_first_ckpt_s": round(delay, 3), "at_s": round(time.monotonic() - t0, 2)}
    KILLS.append(rec)
    return rec


def _log(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["epoch"]): r for r in rows}


LOSS_KEY = {"seg": "loss", "cls": "train_loss"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted smoke runs of both trainers (their last.pth are also the pipeline's weights)."""
    d = tmp_path_factory.mktemp("reference")
    for kind in SCRIPTS:
        _train(kind, d / kind)
    return d


# ------------------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_sigkill_then_resume_is_exact_and_deterministic(tmp_path, reference, kind):
    """Killed at a random moment, resumed with --resume auto: same final epoch and the same losses.

    The log rows up to the kill come from a second, independent run with the reference's seed (so they
    show that training is deterministic on CPU); the rows after it come from the resumed process (so
    they show that a resumed epoch is the same epoch: model, optimizer, schedule and RNGs restored).
    """
    import engine

    script, args, epochs = SCRIPTS[kind]
    out = tmp_path / kind
    cmd = [sys.executable, script, *args, "--output-dir", str(out)]
    _kill_after_first_checkpoint(cmd, out / "last.pth", f"{script} --smoke")
    ck = engine.load_checkpoint(out / "last.pth")  # the atomic write left a complete file
    killed_at = int(ck["epoch"])
    assert 0 <= killed_at < epochs - 1
    p = _train(kind, out, "--resume", "auto")
    assert f"epoch {killed_at + 1}" in p.stdout and "resumed from" in p.stdout, p.stdout[-1500:]
    ck = engine.load_checkpoint(out / "last.pth")
    ref = engine.load_checkpoint(reference / kind / "last.pth")
    assert int(ck["epoch"]) == int(ref["epoch"]) == epochs - 1
    # same seed, same data order per epoch: the killed+resumed run logs the same losses as the reference
    got, want = _log(out), _log(reference / kind)
    assert set(got) >= set(range(killed_at + 1, epochs)) and set(got) <= set(want) == set(range(epochs))
    assert 0 in got  # epoch 0 ends before the first checkpoint is written, so the killed run logged it
    for e, row in got.items():
        assert row[LOSS_KEY[kind]] == want[e][LOSS_KEY[kind]], (e, killed_at, row, want[e])


@pytest.mark.slow
def test_run_training_sh_smoke_restarted_after_kill(tmp_path):
    """`bash run_training.sh --smoke`: the shipped recipe's whole chain, each trainer with --smoke, killed in its
    first stage, started again: it resumes that stage, runs the rest and writes both model files, which load."""
    import engine
    from models.classifier import load_classifier_members
    from models.segmentation import load_segmentation_checkpoint

    out = tmp_path / "run"
    # two epochs in the detector's stages, so that the kill can fall inside the first one
    env = ENV | {"OUT": str(out), "EXTRA_SEG_ARGS": "--epochs 2", "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "run_training.sh"), "--smoke"]
    _kill_after_first_checkpoint(cmd, out / "seg_1_imagenet" / "last.pth", "run_training.sh --smoke", env=env)
    assert not (out / "export_cls" / "DONE").exists()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    stages = sorted(d.name for d in out.iterdir() if (d / "DONE").is_file())
    assert len(stages) == 20 and {"seg_3", "cls_run16", "export_seg", "export_cls"} <= set(stages), stages
    assert "resumed from" in (out / "seg_1_imagenet.log").read_text()
    assert int(engine.load_checkpoint(out / "seg_1_imagenet" / "last.pth")["epoch"]) == 1
    _, cfg = load_segmentation_checkpoint(out / "weights" / "segmentation.pt")
    assert cfg.agnostic and cfg.fixed_scale == 0.75 and cfg.box_head_dim == 256
    members = load_classifier_members(out / "weights" / "classifier.pt")
    assert [m[1].crop_mode for m in members] == ["straight", "axis"], members
    # a third start skips every finished stage
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.count("already done") == 20, p.stdout


# ------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def weights(reference):
    return reference / "seg" / "last.pth", reference / "cls" / "last.pth"


@pytest.fixture(scope="module")
def pipe(weights):
    import torch

    from karyotyping.core import KaryotypePipeline

    grad = torch.is_grad_enabled()
    yield KaryotypePipeline(*weights, device="cpu")
    torch.set_grad_enabled(grad)


def _spread(size=(160, 192), seed=5):
    from datasets.synthetic import SyntheticConfig, generate_spread

    cfg = SyntheticConfig(scale=(200.0, 260.0), debris=(0, 3))
    return generate_spread(np.random.default_rng(seed), cfg, "46,XY", size=size)


def _write(path: Path, img: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.clip(img * 255, 0, 255).astype(np.uint8))
    return path


def _cli(weights, *argv: str) -> int:
    import inference_pipeline

    return inference_pipeline.cli(
        [*argv, "--seg-weights", str(weights[0]), "--cls-weights", str(weights[1]), "--device", "cpu", "--quiet"]
    )


def test_folder_with_broken_files(tmp_path, weights, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _write(d / "good1.png", _spread(seed=1).image)
    _write(d / "good2.png", _spread(seed=2).image)
    good = (d / "good1.png").read_bytes()
    (d / "cut.png").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.tif").write_bytes(b"a text file with an image extension\n")
    (d / "readme.txt").write_text("not an image at all\n")
    out = tmp_path / "out"
    assert _cli(weights, "--input-dir", str(d), "--out", str(out)) == 0
    for stem in ("good1", "good2"):
        js = json.loads((out / f"{stem}.json").read_text())
        assert (js["width"], js["height"]) == (192, 160)
        assert (out / f"{stem}_karyogram.png").is_file() and (out / f"{stem}_overlay.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(x["image"]).name for x in summary["processed"]) == ["good1.png", "good2.png"]
    failed = {Path(x["image"]).name: x["reason"] for x in summary["failed"]}
    assert set(failed) == {"cut.png", "empty.jpg", "notes.tif"}
    assert "empty" in failed["empty.jpg"] and all("ImageReadError" in r for r in failed.values())
    assert summary["ignored_non_images"] == ["readme.txt"]
    assert not list(out.glob("cut*")) and not list(out.glob("empty*"))
    assert "Traceback" not in capsys.readouterr().err


def test_folder_all_bad_and_strict(tmp_path, weights, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (bad / "b.jpg").write_bytes(b"")
    assert _cli(weights, "--input-dir", str(bad), "--out", str(tmp_path / "o1")) != 0
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    assert len(summary["failed"]) == 2 and not summary["processed"]
    # --strict: stop at the first failure (a_bad.png sorts before the good image, which is never processed)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_bad.png").write_bytes(b"")
    _write(mixed / "b_good.png", _spread().image)
    assert _cli(weights, "--input-dir", str(mixed), "--out", str(tmp_path / "o2"), "--strict") != 0
    assert not (tmp_path / "o2" / "b_good.json").exists()
    err = capsys.readouterr().err
    assert "a_bad.png" in err and "Traceback" not in err


def test_tiny_image_gives_empty_valid_json(tmp_path, weights):
    img = np.full((64, 64), 0.9, np.float32)
    img[20:40, 30:34] = 0.2
    p = _write(tmp_path / "tiny.png", img)
    assert _cli(weights, "--image", str(p), "--out", str(tmp_path / "o")) == 0
    js = json.loads((tmp_path / "o" / "tiny.json").read_text())
    assert (js["width"], js["height"], js["count"], js["chromosomes"]) == (64, 64, 0, [])


def _gt_segment(rec):
    def segment(self, image):
        assert image.shape == rec.image.shape
        r = rec.copy()
        r.labels[:] = 0
        r.scores = np.ones(len(r), np.float32)
        return r

    return segment


def _strip_timings(js: dict) -> dict:
    return {k: v for k, v in js.items() if k != "timings_s"}


def test_inference_is_deterministic(tmp_path, pipe, monkeypatch):
    from karyotyping.core import KaryotypePipeline
    from karyotyping.export import to_json_dict

    p = _write(tmp_path / "s.png", _spread().image)
    a, b = to_json_dict(pipe.process(p)), to_json_dict(pipe.process(p))
    assert _strip_timings(a) == _strip_timings(b)
    rec = _spread()
    rec.image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
    monkeypatch.setattr(KaryotypePipeline, "segment", _gt_segment(rec))
    monkeypatch.setattr(pipe, "auto_scale", False)  # the fake detector answers in the image's own pixels
    a, b = to_json_dict(pipe.process(p)), to_json_dict(pipe.process(p))
    assert a["count"] > 40
    assert json.dumps(_strip_timings(a)) == json.dumps(_strip_timings(b))


@pytest.mark.slow
def test_huge_16bit_tiff_is_downscaled(tmp_path, pipe):
    """8000x8000 16-bit: processed at 2048 px with a warning; the JSON keeps the original size."""
    import resource

    import tifffile

    big = np.zeros((8000, 8000), np.uint16)
    big[:] = np.linspace(20000, 60000, 8000, dtype=np.uint16)[None, :]
    big[3000:3600, 3900:4100] = 5000
    p = tmp_path / "huge.tif"
    tifffile.imwrite(p, big)
    del big
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pipe.process(p)
        from karyotyping.export import write_outputs

        write_outputs(res, tmp_path / "o")
    wall = time.perf_counter() - t0
    js = json.loads((tmp_path / "o" / "huge.json").read_text())
    assert (js["width"], js["height"]) == (8000, 8000)
    assert js["processing_scale"] == pytest.approx(2048 / 8000)
    assert any("downscaled" in str(w.message) for w in caught) and any("downscaled" in n for n in js["notes"])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n[reliability] 8000x8000 16-bit TIFF: {wall:.1f} s, peak RSS of the test process {peak_gb:.2f} GB")
    assert wall < 60 and peak_gb < 3.0

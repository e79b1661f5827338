"""The distributed pieces on the CPU: 2 processes with the gloo backend (a few seconds each).

* validation sharded over ranks and merged gives the single-process figures (detector AP and the
  classifier's val probabilities);
* a non-finite classifier loss on one rank stops every rank (checked after the all-reduce, no hang);
* ``--device auto|cuda`` picks ``cuda:$LOCAL_RANK`` (CUDA faked), inference shards files by rank.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import socket
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(target, tmp_path: Path, *args, timeout: float = 90.0) -> list[dict]:
    """Start ``target(rank, port, out_file, *args)`` in WORLD spawned processes; return what each wrote."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    outs = [tmp_path / f"rank{r}.json" for r in range(WORLD)]
    procs = [ctx.Process(target=_entry, args=(target, r, port, str(outs[r]), args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} rank(s) still running after {timeout} s: a collective hung"
    return [json.loads(o.read_text()) for o in outs]


def _entry(target, rank: int, port: int, out: str, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result = {"ok": True, **target(rank, *args)}
    except BaseException as exc:  # reported to the parent, which asserts on it
        result = {"ok": False, "error": type(exc).__name__, "message": str(exc), "tb": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- detection AP
class _ThresholdDetector(nn.Module):
    """A deterministic stand-in for Mask R-CNN (torchvision's output format): the dark connected components
    of the image are the detections, scored by their area. Fast, and with a non-trivial AP."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        from scipy import ndimage

        out = []
        for im in images:
            a = im[0].numpy()
            lab, n = ndimage.label(a < 0.55)
            boxes, scores, masks = [], [], []
            for k, sl in enumerate(ndimage.find_objects(lab)[:60], 1):
                m = lab == k
                if m.sum() < 20:
                    continue
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                scores.append(min(1.0, m.sum() / 2000.0))
                masks.append(m)
            k = len(boxes)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(k, 4),
                    "labels": torch.ones(k, dtype=torch.int64),
                    "scores": torch.tensor(scores, dtype=torch.float32),
                    "masks": torch.from_numpy(np.stack(masks).astype(np.float32)[:, None])
                    if k
                    else torch.zeros(0, 1, *a.shape),
                }
            )
        return out


def _records(n: int = 2):
    from datasets.synthetic import generate_spread

    return [
        generate_spread(np.random.default_rng(i), None, "46,XY", size=(160, 176), image_id=f"s{i}") for i in range(n)
    ]


def _eval_worker(rank: int, records: list) -> dict:
    from karyotyping.detection import evaluate_detection

    return {"metrics": evaluate_detection(_ThresholdDetector(), records, "cpu", agnostic=True)}


def test_sharded_detection_eval_equals_single_process(tmp_path):
    from karyotyping.detection import evaluate_detection

    records = _records()
    single = evaluate_detection(_ThresholdDetector(), records, "cpu", agnostic=True)
    assert single["bbox_AP50"] > 0.05  # a real figure, not an empty evaluation
    results = _run_ranks(_eval_worker, tmp_path, records)
    for r in results:
        assert r["ok"], r.get("tb")
        assert r["metrics"] == pytest.approx(single, abs=1e-9)


# ---------------------------------------------------------------------------------------------- classifier
class _TinyClassifier(nn.Module):
    def __init__(self, poison: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 4, 24)
        self.poison = poison

    def forward(self, crops, feats=None):
        out = self.fc(crops.flatten(1))
        return out * float("nan") if self.poison else out


def _batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(4, 1, 4, 4, generator=g), torch.zeros(4, 0), torch.randint(0, 24, (4,), generator=g))
        for _ in range(n)
    ]


class _Samples(torch.utils.data.Dataset):
    def __init__(self, n: int = 11) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 1, 4, 4, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.zeros(0), 0


def _predict(model: nn.Module) -> np.ndarray:
    """The trainer's validation: the classifier's probabilities of every sample, sharded over the ranks."""
    import engine
    from models.classifier import predict_batch

    return engine.predict_dataset(model, _Samples(), torch.device("cpu"), predict_batch, batch_size=4, row_shape=(24,))


def _classifier_worker(rank: int) -> dict:
    """Sharded validation, then one epoch in which only rank 1's loss is NaN (must stop both ranks)."""
    import engine
    from models.classifier import training_step

    torch.manual_seed(0)
    probs = _predict(_TinyClassifier())
    model = _TinyClassifier(poison=rank == 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = engine.make_scaler(torch.device("cpu"), False)
    step = training_step(nn.CrossEntropyLoss())
    try:
        engine.train_one_epoch(
            model, step, _batches(), opt, torch.device("cpu"), 0, scheduler=sched, scaler=scaler, progress=False
        )
        stopped = None
    except FloatingPointError as exc:
        stopped = str(exc)
    return {"probs": probs.tolist(), "stopped": stopped}


@pytest.fixture(scope="module")
def classifier_ranks(tmp_path_factory) -> list[dict]:
    results = _run_ranks(_classifier_worker, tmp_path_factory.mktemp("cls_ranks"))
    for r in results:
        assert r["ok"], r.get("tb")
    return results


def test_nonfinite_classifier_loss_stops_every_rank(classifier_ranks):
    for rank, r in enumerate(classifier_ranks):
        assert r["stopped"] and "non-finite loss" in r["stopped"], (rank, r["stopped"])


def test_sharded_classifier_validation_equals_single_process(classifier_ranks):
    torch.manual_seed(0)
    single = _predict(_TinyClassifier())
    for r in classifier_ranks:
        np.testing.assert_allclose(np.array(r["probs"]), single, rtol=0, atol=1e-7)  # every sample once, in order


# ---------------------------------------------------------------------------------------------- devices, shards
def test_device_follows_local_rank(monkeypatch):
    from karyotyping.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # an explicit GPU wins
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ValueError, match="only 4 CUDA device"):
        resolve_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda:0")


def test_inference_shards_files_by_rank(monkeypatch):
    import inference_pipeline as ip

    files = [Path(f"{i}.png") for i in range(5)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    shard, rank, world = ip._shard(files)
    assert (rank, world) == (1, 2) and shard == files[1::2]
    monkeypatch.setenv("RANK", "0")
    assert ip._shard(files)[0] == files[0::2]


def test_torchrun_with_one_process_still_initialises_ddp(monkeypatch):
    """``torchrun --nproc_per_node=1`` runs the DDP code paths (a process group of one), as torchvision's do."""
    import engine

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    info = engine.init_distributed(device="cpu")
    try:
        assert info.distributed and info.world_size == 1 and engine.get_world_size() == 1
        np.testing.assert_array_equal(engine.gather_rows(np.array([1, 0]), np.array([5.0, 7.0]), 2), [7.0, 5.0])
    finally:
        engine.cleanup_distributed()
    monkeypatch.delenv("MASTER_ADDR")  # RANK/WORLD_SIZE=1 set by hand, no torchrun: a plain process
    assert not engine.init_distributed(device="cpu").distributed


def test_amp_dtype_can_be_forced(monkeypatch):
    import engine

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = torch.device("cuda:0")
    assert engine.amp_dtype(cuda) == torch.bfloat16
    monkeypatch.setenv("KARYO_AMP_DTYPE", "float16")
    assert engine.amp_dtype(cuda) == torch.float16
    assert engine.amp_dtype(torch.device("cpu")) is None
    monkeypatch.setenv("KARYO_AMP_DTYPE", "fp8")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        engine.amp_dtype(cuda)

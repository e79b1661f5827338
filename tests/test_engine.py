"""engine.py: LR schedules, devices, seeds, AMP helpers, checkpoints, resume and run info, logging and the
detection loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import engine
from datasets.record import KaryoRecord


def _sched(schedule: str, **kw):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    return opt, engine.build_lr_scheduler(opt, schedule=schedule, **kw)


def _lrs(opt, sched, n: int) -> list[float]:
    out = [opt.param_groups[0]["lr"]]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


# ---------------------------------------------------------------------------------------------- LR schedule
def test_cosine_warmup_values_exact():
    opt, s = _sched("cosine", total_steps=10, warmup_steps=4)
    lrs = _lrs(opt, s, 10)
    expected = [0.25, 0.5, 0.75, 1.0, 1.0]  # (k + 1) / 4, then the cosine starts at 1
    expected += [0.5 * (1 + math.cos(math.pi * (k - 4) / 6)) for k in range(5, 11)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[7] == pytest.approx(0.5)  # half-way through the decay
    assert lrs[10] == pytest.approx(0.0)


def test_step_schedule_and_no_warmup():
    opt, s = _sched("step", total_steps=10, warmup_steps=0, step_milestones=[5, 8], gamma=0.1)
    lrs = _lrs(opt, s, 9)
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_step_schedule_default_milestones():
    opt, s = _sched("step", total_steps=9, warmup_steps=2)
    lrs = _lrs(opt, s, 9)
    # warmup 1/2, 1; milestones at int(9 * 2/3) = 6 and int(9 * 8/9) = 8
    assert lrs == pytest.approx([0.5, 1, 1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_state_restores_position():
    opt, s = _sched("cosine", total_steps=10, warmup_steps=2)
    _lrs(opt, s, 6)
    state_o, state_s = opt.state_dict(), s.state_dict()
    opt2, s2 = _sched("cosine", total_steps=10, warmup_steps=2)
    opt2.load_state_dict(state_o)
    s2.load_state_dict(state_s)
    assert s2.last_epoch == 6
    assert _lrs(opt2, s2, 3) == pytest.approx(_lrs(opt, s, 3))


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(schedule="linear", total_steps=10), "cosine"),
        (dict(schedule="cosine", total_steps=0), "total_steps"),
        (dict(schedule="cosine", total_steps=5, warmup_steps=-1), "warmup"),
    ],
)
def test_scheduler_bad_args(kw, msg):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=msg):
        engine.build_lr_scheduler(opt, **kw)


# ---------------------------------------------------------------------------------------------- devices, seeds, amp
def test_resolve_device():
    assert engine.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert engine.resolve_device("auto") == torch.device("cpu")
        for name in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="CUDA is not available"):
                engine.resolve_device(name)
    with pytest.raises(ValueError, match="unknown --device"):
        engine.resolve_device("tpu")


def test_seed_everything_reproducible_and_rank_offset():
    assert engine.seed_everything(5, rank=2) == 7
    a = (torch.rand(3), np.random.rand(3))
    engine.seed_everything(5, rank=2)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    engine.seed_everything(5, rank=0)
    assert not torch.equal(torch.rand(3), a[0])


def test_amp_helpers_on_cpu():
    cpu = torch.device("cpu")
    assert isinstance(engine.autocast_context(cpu, True), type(__import__("contextlib").nullcontext()))
    assert not engine.make_scaler(cpu, True).is_enabled()
    assert engine.amp_dtype(cpu) is None


def test_check_finite():
    engine.check_finite({"a": torch.tensor(1.0), "b": 2.0})
    with pytest.raises(FloatingPointError, match="loss_mask=nan"):
        engine.check_finite({"loss_box": torch.tensor(1.0), "loss_mask": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError):
        engine.check_finite({"x": torch.tensor(float("inf"))})


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = engine.build_lr_scheduler(opt, schedule="cosine", total_steps=10, warmup_steps=2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    path = tmp_path / "c.pth"
    engine.save_checkpoint(
        path, model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=3, args={"lr": 0.1}, config={"a": (1, 2)}
    )
    ck = engine.load_checkpoint(path)
    assert ck["epoch"] == 3 and ck["args"] == {"lr": 0.1} and ck["config"] == {"a": [1, 2]}
    assert torch.equal(ck["model"]["weight"], model.weight)
    assert ck["scheduler"]["last_epoch"] == 1 and ck["optimizer"]["state"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        engine.load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "t.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        engine.load_checkpoint(tmp_path / "t.pth")
    torch.save({"weights": 1}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="no 'model'"):
        engine.load_checkpoint(tmp_path / "w.pth")


def test_checkpoint_unwraps_ddp(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
        engine.save_checkpoint(
            tmp_path / "d.pth", model=ddp, optimizer=None, scheduler=None, scaler=None, epoch=0, args={}, config={}
        )
        assert sorted(engine.load_checkpoint(tmp_path / "d.pth")["model"]) == ["bias", "weight"]
        assert engine.is_main_process() and engine.get_world_size() == 1
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- runs


def _run_objects(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = engine.build_lr_scheduler(opt, schedule="cosine", total_steps=10, warmup_steps=2)
    return model, opt, sched, engine.make_scaler(torch.device("cpu"), False)


def test_resume_path_auto_explicit_and_missing(tmp_path, capsys):
    assert engine.resume_path(None, tmp_path) is None
    assert engine.resume_path("auto", tmp_path) is None  # a fresh run: says so, starts at epoch 0
    assert f"--resume auto: no {tmp_path / 'last.pth'} yet, starting from epoch 0" in capsys.readouterr().out
    (tmp_path / "last.pth").write_bytes(b"x")
    assert engine.resume_path("auto", tmp_path) == tmp_path / "last.pth"
    assert engine.resume_path(str(tmp_path / "last.pth"), tmp_path / "elsewhere") == tmp_path / "last.pth"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engine.resume_path(str(tmp_path / "gone.pth"), tmp_path)


def test_save_epoch_order_and_restore_goes_on_exactly(tmp_path, monkeypatch):
    model, opt, sched, scaler = _run_objects()
    for _ in range(3):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    saved, save = [], engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, **kw: (saved.append(path.name), save(path, **kw)))
    ck = dict(model=model, optimizer=opt, scheduler=sched, scaler=scaler, args={"seed": 0}, config={})
    engine.save_epoch(tmp_path, is_best=False, epoch=4, best_metric=0.5, extra={"best_key": [0.5, 0.1]}, **ck)
    engine.save_epoch(tmp_path, is_best=True, keep=True, epoch=5, best_metric=0.7, extra={"best_key": [0.7]}, **ck)
    # best.pth before last.pth: a kill between the two never leaves a last.pth whose best.pth is missing
    assert saved == ["last.pth", "best.pth", "last.pth", "epoch_005.pth"]

    fresh = _run_objects(seed=1)
    assert engine.restore(None, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2], scaler=fresh[3]) == (
        engine.ResumeState(start_epoch=0, best_metric=None, extra={})
    )
    state = engine.restore(
        engine.load_checkpoint(tmp_path / "last.pth"),
        model=fresh[0],
        optimizer=fresh[1],
        scheduler=fresh[2],
        scaler=fresh[3],
    )
    assert state == engine.ResumeState(start_epoch=6, best_metric=0.7, extra={"best_key": [0.7]})
    assert fresh[2].last_epoch == 3 and fresh[1].param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for m, o, s in ((model, opt, sched), fresh[:3]):  # the next step is the same step
        m(torch.ones(1, 3)).sum().backward()
        o.step()
        s.step()
    assert torch.equal(model.weight, fresh[0].weight) and torch.equal(model.bias, fresh[0].bias)


def test_begin_epoch_seeds_from_seed_and_epoch_only():
    ds = torch.utils.data.TensorDataset(torch.arange(20.0))

    def draws(epoch, noise):
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, generator=torch.Generator())
        torch.rand(noise)  # whatever ran before (another epoch, or nothing after a resume) does not matter
        loader.generator.manual_seed(noise)
        engine.begin_epoch(loader, epoch, seed=7)
        return list(sampler), torch.rand(3), torch.randint(0, 1000, (3,), generator=loader.generator)

    a, b, c = draws(2, 5), draws(2, 11), draws(3, 5)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert a[0] != c[0] and not torch.equal(a[1], c[1])


def test_write_run_info_and_end_epoch(tmp_path, capsys):
    import argparse

    from models.segmentation import SegConfig

    args = argparse.Namespace(seed=4, lr=0.1, scale_jitter=(1.0, 1.0), output_dir=tmp_path)
    engine.write_run_info(tmp_path, args, SegConfig(), device=torch.device("cpu"), world_size=1, seed=4)
    assert json.loads((tmp_path / "args.json").read_text()) == {
        "seed": 4, "lr": 0.1, "scale_jitter": [1.0, 1.0], "output_dir": str(tmp_path)
    }  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(SegConfig().to_dict()))
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["seed"] == 4 and env["seed_rank0"] == 4 and env["world_size"] == 1 and env["device"] == "cpu"
    assert {"torch", "torchvision", "python", "platform", "command", "started"} <= set(env)

    model, opt, sched, scaler = _run_objects()
    log = engine.MetricLogger(tmp_path, tensorboard=False)
    engine.end_epoch(
        tmp_path, log, {"epoch": 0, "loss": 1.5}, "epoch 0: loss 1.5000", is_best=True, model=model,
        optimizer=opt, scheduler=sched, scaler=scaler, epoch=0, args=args, config={}, best_metric=0.2,
    )  # fmt: skip
    log.close()
    assert "epoch 0: loss 1.5000" in capsys.readouterr().out
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"epoch": 0, "loss": 1.5}
    assert engine.load_checkpoint(tmp_path / "best.pth")["best_metric"] == 0.2
    assert engine.load_checkpoint(tmp_path / "last.pth")["args"]["seed"] == 4


def test_init_distributed_without_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = engine.init_distributed()
    assert info == engine.DistInfo(0, 1, 0, False)


# ---------------------------------------------------------------------------------------------- logging
def test_metric_logger_csv_jsonl_and_resume(tmp_path):
    log = engine.MetricLogger(tmp_path, tensorboard=False)
    log.log({"epoch": 0, "loss": torch.tensor(1.5)})
    log.log({"epoch": 1, "loss": 1.0, "val_bbox_AP50": 0.25})  # a new column rewrites the header
    log.close()
    log = engine.MetricLogger(tmp_path, tensorboard=False)  # a resumed run appends
    log.log({"epoch": 2, "loss": 0.5, "val_bbox_AP50": 0.5})
    log.close()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["epoch,loss,val_bbox_AP50", "0,1.5,", "1,1.0,0.25", "2,0.5,0.5"]
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[0]["loss"] == 1.5


def test_metric_logger_tensorboard_and_disabled(tmp_path):
    log = engine.MetricLogger(tmp_path / "a")
    log.log({"epoch": 0, "loss": 1.0})
    log.close()
    assert list((tmp_path / "a" / "tb").iterdir())
    off = engine.MetricLogger(tmp_path / "b", enabled=False)
    off.log({"epoch": 0})
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------- training loop
class _LinearLoss(nn.Module):
    """A 'detection model' whose loss is w * c for the batch's constant c: the gradient is c."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, images, targets):
        c = torch.stack([t["c"] for t in targets]).mean()
        return {"loss_a": self.w * c, "loss_b": 0.0 * self.w + 1.0}


def _loader(cs):
    return [[(torch.zeros(1, 4, 4), {"c": torch.tensor(float(c))})] for c in cs]


def test_train_one_epoch_accumulates_gradients_exactly():
    model = _LinearLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = engine.build_lr_scheduler(opt, schedule="step", total_steps=100, step_milestones=[1000])
    stats = engine.train_one_epoch(
        model,
        engine.detection_step,
        _loader([1, 3, 5, 7, 11]),
        opt,
        torch.device("cpu"),
        0,
        scheduler=sched,
        accum_steps=2,
        progress=False,
    )
    # steps after batches 2, 4 and (end of epoch) 5: w = -(1+3)/2 - (5+7)/2 - 11/2
    assert model.w.item() == pytest.approx(-2 - 6 - 5.5)
    assert stats["steps"] == 5 and stats["optimizer_steps"] == 3 and sched.last_epoch == 3
    assert stats["loss_b"] == pytest.approx(1.0)
    assert stats["loss_a"] == pytest.approx(np.mean([0, 0, -2 * 5, -2 * 7, -8 * 11]))


def test_train_one_epoch_max_steps_and_nonfinite():
    model = _LinearLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step = engine.detection_step
    stats = engine.train_one_epoch(
        model, step, _loader([1, 1, 1, 1]), opt, torch.device("cpu"), 0, max_steps=3, progress=False
    )
    assert stats["steps"] == 3 and stats["optimizer_steps"] == 3 and model.w.item() == pytest.approx(-3.0)
    with pytest.raises(FloatingPointError, match="loss_a"):
        engine.train_one_epoch(model, step, _loader([1, float("nan")]), opt, torch.device("cpu"), 0, progress=False)


class _CropModel(nn.Module):
    """A 'classifier' of 4x4 crops (the features are ignored, as a model without a feature branch does)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 24)

    def forward(self, crops, feats=None):
        return self.fc(crops.flatten(1))


def test_train_one_epoch_totals_the_steps_sums():
    from models.classifier import training_step

    torch.manual_seed(0)
    model = _CropModel()
    batches = [(torch.rand(n, 1, 4, 4), torch.zeros(n, 0), torch.randint(0, 24, (n,))) for n in (3, 5)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays put: the figures are known
    step = training_step(nn.CrossEntropyLoss())
    stats = engine.train_one_epoch(model, step, batches, opt, torch.device("cpu"), 0, progress=False)
    with torch.no_grad():
        logits = [model(x) for x, _, _ in batches]
    y = [b[2] for b in batches]
    per_batch = [nn.functional.cross_entropy(lg, t).item() for lg, t in zip(logits, y)]
    assert stats["samples"] == 8 and stats["steps"] == 2 and stats["optimizer_steps"] == 2
    assert stats["correct"] == sum((lg.argmax(1) == t).sum().item() for lg, t in zip(logits, y))
    # the sums weigh each sample once (the trainer's train_loss); the loss is the mean over the batches
    assert stats["loss_sum"] / 8 == pytest.approx((3 * per_batch[0] + 5 * per_batch[1]) / 8, rel=1e-6)
    assert stats["loss"] == pytest.approx(np.mean(per_batch), rel=1e-6)


def test_predict_dataset_rows_in_order():
    samples = [(torch.full((1, 4, 4), float(i)), torch.zeros(0), 0) for i in range(7)]

    def first_pixel(model, batch, device):  # a "prediction" that names its sample
        assert not model.training
        return batch[0][:, 0, 0, :2].numpy()

    model = _CropModel()
    rows = engine.predict_dataset(model, samples, torch.device("cpu"), first_pixel, batch_size=3, row_shape=(2,))
    assert rows.tolist() == [[i, i] for i in range(7)]
    empty = engine.predict_dataset(model, [], torch.device("cpu"), first_pixel, batch_size=3, row_shape=(2,))
    assert empty.shape == (0, 2)


# ---------------------------------------------------------------------------------------------- evaluation
def _tiny_records(n: int = 2) -> list[KaryoRecord]:
    recs = []
    for i in range(n):
        img = np.full((64, 64), 0.9, np.float32)
        masks = np.zeros((3, 64, 64), np.uint8)
        masks[0, 5:30, 8:16] = 1
        masks[1, 40:60, 30:38] = 1
        masks[2, 10:22, 40 + i : 60 + i] = 1
        img[masks.any(0) > 0] = 0.3
        boxes = np.array([[8, 5, 16, 30], [30, 40, 38, 60], [40 + i, 10, 60 + i, 22]], np.float32)
        recs.append(KaryoRecord(img, boxes, np.array([1, 7, 23]), masks=masks, meta={"image_id": f"r{i}"}))
    return recs


class _Oracle(nn.Module):
    """Eval-mode 'Mask R-CNN' that returns the ground truth of the records (the first ``keep`` instances)."""

    def __init__(self, recs, keep: int | None = None) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))
        self.recs, self.keep, self.i = recs, keep, 0

    def forward(self, images):
        out = []
        for _ in images:
            r = self.recs[self.i]
            r = r.select(np.arange(len(r))[: self.keep])
            self.i += 1
            m = torch.from_numpy(r.masks).float()[:, None]
            b = torch.from_numpy(r.boxes)
            out.append({"boxes": b, "labels": torch.from_numpy(r.labels), "scores": torch.ones(len(r)), "masks": m})
        return out


def test_evaluate_detection_known_answers():
    recs = _tiny_records()
    perfect = engine.evaluate_detection(_Oracle(recs), recs, torch.device("cpu"), agnostic=False)
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert perfect[k] == pytest.approx(1.0), k
    # the X (third) instance of every image missed: class-aware AP = mean(1, 1, 0) over the 3 classes;
    # agnostic: precision 1 up to recall 2/3 -> 67 of COCO's 101 recall points
    part = engine.evaluate_detection(_Oracle(recs, keep=2), recs, torch.device("cpu"), agnostic=False)
    assert part["bbox_AP50"] == pytest.approx(2 / 3) and part["segm_AP"] == pytest.approx(2 / 3)
    part = engine.evaluate_detection(_Oracle(recs, keep=2), recs, torch.device("cpu"), agnostic=True)
    assert part["bbox_AP50"] == pytest.approx(67 / 101) and part["segm_AP75"] == pytest.approx(67 / 101)


def test_evaluate_detection_untrained_model_keys_and_range():
    from models.segmentation import SegConfig, build_segmentation_model

    torch.manual_seed(0)
    cfg = SegConfig(backbone="resnet18_fpn", agnostic=True, min_size=64, max_size=64, rpn_post_nms_top_n_test=10)
    model = build_segmentation_model(cfg)
    res = engine.evaluate_detection(model, _tiny_records(1), torch.device("cpu"), agnostic=True)
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        v = res[k]
        assert v == -1 or (0.0 <= v <= 1.0), (k, v)
    assert not model.training

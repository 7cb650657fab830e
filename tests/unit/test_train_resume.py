"""Training correctness: a run killed after a checkpoint and resumed ends bit-identical to an
uninterrupted one (weights, optimizer moments, step, EMA, data order); a checkpoint resumes only under
the code that wrote it and only an interrupted run, the EMA schedule is a param, the logged lr is the
applied one, use_gpu without CUDA is an error."""

from __future__ import annotations

import pytest
import torch

from tests.train_helpers import make_dataset, make_model_folder
from unimedvl.config import Params
from unimedvl.train import checkpoints
from unimedvl.train.stages import StageError, run_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(**train):
    return Params(train={"backend": "local", "heldout_samples": 2, "grid_steps": 2, "checkpoint_every": 2, **train},
                  stage1={"steps": 4, "max_tokens": 300}, tracking={"enabled": False})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_dataset(tmp / "qc", per_task=3)
    return data, make_model_folder(data, tmp / "ae")


def _stage1(folders, tmp_path, ckpt, params=None):
    data, ae = folders
    return run_stage("stage1", data, tmp_path / "stage1", params or _params(), prev_dir=ae, progress=False,
                     checkpoint_dir=ckpt)


def test_code_change_ignores_checkpoints_and_a_finished_run_retrains(folders, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ck"
    first = _stage1(folders, tmp_path, ckpt, _params(checkpoint_every=2))
    assert first["start_step"] == 0 and first["steps"] == 4 and first["code_sha256"] == checkpoints.code_hash()
    # Simulate an interrupted run of the same code: the last step folder stays, FINISHED goes.
    (ckpt / checkpoints.FINISHED).unlink()
    assert checkpoints.prepare(ckpt) is None and checkpoints.latest_checkpoint(ckpt)[0] == 4
    # The same checkpoints under different code are ignored, with a log line.
    monkeypatch.setattr(checkpoints, "code_hash", lambda root=None: "f" * 64)
    again = _stage1(folders, tmp_path, ckpt)
    out = capsys.readouterr().out
    assert "ignoring the checkpoint at step 4" in out and "training starts at step 0" in out
    assert again["start_step"] == 0 and again["heldout_start"] == first["heldout_start"]
    # A finished run is not "resumed" at its last step by a forced re-run: it trains again.
    third = _stage1(folders, tmp_path, ckpt)
    assert "finished (step 4)" in capsys.readouterr().out and third["start_step"] == 0


def test_prune_keeps_the_last_n(tmp_path):
    for s in (2, 4, 6, 8):
        d = tmp_path / f"step-{s:07d}"
        d.mkdir()
        (d / checkpoints.DONE_MARK).write_text(str(s))
        (tmp_path / "deepspeed" / d.name).mkdir(parents=True)  # its DeepSpeed shards
    checkpoints.prune(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000004", "step-0000006", "step-0000008"]
    assert sorted(p.name for p in (tmp_path / "deepspeed").iterdir()) == ["step-0000004", "step-0000006", "step-0000008"]


def test_ema_schedule_is_a_param():
    from unimedvl.train.loop import EMA

    m = torch.nn.Linear(2, 2)
    ramp, const = EMA(m, 0.995, "ramp"), EMA(m, 0.995, "constant")
    assert ramp.current_decay(100) == pytest.approx(101 / 110) and ramp.current_decay(1800) == pytest.approx(0.995)
    assert const.current_decay(1) == 0.995
    with pytest.raises(ValueError, match="ema_schedule"):
        EMA(m, 0.995, "linear")


def test_logged_lr_is_the_applied_one():
    from unimedvl.train.curriculum import get_curriculum
    from unimedvl.train.loop import lr_factor, make_optimizer, make_scheduler

    spec = get_curriculum("tiny")["stage1"].override(warmup_steps=3, lr=1.0)
    m = torch.nn.Linear(2, 2)
    opt = make_optimizer(m, spec)
    sched = make_scheduler(opt, spec, 10)
    for step in range(5):
        applied = opt.param_groups[0]["lr"]
        assert applied == pytest.approx(lr_factor(step, spec, 10))
        m(torch.ones(2)).sum().backward()
        opt.step()
        sched.step()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")
def test_use_gpu_without_cuda_is_an_error_naming_the_torch_build(folders, tmp_path):
    with pytest.raises(StageError, match=rf"torch {torch.__version__.split('+')[0]}.*(CPU-only build|CUDA).*use_gpu: false"):
        _stage1(folders, tmp_path, tmp_path / "ck", _params(use_gpu=True))


def test_profile_env_var_must_match_the_tracked_param_under_dvc(monkeypatch):
    from unimedvl.config import load_params
    from unimedvl.train.stages import resolve_params

    params = load_params("params.yaml")
    monkeypatch.setenv("UNIMEDVL_PROFILE", "smoke")
    assert resolve_params(params).train.profile == "smoke"  # plain CLI use: the env var selects
    monkeypatch.setenv("DVC_STAGE", "stage1")
    with pytest.raises(StageError, match=r"UNIMEDVL_PROFILE='smoke' differs from train.profile='demo'"):
        resolve_params(params)
    monkeypatch.setenv("UNIMEDVL_PROFILE", "demo")
    assert resolve_params(params).train.profile == "demo"


class _Killed(Exception):
    """The worker dying mid-step (after a checkpoint was written, before the next one)."""


def _recorded_run(folders, out, ckpt, monkeypatch, drawn: list, kill_at_call=None):
    """One stage1 run on the local backend, appending (step, sample ids drawn) to `drawn`. With
    `kill_at_call`, the train step of that call (1-based) raises, as a killed worker would stop."""
    from unimedvl.train import data as data_mod
    from unimedvl.train import loop

    real_record, real_samples, real_step = data_mod.record_to_sample, data_mod.MixtureLoader.samples, loop.train_step

    def record(row, *a, **kw):
        s = real_record(row, *a, **kw)
        s.row_id = row["id"]
        return s

    def samples(self, step):
        out_ = real_samples(self, step)
        drawn.append((step, [s.row_id for s in out_]))
        return out_

    calls = []

    def step(*a, **kw):
        calls.append(1)
        if len(calls) == kill_at_call:
            raise _Killed
        return real_step(*a, **kw)

    monkeypatch.setattr(data_mod, "record_to_sample", record)
    monkeypatch.setattr(data_mod.MixtureLoader, "samples", samples)
    monkeypatch.setattr(loop, "train_step", step)
    params = Params(train={"backend": "local", "heldout_samples": 1, "grid_steps": 2, "checkpoint_every": 3,
                           "keep_checkpoints": 3}, stage1={"steps": 6, "max_tokens": 300}, tracking={"enabled": False})
    data, ae = folders
    try:
        return run_stage("stage1", data, out, params, prev_dir=ae, progress=False, checkpoint_dir=ckpt)
    finally:
        monkeypatch.undo()


def _state(ckpt, step):
    return torch.load(ckpt / f"step-{step:07d}" / checkpoints.STATE_FILE, map_location="cpu", weights_only=False)


def _assert_same_tensors(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        same = torch.equal(a[k], b[k])
        assert same, f"{what}: {k} differs"


def test_kill_and_resume_equals_the_uninterrupted_run(folders, tmp_path, monkeypatch):
    from unimedvl.train.ray_job import read_losses

    full_drawn, killed_drawn, resumed_drawn = [], [], []
    full = _recorded_run(folders, tmp_path / "full", tmp_path / "ck-full", monkeypatch, full_drawn)
    ck = tmp_path / "ck-killed"
    with pytest.raises(_Killed):  # dies in step 3 (0-based), after the checkpoint of step 3 was written
        _recorded_run(folders, tmp_path / "killed", ck, monkeypatch, killed_drawn, kill_at_call=4)
    assert checkpoints.latest_checkpoint(ck)[0] == 3 and not (ck / checkpoints.FINISHED).exists()
    assert killed_drawn[:4] == full_drawn[:4]
    resumed = _recorded_run(folders, tmp_path / "resumed", ck, monkeypatch, resumed_drawn)

    # The step counter: the resumed run starts at the checkpoint and ends where the full run did.
    assert (full["start_step"], full["steps"]) == (0, 6)
    assert (resumed["start_step"], resumed["steps"]) == (3, 6)
    assert resumed["samples_seen"] == full["samples_seen"] and resumed["tokens_seen"] == full["tokens_seen"]
    assert resumed["ema_updates"] == full["ema_updates"] == 6
    # Data order: the resumed run draws steps 3..5 with the very sample ids the full run drew there.
    assert [s for s, _ in full_drawn] == list(range(6))
    assert resumed_drawn == full_drawn[3:]
    # Weights, optimizer moments and step, schedule, EMA of the final checkpoints: bit-identical.
    a, b = _state(tmp_path / "ck-full", 6), _state(ck, 6)
    _assert_same_tensors(a["model"], b["model"], "weights")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys() and a["optimizer"]["state"]
    for i, sa in a["optimizer"]["state"].items():
        _assert_same_tensors(sa, b["optimizer"]["state"][i], f"optimizer state of param {i}")
        assert float(sa["step"]) == 6
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    _assert_same_tensors(a["ema"]["shadow"], b["ema"]["shadow"], "EMA")
    assert a["data"] == b["data"]
    # The per-step log of the resumed folder is the full run's, step for step.
    keys = ("step", "loss", "ce", "mse", "lr", "grad_norm", "tokens", "samples")
    assert [{k: r[k] for k in keys} for r in read_losses(ck)] == [{k: r[k] for k in keys} for r in read_losses(tmp_path / "ck-full")]

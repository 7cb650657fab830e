"""The GPU path (marker `gpu`, skipped without CUDA): one bf16 DDP step and one ZeRO-3 step through
Ray Train with `use_gpu: true`. Run with `pytest -m gpu tests/gpu` on a machine with a GPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.train_helpers import make_dataset, make_model_folder
from unimedvl.config import Params
from unimedvl.train.stages import run_stage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.xdist_group("ray")]  # it starts Ray: one local Ray at a time


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("gpu")
    data = make_dataset(root / "qc", per_task=4)
    make_model_folder(data, root / "models" / "autoencoder")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield root, data
    ray.shutdown()


@pytest.mark.parametrize("strategy,zero", [("ddp", 2), ("deepspeed", 3)])
def test_one_bf16_step_on_the_gpu(folders, strategy, zero):
    root, data = folders
    params = Params(train={"backend": "ray", "workers": 1, "use_gpu": True, "precision": "bf16", "strategy": strategy,
                           "deepspeed": {"zero_stage": zero}, "heldout_samples": 2, "grid_steps": 2},
                    stage1={"steps": 1, "max_tokens": 400}, tracking={"enabled": False})
    name = f"{strategy}{zero}"
    out = run_stage("stage1", data, root / "models" / name, params, prev_dir=root / "models" / "autoencoder",
                    checkpoint_dir=root / f"ck-{name}", progress=False)
    rows = [json.loads(x) for x in (root / f"ck-{name}" / "losses.jsonl").read_text().splitlines()]
    assert out["steps"] == 1 and len(rows) == 1 and math.isfinite(rows[0]["loss"])

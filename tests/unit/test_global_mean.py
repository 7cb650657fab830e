"""With several ranks, CE is the mean over every supervised token of every rank (BAGEL's
normalisation), not the mean of per-rank means: checked on two gloo processes with 3 and 7 tokens."""

from __future__ import annotations

import socket
import types

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _tokens(rank: int) -> torch.Tensor:
    return torch.randn((3, 7)[rank], 4, generator=torch.Generator().manual_seed(rank))


def _worker(rank: int, port: int, out) -> None:
    from unimedvl.train.loop import _global_token_means

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    w = torch.nn.Parameter(torch.ones(4))
    ce = (_tokens(rank) @ w).pow(2).mean()
    module = types.SimpleNamespace(cfg=types.SimpleNamespace(ce_weight=1.0, mse_weight=1.0))
    res = _global_token_means({"loss": ce, "ce": ce, "mse": torch.zeros(()), "n_ce": len(_tokens(rank)), "n_mse": 0}, module)
    res["loss"].backward()
    g = w.grad.clone()
    dist.all_reduce(g)  # what DDP does: average the ranks' gradients
    out[rank] = ((g / 2).tolist(), res["ce_global"])
    dist.destroy_process_group()


def test_ce_is_the_mean_over_all_ranks_tokens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    w = torch.nn.Parameter(torch.ones(4))
    every = torch.cat([_tokens(0), _tokens(1)])
    ref = (every @ w).pow(2).mean()
    ref.backward()
    for rank in (0, 1):
        grad, logged = out[rank]
        assert torch.allclose(torch.tensor(grad), w.grad, atol=1e-5), (grad, w.grad)
        assert abs(logged - float(ref)) < 1e-5
    # The mean of per-rank means differs here, so the check is not vacuous.
    per_rank = ((_tokens(0) @ w).pow(2).mean() + (_tokens(1) @ w).pow(2).mean()) / 2
    assert abs(float(per_rank) - float(ref)) > 1e-3

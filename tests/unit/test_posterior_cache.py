"""The frozen encoder's posterior cache (`model.autoencoder.PosteriorCache`): the numbers it gives are
the encoder's own for each image alone, whatever the batches were, and stale weights are never used."""

from __future__ import annotations

import torch

from unimedvl.model.autoencoder import AutoEncoder, posterior_cache
from unimedvl.model.config import PRESETS


def _ae() -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder(PRESETS["tiny"].vae).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _alone(ae: AutoEncoder, x: torch.Tensor, **kw) -> torch.Tensor:
    """What the cache must give: the posterior from each image's own encoder call, drawn as one batch."""
    moments = torch.stack([ae.encoder(img[None])[0] for img in x])
    mean, logvar = moments.chunk(2, dim=1)
    z = mean
    if kw.get("sample"):
        z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape, generator=kw["generator"])
    return ae.cfg.scale_factor * (z - ae.cfg.shift_factor)


@torch.no_grad()
def test_cached_latents_are_each_images_own_whatever_it_was_batched_with():
    ae, (a, b, c) = _ae(), _images(3, 1)
    with posterior_cache(ae) as cache:
        ae.encode(torch.stack([a, b]))
        got = ae.encode(torch.stack([c, b, b]), sample=True, generator=torch.Generator().manual_seed(7))
        assert cache.stats() == {"hits": 2, "misses": 3, "images": 3}
    assert ae.posterior_cache is None  # off again outside
    want = _alone(ae, torch.stack([c, b, b]), sample=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want)  # bit for bit, the posterior draw included
    assert not torch.equal(got[1], got[2])  # the same image, two draws from its posterior


@torch.no_grad()
def test_a_weight_change_empties_the_cache():
    ae, x = _ae(), _images(2, 2)
    with posterior_cache(ae) as cache:
        before = ae.encode(x)
        next(ae.encoder.parameters()).add_(0.05)  # what an optimizer step or a load does
        after = ae.encode(x)
        assert cache.stats()["misses"] == 4 and not torch.equal(before, after)
        assert torch.equal(after, _alone(ae, x))


def test_gradients_and_a_full_cache_bypass_it_and_give_the_same_numbers():
    ae, x = _ae(), _images(3, 3)
    with posterior_cache(ae) as cache:
        with torch.enable_grad():
            ae.encode(x)  # fitting the autoencoder: never cached
        assert cache.stats() == {"hits": 0, "misses": 0, "images": 0}
    with torch.no_grad(), posterior_cache(ae, max_bytes=0) as cache:
        assert torch.equal(ae.encode(x), _alone(ae, x)) and torch.equal(ae.encode(x), _alone(ae, x))
        assert cache.stats() == {"hits": 0, "misses": 6, "images": 0}


@torch.no_grad()
def test_a_bf16_autoencoder_is_cached_too():
    ae, x = _ae().to(torch.bfloat16), _images(2, 4).to(torch.bfloat16)
    with posterior_cache(ae) as cache:
        first, again = ae.encode(x), ae.encode(x)
        assert cache.stats() == {"hits": 2, "misses": 2, "images": 2} and torch.equal(first, again)

"""The runtime's numpy DDIM against diffusers' DDIMScheduler with SD1.5's constants."""

from __future__ import annotations

import numpy as np
import pytest

from igr_sdk._scheduler import alphas_cumprod, ddim_step, ddim_timesteps, guided

SD15_25 = [
    961,
    921,
    881,
    841,
    801,
    761,
    721,
    681,
    641,
    601,
    561,
    521,
    481,
    441,
    401,
    361,
    321,
    281,
    241,
    201,
    161,
    121,
    81,
    41,
    1,
]


def test_25_steps_are_sd15s_literal_list():
    assert ddim_timesteps(25).tolist() == SD15_25


def test_timesteps_match_diffusers_for_several_step_counts():
    from diffusers import DDIMScheduler

    from train.config import SchedulerConfig

    s = DDIMScheduler(**SchedulerConfig().diffusers_kwargs())
    for steps in (1, 7, 25, 50, 999):
        s.set_timesteps(steps)
        assert ddim_timesteps(steps).tolist() == s.timesteps.tolist(), steps


def test_alphas_match_diffusers():
    from diffusers import DDIMScheduler

    from train.config import SchedulerConfig

    ref = DDIMScheduler(**SchedulerConfig().diffusers_kwargs()).alphas_cumprod.numpy()
    np.testing.assert_allclose(alphas_cumprod(), ref, rtol=2e-6, atol=0)


def test_25_step_trajectory_matches_diffusers():
    import torch
    from diffusers import DDIMScheduler

    from train.config import SchedulerConfig

    s = DDIMScheduler(**SchedulerConfig().diffusers_kwargs())
    s.set_timesteps(25)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 6), dtype=np.float32)
    ref = torch.from_numpy(x.copy())
    a = alphas_cumprod()
    ts = ddim_timesteps(25)
    for i, t in enumerate(ts):
        eps = rng.standard_normal(x.shape, dtype=np.float32)
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = ddim_step(x, eps, int(t), int(prev), a, final_alpha_bar=a[0])
        ref = s.step(torch.from_numpy(eps), int(t), ref).prev_sample
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_guidance_combines_uncond_and_cond_rows():
    eps = np.array([[1.0], [2.0], [3.0], [6.0]])  # [u1, u2, c1, c2]
    assert guided(eps, 1.5).tolist() == [[1.0 + 1.5 * 2.0], [2.0 + 1.5 * 4.0]]
    assert guided(eps, 1.0).tolist() == [[3.0], [6.0]]


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, 1001])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="steps must be"):
        ddim_timesteps(steps)

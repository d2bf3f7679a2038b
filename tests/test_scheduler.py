"""The runtime's numpy DDIM against diffusers' DDIMScheduler with SD1.5's constants."""

from __future__ import annotations

import numpy as np
import pytest

from igr_sdk._scheduler import alphas_cumprod, ddim_step, ddim_timesteps, guided, x0_and_eps

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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_25_step_trajectory_matches_diffusers(prediction_type):
    import dataclasses

    import torch
    from diffusers import DDIMScheduler

    from train.config import SchedulerConfig

    config = dataclasses.replace(SchedulerConfig(), prediction_type=prediction_type)
    s = DDIMScheduler(**config.diffusers_kwargs())
    assert s.config.prediction_type == prediction_type
    s.set_timesteps(25)
    assert s.timesteps.tolist() == SD15_25
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 6), dtype=np.float32)
    ref = torch.from_numpy(x.copy())
    a = alphas_cumprod()
    for i, t in enumerate(SD15_25):
        out = rng.standard_normal(x.shape, dtype=np.float32)  # the model output: eps or v
        prev = SD15_25[i + 1] if i + 1 < len(SD15_25) else -1
        x = ddim_step(x, out, t, prev, a, final_alpha_bar=a[0], prediction_type=prediction_type)
        ref = s.step(torch.from_numpy(out), t, ref).prev_sample
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, ref.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {i}, t = {t}")


def test_v_prediction_step_differs_from_epsilon():
    a = alphas_cumprod()
    x = np.full((1, 4, 2, 2), 0.5, dtype=np.float32)
    out = np.full_like(x, -1.0)
    eps_step = ddim_step(x, out, 961, 921, a, a[0], "epsilon")
    v_step = ddim_step(x, out, 961, 921, a, a[0], "v_prediction")
    assert np.abs(eps_step - v_step).min() > 1e-2


def test_v_prediction_recovers_x0_and_eps():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 4, 3, 3))
    eps = rng.standard_normal(x0.shape)
    for a_t in (0.9991, 0.5, 0.0047):
        x_t = np.sqrt(a_t) * x0 + np.sqrt(1 - a_t) * eps
        v = np.sqrt(a_t) * eps - np.sqrt(1 - a_t) * x0
        got_x0, got_eps = x0_and_eps(x_t, v, a_t, "v_prediction")
        np.testing.assert_allclose(got_x0, x0, atol=1e-12)
        np.testing.assert_allclose(got_eps, eps, atol=1e-12)
        got_x0, got_eps = x0_and_eps(x_t, eps, a_t, "epsilon")
        np.testing.assert_allclose(got_x0, x0, atol=1e-9)
        assert got_eps is eps


def test_v_prediction_step_lands_on_the_known_x0():
    """With the exact v of a known (x0, eps), one step to t' is sqrt(a') x0 + sqrt(1 - a') eps."""
    a = alphas_cumprod()
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((1, 4, 4, 4))
    eps = rng.standard_normal(x0.shape)
    x_t = np.sqrt(a[501]) * x0 + np.sqrt(1 - a[501]) * eps
    v = np.sqrt(a[501]) * eps - np.sqrt(1 - a[501]) * x0
    got = ddim_step(x_t, v, 501, 461, a, a[0], "v_prediction")
    np.testing.assert_allclose(got, np.sqrt(a[461]) * x0 + np.sqrt(1 - a[461]) * eps, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["sample", "v", "", None])
def test_unknown_prediction_type_is_named(prediction_type):
    a = alphas_cumprod()
    x = np.zeros((1, 4, 2, 2), dtype=np.float32)
    with pytest.raises(
        ValueError,
        match=rf"prediction_type {prediction_type!r} is not supported; expected one of "
        r"epsilon, v_prediction",
    ):
        ddim_step(x, x, 1, -1, a, a[0], prediction_type)


def test_guidance_combines_uncond_and_cond_rows():
    out = np.array([[1.0], [2.0], [3.0], [6.0]])  # [u1, u2, c1, c2]
    assert guided(out, 1.5).tolist() == [[1.0 + 1.5 * 2.0], [2.0 + 1.5 * 4.0]]
    assert guided(out, 1.0).tolist() == [[3.0], [6.0]]


def test_guidance_on_v_equals_guidance_on_the_eps_it_implies():
    """CFG on the model output commutes with v -> eps (both linear), so v-models guide like eps-models."""
    a = alphas_cumprod()[641]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 2, 2))
    v = rng.standard_normal((2, 4, 2, 2))  # [uncond ; cond]
    _, eps_of_guided_v = x0_and_eps(x, guided(v, 1.5), a, "v_prediction")
    _, eps_rows = x0_and_eps(np.concatenate([x, x]), v, a, "v_prediction")
    np.testing.assert_allclose(eps_of_guided_v, guided(eps_rows, 1.5), atol=1e-12)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, 1001])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="steps must be"):
        ddim_timesteps(steps)

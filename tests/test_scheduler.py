"""The runtime's numpy DDIM against diffusers' DDIMScheduler with SD1.5's constants."""

from __future__ import annotations

import numpy as np
import pytest

from igr_sdk._scheduler import alphas_cumprod, ddim_step, ddim_timesteps, guided, previous_timestep, x0_and_eps

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


# --- zero-terminal-SNR betas with trailing timesteps (Lin et al. 2024) ------------------------------
TRAILING_25 = [999, 959, 919, 879, 839, 799, 759, 719, 679, 639, 599, 559, 519]
TRAILING_25 += [479, 439, 399, 359, 319, 279, 239, 199, 159, 119, 79, 39]


def _zero_snr_config():
    import dataclasses

    from train.config import SchedulerConfig

    return dataclasses.replace(
        SchedulerConfig(), prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )


def test_25_trailing_steps_are_the_literal_list():
    assert ddim_timesteps(25, timestep_spacing="trailing").tolist() == TRAILING_25


def test_trailing_timesteps_match_diffusers_for_every_step_count():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(**_zero_snr_config().diffusers_kwargs())
    for steps in range(1, 1001):
        s.set_timesteps(steps)
        mine = ddim_timesteps(steps, timestep_spacing="trailing")
        # diffusers' np.arange yields one extra timestep (-1) for a few counts (61, 103, ...); the
        # first `steps` agree, and ours never leave [0, T)
        assert mine.tolist() == s.timesteps.tolist()[:steps], steps
        assert len(mine) == steps and mine.min() >= 0, steps


def test_zero_snr_alphas_match_diffusers_and_end_at_zero():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(**_zero_snr_config().diffusers_kwargs()).alphas_cumprod.double().numpy()
    a = alphas_cumprod(rescale_betas_zero_snr=True)
    assert a[-1] == 0.0 and ref[-1] == 0.0
    np.testing.assert_allclose(a[:-1], ref[:-1], rtol=5e-5, atol=0)
    # the first value is kept, so the least-noised step is SD1.5's
    assert a[0] == pytest.approx(alphas_cumprod()[0], rel=1e-12)


def test_zero_snr_25_step_trajectory_matches_diffusers():
    import torch
    from diffusers import DDIMScheduler

    s = DDIMScheduler(**_zero_snr_config().diffusers_kwargs())
    s.set_timesteps(25)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 6), dtype=np.float32)
    ref = torch.from_numpy(x.copy())
    a = alphas_cumprod(rescale_betas_zero_snr=True)
    for i, t in enumerate(ddim_timesteps(25, timestep_spacing="trailing")):
        v = rng.standard_normal(x.shape, dtype=np.float32)
        x = ddim_step(x, v, int(t), previous_timestep(t, 25), a, final_alpha_bar=a[0], prediction_type="v_prediction")
        ref = s.step(torch.from_numpy(v), int(t), ref).prev_sample
        np.testing.assert_allclose(x, ref.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"step {i}, t = {t}")


def test_first_zero_snr_step_reads_x0_from_v_alone():
    # at alpha_bar = 0 the input is pure noise: x0 = -v and eps = x_t, whatever x_t holds
    a = alphas_cumprod(rescale_betas_zero_snr=True)
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal((2, 1, 4, 3, 3))
    x0, eps = x0_and_eps(x, v, a[999], "v_prediction")
    np.testing.assert_array_equal(x0, -v)
    np.testing.assert_array_equal(eps, x)


def test_previous_timestep_is_diffusers_rule():
    # t - T // steps for every spacing: 30 trailing steps go 999 -> 966 though the next listed is 966
    assert previous_timestep(999, 25) == 959
    assert previous_timestep(39, 25) == -1
    assert previous_timestep(999, 30) == 966
    assert ddim_timesteps(30, timestep_spacing="trailing").tolist()[:2] == [999, 966]


def test_unknown_spacing_is_named():
    with pytest.raises(
        ValueError, match=r"timestep_spacing 'linspace' is not supported; expected one of leading, trailing"
    ):
        ddim_timesteps(25, timestep_spacing="linspace")

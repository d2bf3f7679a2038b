"""DDIM (eta = 0) in plain numpy, as pure functions over SD1.5's schedule constants.

Matches diffusers' ``DDIMScheduler`` with the configuration in DESIGN.md section 2: scaled-linear
betas, "leading" timestep spacing with ``steps_offset``, no clipping and ``set_alpha_to_one=False``
(the last step steps towards alpha_bar[0], not 1).

Models trained from scratch may instead use a zero-terminal-SNR schedule with "trailing" timesteps
(Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): SD1.5's schedule
leaves sqrt(alpha_bar[999]) = 0.068 of the clean latent in the most-noised training input, so a
model learns to read the image's mean colour and layout from it, and sampling, which starts from
pure noise, cannot. Rescaling the betas so that alpha_bar[T - 1] = 0 and starting sampling at
t = T - 1 removes that mismatch. It needs v-prediction: at alpha_bar = 0 the noise is the input
itself and says nothing of x0.

The model output is read as one of two parametrisations of x_t = sqrt(a) x0 + sqrt(1 - a) eps,
with a = alpha_bar[t]:

- ``epsilon``: the model predicts eps.
- ``v_prediction`` (Salimans & Ho 2022): the model predicts v = sqrt(a) eps - sqrt(1 - a) x0.
  Because sqrt(a)^2 + sqrt(1 - a)^2 = 1, (x_t, v) is a rotation of (x0, eps), and
  x0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from igr_sdk._errors import InputError

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing")


def alphas_cumprod(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), shape (T,), float64."""
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; expected scaled_linear or linear")
    a_bar = np.cumprod(1.0 - betas)
    if rescale_betas_zero_snr:
        a_bar = zero_terminal_snr(a_bar)
    return a_bar


def zero_terminal_snr(a_bar: np.ndarray) -> np.ndarray:
    """Lin et al. 2024, algorithm 1: shift and scale sqrt(alpha_bar) so that its last value is 0 and
    its first is unchanged; (T,) -> (T,). The betas this implies are 1 - a_bar[t] / a_bar[t - 1]."""
    root = np.sqrt(a_bar)
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    return root**2


def ddim_timesteps(
    steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1, timestep_spacing: str = "leading"
) -> np.ndarray:
    """The sampling timesteps, descending. 25 steps give 961, 921, ..., 41, 1 ("leading") or
    999, 959, ..., 79, 39 ("trailing", which ignores steps_offset)."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    check_timestep_spacing(timestep_spacing)
    limit = max_steps(num_train_timesteps, steps_offset, timestep_spacing)
    if steps > limit:
        raise InputError(
            f"steps must be at most {limit} for a {num_train_timesteps}-step schedule with "
            f"{timestep_spacing!r} spacing and steps_offset {steps_offset}, got {steps}"
        )
    if timestep_spacing == "trailing":
        # evenly spaced down from the last training timestep, built as diffusers builds them (the
        # rounding of .5 cases depends on it); its arange yields one value too many for some step counts
        ratio = num_train_timesteps / steps
        return np.round(np.arange(num_train_timesteps, 0, -ratio))[:steps].astype(np.int64) - 1
    ratio = num_train_timesteps // steps
    return (np.arange(steps, dtype=np.int64) * ratio)[::-1] + steps_offset


def previous_timestep(t: int, steps: int, num_train_timesteps: int = 1000) -> int:
    """The timestep a DDIM step from t lands on: t - T // steps, as diffusers' DDIMScheduler.step
    computes it for every spacing (negative: the step lands on the final alpha_bar)."""
    return int(t) - num_train_timesteps // steps


def max_steps(num_train_timesteps: int = 1000, steps_offset: int = 1, timestep_spacing: str = "leading") -> int:
    """The most steps whose timesteps, offset included, all lie inside the schedule."""
    if timestep_spacing == "trailing":
        return num_train_timesteps
    for n in range(num_train_timesteps, 0, -1):
        if (n - 1) * (num_train_timesteps // n) + steps_offset < num_train_timesteps:
            return n
    return 0


def schedule_alphas(sched: Mapping[str, Any]) -> np.ndarray:
    """alpha_bar of a scheduler section (a manifest's ``scheduler``, or a config's as a dict)."""
    return alphas_cumprod(
        sched["beta_start"],
        sched["beta_end"],
        sched["num_train_timesteps"],
        sched["beta_schedule"],
        sched.get("rescale_betas_zero_snr", False),
    )


def schedule_timesteps(sched: Mapping[str, Any], steps: int) -> np.ndarray:
    """The sampling timesteps of a scheduler section for ``steps`` steps (InputError past its limit)."""
    return ddim_timesteps(
        steps, sched["num_train_timesteps"], sched["steps_offset"], sched.get("timestep_spacing", "leading")
    )


def check_timestep_spacing(timestep_spacing: str) -> str:
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(
            f"timestep_spacing {timestep_spacing!r} is not supported; expected one of {', '.join(TIMESTEP_SPACINGS)}"
        )
    return timestep_spacing


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {prediction_type!r} is not supported; expected one of {', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def x0_and_eps(
    sample: np.ndarray, model_output: np.ndarray, a_t: float, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted clean latent x0, predicted noise eps) from x_t and the model output at alpha_bar a_t."""
    check_prediction_type(prediction_type)
    sqrt_a, sqrt_1ma = np.sqrt(a_t), np.sqrt(1.0 - a_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - sqrt_1ma * eps) / sqrt_a
    else:  # v_prediction
        x0 = sqrt_a * sample - sqrt_1ma * model_output
        eps = sqrt_1ma * sample + sqrt_a * model_output
    return x0, eps


def ddim_step(
    sample: np.ndarray,
    model_output: np.ndarray,
    t: int,
    prev_t: int,
    alpha_bar: np.ndarray,
    final_alpha_bar: float,
    prediction_type: str = "epsilon",
) -> np.ndarray:
    """x_t -> x_{prev_t} with eta = 0 (Song et al. 2020, eq. 12); prev_t < 0 steps to final_alpha_bar."""
    a_prev = alpha_bar[prev_t] if prev_t >= 0 else final_alpha_bar
    x0, eps = x0_and_eps(sample, model_output, alpha_bar[t], prediction_type)
    out = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps
    return out.astype(sample.dtype, copy=False)


def guided(model_output: np.ndarray, guidance_scale: float) -> np.ndarray:
    """CFG combine over a [uncond x B ; cond x B] batch: u + s (c - u), (2B, ...) -> (B, ...).

    Applied to the model output whatever it predicts (eps or v), as diffusers' pipelines do; both
    are linear in the model output, so the combine commutes with the conversion to x0 and eps.
    """
    b = model_output.shape[0] // 2
    return model_output[:b] + guidance_scale * (model_output[b:] - model_output[:b])

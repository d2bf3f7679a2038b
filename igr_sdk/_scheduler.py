"""DDIM (eta = 0) in plain numpy, as pure functions over SD1.5's schedule constants.

Matches diffusers' ``DDIMScheduler`` with the configuration in DESIGN.md section 2: scaled-linear
betas, "leading" timestep spacing with ``steps_offset``, epsilon prediction, no clipping and
``set_alpha_to_one=False`` (the last step steps towards alpha_bar[0], not 1).
"""

from __future__ import annotations

import numpy as np

from igr_sdk._errors import InputError


def alphas_cumprod(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
) -> np.ndarray:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), shape (T,), float64."""
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; expected scaled_linear or linear")
    return np.cumprod(1.0 - betas)


def ddim_timesteps(
    steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1, timestep_spacing: str = "leading"
) -> np.ndarray:
    """The sampling timesteps, descending. 25 steps give 961, 921, ..., 41, 1."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > num_train_timesteps:
        raise InputError(f"steps must be at most {num_train_timesteps}, got {steps}")
    if timestep_spacing != "leading":
        raise ValueError(f"timestep_spacing {timestep_spacing!r} is not supported; expected 'leading'")
    ratio = num_train_timesteps // steps
    return (np.arange(steps, dtype=np.int64) * ratio)[::-1] + steps_offset


def ddim_step(
    sample: np.ndarray, eps: np.ndarray, t: int, prev_t: int, alpha_bar: np.ndarray, final_alpha_bar: float
) -> np.ndarray:
    """x_t -> x_{prev_t} with eta = 0 (Song et al. 2020, eq. 12)."""
    a_t = alpha_bar[t]
    a_prev = alpha_bar[prev_t] if prev_t >= 0 else final_alpha_bar
    x0 = (sample - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)  # predicted clean latent
    out = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps
    return out.astype(sample.dtype, copy=False)


def guided(eps: np.ndarray, guidance_scale: float) -> np.ndarray:
    """CFG combine over a [uncond x B ; cond x B] batch: eps_u + s (eps_c - eps_u), (B, ...)."""
    b = eps.shape[0] // 2
    return eps[:b] + guidance_scale * (eps[b:] - eps[:b])

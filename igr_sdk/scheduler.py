"""The runtime's numpy DDIM, for the torch reference pipeline and the benchmarks to sample with.

Pure functions over the schedule constants a checkpoint and a manifest record (DESIGN.md section 2);
tested against diffusers' ``DDIMScheduler`` for both prediction types.
"""

from __future__ import annotations

from igr_sdk._scheduler import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    alphas_cumprod,
    check_prediction_type,
    check_timestep_spacing,
    ddim_step,
    ddim_timesteps,
    guided,
    max_steps,
    previous_timestep,
    schedule_alphas,
    schedule_timesteps,
    x0_and_eps,
    zero_terminal_snr,
)

__all__ = [
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "alphas_cumprod",
    "check_prediction_type",
    "check_timestep_spacing",
    "ddim_step",
    "ddim_timesteps",
    "guided",
    "max_steps",
    "previous_timestep",
    "schedule_alphas",
    "schedule_timesteps",
    "x0_and_eps",
    "zero_terminal_snr",
]

"""What a training run is given: ``TrainConfig``, checked as it is built, and ``TrainError``.

Its own module so that the command line (``train/train.py``), the loop (``train/loop.py``) and the
state checks (``train/state.py``) share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from igr_sdk.scheduler import PREDICTION_TYPES
from train.config import PRESETS

__all__ = ["FROM_SCRATCH", "MIXED_PRECISION", "PREDICTION_TYPES", "STAGES", "TrainConfig", "TrainError"]

STAGES = ("coarse", "fine")
MIXED_PRECISION = ("no", "fp16", "bf16")
FROM_SCRATCH = ("tiny", "small")


class TrainError(ValueError):
    """A training option, run folder or resume state cannot be used; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. Saved as RUN/train_config.json and in every checkpoint's meta.

    ``None`` means "the default": the preset's learning rate, the accelerate launcher's mixed
    precision and gradient accumulation (else no / 1), the model config's condition-drop rate. A
    resumed run takes unset options from the run it continues.
    """

    preset: str = "tiny"
    data: tuple[str, ...] = ()  # data roots (VITON-HD layout incl. synthetic sets, or DressCode)
    out: str = "runs/igr"
    stage: str = "coarse"
    max_steps: int = 1000  # optimizer steps in total (a resumed run counts from its saved step)
    batch_size: int = 4  # per process and micro-batch
    lr: float | None = None
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    lr_decay_steps: int = 0  # cosine decay after the warm-up, reaching min_lr at this step (0: constant lr)
    min_lr: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    grad_accum: int | None = None
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 500  # 0: only the final checkpoint
    val_every: int = 500  # 0: no validation grids
    log_every: int = 10
    num_workers: int = 0
    init: str | None = None  # checkpoint folder to start from (required by the fine stage)
    sd15: str | None = None  # SD1.5 diffusers folder: a real start with --ip-adapter and --clip-vision
    ip_adapter: str | None = None
    clip_vision: str | None = None
    subset: tuple[str, ...] = ()  # one name-list file per data root (train/curate.py output)
    resize_list: tuple[str, ...] = ()  # one list per data root of pairs to reframe (curate --resize-list)
    resolution: tuple[int, int] | None = None  # (H, W); default the preset's or the --init checkpoint's
    split: str = "train"
    cond_drop_prob: float | None = None
    train_vae: bool = False
    train_image_encoder: bool = False
    val_count: int = 4  # held-out pairs in each validation grid
    val_steps: int = 10  # DDIM steps of the validation images (cheap, not the product's 25)
    val_data: str | None = None  # validation pairs; default the test split, else pairs held out of --data
    keep_checkpoints: int = 3  # periodic step-* folders kept (0: all); final and state are always kept
    resume: bool = False
    prediction_type: str | None = None  # default: the model config's (v_prediction for tiny/small)
    guidance_scale: float | None = None  # the CFG scale stored in the model config (sampling default)
    zero_terminal_snr: bool | None = None  # rescaled betas + trailing timesteps; None: the model config's
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (5 is the paper's); None: plain MSE
    ema_decay: float | None = None  # EMA of the weights, stored in checkpoints and sampled from
    thumbnail_weight: float | None = None  # weight of the training-only IP-token thumbnail loss (None: 0)
    latent_cache: str | None = None  # folder of cached VAE latents (the VAE must be frozen)
    attention_heads: tuple[int, ...] | None = None  # heads per UNet level, finest first; None: the model's

    def __post_init__(self) -> None:
        def bad(option: str, why: str) -> None:
            raise TrainError(f"{option}: {why}")

        if self.preset not in PRESETS:
            bad("--preset", f"unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        if not self.data:
            bad("--data", "give at least one data folder")
        if self.stage not in STAGES:
            bad("--stage", f"expected one of {STAGES}, got {self.stage!r}")
        if self.stage == "fine" and self.init is None:
            bad("--stage fine", "needs --init RUN_COARSE/final (the fine stage continues the coarse model)")
        if self.init is not None and self.sd15 is not None:
            bad("--init", "give either --init or --sd15, not both")
        real = (self.sd15, self.ip_adapter, self.clip_vision)
        if any(x is not None for x in real) and any(x is None for x in real):
            bad("--sd15", "a real start needs all of --sd15 DIR --ip-adapter FILE --clip-vision DIR")
        if self.sd15 is not None and self.preset != "sd15":
            bad("--sd15", f"public SD1.5 weights build the sd15 preset, not --preset {self.preset}")
        for name, ok in (("train_vae", self.train_vae), ("train_image_encoder", self.train_image_encoder)):
            if ok and self.preset not in FROM_SCRATCH:
                bad("--" + name.replace("_", "-"), f"only for the from-scratch presets {FROM_SCRATCH}")
        if self.mixed_precision not in (None, *MIXED_PRECISION):
            bad("--mixed-precision", f"expected one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for option, n, least in (
            ("--max-steps", self.max_steps, 1),
            ("--batch-size", self.batch_size, 1),
            ("--grad-accum", 1 if self.grad_accum is None else self.grad_accum, 1),
            ("--log-every", self.log_every, 1),
            ("--save-every", self.save_every, 0),
            ("--val-every", self.val_every, 0),
            ("--val-count", self.val_count, 0),
            ("--val-steps", self.val_steps, 1),
            ("--num-workers", self.num_workers, 0),
            ("--warmup-steps", self.warmup_steps, 0),
            ("--lr-decay-steps", self.lr_decay_steps, 0),
            ("--keep-checkpoints", self.keep_checkpoints, 0),
            ("--seed", self.seed, 0),
        ):
            if n < least:
                bad(option, f"must be >= {least}, got {n}")
        if self.lr is not None and not self.lr > 0:
            bad("--lr", f"must be > 0, got {self.lr}")
        if self.lr_decay_steps and self.lr_decay_steps <= self.warmup_steps:
            bad("--lr-decay-steps", f"must be past the warm-up ({self.warmup_steps} steps), got {self.lr_decay_steps}")
        if not self.min_lr >= 0:
            bad("--min-lr", f"must be >= 0, got {self.min_lr}")
        if self.lr is not None and self.min_lr > self.lr:
            bad("--min-lr", f"must not exceed --lr {self.lr}, got {self.min_lr}")
        if self.prediction_type not in (None, *PREDICTION_TYPES):
            bad("--prediction-type", f"expected one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.guidance_scale is not None and not self.guidance_scale >= 1.0:
            bad("--guidance-scale", f"must be >= 1, got {self.guidance_scale}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            bad("--snr-gamma", f"must be > 0, got {self.snr_gamma}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            bad("--ema-decay", f"must be in (0, 1), got {self.ema_decay}")
        if self.thumbnail_weight is not None and not self.thumbnail_weight >= 0:
            bad("--thumbnail-weight", f"must be >= 0, got {self.thumbnail_weight}")
        if self.latent_cache is not None and self.train_vae:
            bad("--latent-cache", "cached latents need a frozen VAE; drop --train-vae or the cache")
        if self.cond_drop_prob is not None and not 0.0 <= self.cond_drop_prob <= 1.0:
            bad("--cond-drop-prob", f"must be in [0, 1], got {self.cond_drop_prob}")
        for option, lists in (("--subset", self.subset), ("--resize-list", self.resize_list)):
            if lists and len(lists) != len(self.data):
                bad(option, f"give one list per --data folder ({len(self.data)}), got {len(lists)}")
            for p in lists:
                if not Path(p).is_file():
                    bad(option, f"list file {p} does not exist")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

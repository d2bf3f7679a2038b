"""The training loop behind ``train/train.py``: model start, accelerate, steps, logs, saves, resume.

``run`` reads as the run's outline: resume or start, accelerate, data, model, optimizer, then the
``Trainer`` takes one optimizer step at a time and saves the state, the logs and the checkpoints.

Run folder::

    RUN/train_config.json   the effective TrainConfig (also in every checkpoint's meta.json)
    RUN/loss.csv            step, loss, lr, seconds (mean loss since the previous row; training seconds)
    RUN/val/step-XXXXXX.png validation grid: person | restored | ground truth, one row per held-out pair
    RUN/val_names.txt       the held-out pairs of those grids
    RUN/step-XXXXXX/        periodic checkpoints in the checkpoint format (train/checkpoint.py)
    RUN/final/              the last one
    RUN/state/              accelerate state for --resume: weights, optimizer, LR schedule, trainer.json

The state is written to ``state.tmp`` and swapped in, so a run killed while saving still has the
previous complete state. Everything random comes from generators seeded by (seed, step, micro-batch,
process) and the data order by (seed, epoch), so a resumed run repeats an uninterrupted one exactly
(bit for bit on CPU; on GPU up to the usual non-determinism of some CUDA kernels).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from igr_sdk.preprocess import to_image
from train.checkpoint import CheckpointError, load_checkpoint, new_model, read_config, save_checkpoint
from train.config import IGRConfig, preset
from train.datasets import PairDataset
from train.ema import EMA
from train.latent_cache import attach_latents
from train.model import IGRModel
from train.objective import DiffusionObjective, draw, micro_batch_seed, set_trainable, trainable_parameters
from train.pipeline import ReferencePipeline
from train.state import read_state
from train.trainconfig import TrainConfig, TrainError
from train.traindata import Source, StreamBatchSampler, TrainSet, open_sources, prepare_sample, validation_pairs

log = logging.getLogger(__name__)

STATE, STATE_TMP, STATE_OLD = "state", "state.tmp", "state.old"
TRAINER_FILE = "trainer.json"
# Options that may change when a run is resumed: they do not change what the run computes.
RESUMABLE = frozenset(
    {
        "out",
        "max_steps",
        "save_every",
        "val_every",
        "log_every",
        "num_workers",
        "resume",
        "keep_checkpoints",
        "val_steps",
        "gradient_checkpointing",
        "init",
        "sd15",
        "ip_adapter",
        "clip_vision",
        "latent_cache",
    }
)
# AdamW learning rates: the paper's 1e-5 for fine-tuning SD1.5; the randomly initialised small
# presets learn nothing useful at that rate in a CPU-sized run, 1e-4 is their stable default.
DEFAULT_LR = {"sd15": 1e-5, "small": 1e-4, "tiny": 1e-4}
ARCHITECTURE = ("unet", "vae", "image_encoder", "garmnet_in_channels", "ip_tokens", "text_len")


@dataclass
class TrainResult:
    out: Path
    step: int
    final: Path | None
    log: list[tuple[int, float]]  # (step, mean loss since the previous row) of this invocation
    steps_per_second: float  # optimizer steps per second of training compute (no saves / validation)
    main_process: bool = True


# --------------------------------------------------------------------------------------------
# the model to start from


def default_lr(preset_name: str) -> float:
    return DEFAULT_LR.get(preset_name, 1e-5)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_init_config(path: Path, config: IGRConfig, preset_name: str) -> None:
    """Refuse a checkpoint of another preset. tiny and small are fully defined by their preset, so
    their architecture must match it too; an sd15 checkpoint takes its architecture from the public
    weights it was built from, so its name is what identifies it."""
    diff = []
    if preset_name != "sd15":
        expected = preset(preset_name)
        # a pre-trained VAE brings its own latent scale and maybe a wider decoder (train/grow_decoder.py),
        # and a model re-split into other attention heads (--attention-heads) its own head counts:
        # weights and shapes are what must match
        ours = dataclasses.replace(
            config,
            vae=dataclasses.replace(
                config.vae,
                scaling_factor=expected.vae.scaling_factor,
                decoder_block_out_channels=expected.vae.decoder_block_out_channels,
            ),
            unet=dataclasses.replace(config.unet, attention_head_dim=expected.unet.attention_head_dim),
        )
        diff = [k for k in ARCHITECTURE if getattr(ours, k) != getattr(expected, k)]
    if config.name != preset_name or diff:
        what = f"preset {config.name!r}" + (f" (differs in {', '.join(diff)})" if diff else "")
        raise CheckpointError(
            f"{path / 'config.json'} is a checkpoint of {what}, not of --preset {preset_name}; "
            f"start from a {preset_name} checkpoint or pass --preset {config.name}"
        )


def build_model(cfg: TrainConfig, saved_config: dict[str, Any] | None) -> IGRModel:
    """The model a run starts from (its weights are replaced by the state when resuming)."""
    if saved_config is not None:  # resuming: the architecture is the run's, the weights come from RUN/state
        model = new_model(IGRConfig.from_dict(saved_config), cfg.seed)
    elif cfg.init is not None:
        path = Path(cfg.init)
        check_init_config(path, read_config(path), cfg.preset)
        model = load_checkpoint(path)
        log.info("starting from checkpoint %s (step %s)", path, _read_json(path / "meta.json").get("step"))
    elif cfg.sd15 is not None:
        from train.weights import from_public_layouts

        h, w = cfg.resolution or (preset(cfg.preset).height, preset(cfg.preset).width)
        model = from_public_layouts(cfg.sd15, cfg.ip_adapter, cfg.clip_vision, h, w, name=cfg.preset)
    else:
        model = new_model(preset(cfg.preset), cfg.seed)
        if cfg.preset == "sd15":
            log.warning("training sd15 from random weights; pass --sd15/--ip-adapter/--clip-vision for a real start")
    c = model.config
    if cfg.resolution is not None:
        try:
            c = c.with_resolution(*cfg.resolution)
        except ValueError as e:
            raise TrainError(f"--resolution {cfg.resolution[0]}x{cfg.resolution[1]}: {e}") from None
    if cfg.cond_drop_prob is not None:
        c = dataclasses.replace(c, cond_drop_prob=cfg.cond_drop_prob)
    if cfg.prediction_type is not None:
        c = dataclasses.replace(c, scheduler=dataclasses.replace(c.scheduler, prediction_type=cfg.prediction_type))
    if cfg.zero_terminal_snr is not None:
        spacing = "trailing" if cfg.zero_terminal_snr else "leading"
        c = dataclasses.replace(
            c,
            scheduler=dataclasses.replace(
                c.scheduler, rescale_betas_zero_snr=cfg.zero_terminal_snr, timestep_spacing=spacing
            ),
        )
    if cfg.guidance_scale is not None:
        c = dataclasses.replace(c, guidance_scale=cfg.guidance_scale)
    if cfg.attention_heads is not None and tuple(cfg.attention_heads) != c.unet.heads_per_level:
        model = with_attention_heads(model, c, tuple(cfg.attention_heads))
        c = model.config
    if c.scheduler.rescale_betas_zero_snr:
        if c.scheduler.prediction_type != "v_prediction":
            raise TrainError(
                "a zero-terminal-SNR schedule needs --prediction-type v_prediction, "
                f"got {c.scheduler.prediction_type!r}: "
                "at alpha_bar = 0 the noise is the input itself and an epsilon prediction says nothing of x0"
            )
        if cfg.snr_gamma is not None:
            raise TrainError(
                f"--snr-gamma {cfg.snr_gamma:g} with a zero-terminal-SNR schedule: Min-SNR weights the v error by "
                "min(SNR, gamma) / (SNR + 1), which is 0 at the last timestep, where sampling starts; leave it off"
            )
    model.config = c  # none of these change the architecture (the heads' rebuild is done above)
    return model


def with_attention_heads(model: IGRModel, config: IGRConfig, heads: tuple[int, ...]) -> IGRModel:
    """The same weights split into ``heads`` attention heads per UNet level (both UNets).

    The projections keep their shapes, so every weight carries over; what changes is how the
    query/key channels are grouped, and so the attention pattern: the model needs training after it.
    Fewer heads at the finest level cut the attention-score elements there, the CPU engines' main cost.
    """
    try:
        unet = dataclasses.replace(config.unet, attention_head_dim=heads)
    except ValueError as e:
        raise TrainError(f"--attention-heads {','.join(map(str, heads))}: {e}") from None
    rebuilt = IGRModel(dataclasses.replace(config, unet=unet))
    rebuilt.load_state_dict(model.state_dict())
    log.info("attention heads per level %s -> %s", config.unet.heads_per_level, heads)
    return rebuilt.eval()


# --------------------------------------------------------------------------------------------
# run folder: state, logs, checkpoints


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_state(out: Path) -> Path | None:
    """The newest complete state folder (``trainer.json`` is written last, so it marks completeness)."""
    for name in (STATE, STATE_TMP, STATE_OLD):
        if (out / name / TRAINER_FILE).is_file():
            return out / name
    return None


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Options whose value differs from the run being resumed, as '--opt new (run has old)'."""
    bad = []
    for k, v in json.loads(json.dumps(current)).items():
        if k in RESUMABLE or k not in saved or saved[k] == v:
            continue
        bad.append(f"{_option(k)} {v} (the run has {saved[k]})")
    return bad


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Paths made absolute, so that the recorded config and resume checks do not depend on the cwd."""

    def ab(p):
        return None if p is None else os.path.abspath(p)

    return dataclasses.replace(
        cfg,
        data=tuple(ab(p) for p in cfg.data),
        out=ab(cfg.out),
        subset=tuple(ab(p) for p in cfg.subset),
        resize_list=tuple(ab(p) for p in cfg.resize_list),
        init=ab(cfg.init),
        sd15=ab(cfg.sd15),
        ip_adapter=ab(cfg.ip_adapter),
        clip_vision=ab(cfg.clip_vision),
        val_data=ab(cfg.val_data),
        latent_cache=ab(cfg.latent_cache),
    )


def adopt_run_options(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """Options left unset (None or empty) take the resumed run's values."""
    updates = {}
    for f in dataclasses.fields(cfg):
        v, old = getattr(cfg, f.name), saved.get(f.name)
        if (v is None or v == ()) and old not in (None, []):
            updates[f.name] = tuple(old) if isinstance(old, list) else old
    return dataclasses.replace(cfg, **updates)


def trim_loss_log(path: Path, step: int) -> None:
    """Drop rows past ``step``: a resumed run recomputes them."""
    if not path.is_file():
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    keep = [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *keep])


def prune_checkpoints(out: Path, keep: int) -> None:
    if keep <= 0:
        return
    steps = sorted(out.glob("step-[0-9]*"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# validation grid


def validation_grid(model: IGRModel, pairs: list[tuple[PairDataset, int]], steps: int, seed: int) -> Image.Image:
    """Rows of person | restored | ground truth at the model resolution."""
    c = model.config
    items = []
    for ds, i in pairs:
        s = ds[i]
        prep, target = prepare_sample(s, c, str(ds.root))
        items.append((s, prep, target))
    prepared, cats = [p for _, p, _ in items], [s.category for s, _, _ in items]
    seeds = [seed + i for i in range(len(items))]
    restored, _ = ReferencePipeline(model).sample(prepared, cats, steps, model.config.guidance_scale, seeds)
    grid = Image.new("RGB", (3 * c.width, len(items) * c.height), "white")
    for row, ((_, prep, target), out) in enumerate(zip(items, restored)):
        for col, img in enumerate((prep.person, out, target)):
            grid.paste(to_image(img), (col * c.width, row * c.height))
    return grid


# --------------------------------------------------------------------------------------------
# resume or start


@dataclass(frozen=True)
class Resumed:
    """The saved state a run continues from."""

    folder: Path  # RUN/state, or state.tmp / state.old when a swap was interrupted
    trainer: dict[str, Any]  # its trainer.json, checked by train/state.py


def resume_or_start(cfg: TrainConfig) -> tuple[TrainConfig, Resumed | None]:
    """The run's effective options, and the saved state it continues (None for a new run)."""
    cfg = absolute_paths(cfg)
    out = Path(cfg.out)
    state_dir = find_state(out)
    saved = read_state(state_dir / TRAINER_FILE) if state_dir is not None else None
    if saved is not None and not cfg.resume:
        raise TrainError(
            f"{out} already holds the state of a run at step {saved['step']} ({state_dir}); "
            "pass --resume to continue it, or choose another --out"
        )
    if cfg.resume and saved is None:
        log.info("--resume: no state in %s, starting a new run", out)
    if saved is not None:
        cfg = adopt_run_options(cfg, saved["train_config"])
        bad = resume_mismatches(saved["train_config"], dataclasses.asdict(cfg))
        if bad:
            raise TrainError(f"--resume from {state_dir / TRAINER_FILE}: options differ from the run: {'; '.join(bad)}")
    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=default_lr(cfg.preset))
    return cfg, (Resumed(state_dir, saved) if saved is not None else None)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum or 1,
        step_scheduler_with_optimizer=False,  # one LR-schedule step per optimizer step, whatever the world size
    )
    if cfg.grad_accum is not None and accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise TrainError(
            f"--grad-accum {cfg.grad_accum} conflicts with the accelerate config's gradient_accumulation_steps "
            f"{accelerator.gradient_accumulation_steps}; set it in one place only"
        )
    return accelerator


@dataclass
class RunData:
    sources: list[Source]
    sets: list[PairDataset]  # the training pairs, one data set per source
    reframes: list[list[str]]  # per source, the pairs to reframe (resize and pad)
    val_pairs: list[tuple[PairDataset, int]]  # the pairs of the validation grids


def open_data(cfg: TrainConfig) -> RunData:
    sources = [
        Source(
            Path(d), Path(cfg.subset[k]) if cfg.subset else None, Path(cfg.resize_list[k]) if cfg.resize_list else None
        )
        for k, d in enumerate(cfg.data)
    ]
    val_pairs, hold_out = validation_pairs(
        sources, Path(cfg.val_data) if cfg.val_data else None, cfg.val_count, cfg.split
    )
    sets, reframes, held = open_sources(sources, cfg.split, cfg.val_count if hold_out else 0)
    return RunData(sources, sets, reframes, val_pairs or held)


def start_model(cfg: TrainConfig, resumed: Resumed | None) -> tuple[IGRModel, TrainConfig]:
    """The model to train, and the options completed with its config's defaults."""
    model = build_model(cfg, resumed.trainer["igr_config"] if resumed is not None else None)
    if resumed is not None:
        now = json.loads(model.config.to_json())
        diff = sorted(k for k in now if now[k] != resumed.trainer["igr_config"].get(k))
        if diff:
            raise TrainError(f"--resume: the model config differs from {resumed.folder / TRAINER_FILE} in {diff}")
    cfg = dataclasses.replace(
        cfg,
        cond_drop_prob=model.config.cond_drop_prob,
        prediction_type=model.config.scheduler.prediction_type,
        guidance_scale=model.config.guidance_scale,
    )
    return model, cfg


def training_set(data: RunData, model: IGRModel, cfg: TrainConfig, accelerator) -> ConcatDataset:
    parts = [TrainSet(ds, model.config, r) for ds, r in zip(data.sets, data.reframes)]
    if cfg.latent_cache is not None:
        for part in parts:  # every process reads the same file; the main one writes what is missing
            with accelerator.main_process_first():
                attach_latents(part, model, Path(cfg.latent_cache))
    return ConcatDataset(parts)


def lr_factor(step: int, warmup: int, decay_steps: int, min_ratio: float) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps: a linear warm-up over ``warmup``
    steps, then, if ``decay_steps``, half a cosine from 1 down to ``min_ratio`` at step ``decay_steps``,
    flat after it. The horizon is its own option rather than --max-steps, so a run cut short or
    extended on resume keeps the curve it started with.
    """
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay_steps:
        p = min(1.0, max(0, step - warmup) / (decay_steps - warmup))
        f *= min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    return f


def make_optimizer(model: IGRModel, cfg: TrainConfig):
    """(objective, its trainable parameters, AdamW, the LR schedule of ``lr_factor``)."""
    set_trainable(model, cfg.train_vae, cfg.train_image_encoder)
    if cfg.gradient_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
        model.garmnet.enable_gradient_checkpointing()
    objective = DiffusionObjective(
        model, train_vae=cfg.train_vae, snr_gamma=cfg.snr_gamma, thumbnail_weight=cfg.thumbnail_weight or 0.0
    )
    params = trainable_parameters(objective)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup, decay, min_ratio = cfg.warmup_steps, cfg.lr_decay_steps, cfg.min_lr / cfg.lr
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, decay, min_ratio))
    return objective, params, optimizer, lr_schedule


# --------------------------------------------------------------------------------------------
# the trainer: one step, logs, state and checkpoints


@dataclass
class Trainer:
    """A prepared run: accelerate's objective, optimizer and schedule, the EMA, the step reached."""

    cfg: TrainConfig
    accelerator: Any
    objective: Any
    optimizer: Any
    lr_schedule: Any
    igr: IGRModel
    ema: EMA | None
    resumed: bool
    meta: dict[str, Any]  # recorded in every checkpoint's meta.json
    trainable: int  # trainable parameters
    step: int = 0
    elapsed: float = 0.0  # training seconds of the whole run, resumed parts included
    last_loss: float = float("nan")

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def averaged(self):
        """Checkpoints and validation images show the averaged weights when there is an EMA."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def train_mode(self) -> None:
        self.objective.train()
        self.igr.vae.train(self.cfg.train_vae)  # frozen parts stay in eval mode
        self.igr.image_encoder.train(self.cfg.train_image_encoder)

    def one_step(self, batches) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns its mean loss (on the device)."""
        cfg, acc = self.cfg, self.accelerator
        c = self.igr.config
        micro_losses = []
        for a in range(acc.gradient_accumulation_steps):
            batch = next(batches)
            d = draw(
                micro_batch_seed(cfg.seed, self.step, a, acc.process_index),
                cfg.batch_size,
                c.latent_size,
                c.scheduler.num_train_timesteps,
                c.cond_drop_prob,
            )
            order = d.order  # dropped samples first (model.denoise's batch convention)
            inputs = {k: v[order].to(acc.device, non_blocking=True) for k, v in batch.items()}
            with acc.accumulate(self.objective):
                res = self.objective(
                    **inputs,
                    noise=d.noise[order].to(acc.device),
                    timesteps=d.timesteps[order].to(acc.device),
                    n_uncond=int(d.drop.sum()),
                )
                acc.backward(res["loss"])
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.objective.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.lr_schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(res["loss"].detach().float())
        if self.ema is not None:
            self.ema.update()
        return torch.stack(micro_losses).mean()

    def log_interval(self, losses: list[torch.Tensor], lr: float) -> tuple[int, float]:
        """A loss.csv row: the mean loss since the previous row, over every process."""
        mean = self.accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        self.last_loss = mean
        if self.main:
            path = self.out / "loss.csv"
            new = not path.is_file()
            with path.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "loss", "lr", "seconds"])
                w.writerow([self.step, f"{mean:.6f}", f"{lr:.6g}", f"{self.elapsed:.2f}"])
        return self.step, mean

    def validate(self, val_pairs: list[tuple[PairDataset, int]]) -> None:
        if self.main:
            self.objective.eval()
            with self.accelerator.autocast(), self.averaged():
                grid = validation_grid(self.igr, val_pairs, self.cfg.val_steps, self.cfg.seed)
            (self.out / "val").mkdir(exist_ok=True)
            grid.save(self.out / "val" / f"step-{self.step:06d}.png")
            self.train_mode()
        self.accelerator.wait_for_everyone()

    def save(self, final: bool) -> Path:
        """The accelerate state (written to state.tmp, then swapped in) and a checkpoint of the step."""
        acc, out = self.accelerator, self.out
        tmp = out / STATE_TMP
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # every rank writes its part (ZeRO shards the optimizer)
        acc.wait_for_everyone()
        ckpt = out / ("final" if final else f"step-{self.step:06d}")
        if self.main:
            trainer = {
                "step": self.step,
                "elapsed": self.elapsed,
                "world_size": acc.num_processes,
                "train_config": dataclasses.asdict(self.cfg),
                "igr_config": self.igr.config.to_dict(),
            }
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2))
            swap_state(out)
            meta = {**self.meta, "step": self.step, "loss": self.last_loss}
            with self.averaged():
                save_checkpoint(self.igr, ckpt, {**meta, "weights": "ema" if self.ema is not None else "raw"})
            if not final:
                prune_checkpoints(out, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return ckpt


def swap_state(out: Path) -> None:
    """Make state.tmp the state; at every moment one complete state exists (see find_state)."""
    if (out / STATE).exists():
        shutil.rmtree(out / STATE_OLD, ignore_errors=True)
        os.replace(out / STATE, out / STATE_OLD)
    os.replace(out / STATE_TMP, out / STATE)
    shutil.rmtree(out / STATE_OLD, ignore_errors=True)


def prepare(cfg, accelerator, model: IGRModel, resumed: Resumed | None, data: RunData) -> Trainer:
    """Optimizer and objective through accelerate, the EMA, and the saved state when resuming."""
    from accelerate.utils import DistributedType

    objective, params, optimizer, lr_schedule = make_optimizer(model, cfg)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # no DataLoader goes through prepare() (the data order is ours), so tell DeepSpeed the micro-batch
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    objective, optimizer, lr_schedule = accelerator.prepare(objective, optimizer, lr_schedule)
    ga = accelerator.gradient_accumulation_steps
    cfg = dataclasses.replace(cfg, grad_accum=ga, mixed_precision=accelerator.mixed_precision)
    if resumed is not None and resumed.trainer["train_config"]["grad_accum"] != ga:
        raise TrainError(
            f"--resume: gradient accumulation is {ga}, the run used {resumed.trainer['train_config']['grad_accum']}"
        )
    igr = accelerator.unwrap_model(objective).igr
    ema = EMA(igr, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # saved and restored with the state
    meta = {
        "stage": cfg.stage,
        "preset": cfg.preset,
        "train_config": dataclasses.asdict(cfg),
        "data": [str(s.root) for s in data.sources],
        "init": cfg.init or cfg.sd15,
    }
    trainable = sum(p.numel() for p in params)
    t = Trainer(cfg, accelerator, objective, optimizer, lr_schedule, igr, ema, resumed is not None, meta, trainable)
    if resumed is not None:
        load_state(t, resumed)
    return t


def load_state(t: Trainer, resumed: Resumed) -> None:
    acc, saved = t.accelerator, resumed.trainer
    acc.load_state(str(resumed.folder))
    t.step, t.elapsed = int(saved["step"]), float(saved.get("elapsed", 0.0))
    if saved.get("world_size", 1) != acc.num_processes:
        log.warning(
            "resuming on %d processes, the run used %s: the data order changes",
            acc.num_processes,
            saved.get("world_size"),
        )
    log.info("resumed %s at step %d", resumed.folder, t.step)


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train as ``cfg`` says; ``on_step(step, loss)`` is called after every optimizer step (tests)."""
    cfg, resumed = resume_or_start(cfg)
    accelerator = make_accelerator(cfg)
    data = open_data(cfg)  # data first: bad data should stop a run before minutes of weight loading
    model, cfg = start_model(cfg, resumed)
    t = prepare(cfg, accelerator, model, resumed, data)
    # after prepare: a resumed run's VAE holds the saved weights only once its state is loaded
    trainset = training_set(data, t.igr, cfg, accelerator)
    write_run_files(t, data.val_pairs)
    loader = data_loader(t, trainset)
    if t.main:
        log.info(
            "training %s (%s stage) on %d pairs: %d steps of %d x %d x %d samples, lr %g, %s, %s precision, "
            "%.1fM trainable parameters",
            t.cfg.preset,
            t.cfg.stage,
            len(trainset),
            t.cfg.max_steps,
            t.cfg.batch_size,
            t.cfg.grad_accum,
            accelerator.num_processes,
            t.cfg.lr,
            f"{t.igr.config.height}x{t.igr.config.width}",
            accelerator.mixed_precision,
            t.trainable / 1e6,
        )
    return train_steps(t, loader, data.val_pairs, on_step)


def write_run_files(t: Trainer, val_pairs: list[tuple[PairDataset, int]]) -> None:
    if t.main:
        t.out.mkdir(parents=True, exist_ok=True)
        (t.out / "train_config.json").write_text(json.dumps(dataclasses.asdict(t.cfg), indent=2))
        (t.out / "val_names.txt").write_text("".join(f"{ds.root}\t{ds.names[i]}\n" for ds, i in val_pairs))
        trim_loss_log(t.out / "loss.csv", t.step)


def data_loader(t: Trainer, trainset: ConcatDataset) -> DataLoader:
    """Batches in the run's seeded order, continuing at the step reached."""
    acc, cfg = t.accelerator, t.cfg
    sampler = StreamBatchSampler(
        len(trainset), cfg.batch_size, cfg.seed, t.step * cfg.grad_accum, acc.process_index, acc.num_processes
    )
    return DataLoader(
        trainset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=acc.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )


def train_steps(t: Trainer, loader: DataLoader, val_pairs, on_step) -> TrainResult:
    """Optimizer steps up to ``max_steps``, with the logs, saves and validation grids they are due."""
    cfg = t.cfg
    rows: list[tuple[int, float]] = []
    interval_losses: list[torch.Tensor] = []
    compute_time, compute_steps = 0.0, 0
    t.train_mode()
    bar = tqdm(total=cfg.max_steps, initial=t.step, disable=not t.main, unit="step", dynamic_ncols=True)
    batches = iter(loader)
    final = None
    try:
        while t.step < cfg.max_steps:
            t0 = time.perf_counter()
            step_loss = t.one_step(batches)
            loss_value = step_loss.item()  # also waits for the GPU, so the timing below is honest
            if not math.isfinite(loss_value):
                raise TrainError(f"loss is {loss_value} at step {t.step + 1}; lower --lr or check the data")
            t.step += 1
            dt = time.perf_counter() - t0
            t.elapsed += dt
            if t.step > 1 or t.resumed:  # the first step of a process pays one-off costs
                compute_time += dt
                compute_steps += 1
            interval_losses.append(step_loss)
            lr = t.lr_schedule.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if t.step % cfg.log_every == 0 or t.step == cfg.max_steps:
                rows.append(t.log_interval(interval_losses, lr))
                interval_losses = []
            if cfg.save_every and t.step % cfg.save_every == 0 and t.step < cfg.max_steps:
                t.save(final=False)
            if cfg.val_every and val_pairs and t.step % cfg.val_every == 0:
                t.validate(val_pairs)
            if on_step is not None:
                on_step(t.step, loss_value)
        final = t.save(final=True)
    finally:
        bar.close()
        del batches  # stops data-loader workers
    speed = compute_steps / compute_time if compute_time > 0 else float("nan")
    if t.main:
        log.info("done: step %d, loss %.4f, %.3f steps/s; checkpoint %s", t.step, t.last_loss, speed, final)
    return TrainResult(t.out, t.step, final, rows, speed, t.main)

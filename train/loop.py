"""The training loop behind ``train/train.py``: model start, accelerate, steps, logs, saves, resume.

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
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from igr_sdk._preprocess import to_image
from train.checkpoint import CheckpointError, load_checkpoint, new_model, read_config, save_checkpoint
from train.config import IGRConfig, preset
from train.datasets import PairDataset
from train.ema import EMA
from train.latent_cache import attach_latents
from train.model import IGRModel
from train.objective import DiffusionObjective, draw, micro_batch_seed, set_trainable, trainable_parameters
from train.pipeline import ReferencePipeline
from train.state import read_state
from train.traindata import Source, StreamBatchSampler, TrainSet, open_sources, prepare_sample, validation_pairs

if TYPE_CHECKING:
    from train.train import TrainConfig

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


class TrainError(ValueError):
    """A training option, run folder or resume state cannot be used; the message names it."""


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
        # a pre-trained VAE brings its own latent scale: weights and shapes are what must match
        vae = dataclasses.replace(config.vae, scaling_factor=expected.vae.scaling_factor)
        diff = [k for k in ARCHITECTURE if (vae if k == "vae" else getattr(config, k)) != getattr(expected, k)]
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
    if cfg.guidance_scale is not None:
        c = dataclasses.replace(c, guidance_scale=cfg.guidance_scale)
    model.config = c  # none of these change the architecture
    return model


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
# the run


def run(cfg: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train as ``cfg`` says; ``on_step(step, loss)`` is called after every optimizer step (tests)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

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

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum or 1,
        step_scheduler_with_optimizer=False,  # one LR-schedule step per optimizer step, whatever the world size
    )
    main = accelerator.is_main_process
    if cfg.grad_accum is not None and accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise TrainError(
            f"--grad-accum {cfg.grad_accum} conflicts with the accelerate config's gradient_accumulation_steps "
            f"{accelerator.gradient_accumulation_steps}; set it in one place only"
        )

    # data first: bad data should stop a run before minutes of weight loading
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
    val_pairs = val_pairs or held

    model = build_model(cfg, saved["igr_config"] if saved is not None else None)
    if saved is not None:
        now = json.loads(model.config.to_json())
        diff = sorted(k for k in now if now[k] != saved["igr_config"].get(k))
        if diff:
            raise TrainError(f"--resume: the model config differs from {state_dir / TRAINER_FILE} in {diff}")
    cfg = dataclasses.replace(
        cfg,
        cond_drop_prob=model.config.cond_drop_prob,
        prediction_type=model.config.scheduler.prediction_type,
        guidance_scale=model.config.guidance_scale,
    )
    parts = [TrainSet(ds, model.config, r) for ds, r in zip(sets, reframes)]
    if cfg.latent_cache is not None:
        for part in parts:  # every process reads the same file; the main one writes what is missing
            with accelerator.main_process_first():
                attach_latents(part, model, Path(cfg.latent_cache))
    trainset = ConcatDataset(parts)

    set_trainable(model, cfg.train_vae, cfg.train_image_encoder)
    if cfg.gradient_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
        model.garmnet.enable_gradient_checkpointing()
    objective = DiffusionObjective(
        model, train_vae=cfg.train_vae, snr_gamma=cfg.snr_gamma, thumbnail_weight=cfg.thumbnail_weight or 0.0
    )
    params = trainable_parameters(objective)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # no DataLoader goes through prepare() (the data order is ours), so tell DeepSpeed the micro-batch
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    objective, optimizer, lr_schedule = accelerator.prepare(objective, optimizer, lr_schedule)
    ga = accelerator.gradient_accumulation_steps
    cfg = dataclasses.replace(cfg, grad_accum=ga, mixed_precision=accelerator.mixed_precision)
    if saved is not None and saved["train_config"]["grad_accum"] != ga:
        raise TrainError(f"--resume: gradient accumulation is {ga}, the run used {saved['train_config']['grad_accum']}")

    unwrapped: DiffusionObjective = accelerator.unwrap_model(objective)
    igr = unwrapped.igr
    ema = EMA(igr, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # saved and restored with the state

    step, elapsed = 0, 0.0
    if saved is not None:
        accelerator.load_state(str(state_dir))
        step, elapsed = int(saved["step"]), float(saved.get("elapsed", 0.0))
        if saved.get("world_size", 1) != accelerator.num_processes:
            log.warning(
                "resuming on %d processes, the run used %s: the data order changes",
                accelerator.num_processes,
                saved.get("world_size"),
            )
        log.info("resumed %s at step %d", state_dir, step)
    # checkpoints and validation images show the averaged weights when there is an EMA
    averaged = ema.applied if ema is not None else contextlib.nullcontext

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        (out / "val_names.txt").write_text("".join(f"{ds.root}\t{ds.names[i]}\n" for ds, i in val_pairs))
        trim_loss_log(out / "loss.csv", step)
    meta_base = {
        "stage": cfg.stage,
        "preset": cfg.preset,
        "train_config": dataclasses.asdict(cfg),
        "data": [str(s.root) for s in sources],
        "init": cfg.init or cfg.sd15,
    }

    def save(final: bool) -> Path:
        meta = {**meta_base, "step": step, "loss": last_loss}
        tmp = out / STATE_TMP
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every rank writes its part (ZeRO shards the optimizer)
        accelerator.wait_for_everyone()
        ckpt = out / ("final" if final else f"step-{step:06d}")
        if main:
            trainer = {
                "step": step,
                "elapsed": elapsed,
                "world_size": accelerator.num_processes,
                "train_config": dataclasses.asdict(cfg),
                "igr_config": igr.config.to_dict(),
            }
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2))
            if (out / STATE).exists():
                shutil.rmtree(out / STATE_OLD, ignore_errors=True)
                os.replace(out / STATE, out / STATE_OLD)
            os.replace(tmp, out / STATE)
            shutil.rmtree(out / STATE_OLD, ignore_errors=True)
            with averaged():
                save_checkpoint(igr, ckpt, {**meta, "weights": "ema" if ema is not None else "raw"})
            if not final:
                prune_checkpoints(out, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return ckpt

    sampler = StreamBatchSampler(
        len(trainset), cfg.batch_size, cfg.seed, step * ga, accelerator.process_index, accelerator.num_processes
    )
    loader = DataLoader(
        trainset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    latent_shape = igr.config.latent_size
    num_t = igr.config.scheduler.num_train_timesteps
    dev = accelerator.device
    if main:
        log.info(
            "training %s (%s stage) on %d pairs: %d steps of %d x %d x %d samples, lr %g, %s, %s precision, "
            "%.1fM trainable parameters",
            cfg.preset,
            cfg.stage,
            len(trainset),
            cfg.max_steps,
            cfg.batch_size,
            ga,
            accelerator.num_processes,
            cfg.lr,
            f"{igr.config.height}x{igr.config.width}",
            accelerator.mixed_precision,
            sum(p.numel() for p in params) / 1e6,
        )

    rows: list[tuple[int, float]] = []
    last_loss = float("nan")
    interval_losses: list[torch.Tensor] = []
    compute_time, compute_steps = 0.0, 0

    def train_mode() -> None:
        objective.train()
        igr.vae.train(cfg.train_vae)  # frozen parts stay in eval mode
        igr.image_encoder.train(cfg.train_image_encoder)

    train_mode()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not main, unit="step", dynamic_ncols=True)
    batches = iter(loader)
    final = None
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            micro_losses = []
            for a in range(ga):
                batch = next(batches)
                d = draw(
                    micro_batch_seed(cfg.seed, step, a, accelerator.process_index),
                    cfg.batch_size,
                    latent_shape,
                    num_t,
                    igr.config.cond_drop_prob,
                )
                order = d.order  # dropped samples first (model.denoise's batch convention)
                inputs = {k: v[order].to(dev, non_blocking=True) for k, v in batch.items()}
                with accelerator.accumulate(objective):
                    res = objective(
                        **inputs,
                        noise=d.noise[order].to(dev),
                        timesteps=d.timesteps[order].to(dev),
                        n_uncond=int(d.drop.sum()),
                    )
                    accelerator.backward(res["loss"])
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(objective.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        lr_schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_losses.append(res["loss"].detach().float())
            if ema is not None:
                ema.update()
            step_loss = torch.stack(micro_losses).mean()
            loss_value = step_loss.item()  # also waits for the GPU, so the timing below is honest
            if not math.isfinite(loss_value):
                raise TrainError(f"loss is {loss_value} at step {step + 1}; lower --lr or check the data")
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            if step > 1 or saved is not None:  # the first step of a process pays one-off costs
                compute_time += dt
                compute_steps += 1
            interval_losses.append(step_loss)
            lr = lr_schedule.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mean = accelerator.reduce(torch.stack(interval_losses).mean(), reduction="mean").item()
                interval_losses = []
                last_loss = mean
                rows.append((step, mean))
                if main:
                    new = not (out / "loss.csv").is_file()
                    with (out / "loss.csv").open("a", newline="") as f:
                        w = csv.writer(f)
                        if new:
                            w.writerow(["step", "loss", "lr", "seconds"])
                        w.writerow([step, f"{mean:.6f}", f"{lr:.6g}", f"{elapsed:.2f}"])
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                save(final=False)
            if cfg.val_every and val_pairs and step % cfg.val_every == 0:
                if main:
                    objective.eval()
                    with accelerator.autocast(), averaged():
                        grid = validation_grid(igr, val_pairs, cfg.val_steps, cfg.seed)
                    (out / "val").mkdir(exist_ok=True)
                    grid.save(out / "val" / f"step-{step:06d}.png")
                    train_mode()
                accelerator.wait_for_everyone()
            if on_step is not None:
                on_step(step, loss_value)
        final = save(final=True)
    finally:
        bar.close()
        del batches  # stops data-loader workers
    speed = compute_steps / compute_time if compute_time > 0 else float("nan")
    if main:
        log.info("done: step %d, loss %.4f, %.3f steps/s; checkpoint %s", step, last_loss, speed, final)
    return TrainResult(out, step, final, rows, speed, main)

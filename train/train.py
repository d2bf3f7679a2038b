"""Train IGR: coarse stage on VITON-style pairs, then fine stage (HQFT) on the curated subset.

The smallest complete run (CPU, seconds; leaves a loadable checkpoint at RUN/final)::

    python train/synthetic.py --out /tmp/syn --count 24 --size 64x48
    python train/train.py --preset tiny --data /tmp/syn --stage coarse --max-steps 20 --out RUN

What is trained (DESIGN.md section 2): the GarmDenoiser UNet with its IP-Adapter K/V layers, GarmNet
and the IP-Adapter image projection, with AdamW on the epsilon-prediction MSE at t ~ U[0, T) under
the config's DDPM schedule. The VAE and the CLIP image encoder stay frozen (eval mode, no gradients)
and the category prompts are fixed embeddings. Each sample drops both garment conditions (GarmNet
reference and IP tokens) with probability ``cond_drop_prob`` (0.1) so that classifier-free guidance
works. Learning rate: 1e-5 for sd15 (the paper's), 1e-4 for the from-scratch presets tiny/small.

The tiny and small presets have no pretrained VAE or CLIP: with random frozen ones the restored
images are only as good as a random autoencoder allows. For those presets ``--train-vae`` trains the
VAE too (its own reconstruction + KL loss on the person and garment images; the diffusion loss does
not reach it) and ``--train-image-encoder`` trains the CLIP tower through the IP tokens. By default
both stay frozen, as DESIGN.md says; for sd15 they are refused.

Full-scale run on GPU hosts (the paper: 4 x A100 80 GB, DeepSpeed ZeRO-2, batch 32, lr 1e-5,
1024x768). Weights are local folders, never downloaded here: the SD1.5 diffusers folder, the public
``ip-adapter_sd15`` file and its CLIP ViT-H/14 image encoder folder::

    SD15=/models/stable-diffusion-v1-5            # unet/ vae/ text_encoder/ tokenizer/
    IPA=/models/IP-Adapter/models/ip-adapter_sd15.bin
    CLIPH=/models/IP-Adapter/models/image_encoder # CLIP ViT-H/14 (CLIPVisionModelWithProjection)
    ACC=train/configs/accelerate_deepspeed_zero2.yaml   # 4 GPUs, ZeRO-2, bf16, grad. accumulation 2

    # 1. coarse: VITON-HD + DressCode from SD1.5 + IP-Adapter; 4 GPUs x 4 x 2 accumulation = 32 per step
    accelerate launch --config_file $ACC train/train.py --preset sd15 --stage coarse \\
        --sd15 $SD15 --ip-adapter $IPA --clip-vision $CLIPH \\
        --data /data/VITON-HD /data/DressCode --batch-size 4 --gradient-checkpointing \\
        --max-steps 40000 --save-every 2000 --val-every 1000 --num-workers 8 --out runs/coarse

    # 2. curate the fine subset, one list per data root (train/curate.py)
    python train/curate.py --data /data/VITON-HD --out runs/hqft/viton.txt --resize-list runs/hqft/viton-rp.txt
    python train/curate.py --data /data/DressCode --out runs/hqft/dc.txt --resize-list runs/hqft/dc-rp.txt

    # 3. fine: from the coarse checkpoint on the curated pairs (extreme proportions reframed)
    accelerate launch --config_file $ACC train/train.py --preset sd15 --stage fine \\
        --init runs/coarse/final --data /data/VITON-HD /data/DressCode \\
        --subset runs/hqft/viton.txt runs/hqft/dc.txt --resize-list runs/hqft/viton-rp.txt runs/hqft/dc-rp.txt \\
        --batch-size 4 --gradient-checkpointing --max-steps 10000 --save-every 1000 --out runs/fine

    # after an interruption: the same command with --resume (continues at the last saved step)

``train/configs/deepspeed_zero2.json`` is the same setup as a DeepSpeed config file, for ZeRO options
the accelerate file cannot hold (bucket sizes, communication overlap)::

    accelerate launch --use_deepspeed --deepspeed_config_file train/configs/deepspeed_zero2.json \\
        --num_processes 4 train/train.py --mixed-precision bf16 --grad-accum 2 ...

On one GPU or CPU no launcher is needed: ``python train/train.py ...`` (on a CPU shared with other
jobs, ``OMP_NUM_THREADS=1`` can be several times faster than torch's one thread per core).

Under DeepSpeed bf16 the module weights are bf16, so RUN/step-*/ and RUN/final hold bf16-rounded
weights (stored as such); the fp32 masters are in RUN/state (DeepSpeed's ``zero_to_fp32.py`` extracts them).

Errors a user can fix (missing data folder, empty data set, corrupt image, a checkpoint of another
preset, inconsistent options) stop the run with one line on stderr naming the file or option, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python train/train.py`: put the repo root first and the script folder (whose datasets.py,
    # config.py would shadow libraries of those names) out of the path.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.checkpoint import CheckpointError
from train.config import PRESETS
from train.datasets import DataError
from train.loop import TrainError, TrainResult

STAGES = ("coarse", "fine")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISION = ("no", "fp16", "bf16")
FROM_SCRATCH = ("tiny", "small")


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
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (5 is the paper's); None: plain MSE
    ema_decay: float | None = None  # EMA of the weights, stored in checkpoints and sampled from
    thumbnail_weight: float | None = None  # weight of the training-only IP-token thumbnail loss (None: 0)
    latent_cache: str | None = None  # folder of cached VAE latents (the VAE must be frozen)

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
            ("--keep-checkpoints", self.keep_checkpoints, 0),
            ("--seed", self.seed, 0),
        ):
            if n < least:
                bad(option, f"must be >= {least}, got {n}")
        if self.lr is not None and not self.lr > 0:
            bad("--lr", f"must be > 0, got {self.lr}")
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


def train(config: TrainConfig, on_step=None) -> TrainResult:
    """Run (or resume) training; see train.loop.run."""
    from train.loop import run

    return run(config, on_step=on_step)


# --------------------------------------------------------------------------------------------
# command line


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolution must look like 1024x768 (H x W), got {text!r}") from None
    return h, w


def parser() -> argparse.ArgumentParser:
    d = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(TrainConfig)})
    ap = argparse.ArgumentParser(
        description="Train IGR (coarse, then fine on a curated subset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = ap.add_argument
    a("--preset", default=d.preset, choices=sorted(PRESETS), help="model size")
    a("--data", nargs="+", required=True, help="data roots: VITON-HD layout (and synthetic sets) or DressCode")
    a("--out", required=True, help="run folder")
    a("--stage", default=d.stage, choices=STAGES)
    a("--max-steps", type=int, default=d.max_steps, help="optimizer steps in total")
    a("--batch-size", type=int, default=d.batch_size, help="samples per process and micro-batch")
    a("--lr", type=float, default=None, help="AdamW learning rate (default 1e-5 for sd15, 1e-4 for tiny/small)")
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up")
    a("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping, 0 disables")
    a("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default: launcher's, else 1)")
    a("--mixed-precision", choices=MIXED_PRECISION, default=None, help="default: launcher's, else no")
    a("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward (saves memory)")
    a("--seed", type=int, default=d.seed)
    a("--save-every", type=int, default=d.save_every, help="checkpoint + state every N steps (0: at the end only)")
    a("--val-every", type=int, default=d.val_every, help="validation grid every N steps (0: never)")
    a("--log-every", type=int, default=d.log_every, help="loss.csv row every N steps")
    a("--num-workers", type=int, default=d.num_workers, help="data-loader worker processes")
    a("--init", default=None, help="checkpoint folder to start from (the fine stage: RUN_COARSE/final)")
    a("--sd15", default=None, help="Stable Diffusion 1.5 diffusers folder (real start, --preset sd15)")
    a("--ip-adapter", default=None, help="ip-adapter_sd15 .bin/.safetensors (with --sd15)")
    a("--clip-vision", default=None, help="CLIP ViT-H/14 image encoder folder (with --sd15)")
    a("--subset", nargs="+", default=[], help="name list per --data folder (train/curate.py --out)")
    a("--resize-list", nargs="+", default=[], help="per --data folder, pairs to reframe (curate --resize-list)")
    a("--resolution", type=_resolution, default=None, help="H x W, e.g. 512x384 (default: the model's)")
    a("--split", default=d.split, help="split folder of the data roots")
    a("--cond-drop-prob", type=float, default=None, help="condition-drop rate (default: the config's, 0.1)")
    a("--train-vae", action="store_true", help="tiny/small only: train the VAE (reconstruction loss)")
    a("--train-image-encoder", action="store_true", help="tiny/small only: train the CLIP image encoder")
    a("--val-count", type=int, default=d.val_count, help="pairs per validation grid")
    a("--val-steps", type=int, default=d.val_steps, help="DDIM steps of validation images")
    a("--val-data", default=None, help="validation data root (default: test split, else pairs held out)")
    a("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="periodic checkpoints kept (0: all)")
    a("--resume", action="store_true", help="continue from RUN/state when there is one")
    a("--prediction-type", choices=PREDICTION_TYPES, default=None, help="default: the model config's")
    a("--guidance-scale", type=float, default=None, help="CFG scale stored in the model (default: the config's)")
    a("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting, e.g. 5 (default: off)")
    a("--ema-decay", type=float, default=None, help="keep an EMA of the weights, e.g. 0.999 (default: off)")
    a("--thumbnail-weight", type=float, default=None, help="IP-token thumbnail loss weight (default: 0, off)")
    a("--latent-cache", default=None, help="folder for cached VAE latents of the pairs (frozen VAE only)")
    a("-q", "--quiet", action="store_true", help="warnings only")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    for k in ("data", "subset", "resize_list"):
        kw[k] = tuple(kw[k])
    return TrainConfig(**kw)


def one_line(e: Exception) -> str:
    """The message of ``e`` on one line. An error re-raised from a DataLoader worker carries the
    worker's traceback, whose last line is the original message (which names the file)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return lines[0] if lines else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from train.weights import WeightsError

    try:
        result = train(config_from_args(args))
    except (DataError, CheckpointError, WeightsError, TrainError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if result.main_process:
        print(
            f"step {result.step}: loss {result.log[-1][1] if result.log else float('nan'):.4f}, "
            f"{result.steps_per_second:.3f} steps/s; checkpoint {result.final}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

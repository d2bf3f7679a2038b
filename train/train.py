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
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from igr_sdk.contract import resolution_arg
from train.checkpoint import CheckpointError
from train.config import PRESETS
from train.datasets import DataError
from train.loop import TrainResult, run
from train.trainconfig import MIXED_PRECISION, PREDICTION_TYPES, STAGES, TrainConfig, TrainError


def train(config: TrainConfig, on_step=None) -> TrainResult:
    """Run (or resume) training; see train.loop.run."""
    return run(config, on_step=on_step)


# --------------------------------------------------------------------------------------------
# command line


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
    a(
        "--lr-decay-steps",
        type=int,
        default=d.lr_decay_steps,
        help="after the warm-up, a cosine decay of the learning rate that reaches --min-lr at this step "
        "and stays there (0: constant); fixed for the run, unlike --max-steps",
    )
    a("--min-lr", type=float, default=d.min_lr, help="the learning rate at the end of --lr-decay-steps")
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
    a("--resolution", type=resolution_arg(), default=None, help="H x W, e.g. 512x384 (default: the model's)")
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
    a(
        "--zero-terminal-snr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero-terminal-SNR betas with trailing timesteps (Lin et al. 2024; v-prediction only); "
        "default: the model config's",
    )
    a("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting, e.g. 5 (default: off)")
    a("--ema-decay", type=float, default=None, help="keep an EMA of the weights, e.g. 0.999 (default: off)")
    a("--thumbnail-weight", type=float, default=None, help="IP-token thumbnail loss weight (default: 0, off)")
    a("--latent-cache", default=None, help="folder for cached VAE latents of the pairs (frozen VAE only)")
    a(
        "--attention-heads",
        type=_int_list,
        default=None,
        help="attention heads per UNet level, finest first, e.g. 1,4,4: the start's weights re-split into "
        "these heads (fewer at the finest level make CPU engines faster); default: the model's",
    )
    a("-q", "--quiet", action="store_true", help="warnings only")
    return ap


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4,4, got {text!r}") from None


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

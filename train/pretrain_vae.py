"""Pre-train the VAE of a from-scratch preset (tiny/small) on synthetic persons and garments.

SD1.5 has a pretrained VAE; the small presets have none, and IGR keeps its VAE frozen, so it is
trained first, alone, as an autoencoder of the images IGR will see (person photos in and flat
garments out): L1 + MSE + chroma-L1 reconstruction of the posterior mean (IGR encodes with the mean; decoding
samples early on buries the colours under the posterior's unit noise) plus a small KL term (weight
1e-6, as latent-diffusion autoencoders use), AdamW. Afterwards the latent scaling factor is set to
1 / std of the latents, as Stable Diffusion's 0.18215 was, so the diffusion noise schedule sees
unit-variance latents. The result is written as an IGR checkpoint whose
other parts are freshly initialised, ready for ``train/train.py --init``.

    python train/pretrain_vae.py --preset small --steps 600 --out runs/vae-small
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

import numpy as np
import torch
import torch.nn.functional as F

from igr_sdk.contract import resolution_arg
from igr_sdk.preprocess import fit
from train.checkpoint import load_checkpoint, new_model, save_checkpoint
from train.config import preset
from train.model import DECODER_PREFIXES
from train.synthetic import make_pair, pair_seed

log = logging.getLogger(__name__)


def batches(
    seed: int, size: tuple[int, int], batch: int, crop: tuple[int, int] | None = None, garments_only: bool = False
):
    """An endless, seeded stream of (B, 3, h, w) images in [-1, 1]: persons and flat garments, alternating
    (or garments alone: the only images IGR ever decodes).

    The VAE is convolutional, so it learns as well from random crops as from whole images at a
    fraction of the cost; ``crop`` (h, w) sets their size.
    """
    h, w = size
    ch, cw = crop or size
    rng = np.random.default_rng(seed)
    index = 0
    while True:
        imgs = []
        for _ in range(batch):
            pair = make_pair(pair_seed(seed, index // 2), size)
            rgb = pair.garment if garments_only or index % 2 else pair.person
            full = fit(rgb, np.ones(rgb.shape[:2], bool), h, w)[0]
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            imgs.append(full[y : y + ch, x : x + cw])
            index += 1
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        yield x


def chroma(x: torch.Tensor) -> torch.Tensor:
    """Each pixel minus its grey level: the colour an image carries, (B, 3, H, W)."""
    return x - x.mean(dim=1, keepdim=True)


def train_vae(
    model,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    crop: tuple[int, int] | None = None,
    kl_weight: float = 1e-6,
    chroma_weight: float = 2.0,
    log_every: int = 50,
    cosine: bool = False,
    decoder_only: bool = False,
):
    vae = model.vae.train()
    # decoder_only keeps the encoder, and so every latent a trained denoiser has learned, fixed:
    # only how latents become pixels improves
    for n, p in vae.named_parameters():
        p.requires_grad_(not decoder_only or n.startswith(DECODER_PREFIXES))
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    # a cosine decay to 1% of lr: the last few hundred steps at a small rate buy several dB of PSNR
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)) if cosine else 1.0
    )
    data = batches(seed, (model.config.height, model.config.width), batch, crop, garments_only=decoder_only)
    history = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = next(data)
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample
        # without the chroma term a small VAE settles on grey reconstructions for thousands of steps:
        # luminance explains most of an RGB loss, and garment identity is mostly colour
        loss = (
            F.l1_loss(rec, x)
            + F.mse_loss(rec, x)
            + chroma_weight * F.l1_loss(chroma(rec), chroma(x))
            + (0.0 if decoder_only else kl_weight * post.kl().mean())
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            log.info(
                "vae step %d/%d loss %.4f (%.2f steps/s)",
                step,
                steps,
                np.mean(history[-log_every:]),
                step / (time.perf_counter() - t0),
            )
    vae.eval()
    return history


@torch.no_grad()
def latent_scale(model, seed: int, n: int = 64) -> float:
    """1 / std of the VAE's latent means over ``n`` whole images: the config's scaling_factor."""
    x = next(batches(seed + 1, (model.config.height, model.config.width), n))
    return float(1.0 / model.vae.encode(x).latent_dist.mean.std())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--crop", type=resolution_arg("--crop", "128x96"), default="128x96", help="training crop HxW (default 128x96)"
    )
    ap.add_argument("--seed", type=int, default=1000, help="synthetic data seed (keep it apart from test seeds)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="continue from this checkpoint's VAE")
    ap.add_argument("--chroma-weight", type=float, default=2.0, help="weight of the colour (chroma) L1 term")
    ap.add_argument("--cosine", action="store_true", help="decay the learning rate to 1%% of --lr on a cosine")
    ap.add_argument(
        "--decoder-only",
        action="store_true",
        help="train only the decoder, on garments, keeping the encoder and the latent scaling factor "
        "(the latents of a trained IGR model stay valid; its denoiser is kept too)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = load_checkpoint(args.init) if args.init else new_model(preset(args.preset), seed=0)
    t0 = time.perf_counter()
    crop = args.crop
    if args.decoder_only and not args.init:
        ap.error("--decoder-only needs --init: it fine-tunes the decoder of a trained VAE")
    history = train_vae(
        model,
        args.steps,
        args.batch,
        args.lr,
        args.seed,
        crop,
        chroma_weight=args.chroma_weight,
        cosine=args.cosine,
        decoder_only=args.decoder_only,
    )
    if not args.decoder_only:
        scale = latent_scale(model, args.seed)
        c = model.config
        model.config = dataclasses.replace(c, vae=dataclasses.replace(c.vae, scaling_factor=round(scale, 5)))
        log.info("latent scaling factor %.5f", scale)
    save_checkpoint(
        model,
        args.out,
        meta={
            "stage": "vae-decoder" if args.decoder_only else "vae",
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "data_seed": args.seed,
            "loss_first": history[0],
            "loss_last": history[-1],
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

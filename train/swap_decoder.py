"""Put a fine-tuned VAE decoder into a trained IGR checkpoint.

``train/pretrain_vae.py --decoder-only`` improves how latents become pixels while the encoder, and
so every latent the denoiser learned, stays fixed. The denoiser can therefore go on training at the
same time from the same start; this joins the two results. It refuses a decoder whose encoder
differs from the model's (its latents would not be the ones the denoiser predicts).

    python -m train.swap_decoder --model runs/zt-fine/final --decoder runs/vae-dec --out runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from train.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from train.model import DECODER_PREFIXES, build_vae

log = logging.getLogger(__name__)


def swap_decoder(model_dir: str | Path, decoder_dir: str | Path, out: str | Path) -> Path:
    model, donor = load_checkpoint(model_dir), load_checkpoint(decoder_dir)
    # the donor's decoder may be wider (train/grow_decoder.py); everything else about the VAE must match
    if dataclasses.replace(model.config.vae, decoder_block_out_channels=None) != dataclasses.replace(
        donor.config.vae, decoder_block_out_channels=None
    ):
        raise CheckpointError(
            f"the VAE configs differ: {model_dir} has {model.config.vae}, {decoder_dir} has {donor.config.vae}"
        )
    mine, theirs = model.vae.state_dict(), donor.vae.state_dict()
    changed = [k for k in mine if not k.startswith(DECODER_PREFIXES) and not torch.equal(mine[k], theirs[k])]
    if changed:
        raise CheckpointError(
            f"{decoder_dir}'s VAE encoder differs from {model_dir}'s ({len(changed)} tensors, e.g. {changed[0]!r}): "
            "its decoder reads other latents than the ones this denoiser predicts"
        )
    if donor.config.vae != model.config.vae:
        model.config = dataclasses.replace(model.config, vae=donor.config.vae)
        model.vae = build_vae(model.config)
    model.vae.load_state_dict({k: v if k.startswith(DECODER_PREFIXES) else mine[k] for k, v in theirs.items()})
    meta = {
        **read_meta(model_dir),
        "decoder_from": str(decoder_dir),
        "decoder_meta": read_meta(decoder_dir),
        "model_from": str(model_dir),
    }
    return save_checkpoint(model, out, meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="the IGR checkpoint whose other parts are kept")
    ap.add_argument("--decoder", required=True, type=Path, help="the checkpoint whose VAE decoder is taken")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        swap_decoder(args.model, args.decoder, args.out)
    except CheckpointError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Widen a trained VAE decoder without changing what it computes, so that training goes on from it.

The latents a trained denoiser predicts belong to the VAE's encoder; the decoder alone turns them
into pixels, so it can be made wider afterwards and fine-tuned (``train/pretrain_vae.py
--decoder-only``) while the denoiser stays valid. Starting the wider decoder from scratch would
throw away everything the narrow one learned; instead every channel of a widened level is
duplicated (Net2WiderNet, Chen et al. 2016):

- a layer whose output widens by k gives each of the k copies of an output channel the original's
  weights and bias, so the copies carry identical activations;
- a layer whose input widens by k splits each original input weight among the k copies in random
  shares that sum to one, so its output is unchanged; the unequal shares make the copies' gradients
  differ, and they drift apart once training starts;
- copies are laid out so that every GroupNorm group holds the k copies of one original group:
  duplicated values leave a group's mean and variance, and so the normalisation, unchanged;
- in the mid block's attention the queries are scaled by 1/sqrt(k), which keeps every score.

    python -m train.grow_decoder --model runs/zt-fine/final --channels 32,64,64,64 --out runs/vae-wide0
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from train.checkpoint import CheckpointError, load_checkpoint, new_model, read_meta, save_checkpoint
from train.model import IGRModel

log = logging.getLogger(__name__)


def _copies(new: int, old: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``new`` channels, the old channel it copies and which copy (0 .. k-1) it is: (new,) each.

    ``old`` channels in ``groups`` groups of s; new group g holds k = new // old copies of old group g,
    copy r of it at positions [g*k*s + r*s, g*k*s + (r+1)*s).
    """
    k, s = new // old, old // groups
    n = torch.arange(new)
    return (n // (k * s)) * s + n % s, (n % (k * s)) // s


def _widen(w: torch.Tensor, shape: torch.Size, groups: int, gen: torch.Generator, jitter: float) -> torch.Tensor:
    """``w`` grown to ``shape``: dim 0 (outputs) duplicated, dim 1 (inputs of a conv/linear) split."""
    out = w
    if shape[0] != w.shape[0]:
        out = out[_copies(shape[0], w.shape[0], groups)[0]]
    if w.ndim >= 2 and shape[1] != w.shape[1]:
        new, old = shape[1], w.shape[1]
        k = new // old
        index, rank = _copies(new, old, groups)
        # shares 1/k + d_r with sum_r d_r = 0 for each (output, original input, kernel tap)
        d = (torch.rand((out.shape[0], old, k, *out.shape[2:]), generator=gen) - 0.5) * (2 * jitter / k)
        d = d - d.mean(dim=2, keepdim=True)  # (O, old, k, ...)
        out = out[:, index] * (1.0 / k + d[:, index, rank])  # (O, new, ...)
    return out


def widen_decoder(model: IGRModel, channels: tuple[int, ...], seed: int = 0, jitter: float = 0.2) -> IGRModel:
    """A copy of ``model`` whose VAE decoder has widths ``channels`` and decodes as the original does.

    Each new width must be the old one times a whole number; ``jitter`` (0..1) sets how unequal the
    input shares of the copies are.
    """
    vae = model.config.vae
    old = vae.decoder_channels
    channels = tuple(int(c) for c in channels)
    if len(channels) != len(old):
        raise ValueError(f"--channels: give one width per level ({len(old)}, now {old}), got {channels}")
    bad = [(o, c) for o, c in zip(old, channels) if c < o or c % o]
    if bad:
        raise ValueError(f"--channels: each width must be a whole multiple of the current one {old}, got {channels}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    same = channels == tuple(vae.block_out_channels)
    config = dataclasses.replace(
        model.config, vae=dataclasses.replace(vae, decoder_block_out_channels=None if same else channels)
    )
    grown = new_model(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    theirs = grown.state_dict()
    old_state = dict(model.state_dict())
    for name in theirs:
        if ".conv_shortcut." in name and name not in old_state:
            # the wider decoder needs a 1x1 shortcut conv where the narrow one added its input unchanged:
            # that identity, written as a conv, is what gets widened
            c = model.get_submodule(name.split(".conv_shortcut.")[0]).in_channels
            old_state[name] = torch.eye(c)[:, :, None, None] if name.endswith("weight") else torch.zeros(c)
    state = {}
    for name, w in old_state.items():
        target = theirs[name].shape
        if w.shape == target:
            state[name] = w
        elif name.startswith("vae.decoder."):
            grown_w = _widen(w, target, vae.norm_num_groups, gen, jitter)
            if ".to_q." in name:
                # k copies of every query and key channel multiply q.k by k while the softmax scale
                # 1/sqrt(width) only falls by sqrt(k): the queries take the other 1/sqrt(k)
                grown_w = grown_w * (w.shape[0] / target[0]) ** 0.5
            state[name] = grown_w.contiguous()
        else:
            raise ValueError(f"{name}: shape {tuple(w.shape)} would change to {tuple(target)} outside the decoder")
    missing = sorted(set(theirs) - set(state))
    if missing:
        raise ValueError(f"the widened decoder has parameters the original lacks, e.g. {missing[0]!r}")
    grown.load_state_dict(state)
    return grown.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="the IGR checkpoint whose decoder is widened")
    ap.add_argument("--channels", required=True, help="new decoder widths per level, finest first, e.g. 32,64,64,64")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0, help="seed of the copies' input shares")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        ap.error(f"--channels: expected comma-separated integers, got {args.channels!r}")
    try:
        model = load_checkpoint(args.model)
        grown = widen_decoder(model, channels, seed=args.seed)
    except (CheckpointError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    save_checkpoint(grown, args.out, meta={**read_meta(args.model), "decoder_widened_from": str(args.model)})
    log.info("wrote %s (decoder widths %s)", args.out, grown.config.vae.decoder_channels)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decoder-only VAE fine-tuning keeps every latent fixed, and swap_decoder joins it to a model."""

from __future__ import annotations

import pytest
import torch

from train.checkpoint import CheckpointError, load_checkpoint, new_model, save_checkpoint
from train.config import preset
from train.pretrain_vae import batches, train_vae
from train.swap_decoder import swap_decoder


def _split(vae):
    state = vae.state_dict()
    dec = {k: v.clone() for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
    enc = {k: v.clone() for k, v in state.items() if k not in dec}
    return enc, dec


def test_decoder_only_changes_the_decoder_alone():
    model = new_model(preset("tiny"), seed=0)
    enc0, dec0 = _split(model.vae)
    train_vae(model, steps=2, batch=2, lr=1e-3, seed=3, crop=(32, 32), decoder_only=True)
    enc1, dec1 = _split(model.vae)
    assert all(torch.equal(enc0[k], enc1[k]) for k in enc0)
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)


def test_garments_only_stream_has_white_backgrounds():
    # flat garments on white: every image's corner pixel is white, unlike the person photos
    x = next(batches(seed=5, size=(64, 48), batch=4, garments_only=True))  # (4, 3, 64, 48) in [-1, 1]
    assert x.shape == (4, 3, 64, 48)
    assert torch.all(x[:, :, 0, 0] > 0.95)


def test_swap_decoder_takes_the_decoder_and_keeps_the_rest(tmp_path):
    base = new_model(preset("tiny"), seed=0)
    a = save_checkpoint(base, tmp_path / "a")
    tuned = load_checkpoint(a)
    train_vae(tuned, steps=1, batch=2, lr=1e-2, seed=3, crop=(32, 32), decoder_only=True)
    other = new_model(preset("tiny"), seed=1)  # another denoiser, the same encoder as `base`
    other.vae.load_state_dict(base.vae.state_dict())
    b = save_checkpoint(tuned, tmp_path / "b")
    m = save_checkpoint(other, tmp_path / "m")
    out = load_checkpoint(swap_decoder(m, b, tmp_path / "out"))
    assert all(torch.equal(v, tuned.vae.state_dict()[k]) for k, v in out.vae.state_dict().items())
    assert all(torch.equal(v, other.denoiser.state_dict()[k]) for k, v in out.denoiser.state_dict().items())


def test_swap_decoder_refuses_another_encoder(tmp_path):
    a = save_checkpoint(new_model(preset("tiny"), seed=0), tmp_path / "a")
    b = save_checkpoint(new_model(preset("tiny"), seed=1), tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"VAE encoder differs from .*: its decoder reads other latents"):
        swap_decoder(a, b, tmp_path / "out")

"""A widened VAE decoder decodes exactly as the narrow one did, trains apart, saves, swaps and exports."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.graphs import example_inputs, module_for, specs
from export.onnx_export import export_onnx, torch_outputs
from train.checkpoint import load_checkpoint, new_model, save_checkpoint
from train.config import IGRConfig, VAEConfig, preset
from train.grow_decoder import main as grow_main
from train.grow_decoder import widen_decoder
from train.pretrain_vae import train_vae
from train.swap_decoder import swap_decoder

WIDE = (16, 32, 32, 32)  # the tiny preset's decoder is (8, 16, 16, 16): every level doubled, the mid block too


def _decode(model, z):
    with torch.no_grad():
        return model.vae.decode(z).sample


@pytest.mark.parametrize("widths", [WIDE, (16, 32, 16, 16), (8, 16, 16, 48)])
def test_widened_decoder_decodes_as_before(tiny_model, widths):
    grown = widen_decoder(tiny_model, widths, seed=1)
    assert grown.config.vae.decoder_channels == widths
    assert grown.vae.decoder.conv_out.in_channels == widths[0]
    z = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(0))  # (B, 4, h, w)
    torch.testing.assert_close(_decode(grown, z), _decode(tiny_model, z), atol=1e-5, rtol=1e-5)
    # everything outside the decoder is carried over unchanged
    before = tiny_model.state_dict()
    for k, v in grown.state_dict().items():
        if not k.startswith("vae.decoder."):
            assert torch.equal(v, before[k]), k


def test_copies_drift_apart_once_trained(tiny_model):
    grown = widen_decoder(tiny_model, WIDE, seed=1)
    conv = grown.vae.decoder.conv_in.weight  # (32, 4, 3, 3): channel c and its copy share weights
    group = conv.shape[0] // 4  # 4 groups of 8 channels: 4 originals, then their 4 copies
    assert torch.equal(conv[0], conv[group // 2])
    train_vae(grown, steps=2, batch=2, lr=1e-3, seed=3, crop=(32, 32), decoder_only=True)
    conv = grown.vae.decoder.conv_in.weight
    assert not torch.equal(conv[0], conv[group // 2])


def test_widened_decoder_round_trips_through_a_checkpoint(tiny_model, tmp_path):
    grown = widen_decoder(tiny_model, WIDE, seed=1)
    back = load_checkpoint(save_checkpoint(grown, tmp_path / "wide"))
    assert back.config.vae.decoder_block_out_channels == WIDE
    assert IGRConfig.from_dict(back.config.to_dict()) == grown.config
    z = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(_decode(back, z), _decode(grown, z))


def test_bad_widths_are_named(tiny_model):
    with pytest.raises(ValueError, match=r"one width per level \(4, now \(8, 16, 16, 16\)\), got \(16, 32\)"):
        widen_decoder(tiny_model, (16, 32))
    with pytest.raises(ValueError, match=r"multiple of the current one \(8, 16, 16, 16\), got \(12, 16, 16, 16\)"):
        widen_decoder(tiny_model, (12, 16, 16, 16))
    with pytest.raises(ValueError, match=r"multiples of norm_num_groups \(4\), got \(8, 16, 18, 16\)"):
        VAEConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, decoder_block_out_channels=(8, 16, 18, 16))
    with pytest.raises(ValueError, match=r"one width per level \(4\), got \(8, 16\)"):
        VAEConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, decoder_block_out_channels=(8, 16))


def test_cli_refuses_bad_channels(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        grow_main(["--model", str(tiny_checkpoint), "--channels", "16,x", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "--channels: expected comma-separated integers, got '16,x'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_swap_takes_a_wider_decoder(tmp_path):
    base = new_model(preset("tiny"), seed=0)
    wide = widen_decoder(base, WIDE, seed=2)
    train_vae(wide, steps=1, batch=2, lr=1e-2, seed=3, crop=(32, 32), decoder_only=True)
    other = new_model(preset("tiny"), seed=1)  # another denoiser, the same encoder as `base`
    other.vae.load_state_dict(base.vae.state_dict())
    b, m = save_checkpoint(wide, tmp_path / "b"), save_checkpoint(other, tmp_path / "m")
    out = load_checkpoint(swap_decoder(m, b, tmp_path / "out"))
    assert out.config.vae == wide.config.vae
    assert all(torch.equal(v, wide.vae.state_dict()[k]) for k, v in out.vae.state_dict().items())
    assert all(torch.equal(v, other.denoiser.state_dict()[k]) for k, v in out.denoiser.state_dict().items())


def test_widened_decoder_exports_to_a_matching_engine(tiny_config, tmp_path):
    model = widen_decoder(new_model(tiny_config, seed=3), WIDE, seed=1)
    model.vae.decoder.conv_out.bias.data += 0.1  # not a fresh copy of the narrow decoder alone
    spec = specs(model, 64, 48, 1)["vae_decoder"]
    inputs = example_inputs(spec, seed=2)
    expected = torch_outputs(module_for(model, "vae_decoder", 1), spec, inputs)[0]
    export_onnx(module_for(model, "vae_decoder", 1), spec, inputs, tmp_path / "d.onnx")
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_encoder_width_decoder_is_unchanged():
    # a config without decoder widths builds exactly the diffusers AutoencoderKL it always did
    cfg = preset("tiny")
    assert cfg.vae.decoder_block_out_channels is None
    model = new_model(cfg, seed=0)
    assert [b.resnets[0].conv_shortcut is not None for b in model.vae.decoder.up_blocks] == [False, False, False, True]
    assert dataclasses.asdict(cfg.vae)["decoder_block_out_channels"] is None

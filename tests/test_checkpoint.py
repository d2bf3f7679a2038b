"""The checkpoint folder round-trips exactly and refuses what is not an IGR checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from train.checkpoint import CheckpointError, load_checkpoint, new_model, read_config, save_checkpoint
from train.config import IGRConfig, preset


def test_round_trip_is_exact(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt", meta={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == tiny_model.config
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "ckpt" / "meta.json").read_text()) == {"step": 7}


def test_new_model_is_seeded_and_leaves_global_rng_alone(tiny_config):
    state = torch.random.get_rng_state()
    a, b, c = new_model(tiny_config, 1), new_model(tiny_config, 1), new_model(tiny_config, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.denoiser.conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_config_json_round_trip_for_every_preset():
    for name in ("tiny", "small", "sd15"):
        c = preset(name)
        assert IGRConfig.from_dict(json.loads(c.to_json())) == c


def test_resolution_must_fit_the_architecture():
    with pytest.raises(ValueError, match="resolution 1000x768 is not a positive multiple of 64"):
        preset("sd15").with_resolution(1000, 768)
    assert preset("tiny").with_resolution(80, 64).latent_size == (10, 8)


def test_bad_checkpoints_are_named(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path / "empty")
    ck = save_checkpoint(tiny_model, tmp_path / "ck")
    (ck / "vae.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vae.safetensors' is missing"):
        load_checkpoint(ck)
    # a checkpoint whose config says "small" but whose weights are tiny's
    save_checkpoint(tiny_model, tmp_path / "ck2")
    (tmp_path / "ck2" / "config.json").write_text(preset("small").to_json())
    with pytest.raises(CheckpointError, match="denoiser.safetensors' does not match the config's architecture"):
        load_checkpoint(tmp_path / "ck2")
    (tmp_path / "ck2" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="is not an IGR config"):
        read_config(tmp_path / "ck2")


def test_sd15_preset_has_sd15_and_vit_h_sizes():
    from train.model import IGRModel, count_parameters, denoiser_base_parameters

    with torch.device("meta"):  # shapes only: counts without allocating 2.5B weights
        m = IGRModel(preset("sd15"))
    assert denoiser_base_parameters(m) == 859_520_964
    assert count_parameters(m.image_encoder) == 632_076_800
    assert count_parameters(m.garmnet) == 859_520_964 + 320 * 9  # one more input channel
    assert len(m.self_attentions) == 16

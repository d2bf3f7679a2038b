"""Models built from the public layouts compute exactly what the saved modules compute."""

from __future__ import annotations

import pytest
import torch

from train.attention import FusionContext
from train.weights import WeightsError, from_public_layouts, load_ip_adapter


@pytest.fixture(scope="module")
def loaded(public_layouts):
    p = public_layouts
    return from_public_layouts(p.sd15, p.ip_adapter_bin, p.clip_vision, height=64, width=48, name="tiny-public")


def test_config_is_read_from_the_files(loaded, tiny_config):
    c = loaded.config
    assert c.unet == tiny_config.unet and c.vae == tiny_config.vae
    assert c.image_encoder == tiny_config.image_encoder and c.ip_tokens == 4


def test_both_ip_adapter_files_hold_the_same_weights(public_layouts):
    a = load_ip_adapter(public_layouts.ip_adapter_bin)
    b = load_ip_adapter(public_layouts.ip_adapter_safetensors)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@torch.no_grad()
def test_vae_and_image_encoder_match_the_saved_modules(loaded, public_layouts):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    ref = public_layouts.vae.encode(img).latent_dist.mean * 0.18215
    assert torch.equal(loaded.vae_encode(img), ref)
    z = torch.randn(2, 4, 8, 6, generator=g)
    assert torch.equal(loaded.vae_decode(z), public_layouts.vae.decode(z / 0.18215).sample)
    crops = torch.randn(2, 3, 224, 224, generator=g)
    assert torch.equal(
        loaded.image_encoder(pixel_values=crops).image_embeds, public_layouts.clip(pixel_values=crops).image_embeds
    )


@torch.no_grad()
def test_garmnet_starts_as_the_sd_unet(loaded, public_layouts):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 6, generator=g)
    mask = torch.rand(2, 1, 8, 6, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    t = torch.zeros(2)
    ref = public_layouts.unet(x, t, encoder_hidden_states=text).sample
    out = loaded.garmnet(
        torch.cat([x, mask], 1),
        t,
        encoder_hidden_states=text,
        cross_attention_kwargs={"igr": FusionContext(mode="record")},
    ).sample
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


@torch.no_grad()
def test_decoupled_cross_attention_matches_diffusers_ip_adapter(loaded, public_layouts):
    """diffusers' own IP-Adapter loader, given the same file, is the independent reference."""
    import copy

    unet = copy.deepcopy(public_layouts.unet)
    unet._load_ip_adapter_weights([public_layouts.ip_state], low_cpu_mem_usage=False)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 6, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    embeds = torch.randn(2, 32, generator=g)
    t = torch.full((2,), 300)
    ref = unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
    ip = loaded.image_proj(embeds)
    out = loaded.denoise(x, t, text, ip, n_uncond=2)  # no reference rows: plain self-attention
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_bad_folders_are_named(public_layouts, tmp_path):
    with pytest.raises(WeightsError, match="missing-sd"):
        from_public_layouts(tmp_path / "missing-sd", public_layouts.ip_adapter_bin, public_layouts.clip_vision)
    with pytest.raises(WeightsError, match="nothing.bin' does not exist"):
        load_ip_adapter(tmp_path / "nothing.bin")
    torch.save({"something": {}}, tmp_path / "foreign.bin")
    with pytest.raises(WeightsError, match="lacks the 'image_proj' and 'ip_adapter' parts"):
        load_ip_adapter(tmp_path / "foreign.bin")

"""IGR's torch model: the fusion forms agree, CFG rows depend on what they should, errors name inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from igr_sdk import InputError
from train.pipeline import ReferencePipeline


def _inputs(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    h, w = c.latent_size
    person_latent = torch.randn(b, 4, h, w, generator=g)
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    text = model.text_embeds(["upper", "full"][:b])
    crops = torch.randn(b, 3, 224, 224, generator=g)
    sample = torch.randn(b, 4, h, w, generator=g)
    return person_latent, mask, text, crops, sample


def _noise_pred(model, person_latent, mask, text, crops, sample, form, t=500):
    b = sample.shape[0]
    with torch.no_grad():
        feats = model.garmnet_features(person_latent, mask, text)
        ip = torch.cat([model.uncond_ip_tokens(b), model.ip_tokens(crops)])
        args = (torch.cat([sample, sample]), torch.full((2 * b,), t), torch.cat([text, text]), ip, b)
        if form == "cached":
            k, v = model.reference_kv(feats)
            return model.denoise(*args, ref_k=k, ref_v=v)
        return model.denoise(*args, ref_feats=feats)


def test_naive_and_cached_noise_predictions_agree(tiny_model):
    x = _inputs(tiny_model)
    cached = _noise_pred(tiny_model, *x, "cached")
    naive = _noise_pred(tiny_model, *x, "naive")
    assert cached.shape == (4, 4, *tiny_model.config.latent_size)
    assert cached.abs().mean() > 0.1  # a real prediction, not zeros
    assert (cached - naive).abs().max().item() <= 1e-4


def test_uncond_rows_ignore_the_person_and_cond_rows_use_it(tiny_model):
    person_latent, mask, text, crops, sample = _inputs(tiny_model)
    other_latent, other_mask, _, other_crops, _ = _inputs(tiny_model, seed=1)
    a = _noise_pred(tiny_model, person_latent, mask, text, crops, sample, "cached")
    b = _noise_pred(tiny_model, other_latent, other_mask, text, other_crops, sample, "cached")
    assert torch.equal(a[:2], b[:2])  # uncond rows: no reference, zero-embedding IP tokens
    assert (a[2:] - b[2:]).abs().max().item() > 1e-3


def test_reference_kv_uses_the_denoisers_attention_weights(tiny_model):
    person_latent, mask, text, _, _ = _inputs(tiny_model)
    with torch.no_grad():
        feats = tiny_model.garmnet_features(person_latent, mask, text)
        ks, vs = tiny_model.reference_kv(feats)
    attn = tiny_model.self_attentions
    assert len(feats) == len(attn) == 4  # tiny: 1 down + 1 mid + 2 up transformer blocks
    for a, r, k, v in zip(attn, feats, ks, vs):
        assert torch.allclose(k, r @ a.to_k.weight.T) and torch.allclose(v, r @ a.to_v.weight.T)
    h, w = tiny_model.config.latent_size
    assert feats[0].shape == (2, h * w, 32)


def test_pipeline_forms_give_the_same_image(tiny_model, person_and_mask):
    person, mask = person_and_mask
    pipe = ReferencePipeline(tiny_model)
    out = {
        f: pipe.restore(person, mask, "lower", steps=4, seed=3, form=f) for f in ("cached", "naive", "per_step_garmnet")
    }
    ref = out["cached"]
    assert ref.images[0].size == (tiny_model.config.width, tiny_model.config.height)
    for form in ("naive", "per_step_garmnet"):
        assert np.abs(out[form].latents - ref.latents).max() <= 1e-4
        diff = np.abs(np.asarray(out[form].images[0], np.int16) - np.asarray(ref.images[0], np.int16))
        assert diff.max() <= 1  # one 8-bit level from rounding at most


def test_pipeline_is_seeded(tiny_model, person_and_mask):
    person, mask = person_and_mask
    pipe = ReferencePipeline(tiny_model)
    a = pipe.restore(person, mask, steps=2, seed=11)
    b = pipe.restore(person, mask, steps=2, seed=11)
    c = pipe.restore(person, mask, steps=2, seed=12)
    assert np.array_equal(a.latents, b.latents) and not np.array_equal(a.latents, c.latents)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"category": "hat"}, "unknown category 'hat'"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"form": "fast"}, "unknown form 'fast'"),
    ],
)
def test_pipeline_rejects_bad_options(tiny_model, person_and_mask, kwargs, message):
    person, mask = person_and_mask
    with pytest.raises(InputError, match=message):
        ReferencePipeline(tiny_model).restore(person, mask, **{"steps": 1, **kwargs})


def test_pipeline_rejects_bad_images(tiny_model, person_and_mask, tmp_path):
    person, mask = person_and_mask
    pipe = ReferencePipeline(tiny_model)
    with pytest.raises(InputError, match="mask is empty"):
        pipe.restore(person, np.zeros_like(mask), steps=1)
    bad = tmp_path / "person.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="person.png' is not a readable image"):
        pipe.restore(bad, mask, steps=1)
    with pytest.raises(InputError, match="does not exist"):
        pipe.restore(tmp_path / "missing.png", mask, steps=1)
    with pytest.raises(InputError, match="mask of 90x90 pixels cannot be matched to a person image of 90x120"):
        pipe.restore(person, np.ones((90, 90), bool), steps=1)


def test_without_garmnet_the_reference_is_empty_and_ip_tokens_still_count(tiny_model):
    import dataclasses

    from train.model import IGRModel

    ablated = IGRModel(dataclasses.replace(tiny_model.config, use_garmnet=False)).eval()
    ablated.load_state_dict(tiny_model.state_dict())
    person_latent, mask, text, crops, sample = _inputs(ablated)
    feats = ablated.garmnet_features(person_latent, mask, text)
    assert [f.shape[1] for f in feats] == [0, 0, 0, 0]
    a = _noise_pred(ablated, person_latent, mask, text, crops, sample, "cached")
    b = _noise_pred(ablated, person_latent * 2, 1 - mask, text, crops, sample, "cached")
    assert torch.equal(a, b)  # the person latent no longer matters ...
    c = _noise_pred(ablated, person_latent, mask, text, crops * -1, sample, "cached")
    assert (a[2:] - c[2:]).abs().max() > 1e-4  # ... the garment crop still does, through the IP tokens
    assert (_noise_pred(ablated, person_latent, mask, text, crops, sample, "naive") - a).abs().max() <= 1e-5


def test_head_counts_per_level_round_trip_and_are_checked(tiny_config):
    import dataclasses

    from train.config import IGRConfig

    unet = dataclasses.replace(tiny_config.unet, attention_head_dim=(1, 2))
    c = dataclasses.replace(tiny_config, unet=unet)
    back = IGRConfig.from_dict(json.loads(c.to_json()))
    assert back == c and back.unet.heads_per_level == (1, 2)
    assert tiny_config.unet.heads_per_level == (4, 4)  # one number: every level
    with pytest.raises(ValueError, match=r"one head count per down block \(2\), got \(1, 2, 4\)"):
        dataclasses.replace(tiny_config.unet, attention_head_dim=(1, 2, 4))
    with pytest.raises(ValueError, match="3 heads do not divide a block width of 32 channels"):
        dataclasses.replace(tiny_config.unet, attention_head_dim=3)

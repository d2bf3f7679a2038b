"""The training recipe of the from-scratch presets: Min-SNR weights, the EMA, cached latents,
the IP-token thumbnail loss, and a resumed run with all of them on staying bit-exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from train.checkpoint import load_checkpoint, new_model, read_meta, save_checkpoint
from train.config import preset
from train.datasets import open_dataset
from train.ema import EMA
from train.latent_cache import attach_latents, cache_file, vae_fingerprint
from train.objective import AUX_SIZE, DiffusionObjective, alphas_cumprod, draw, min_snr_weight, set_trainable
from train.synthetic import generate
from train.train import TrainConfig, train
from train.traindata import TrainSet, thumbnail


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "syn"
    generate(root, 12, seed=3, size=(64, 48))
    return root


def test_small_preset_predicts_v():
    assert preset("small").scheduler.prediction_type == "v_prediction"
    assert preset("sd15").scheduler.prediction_type == "epsilon"  # SD1.5's own


def test_min_snr_weights():
    ab = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99
    snr = ab / (1 - ab)
    w_eps = min_snr_weight(ab, 5.0, "epsilon")
    w_v = min_snr_weight(ab, 5.0, "v_prediction")
    torch.testing.assert_close(w_eps, torch.tensor([5 / 99, 1.0, 1.0]))
    torch.testing.assert_close(w_v, torch.tensor([5 / 100, 0.5, (1 / 99) / (1 / 99 + 1)]))
    # both equal min(SNR, 5) times the x0 error: eps error = x0 error * SNR, v error = x0 error * (SNR + 1)
    torch.testing.assert_close(w_eps * snr, torch.clamp(snr, max=5.0))
    torch.testing.assert_close(w_v * (snr + 1), torch.clamp(snr, max=5.0))


def test_ema_math_swap_and_state():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.9)
    decays = []
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            lin.weight.fill_(value)
        decays.append(ema.current_decay())
        ema.update()
    assert decays == [0.1, 2 / 11, 0.25]  # (1 + n) / (10 + n) below 0.9
    expected = 0.0
    for d, value in zip(decays, (1.0, 2.0, 3.0)):
        expected = d * expected + (1 - d) * value
    assert math.isclose(float(ema.shadow["weight"][0, 0]), expected, rel_tol=1e-6)
    with ema.applied():
        assert math.isclose(float(lin.weight.detach()[0, 0]), expected, rel_tol=1e-6)
    assert float(lin.weight.detach()[0, 0]) == 3.0  # the trained weights come back
    other = EMA(lin, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(lin, decay=1.0)


def test_thumbnail_is_the_box_filtered_target():
    target = np.random.default_rng(0).uniform(-1, 1, (3, 64, 48)).astype(np.float32)
    th = thumbnail(target)
    assert th.shape == (3, *AUX_SIZE)
    assert math.isclose(float(th[1, 2, 3]), float(target[1, 8:12, 12:16].mean()), rel_tol=1e-5)


def test_cache_key_follows_the_encoder_not_the_decoder():
    from train.grow_decoder import widen_decoder

    model = new_model(preset("tiny"), seed=0)
    key = vae_fingerprint(model)
    assert vae_fingerprint(widen_decoder(model, (16, 32, 32, 32))) == key  # latents unchanged
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.add_(1.0)
    assert vae_fingerprint(model) == key
    with torch.no_grad():
        model.vae.encoder.conv_in.bias.add_(1.0)
    assert vae_fingerprint(model) != key


def test_cached_latents_give_the_same_loss(data, tmp_path):
    model = new_model(preset("tiny"), seed=0)
    set_trainable(model, train_image_encoder=True)
    pairs = open_dataset(data, split="train")
    plain, cached = TrainSet(pairs, model.config), TrainSet(pairs, model.config)
    path = attach_latents(cached, model, tmp_path / "cache", batch=5)
    assert path == cache_file(tmp_path / "cache", data, vae_fingerprint(model)) and path.is_file()
    assert len(load_file(str(path))) == 2 * len(pairs)
    a, b = plain[3], cached[3]
    assert "person" not in b and "target" not in b and b["person_latent"].shape == (4, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(b["target_latent"], model.vae_encode(a["target"][None])[0], atol=1e-5, rtol=0)
    objective = DiffusionObjective(model, snr_gamma=5.0, thumbnail_weight=1.0)
    d = draw(11, 4, model.config.latent_size, 1000, 0.0)
    batch_a = {k: torch.stack([plain[i][k] for i in range(4)]) for k in a}
    batch_b = {k: torch.stack([cached[i][k] for i in range(4)]) for k in b}
    with torch.no_grad():
        la = objective(**batch_a, noise=d.noise, timesteps=d.timesteps, n_uncond=1)
        lb = objective(**batch_b, noise=d.noise, timesteps=d.timesteps, n_uncond=1)
    torch.testing.assert_close(la["loss"], lb["loss"], atol=1e-5, rtol=1e-5)
    assert float(la["thumbnail"]) > 0
    # the weights changed: a different VAE gets its own cache file, not the stale latents
    with torch.no_grad():
        next(model.vae.parameters()).add_(0.01)
    assert attach_latents(TrainSet(pairs, model.config), model, tmp_path / "cache") != path


def test_v_prediction_loss_target():
    model = new_model(preset("tiny"), seed=0)
    import dataclasses

    model.config = dataclasses.replace(
        model.config, scheduler=dataclasses.replace(model.config.scheduler, prediction_type="v_prediction")
    )
    obj = DiffusionObjective(model)
    z0, noise = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    t = torch.tensor([10, 900])
    ab = alphas_cumprod(model.config.scheduler)[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(obj.target(z0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * z0)


def test_recipe_run_resumes_bit_exactly_and_saves_the_average(data, tmp_path):
    kw = dict(
        preset="tiny",
        data=(str(data),),
        max_steps=6,
        lr=1e-3,
        batch_size=3,
        save_every=3,
        val_every=0,
        val_count=0,
        log_every=1,
        train_image_encoder=True,
        prediction_type="v_prediction",
        snr_gamma=5.0,
        ema_decay=0.9,
        thumbnail_weight=1.0,
        latent_cache=str(tmp_path / "cache"),
    )
    train(TrainConfig(out=str(tmp_path / "a"), **kw))
    train(TrainConfig(out=str(tmp_path / "b"), **{**kw, "max_steps": 3}))
    train(TrainConfig(out=str(tmp_path / "b"), **kw, resume=True))
    a, b = load_checkpoint(tmp_path / "a" / "final"), load_checkpoint(tmp_path / "b" / "final")
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert torch.equal(p, pb[name]), name
    assert a.config.scheduler.prediction_type == "v_prediction"
    assert read_meta(tmp_path / "a" / "final")["weights"] == "ema"
    # the checkpoint holds the average, the state the trained weights: they differ
    raw = load_file(str(tmp_path / "a" / "state" / "model.safetensors"))
    w = a.denoiser.conv_in.weight
    assert not torch.equal(raw["igr.denoiser.conv_in.weight"], w)


def test_resumed_run_from_a_trained_vae_caches_that_vae_s_latents(data, tmp_path):
    # a run started from --init (a VAE unlike the seed's random one) and resumed: the latents of the
    # resumed part must come from the run's VAE, not from the model built before its state is loaded
    init = tmp_path / "init"
    save_checkpoint(new_model(preset("tiny"), seed=123), init, {"stage": "coarse", "preset": "tiny"})
    kw = dict(
        preset="tiny",
        data=(str(data),),
        init=str(init),
        max_steps=4,
        lr=1e-3,
        batch_size=2,
        save_every=2,
        val_every=0,
        val_count=0,
        log_every=1,
        prediction_type="v_prediction",
        latent_cache=str(tmp_path / "cache"),
    )
    train(TrainConfig(out=str(tmp_path / "a"), **kw))
    train(TrainConfig(out=str(tmp_path / "b"), **{**kw, "max_steps": 2}))
    train(TrainConfig(out=str(tmp_path / "b"), **kw, resume=True))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        cache_file(tmp_path / "cache", data, vae_fingerprint(load_checkpoint(init))).name
    ]
    a, b = load_checkpoint(tmp_path / "a" / "final"), load_checkpoint(tmp_path / "b" / "final")
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert torch.equal(p, pb[name]), name


def test_zero_terminal_snr_run_records_its_schedule(data, tmp_path):
    kw = dict(preset="tiny", data=(str(data),), max_steps=2, batch_size=2, val_every=0, val_count=0)
    train(TrainConfig(out=str(tmp_path / "z"), prediction_type="v_prediction", zero_terminal_snr=True, **kw))
    s = load_checkpoint(tmp_path / "z" / "final").config.scheduler
    assert (s.rescale_betas_zero_snr, s.timestep_spacing, s.prediction_type) == (True, "trailing", "v_prediction")
    # the objective trains the last timestep on pure noise: there v = -z0
    model = load_checkpoint(tmp_path / "z" / "final")
    obj = DiffusionObjective(model)
    z0, noise = torch.randn(1, 4, 8, 6), torch.randn(1, 4, 8, 6)
    t = torch.tensor([999])
    assert alphas_cumprod(s)[999] == 0.0
    torch.testing.assert_close(obj.add_noise(z0, noise, t), noise)
    torch.testing.assert_close(obj.target(z0, noise, t), -z0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"prediction_type": "epsilon"},
            r"zero-terminal-SNR schedule needs --prediction-type v_prediction, got 'epsilon'",
        ),
        ({"prediction_type": "v_prediction", "snr_gamma": 5.0}, r"--snr-gamma 5 with a zero-terminal-SNR schedule"),
    ],
)
def test_zero_terminal_snr_refuses_what_breaks_it(data, tmp_path, extra, message):
    from train.trainconfig import TrainError

    kw = dict(preset="tiny", data=(str(data),), max_steps=1, batch_size=2, val_every=0, val_count=0)
    with pytest.raises(TrainError, match=message):
        train(TrainConfig(out=str(tmp_path / "z"), zero_terminal_snr=True, **kw, **extra))

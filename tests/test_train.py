"""Training: the loss falls, a killed run resumes bit-exactly, the CLI leaves a checkpoint, bad input is named.

Everything runs the tiny preset on synthetic pairs generated here, with one torch thread: on a
shared 2-core machine extra threads only fight over the cores, and equal thread counts keep the
bit-exact comparisons meaningful.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.checkpoint import load_checkpoint, new_model, read_meta, save_checkpoint
from train.config import preset
from train.curate import curate, write_list
from train.datasets import open_dataset
from train.loop import TrainError, find_state, lr_factor
from train.objective import DiffusionObjective, Draws, alphas_cumprod, draw, set_trainable
from train.synthetic import generate
from train.train import TrainConfig, main, train
from train.traindata import StreamBatchSampler, TrainSet, reframe

REPO = Path(__file__).resolve().parents[1]
QUICK = {"val_every": 0, "val_count": 0, "save_every": 0, "log_every": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "syn"
    generate(root, 24, seed=0, size=(64, 48))
    return root


def cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(preset="tiny", data=(str(data),), out=str(out), **{**QUICK, **kw})


def state_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Model weights and the optimizer's state tensors of a run's saved state."""
    st = find_state(run)
    out = {f"model.{k}": v for k, v in load_file(str(st / "model.safetensors")).items()}
    opt = torch.load(st / "optimizer.bin", weights_only=True)
    for pid, s in opt["state"].items():
        for k, v in s.items():
            out[f"opt.{pid}.{k}"] = torch.as_tensor(v)
    return out


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ma, mb = load_checkpoint(a / "final"), load_checkpoint(b / "final")
    pb = dict(mb.named_parameters())
    for name, p in ma.named_parameters():
        assert torch.equal(p, pb[name]), name


# --------------------------------------------------------------------------------------------
# the objective


def test_noise_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    c = preset("tiny")
    model = new_model(c, 0)
    obj = DiffusionObjective(model)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.equal(alphas_cumprod(c.scheduler), sched.alphas_cumprod.float())
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(3, 4, 8, 6, generator=g), torch.randn(3, 4, 8, 6, generator=g)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(obj.add_noise(z, eps, t), sched.add_noise(z, eps, t), rtol=1e-6, atol=1e-6)


def test_condition_drop_orders_dropped_rows_first_and_is_seeded():
    d = Draws(torch.zeros(5, 4, 2, 2), torch.zeros(5, dtype=torch.int64), torch.tensor([0, 1, 0, 1, 1]).bool())
    assert d.order.tolist() == [1, 3, 4, 0, 2]
    a, b = draw(7, 64, (8, 6), 1000, 0.1), draw(7, 64, (8, 6), 1000, 0.1)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps) and torch.equal(a.drop, b.drop)
    assert 0 < int(a.drop.sum()) < 20  # about 10 % of 64


@pytest.fixture(scope="module")
def batch(data):
    c = preset("tiny")
    ts = TrainSet(open_dataset(data), c)
    items = [ts[i] for i in range(3)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _grads(model, batch, n_uncond, seed=0):
    obj = DiffusionObjective(model)
    d = draw(seed, 3, model.config.latent_size, 1000, 0.0)
    model.zero_grad(set_to_none=True)
    obj(**batch, noise=d.noise, timesteps=d.timesteps, n_uncond=n_uncond)["loss"].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_parts_and_all_dropped_batch(batch):
    model = new_model(preset("tiny"), 0)
    frozen_garmnet = set_trainable(model)
    assert frozen_garmnet and all(n.startswith(("up_blocks", "conv_", "mid")) or "attn" in n for n in frozen_garmnet)
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    grads = _grads(model, batch, n_uncond=1)
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("garmnet."))
    # every sample dropped: GarmNet does not run, but still gets (zero) gradients for DDP / ZeRO
    grads = _grads(model, batch, n_uncond=3)
    assert all(g is not None for g in grads.values())
    assert all(torch.count_nonzero(g) == 0 for n, g in grads.items() if n.startswith("garmnet."))


def test_gradient_checkpointing_gives_the_same_gradients(batch):
    model = new_model(preset("tiny"), 0)
    set_trainable(model)
    plain = _grads(model, batch, n_uncond=1)
    model.denoiser.enable_gradient_checkpointing()
    model.garmnet.enable_gradient_checkpointing()
    model.train()
    ckpt = _grads(model, batch, n_uncond=1)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_data_order_resumes_mid_stream():
    full = StreamBatchSampler(10, 4, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(7)]
    resumed = iter(StreamBatchSampler(10, 4, seed=3, start=4))
    assert [next(resumed) for _ in range(3)] == stream[4:]
    # every epoch is a permutation; two processes split the micro-batches between them
    flat = [i for b in stream[:5] for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    r0, r1 = iter(StreamBatchSampler(10, 4, 3, 0, 0, 2)), iter(StreamBatchSampler(10, 4, 3, 0, 1, 2))
    assert [next(r0), next(r1), next(r0)] == stream[:3]


def test_reframe_centres_the_garment():
    import numpy as np

    person = np.zeros((100, 75, 3), np.uint8)
    mask = np.zeros((100, 75), bool)
    mask[45:55, 30:40] = True  # a tiny garment
    p, m = reframe(person, mask, aspect=100 / 75)
    ys, xs = np.nonzero(m)
    extent = max((ys.max() - ys.min() + 1) / m.shape[0], (xs.max() - xs.min() + 1) / m.shape[1])
    assert abs(extent - 0.6) < 0.05
    assert abs(p.shape[0] / p.shape[1] - 100 / 75) < 0.05


# --------------------------------------------------------------------------------------------
# runs


def test_loss_falls(data, tmp_path):
    # lr 1e-3: the tiny model learns visibly within 30 steps (the preset default 1e-4 is for real runs)
    r = train(cfg(data, tmp_path / "run", max_steps=30, lr=1e-3, seed=0))
    losses = [loss for _, loss in r.log]
    assert len(losses) == 30
    k = len(losses) // 5
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < 0.75 * first, (first, last)


def test_interrupted_run_resumes_bit_exactly(data, tmp_path):
    kw = {"max_steps": 8, "lr": 1e-3, "grad_accum": 2, "batch_size": 3, "save_every": 3}
    train(cfg(data, tmp_path / "a", **kw))

    class Crash(Exception):
        pass

    def crash(step, _loss):
        if step == 5:  # state saved at 3, steps 4-5 lost as in a kill
            raise Crash

    with pytest.raises(Crash):
        train(cfg(data, tmp_path / "b", **kw), on_step=crash)
    assert json.loads((find_state(tmp_path / "b") / "trainer.json").read_text())["step"] == 3
    with pytest.raises(TrainError, match="pass --resume"):
        train(cfg(data, tmp_path / "b", **kw))
    with pytest.raises(TrainError, match="--lr 0.002"):
        train(cfg(data, tmp_path / "b", **{**kw, "lr": 2e-3}, resume=True))
    r = train(cfg(data, tmp_path / "b", **kw, resume=True))
    assert r.step == 8
    assert_same_state(tmp_path / "a", tmp_path / "b")
    rows = [(tmp_path / x / "loss.csv").read_text().splitlines() for x in "ab"]
    strip = [[",".join(line.split(",")[:3]) for line in r] for r in rows]  # seconds differ
    assert strip[0] == strip[1] and len(strip[0]) == 9


def test_lr_warms_up_then_decays_on_a_cosine_to_the_floor():
    # warm-up 2, decay until step 6 from 1 to 0.1: halfway (step 4) the cosine is at 0.55
    got = [round(lr_factor(s, 2, 6, 0.1), 4) for s in range(8)]
    assert got == [0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1, 0.1]
    assert [lr_factor(s, 0, 0, 0.0) for s in (0, 10**6)] == [1.0, 1.0]


def test_decaying_lr_is_logged_and_fixed_for_the_run(data, tmp_path):
    kw = {"max_steps": 4, "lr": 1e-3, "warmup_steps": 1, "lr_decay_steps": 5, "min_lr": 1e-4, "log_every": 1}
    train(cfg(data, tmp_path / "r", **kw))
    logged = [float(line.split(",")[2]) for line in (tmp_path / "r" / "loss.csv").read_text().splitlines()[1:]]
    # the rate a step ran at, after s steps: lr * lr_factor(s - 1) once the scheduler has stepped
    want = [1e-3 * lr_factor(s, 1, 5, 0.1) for s in range(1, 5)]
    assert logged == pytest.approx(want, rel=1e-5)
    with pytest.raises(TrainError, match="--lr-decay-steps 9"):
        train(cfg(data, tmp_path / "r", **{**kw, "max_steps": 6, "lr_decay_steps": 9}, resume=True))
    with pytest.raises(TrainError, match="--min-lr: must not exceed --lr"):
        cfg(data, tmp_path / "x", lr=1e-4, min_lr=1e-3)
    with pytest.raises(TrainError, match="--lr-decay-steps: must be past the warm-up"):
        cfg(data, tmp_path / "x", warmup_steps=10, lr_decay_steps=5)


def test_attention_heads_resplit_the_start_weights(data, tmp_path):
    base = train(cfg(data, tmp_path / "base", max_steps=1)).final
    r = train(cfg(data, tmp_path / "h", max_steps=1, lr=1e-9, init=str(base), attention_heads=(1, 2)))
    before, after = load_checkpoint(base), load_checkpoint(r.final)
    assert after.config.unet.heads_per_level == (1, 2) and before.config.unet.heads_per_level == (4, 4)
    attn = {n: m.heads for n, m in after.denoiser.named_modules() if n.endswith("attn1")}
    assert attn["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 1
    assert attn["mid_block.attentions.0.transformer_blocks.0.attn1"] == 2
    # every weight carried over (one step at lr 1e-9 moves none visibly)
    a, b = before.denoiser.state_dict(), after.denoiser.state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # its checkpoint starts a run of the same preset; bad counts are named
    train(cfg(data, tmp_path / "h2", max_steps=1, init=str(r.final)))
    with pytest.raises(TrainError, match="--attention-heads 3,2: .*3 heads do not divide a block width of 32"):
        train(cfg(data, tmp_path / "bad", max_steps=1, init=str(base), attention_heads=(3, 2)))
    with pytest.raises(TrainError, match="one head count per down block"):
        train(cfg(data, tmp_path / "bad2", max_steps=1, init=str(base), attention_heads=(1,)))


def test_a_widened_decoder_checkpoint_starts_a_run_of_its_preset(data, tmp_path):
    from train.grow_decoder import widen_decoder

    base = train(cfg(data, tmp_path / "base", max_steps=1)).final
    wide = save_checkpoint(widen_decoder(load_checkpoint(base), (16, 32, 32, 32)), tmp_path / "wide")
    r = train(cfg(data, tmp_path / "w", max_steps=1, init=str(wide)))
    out = load_checkpoint(r.final)
    assert out.config.vae.decoder_channels == (16, 32, 32, 32)
    # the VAE is frozen in IGR training: the widened decoder comes out as it went in
    a, b = load_checkpoint(wide).vae.state_dict(), out.vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_process_resumes_bit_exactly(data, tmp_path):
    """SIGKILL a real `python train/train.py` after a saved state, resume in-process, compare."""
    run = tmp_path / "killed"
    args = ["--preset", "tiny", "--data", str(data), "--out", str(run), "--lr", "1e-3", "--save-every", "2"]
    args += ["--val-count", "0", "--val-every", "0", "--log-every", "1", "--max-steps", "500", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train" / "train.py"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while find_state(run) is None or json.loads((find_state(run) / "trainer.json").read_text())["step"] < 4:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no saved state within 90 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = json.loads((find_state(run) / "trainer.json").read_text())["step"]
    total = saved + 2
    kw = {"lr": 1e-3, "save_every": 2, "max_steps": total}
    train(cfg(data, run, **kw, resume=True))
    train(cfg(data, tmp_path / "whole", **kw))
    assert_same_state(run, tmp_path / "whole")


def test_from_scratch_presets_can_train_vae_and_image_encoder(data, tmp_path):
    r = train(
        cfg(data, tmp_path / "r", max_steps=2, train_vae=True, train_image_encoder=True, gradient_checkpointing=True)
    )
    start, end = new_model(preset("tiny"), 0), load_checkpoint(r.final)
    for part in ("vae", "image_encoder", "denoiser", "garmnet", "image_proj"):
        a, b = getattr(start, part).state_dict(), getattr(end, part).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{part} did not change"


def test_smallest_complete_run_then_fine_stage(data, tmp_path, capsys):
    run = tmp_path / "RUN"
    rc = main(["--preset", "tiny", "--data", str(data), "--stage", "coarse", "--max-steps", "20", "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    model = load_checkpoint(run / "final")
    meta = read_meta(run / "final")
    assert meta["stage"] == "coarse" and meta["step"] == 20
    assert meta["train_config"]["max_steps"] == 20 and meta["train_config"]["lr"] == 1e-4
    assert json.loads((run / "train_config.json").read_text())["preset"] == "tiny"
    assert model.config == preset("tiny")
    assert (run / "loss.csv").read_text().splitlines()[0] == "step,loss,lr,seconds"

    # fine stage: curated subset, from the coarse checkpoint, with a validation grid
    report = curate(data)
    write_list(report.kept, tmp_path / "keep.txt")
    write_list(report.resize_and_pad, tmp_path / "rp.txt")
    fine = tmp_path / "FINE"
    argv = ["--preset", "tiny", "--data", str(data), "--stage", "fine", "--init", str(run / "final")]
    argv += ["--subset", str(tmp_path / "keep.txt"), "--resize-list", str(tmp_path / "rp.txt")]
    argv += ["--max-steps", "4", "--val-every", "4", "--val-count", "2", "--val-steps", "2", "--out", str(fine)]
    assert main(argv) == 0, capsys.readouterr().err
    meta = read_meta(fine / "final")
    assert meta["stage"] == "fine" and meta["step"] == 4 and meta["init"] == str(run / "final")
    from PIL import Image

    grid = Image.open(fine / "val" / "step-000004.png")
    assert grid.size == (3 * 48, 2 * 64)
    held = (fine / "val_names.txt").read_text().splitlines()
    assert len(held) == 2 and all(h.split("\t")[1] in report.kept for h in held)


# --------------------------------------------------------------------------------------------
# bad input: one line on stderr naming the file or option, exit code 2


def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after any progress bar output
    assert err.startswith("error: "), err
    return err


def test_missing_and_empty_data_folders(tmp_path, capsys):
    base = ["--preset", "tiny", "--max-steps", "2", "--out", str(tmp_path / "run")]
    err = _fails([*base, "--data", str(tmp_path / "nowhere")], capsys)
    assert str(tmp_path / "nowhere") in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = _fails([*base, "--data", str(tmp_path / "empty")], capsys)
    assert str(tmp_path / "empty") in err
    (tmp_path / "empty2" / "image").mkdir(parents=True)
    (tmp_path / "empty2" / "cloth").mkdir()
    err = _fails([*base, "--data", str(tmp_path / "empty2")], capsys)
    assert "no usable pairs" in err and str(tmp_path / "empty2") in err


def test_corrupt_image_is_named(data, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    victim = bad / "image" / "00007_00.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    # 24 pairs / batch 4: one epoch is 6 steps, so the broken pair is read
    err = _fails(
        ["--preset", "tiny", "--data", str(bad), "--max-steps", "6", "--val-count", "0", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert str(victim) in err


def test_checkpoint_of_another_preset_is_named(data, tmp_path, capsys):
    ck = tmp_path / "small-ckpt"
    ck.mkdir()
    (ck / "config.json").write_text(preset("small").to_json())  # refused before any weight is read
    err = _fails(["--preset", "tiny", "--data", str(data), "--init", str(ck), "--out", str(tmp_path / "r")], capsys)
    assert str(ck / "config.json") in err and "'small'" in err and "--preset tiny" in err
    # same name, other architecture
    tiny = new_model(preset("tiny"), 0)
    tiny.config = preset("tiny").__class__(**{**preset("tiny").__dict__, "ip_tokens": 8})
    save_checkpoint(tiny, tmp_path / "odd")
    err = _fails(
        ["--preset", "tiny", "--data", str(data), "--init", str(tmp_path / "odd"), "--out", str(tmp_path / "r")], capsys
    )
    assert "ip_tokens" in err and str(tmp_path / "odd" / "config.json") in err


def test_bad_options_are_named(data, tmp_path, capsys):
    base = ["--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "r")]
    assert "--init" in _fails([*base, "--stage", "fine"], capsys)
    assert "--train-vae" in _fails(["--preset", "sd15", *base[2:], "--train-vae"], capsys)
    assert "--subset" in _fails([*base, "--subset", str(tmp_path / "missing.txt")], capsys)
    assert "--sd15" in _fails([*base, "--sd15", str(tmp_path)], capsys)


def test_shipped_launch_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    acc = load_config_from_file(str(REPO / "train" / "configs" / "accelerate_deepspeed_zero2.yaml"))
    assert acc.distributed_type == "DEEPSPEED" and acc.num_processes == 4 and acc.mixed_precision == "bf16"
    assert acc.deepspeed_config["zero_stage"] == 2 and acc.deepspeed_config["gradient_accumulation_steps"] == 2
    ds = json.loads((REPO / "train" / "configs" / "deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    # batch, accumulation and precision come from the run: DeepSpeed must not override them
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"


def test_without_garmnet_every_garmnet_weight_is_frozen(tiny_model):
    import dataclasses

    from train.model import IGRModel
    from train.objective import set_trainable

    ablated = IGRModel(dataclasses.replace(tiny_model.config, use_garmnet=False))
    frozen = set_trainable(ablated)
    assert len(frozen) == len(list(ablated.garmnet.parameters()))
    assert not any(p.requires_grad for p in ablated.garmnet.parameters())
    assert all(p.requires_grad for p in ablated.denoiser.parameters())

"""benchmarks/diagnose.py: the denoising ladder end to end on a tiny checkpoint and synthetic pairs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.colour import garment_colour_error
from benchmarks.diagnose import COLUMNS, HEADER, TIMESTEPS, Ladder, main
from benchmarks.metrics import psnr
from igr_sdk._scheduler import alphas_cumprod
from train.checkpoint import load_checkpoint
from train.pipeline import ReferencePipeline, initial_noise

PAIRS = 2


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    from train.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "test", count=PAIRS + 1, seed=3, size=(128, 96))
    return root


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def checkpoint(request, tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint, declared an epsilon or a v-prediction model."""
    ck = tmp_path_factory.mktemp("ck") / request.param
    shutil.copytree(tiny_checkpoint, ck)
    config = json.loads((ck / "config.json").read_text())
    config["scheduler"]["prediction_type"] = request.param
    (ck / "config.json").write_text(json.dumps(config))
    return ck


def _cells(sheet: Image.Image, row: int, h: int, w: int) -> list[np.ndarray]:
    y = HEADER + row * h
    return [np.asarray(sheet.crop((j * w, y, (j + 1) * w, y + h))) for j in range(len(COLUMNS))]


def test_diagnose_end_to_end(checkpoint, pairs_dir, tmp_path, capsys):
    out = tmp_path / "diag"
    result = main(["--checkpoint", str(checkpoint), "--data", str(pairs_dir), "--out", str(out), "--limit", "2"])
    assert "MSE cond" in capsys.readouterr().out
    h, w = result["resolution"]
    sheet = Image.open(out / "sheet.png")
    assert sheet.size == (len(COLUMNS) * w, HEADER + PAIRS * h) == (10 * 48, HEADER + 2 * 64)

    saved = json.loads((out / "diagnose.json").read_text())
    assert saved["prediction_type"] == checkpoint.name and saved["timesteps"] == list(TIMESTEPS)
    assert len(saved["pairs"]) == PAIRS
    for i, p in enumerate(saved["pairs"]):
        scalars = [p["vae_psnr"], p["vae_colour"], p["sample_colour"], p["latent_std"]]
        per_t = [v for t in TIMESTEPS for v in p["per_t"][str(t)].values()]
        assert all(isinstance(v, float) and math.isfinite(v) for v in scalars + per_t), p
        for t in TIMESTEPS:
            s = p["per_t"][str(t)]
            assert s["mse_cond"] > 0 and s["mse_uncond"] > 0 and s["x0_std"] > 0
            assert s["gap"] == pytest.approx(s["mse_uncond"] - s["mse_cond"])
            assert s["rel_gap"] == pytest.approx(s["gap"] / s["mse_uncond"])
        # the numbers are those of the images on the sheet
        cells = _cells(sheet, i, h, w)
        gt, vae, sample = cells[COLUMNS.index("GT")], cells[COLUMNS.index("VAE(GT)")], cells[COLUMNS.index("sample")]
        assert p["vae_psnr"] == pytest.approx(psnr(vae, gt))
        assert p["sample_colour"] == pytest.approx(garment_colour_error(sample, gt))
        x0_999 = cells[COLUMNS.index("x0 t=999")]
        assert p["per_t"]["999"]["x0_colour"] == pytest.approx(garment_colour_error(x0_999, gt))
    s = saved["summary"]
    assert s["vae_psnr"] == pytest.approx(np.mean([p["vae_psnr"] for p in saved["pairs"]]))


def test_a_model_that_predicts_its_target_exactly_gives_back_the_latent(checkpoint, pairs_dir):
    """An oracle in place of the denoiser: zero for the unconditional row, the exact eps or v for the
    conditional one. Then MSE cond is 0, MSE uncond is the target's mean square, and x0 is z0."""
    from train.datasets import open_dataset
    from train.traindata import prepare_sample

    pipe = ReferencePipeline(load_checkpoint(checkpoint))
    ptype = pipe.config.scheduler.prediction_type
    sample = open_dataset(pairs_dir, "test")[0]
    prep, target = prepare_sample(sample, pipe.config, "test")
    z0 = pipe.model.vae_encode(torch.from_numpy(target[None])).detach().double()  # (1, 4, h, w)
    noise = torch.from_numpy(initial_noise([5], z0.shape[1:])).double()
    a_bar = alphas_cumprod()

    def oracle(cond, form="cached"):
        def call(latents, t):
            a = float(a_bar[t])
            want = noise if ptype == "epsilon" else a**0.5 * noise - (1 - a) ** 0.5 * z0
            return torch.cat([torch.zeros_like(want), want]).float()  # (2, 4, h, w)

        return call

    pipe.step_fn = oracle
    _, numbers = Ladder(pipe, steps=2).run(prep, target, sample.category, seed=5)
    for t in TIMESTEPS:
        a = float(a_bar[t])
        want = noise if ptype == "epsilon" else a**0.5 * noise - (1 - a) ** 0.5 * z0
        s = numbers["per_t"][t]
        assert s["mse_cond"] < 1e-10
        assert s["mse_uncond"] == pytest.approx(float((want**2).mean()), rel=1e-5)
        assert s["rel_gap"] == pytest.approx(1.0)
        # x0 from eps is amplified by 1/sqrt(a_t): float32 rounding grows towards t = 999
        assert s["x0_std"] == pytest.approx(numbers["latent_std"], rel=1e-3)
        assert s["x0_colour"] == pytest.approx(numbers["vae_colour"], abs=0.05)  # x0 decodes as VAE(GT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/none"], "checkpoint folder '{tmp}/none' does not exist"),
        (["--limit", "0"], "--limit must be >= 1, got 0"),
    ],
)
def test_bad_arguments_give_one_line(args, message, tiny_checkpoint, pairs_dir, tmp_path, capsys):
    base = {"--checkpoint": str(tiny_checkpoint), "--data": str(pairs_dir), "--out": str(tmp_path / "o")}
    base.update(dict(zip(args[::2], (a.format(tmp=tmp_path) for a in args[1::2]))))
    with pytest.raises(SystemExit) as e:
        main([x for kv in base.items() for x in kv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message.format(tmp=tmp_path) in err[-1]

"""Denoising ladder: what a trained IGR checkpoint restores from the ground truth at each noise level.

Usage::

    python benchmarks/diagnose.py --checkpoint CKPT --data DIR --out OUT_DIR [--limit N] [--split test]

``DIR`` is a paired data set in the VITON-HD layout (e.g. from ``train/synthetic.py``); the model
inputs and the ground-truth garment come from ``train.traindata.prepare_sample`` at the
checkpoint's resolution. Pair i of the split (the first ``--limit``) uses seed i. One row of
``OUT_DIR/sheet.png`` per pair:

    person | VAE(GT) | x0 at t = 100, 300, 500, 700, 900, 999 | sample | GT

- VAE(GT): the ground truth encoded (latent mean z0) and decoded again.
- x0 at t: z0 noised to z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps, with one eps per pair (from its
  seed, the same at every t); one model call on the CFG batch [uncond ; cond]; the conditional
  output turned into the predicted x0 (as ``epsilon`` or ``v_prediction``, whichever the
  checkpoint's config says) and decoded.
- sample: the full DDIM sample of ``train.pipeline.ReferencePipeline`` (``--steps``, default 25,
  guidance from the config), from the same seed.

Numbers, printed as two tables and written to ``OUT_DIR/diagnose.json``:

- ``vae_psnr``: PSNR (dB, ``benchmarks.metrics.psnr``) of VAE(GT) against GT.
- ``vae_colour``, ``sample_colour``, per t ``x0_colour``: garment colour error against GT
  (``benchmarks.colour.COLOUR_CONVENTION``; NaN for a garment without non-white pixels).
- per t ``mse_cond`` / ``mse_uncond``: MSE of the model output against its training target (eps,
  or v = sqrt(a_t) eps - sqrt(1 - a_t) z0) with and without the garment conditions;
  ``gap`` = mse_uncond - mse_cond and ``rel_gap`` = gap / mse_uncond. A model that ignores the
  garment has a gap near 0.
- per t ``x0_std``: std of the predicted x0, to set against ``latent_std``, the std of z0.

The summary is the mean over pairs (NaNs left out), except ``gap`` and ``rel_gap``, which come from
the mean MSEs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks.colour import COLOUR_CONVENTION, garment_colour_error
from benchmarks.metrics import PSNR_CONVENTION, psnr
from igr_sdk.preprocess import Prepared, to_image
from igr_sdk.scheduler import check_prediction_type, schedule_alphas, x0_and_eps
from train.checkpoint import CheckpointError, load_checkpoint
from train.datasets import DataError, open_dataset
from train.pipeline import ReferencePipeline, initial_noise
from train.traindata import prepare_sample

log = logging.getLogger(__name__)

TIMESTEPS = (100, 300, 500, 700, 900, 999)
COLUMNS = ("person", "VAE(GT)", *(f"x0 t={t}" for t in TIMESTEPS), "sample", "GT")
HEADER = 14  # pixels of the sheet's column-title strip
PER_T = ("mse_cond", "mse_uncond", "gap", "rel_gap", "x0_std", "x0_colour")


def _mean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


class Ladder:
    """The ladder of one checkpoint; ``run`` gives one pair's sheet row and numbers."""

    def __init__(self, pipe: ReferencePipeline, steps: int = 25):
        self.pipe, self.model, self.config = pipe, pipe.model, pipe.config
        s = self.config.scheduler
        self.prediction_type = check_prediction_type(s.prediction_type)
        if max(TIMESTEPS) >= s.num_train_timesteps:
            raise ValueError(f"the ladder needs t up to {max(TIMESTEPS)}; the checkpoint has {s.num_train_timesteps}")
        self.alpha_bar = schedule_alphas(dataclasses.asdict(s))
        self.steps = steps

    def _decode(self, latent: np.ndarray) -> Image.Image:
        """(1, 4, h, w) scaled latent -> PIL image (W, H)."""
        x = torch.from_numpy(latent).to(self.pipe.device, self.pipe.dtype)
        return to_image(self.model.vae_decode(x).float().cpu().numpy()[0])  # from (1, 3, H, W)

    @torch.no_grad()
    def run(self, prep: Prepared, target: np.ndarray, category: str, seed: int) -> tuple[list[Image.Image], dict]:
        """target: (3, H, W) in [-1, 1]. -> (the row's images in COLUMNS order, the pair's numbers)."""
        pipe = self.pipe
        truth = to_image(target)
        gt = np.asarray(truth)  # (H, W, 3) uint8
        image = torch.from_numpy(target[None]).to(pipe.device, pipe.dtype)  # (1, 3, H, W)
        z0 = self.model.vae_encode(image).float().cpu().numpy().astype(np.float64)  # (1, 4, h, w)
        noise = initial_noise([seed], z0.shape[1:]).astype(np.float64)  # (1, 4, h, w)
        step = pipe.step_fn(pipe.conditions([prep], [category]))

        vae = self._decode(z0.astype(np.float32))
        row = [to_image(prep.person), vae]
        numbers: dict[str, Any] = {
            "vae_psnr": psnr(np.asarray(vae), gt),
            "vae_colour": garment_colour_error(np.asarray(vae), gt),
            "latent_std": float(z0.std()),
        }
        per_t = {}
        for t in TIMESTEPS:
            a = self.alpha_bar[t]
            zt = np.sqrt(a) * z0 + np.sqrt(1.0 - a) * noise  # (1, 4, h, w)
            x = torch.from_numpy(zt.astype(np.float32)).to(pipe.device)
            out = step(x, t).float().cpu().numpy().astype(np.float64)  # (2, 4, h, w): [uncond ; cond]
            want = noise if self.prediction_type == "epsilon" else np.sqrt(a) * noise - np.sqrt(1.0 - a) * z0
            mse_u, mse_c = float(np.mean((out[:1] - want) ** 2)), float(np.mean((out[1:] - want) ** 2))
            x0, _ = x0_and_eps(zt, out[1:], a, self.prediction_type)  # (1, 4, h, w)
            x0_image = self._decode(x0.astype(np.float32))
            row.append(x0_image)
            per_t[t] = {
                "mse_cond": mse_c,
                "mse_uncond": mse_u,
                "gap": mse_u - mse_c,
                "rel_gap": (mse_u - mse_c) / mse_u if mse_u > 0 else math.nan,
                "x0_std": float(x0.std()),
                "x0_colour": garment_colour_error(np.asarray(x0_image), gt),
            }

        decoded, _ = pipe.sample([prep], [category], self.steps, self.config.guidance_scale, [seed])
        sample = to_image(decoded[0])  # from (3, H, W)
        numbers["sample_colour"] = garment_colour_error(np.asarray(sample), gt)
        numbers["per_t"] = per_t
        return [*row, sample, truth], numbers


def summarise(pairs: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _mean([p[k] for p in pairs]) for k in ("vae_psnr", "vae_colour", "sample_colour")}
    out["latent_std"] = _mean([p["latent_std"] for p in pairs])
    out["per_t"] = {}
    for t in TIMESTEPS:
        s = {k: _mean([p["per_t"][t][k] for p in pairs]) for k in PER_T}
        s["gap"] = s["mse_uncond"] - s["mse_cond"]
        s["rel_gap"] = s["gap"] / s["mse_uncond"] if s["mse_uncond"] > 0 else math.nan
        out["per_t"][t] = s
    return out


def sheet(rows: list[list[Image.Image]], size: tuple[int, int]) -> Image.Image:
    """One row per pair, one (W, H) cell per column of COLUMNS, under a strip of column titles."""
    h, w = size
    out = Image.new("RGB", (w * len(COLUMNS), HEADER + h * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for j, title in enumerate(COLUMNS):
        draw.text((j * w + 2, 1), title, fill="black")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            out.paste(im.convert("RGB").resize((w, h)), (j * w, HEADER + i * h))
    return out


def diagnose(
    checkpoint: str | Path, data: str | Path, out: str | Path, limit: int = 8, split: str = "test", steps: int = 25
) -> dict[str, Any]:
    """Run the ladder on the first ``limit`` pairs; writes OUT/sheet.png and OUT/diagnose.json."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    pipe = ReferencePipeline(load_checkpoint(checkpoint))
    config = pipe.config
    ladder = Ladder(pipe, steps)
    dataset = open_dataset(data, split)
    n = min(limit, len(dataset))
    if n < 1:
        raise ValueError(f"{data} (split {split!r}) has no pairs")
    rows, pairs = [], []
    for i in range(n):
        sample = dataset[i]
        prep, target = prepare_sample(sample, config, str(data))
        row, numbers = ladder.run(prep, target, sample.category, seed=i)
        rows.append(row)
        pairs.append({"name": sample.name, "category": sample.category, "seed": i, **numbers})
        log.info("pair %d/%d %s done", i + 1, n, sample.name)
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "prediction_type": ladder.prediction_type,
        "resolution": [config.height, config.width],
        "timesteps": list(TIMESTEPS),
        "steps": steps,
        "guidance_scale": config.guidance_scale,
        "columns": list(COLUMNS),
        "conventions": {"colour": COLOUR_CONVENTION, "psnr": PSNR_CONVENTION},
        "summary": summarise(pairs),
        "pairs": pairs,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sheet(rows, (config.height, config.width)).save(out / "sheet.png")
    (out / "diagnose.json").write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    return result


def _json_safe(x: Any) -> Any:
    """NaN and inf as the strings "nan", "inf", "-inf", so the file stays standard JSON; keys as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return "\n".join("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in cells)


def report(result: dict[str, Any]) -> str:
    keys = ("vae_psnr", "vae_colour", "sample_colour", "latent_std")
    pair_rows = [[p["name"], p["category"], *(p[k] for k in keys)] for p in result["pairs"]]
    s = result["summary"]
    pair_rows.append(["mean", "", *(s[k] for k in keys)])
    per_t = [[t, *(s["per_t"][t][k] for k in PER_T), s["latent_std"]] for t in TIMESTEPS]
    return (
        f"{result['checkpoint']} ({result['prediction_type']}) on {result['data']} ({result['split']}), "
        f"{len(result['pairs'])} pairs\n\n"
        + _table(["pair", "category", "VAE PSNR", "VAE dE00", "sample dE00", "latent std"], pair_rows)
        + "\n\nper t, mean over pairs (gap = MSE uncond - MSE cond of the prediction target)\n\n"
        + _table(["t", "MSE cond", "MSE uncond", "gap", "rel gap", "x0 std", "x0 dE00", "latent std"], per_t)
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="IGR checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="VITON-HD-layout folder (e.g. from train/synthetic.py)")
    p.add_argument("--out", required=True, type=Path, help="folder for sheet.png and diagnose.json")
    p.add_argument("--limit", type=int, default=8, help="the first N pairs of the split (default 8)")
    p.add_argument("--split", default="test")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of the full sample (default 25)")
    a = p.parse_args(argv)
    if a.limit < 1:
        p.error(f"--limit must be >= 1, got {a.limit}")
    if a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = diagnose(a.checkpoint, a.data, a.out, a.limit, a.split, a.steps)
    except (CheckpointError, DataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(report(result))
    print(f"\nwrote {a.out / 'sheet.png'} and {a.out / 'diagnose.json'}")
    return result


if __name__ == "__main__":
    main()

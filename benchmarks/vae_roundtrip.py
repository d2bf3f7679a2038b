"""VAE round trip of one or more checkpoints on held-out garments: PSNR and garment colour error.

Usage::

    python benchmarks/vae_roundtrip.py --data DIR --models shipped=models/demo-small new=runs/vae-dec \
        [--limit 45] [--split test] [--out OUT.json]

Each ground-truth garment of the split's first ``--limit`` pairs (at the checkpoint's resolution,
as ``train.traindata.prepare_sample`` prepares it for training) is encoded to its latent mean,
decoded, and compared with itself: PSNR (``benchmarks.metrics.psnr``) and the garment colour error
(``benchmarks.colour.COLOUR_CONVENTION``). It is the ceiling of every restore: a denoiser that
predicted the garment's latent exactly would score this. The table gives each model's mean with a
95% bootstrap interval, and each model after the first against the first (paired differences).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks.colour import COLOUR_CONVENTION, garment_colour_error
from benchmarks.metrics import PSNR_CONVENTION, psnr
from benchmarks.quality import _parse_model, bootstrap_ci95, paired_difference
from igr_sdk.preprocess import to_image
from train.checkpoint import CheckpointError, load_checkpoint
from train.datasets import DataError, open_dataset
from train.traindata import prepare_sample

log = logging.getLogger(__name__)

METRICS = ("psnr", "colour")


def _interval(values: np.ndarray) -> list[float]:
    """95% bootstrap interval of the mean of the finite values (seed 0, as the paired differences)."""
    v = values[np.isfinite(values)]
    return bootstrap_ci95(v, np.random.default_rng(0)) if v.size else [float("nan"), float("nan")]


@torch.no_grad()
def round_trip(model, target: np.ndarray) -> np.ndarray:
    """target (3, H, W) in [-1, 1] -> the decoded latent mean as (H, W, 3) uint8."""
    x = torch.from_numpy(target[None]).float()  # (1, 3, H, W)
    z = model.vae_encode(x)  # (1, 4, h, w), scaled latent mean
    return np.asarray(to_image(model.vae_decode(z).float().numpy()[0]))


def evaluate(models: dict[str, str | Path], data: str | Path, limit: int, split: str = "test") -> dict[str, Any]:
    loaded = {name: load_checkpoint(path).eval() for name, path in models.items()}
    first = next(iter(loaded.values())).config
    for name, m in loaded.items():
        if (m.config.height, m.config.width) != (first.height, first.width):
            raise ValueError(
                f"model {name!r} works at {m.config.height}x{m.config.width}, the first at {first.height}x{first.width}"
            )
    dataset = open_dataset(data, split)
    n = min(limit, len(dataset))
    if n < 1:
        raise ValueError(f"{data} (split {split!r}) has no pairs")
    per_pair = []
    for i in range(n):
        sample = dataset[i]
        _, target = prepare_sample(sample, first, str(data))
        gt = np.asarray(to_image(target))  # (H, W, 3) uint8
        scores = {}
        for name, model in loaded.items():
            rec = round_trip(model, target)
            scores[name] = {"psnr": psnr(rec, gt), "colour": garment_colour_error(rec, gt)}
        per_pair.append({"name": sample.name, "category": sample.category, "scores": scores})
        log.info("pair %d/%d %s done", i + 1, n, sample.name)
    summary = {}
    for name in loaded:
        summary[name] = {}
        for m in METRICS:
            v = np.array([p["scores"][name][m] for p in per_pair], dtype=np.float64)
            summary[name][m] = {"mean": float(np.nanmean(v)), "ci95": _interval(v), "n": int(np.isfinite(v).sum())}
    result = {
        "data": str(data),
        "split": split,
        "pairs": n,
        "models": {k: str(v) for k, v in models.items()},
        "metrics": list(METRICS),
        "conventions": {"psnr": PSNR_CONVENTION, "colour": COLOUR_CONVENTION},
        "summary": summary,
        "per_pair": per_pair,
    }
    base = next(iter(loaded))
    result["differences"] = {f"{other}-{base}": paired_difference(result, base, other) for other in list(loaded)[1:]}
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"VAE round trip on {result['pairs']} garments of {result['data']} ({result['split']})",
        "| model | PSNR (dB) | colour error (ΔE00) |",
        "|---|---|---|",
    ]
    for name, s in result["summary"].items():
        cells = [f"{s[m]['mean']:.2f} [{s[m]['ci95'][0]:.2f}, {s[m]['ci95'][1]:.2f}]" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, diff in result["differences"].items():
        cells = [f"{diff[m]['mean']:+.2f} [{diff[m]['ci95'][0]:+.2f}, {diff[m]['ci95'][1]:+.2f}]" for m in METRICS]
        lines.append(f"| {label} (paired) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="VITON-HD-layout folder (e.g. from train/synthetic.py)")
    p.add_argument(
        "--models", required=True, nargs="+", type=_parse_model, help="NAME=CHECKPOINT, the first is the base"
    )
    p.add_argument("--limit", type=int, default=45, help="the first N pairs of the split (default 45)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, help="write the result here as JSON")
    a = p.parse_args(argv)
    if a.limit < 1:
        p.error(f"--limit must be >= 1, got {a.limit}")
    names = [n for n, _ in a.models]
    if len(set(names)) != len(names):
        p.error(f"--models names must differ, got {names}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = evaluate(dict(a.models), a.data, a.limit, a.split)
    except (CheckpointError, DataError, ValueError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(report(result))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()

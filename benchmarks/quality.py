"""Restoration quality of IGR checkpoints and baselines on a held-out paired split (IGR, Table 1).

Usage::

    python train/synthetic.py --out data/heldout --count 300 --seed 90001 --size 256x192
    python benchmarks/quality.py --data data/heldout --split test --models igr=runs/ckpt \\
        --baselines --steps 25 --guidance 1.5 --limit 100 --out out/quality

For every pair, each *system* (a callable Sample -> PIL image) produces a garment image of the
evaluation size (H, W); the ground-truth garment is brought to that size with the same
``fit`` (resize keeping proportions, pad white) the model's input gets, and the two are compared
with SSIM and PSNR, plus LPIPS / DISTS with ``--lpips`` / ``--dists``: alone, they read the
weights that ``python benchmarks/fetch_metric_weights.py`` stores once in
``~/.cache/igr-sdk/metric-weights``; followed by a folder or weight files, they read those.
Systems:

* ``NAME=CKPT``: the torch reference pipeline of an IGR checkpoint (``--steps`` DDIM steps,
  ``--guidance``), evaluated at the checkpoint's resolution, sampling seed = the pair's index in
  the split, so reruns and other models see the same noise for the same pair.
* ``NAME=ENGINE_DIR`` (``--engines``): igr_sdk's ``Restorer`` over an engine folder, with the
  same steps, guidance and seeds, e.g. the fp32 and the int8 build of one checkpoint.
* ``segment-and-paste`` (``--baselines``): ``benchmarks.baselines.segment_and_paste``.

``--compare A:B`` adds, per metric, the mean over pairs of B's score minus A's with a 95% bootstrap
interval (pairs resampled, seed 0): how much B moves each metric against A on the same pairs.

Output: ``PREFIX.md`` (one table: mean ± std per metric, per system, over all pairs and per
category, with the SSIM convention in its caption) and ``PREFIX.json`` (the same plus every
pair's scores). The standard deviation is over pairs (ddof 0). PSNR is ``inf`` for an exact
output; a mean over pairs containing one is ``inf`` and ``n_inf`` counts them. Non-finite numbers
are written to JSON as the strings "inf", "-inf" and "nan", so the file stays standard JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks.baselines import segment_and_paste
from benchmarks.colour import COLOUR_CONVENTION, OVERLAP_CONVENTION, garment_colour_error, overlap_colour_error
from benchmarks.metrics import DISTS, LPIPS, PSNR_CONVENTION, SSIM_CONVENTION, WeightsError, as_image, psnr, ssim
from igr_sdk.contract import resolution_arg
from igr_sdk.preprocess import fit
from train.datasets import CATEGORIES, Sample, open_dataset

log = logging.getLogger(__name__)

System = Callable[[Sample], Image.Image]
Metric = Callable[[np.ndarray, np.ndarray], float]

BASELINE = "segment-and-paste"
DEFAULT_METRICS: dict[str, Metric] = {
    "ssim": ssim,
    "psnr": psnr,
    "colour": garment_colour_error,
    "colour_overlap": overlap_colour_error,
}
HIGHER_IS_BETTER = {m: m in ("ssim", "psnr") for m in ("ssim", "psnr", "colour", "colour_overlap", "lpips", "dists")}
LABELS = {
    "ssim": "SSIM",
    "psnr": "PSNR (dB)",
    "colour": "colour error (ΔE00)",
    "colour_overlap": "colour error on the overlap (ΔE00)",
    "lpips": "LPIPS",
    "dists": "DISTS",
}
DIGITS = {"psnr": 2}  # others: 4


# --------------------------------------------------------------------------------------------
# systems


def fitted_ground_truth(sample: Sample, size: Sequence[int]) -> np.ndarray:
    """The flat garment resized keeping proportions and padded white to (H, W), as the model sees images."""
    h, w = size
    garment = as_image(sample.garment, f"garment of {sample.name}")
    out, _ = fit(garment, np.ones(garment.shape[:2], dtype=bool), h, w)
    return out


def engine_system(
    engine_dir: str | Path, steps: int, guidance: float, seed_of: Callable[[Sample], int], threads: int | None = None
) -> tuple[System, tuple[int, int]]:
    """An engine folder's igr_sdk Restorer as a system, and the (H, W) it produces."""
    from igr_sdk import Restorer

    restorer = Restorer.from_dir(engine_dir, threads=threads)

    def restore(s: Sample) -> Image.Image:
        return restorer.restore(
            s.person, s.mask, s.category, steps=steps, guidance_scale=guidance, seed=seed_of(s)
        ).image

    return restore, restorer.manifest.resolution


def baseline_system(size: Sequence[int]) -> System:
    h, w = size
    return lambda s: Image.fromarray(segment_and_paste(s.person, s.mask, (h, w)))


def model_system(
    checkpoint: str | Path, steps: int, guidance: float, seed_of: Callable[[Sample], int]
) -> tuple[System, tuple[int, int]]:
    """A checkpoint's reference pipeline as a system, and the (H, W) it produces."""
    from train.checkpoint import load_checkpoint  # torch and diffusers only when a model is evaluated
    from train.pipeline import ReferencePipeline

    pipe = ReferencePipeline(load_checkpoint(checkpoint))

    def restore(s: Sample) -> Image.Image:
        result = pipe.restore(s.person, s.mask, s.category, steps=steps, guidance_scale=guidance, seed=seed_of(s))
        return result.images[0]

    return restore, (pipe.config.height, pipe.config.width)


# --------------------------------------------------------------------------------------------
# evaluation


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    n_nan = int(np.isnan(v).sum())  # the colour error of an all-white garment is undefined
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "n_inf": 0, "n_nan": n_nan}
    finite = np.isfinite(v)
    if finite.all():
        std = float(v.std())
    else:  # all-inf (an exact system) has no spread; a mix of inf and finite has no meaningful one
        std = 0.0 if (v == v[0]).all() else math.nan
    return {"mean": float(v.mean()), "std": std, "n": int(v.size), "n_inf": int(np.isinf(v).sum()), "n_nan": n_nan}


def evaluate(
    systems: Mapping[str, System],
    dataset: Sequence[Sample],
    size: Sequence[int],
    metrics: Mapping[str, Metric] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Score every system on the first ``limit`` pairs (all by default) at ``size`` = (H, W).

    Returns ``{"size", "pairs", "metrics", "conventions", "summary", "seconds_per_pair", "per_pair"}``
    where ``summary[system][category][metric]`` is ``{"mean", "std", "n", "n_inf"}`` and category
    is "all" or one of the data set's categories.
    """
    h, w = (int(v) for v in size)
    metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
    if not systems:
        raise ValueError("no systems to evaluate")
    if not metrics:
        raise ValueError("no metrics to compute")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError(f"nothing to evaluate: the data set has {len(dataset)} pairs and limit is {limit}")
    per_pair: list[dict[str, Any]] = []
    seconds = {name: 0.0 for name in systems}
    for i in range(n):
        sample = dataset[i]
        gt = fitted_ground_truth(sample, (h, w))
        scores: dict[str, dict[str, float]] = {}
        for name, system in systems.items():
            t0 = time.perf_counter()
            out = as_image(system(sample), f"output of {name!r} for {sample.name}")
            seconds[name] += time.perf_counter() - t0
            if out.shape != gt.shape:
                raise ValueError(
                    f"system {name!r} returned {out.shape[1]}x{out.shape[0]} for {sample.name}; "
                    f"the evaluation size is {w}x{h} (W x H)"
                )
            scores[name] = {m: float(fn(out, gt)) for m, fn in metrics.items()}
        per_pair.append({"index": i, "name": sample.name, "category": sample.category, "scores": scores})
        log.info(
            "pair %d/%d %s: %s",
            i + 1,
            n,
            sample.name,
            "; ".join(f"{s} " + " ".join(f"{m}={v:.4g}" for m, v in sc.items()) for s, sc in scores.items()),
        )

    present = [c for c in CATEGORIES if any(p["category"] == c for p in per_pair)]
    present += sorted({p["category"] for p in per_pair} - set(present))
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name in systems:
        summary[name] = {}
        for cat in ["all", *present]:
            rows = [p for p in per_pair if cat == "all" or p["category"] == cat]
            summary[name][cat] = {m: _stats([p["scores"][name][m] for p in rows]) for m in metrics}
    return {
        "size": [h, w],
        "pairs": n,
        "metrics": list(metrics),
        "conventions": {
            "ssim": SSIM_CONVENTION,
            "psnr": PSNR_CONVENTION,
            "colour": COLOUR_CONVENTION,
            "colour_overlap": OVERLAP_CONVENTION,
        },
        "summary": summary,
        "seconds_per_pair": {name: s / n for name, s in seconds.items()},
        "per_pair": per_pair,
    }


def bootstrap_ci95(values: np.ndarray, rng: np.random.Generator, resamples: int = 10_000) -> list[float]:
    """95% bootstrap interval of the mean of ``values`` (finite, at least one), drawn from ``rng``."""
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    return [float(q) for q in np.quantile(means, [0.025, 0.975])]


def paired_difference(
    result: Mapping[str, Any], base: str, other: str, resamples: int = 10_000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per metric: mean over pairs of ``other``'s score minus ``base``'s, with a 95% bootstrap interval.

    Pairs where either score is not finite (an exact PSNR) are left out and counted in ``n_left_out``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for m in result["metrics"]:
        d = np.array([p["scores"][other][m] - p["scores"][base][m] for p in result["per_pair"]], dtype=np.float64)
        finite = d[np.isfinite(d)]
        entry: dict[str, Any] = {"n": int(finite.size), "n_left_out": int(d.size - finite.size)}
        if finite.size:
            entry.update(mean=float(finite.mean()), ci95=bootstrap_ci95(finite, rng, resamples))
        else:
            entry.update(mean=math.nan, ci95=[math.nan, math.nan])
        out[m] = entry
    return out


# --------------------------------------------------------------------------------------------
# reports


def _fmt(x: float, digits: int) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def markdown(result: Mapping[str, Any], title: str = "Garment restoration quality") -> str:
    h, w = result["size"]
    metrics = result["metrics"]
    caption = (
        f"**{title}.** {result['pairs']} pairs at {h}x{w} (H x W), ground truth fitted to that size; "
        f"mean ± std over pairs. {SSIM_CONVENTION}. {PSNR_CONVENTION}."
    )
    if "colour" in metrics:
        caption += f" {COLOUR_CONVENTION[0].upper()}{COLOUR_CONVENTION[1:]}."
    if "colour_overlap" in metrics:
        caption += f" {OVERLAP_CONVENTION[0].upper()}{OVERLAP_CONVENTION[1:]}."
    if "lpips" in metrics:
        caption += " LPIPS: v0.1, VGG16, inputs in [-1, 1]."
    if "dists" in metrics:
        caption += " DISTS: official model, no resize."
    header = ["System", "Category", "n"] + [
        f"{LABELS.get(m, m)} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}" for m in metrics
    ]
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, by_cat in result["summary"].items():
        for cat, stats in by_cat.items():
            cells = [name, cat, str(next(iter(stats.values()))["n"])]
            for m in metrics:
                d = DIGITS.get(m, 4)
                s = stats[m]
                cell = f"{_fmt(s['mean'], d)} ± {_fmt(s['std'], d)}"
                if s["n_inf"]:
                    cell += f" ({s['n_inf']}/{s['n']} exact)"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("paired"):
        lines += [
            "",
            "Paired differences (B − A per pair, mean and 95% bootstrap interval over pairs):",
            "",
            "| B − A | metric | mean | 95% interval | n |",
            "|---|---|---:|---|---:|",
        ]
        for label, by_metric in result["paired"].items():
            for m, e in by_metric.items():
                d = DIGITS.get(m, 4)
                interval = f"[{_fmt(e['ci95'][0], d)}, {_fmt(e['ci95'][1], d)}]"
                lines.append(f"| {label} | {LABELS.get(m, m)} | {_fmt(e['mean'], d)} | {interval} | {e['n']} |")
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(result: Mapping[str, Any], prefix: str | Path, title: str = "Garment restoration quality") -> Path:
    """Write PREFIX.md and PREFIX.json; returns the Markdown path."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md = prefix.with_name(prefix.name + ".md")
    md.write_text(markdown(result, title))
    prefix.with_name(prefix.name + ".json").write_text(
        json.dumps(_json_safe(dict(result)), indent=2, allow_nan=False) + "\n"
    )
    return md


# --------------------------------------------------------------------------------------------
# CLI


def _parse_size(text: str) -> tuple[int, int]:
    h, w = resolution_arg("--size", "256x192")(text)
    if h < 11 or w < 11:
        raise argparse.ArgumentTypeError(f"--size {text!r} is too small for SSIM's 11x11 window")
    return h, w


def _parse_model(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(
            f"--models / --engines entries must look like NAME=CHECKPOINT_DIR or NAME=ENGINE_DIR, got {text!r}"
        )
    return name.strip(), Path(path.strip())


def _parse_compare(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a.strip() or not b.strip():
        raise argparse.ArgumentTypeError(f"--compare entries must look like A:B (two system names), got {text!r}")
    return a.strip(), b.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="VITON-HD-layout folder (e.g. from train/synthetic.py)")
    p.add_argument("--split", default="test")
    p.add_argument("--models", nargs="+", type=_parse_model, default=[], metavar="NAME=CKPT")
    p.add_argument("--engines", nargs="+", type=_parse_model, default=[], metavar="NAME=ENGINE_DIR")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads of the --engines systems")
    p.add_argument("--compare", nargs="+", type=_parse_compare, default=[], metavar="A:B", help="paired B - A")
    p.add_argument("--baselines", action="store_true", help=f"add the {BASELINE} baseline")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    p.add_argument("--size", type=_parse_size, help="H x W when there is no model (default 256x192)")
    p.add_argument("--out", type=Path, default=Path("out/quality"), help="report prefix: PREFIX.md and PREFIX.json")
    cache = "the fetch_metric_weights.py cache"
    p.add_argument(
        "--lpips", nargs="*", type=Path, metavar="PATH", help=f"add LPIPS; weights from PATH(s) or else {cache}"
    )
    p.add_argument(
        "--dists", nargs="*", type=Path, metavar="PATH", help=f"add DISTS; weights from PATH(s) or else {cache}"
    )
    a = p.parse_args(argv)
    if not a.models and not a.engines and not a.baselines:
        p.error("nothing to evaluate: give --models NAME=CKPT, --engines NAME=DIR and/or --baselines")
    names = [n for n, _ in [*a.models, *a.engines]]
    dup = sorted({n for n in names if names.count(n) > 1} | ({BASELINE} & set(names) if a.baselines else set()))
    if dup:
        p.error(f"system names must be unique, repeated: {dup}")
    if a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    if a.limit is not None and a.limit < 1:
        p.error(f"--limit must be >= 1, got {a.limit}")
    known = set(names) | ({BASELINE} if a.baselines else set())
    unknown = sorted({n for pair in a.compare for n in pair} - known)
    if unknown:
        p.error(f"--compare names systems {unknown} that are not evaluated; systems: {sorted(known)}")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = open_dataset(a.data, a.split)
    if dataset.problems:
        log.warning("%d pairs of %s were left out; see the warnings above", dataset.problem_count, a.data)

    metrics: dict[str, Metric] = dict(DEFAULT_METRICS)
    weights: dict[str, list[str]] = {}
    try:
        for name, cls, given in (("lpips", LPIPS, a.lpips), ("dists", DISTS, a.dists)):
            if given is not None:  # the flag alone (no paths) reads the default weights folder
                model = cls(given or None)
                metrics[name], weights[name] = model, [str(p) for p in model.paths]
    except WeightsError as e:
        raise SystemExit(f"error: {e}") from None

    systems: dict[str, System] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name, ckpt in a.models:
        systems[name], sizes[name] = model_system(ckpt, a.steps, a.guidance, lambda s: dataset.index_of(s.name))
    for name, folder in a.engines:
        systems[name], sizes[name] = engine_system(
            folder, a.steps, a.guidance, lambda s: dataset.index_of(s.name), a.threads
        )
    if len(set(sizes.values())) > 1:
        raise SystemExit(f"models have different resolutions {sizes}; evaluate them in separate runs")
    size = next(iter(sizes.values()), a.size or (256, 192))
    if a.size and a.size != size:
        raise SystemExit(f"--size {a.size} differs from the models' resolution {size}; leave --size out")
    if a.baselines:
        systems[BASELINE] = baseline_system(size)

    result = evaluate(systems, dataset, size, metrics, a.limit)
    if a.compare:
        result["paired"] = {f"{b} − {base}": paired_difference(result, base, b) for base, b in a.compare}
    result["run"] = {
        "data": str(a.data),
        "split": a.split,
        "pairs_in_split": len(dataset),
        "pairs_left_out": dataset.problem_count,
        "models": {n: str(c) for n, c in a.models},
        "engines": {n: str(d) for n, d in a.engines},
        "steps": a.steps,
        "guidance": a.guidance,
        "seed": "pair index",
        "lpips_weights": weights.get("lpips", []),
        "dists_weights": weights.get("dists", []),
    }
    md = write_report(result, a.out, f"Garment restoration quality, {a.data} ({a.split})")
    print(md.read_text())
    print(f"wrote {md} and {md.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()

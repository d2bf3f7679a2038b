"""Per-step denoiser time against resolution and batch, for the cached / naive / per_step_garmnet forms.

Each point is one noise prediction of the (2B, 4, h, w) CFG batch through the torch reference
pipeline's ``step_fn`` (random weights and random conditions: the cost does not depend on values),
timed as the median of ``--repeats`` runs after ``--warmup``. The x axis is N = h x w, the token
count of the UNet's first level. Convolutions and linear layers grow with N, self-attention with
N^2 — and the cond rows attend over 2N keys (cached) or 2N queries x 2N keys (naive) — so the
forms separate as N grows. A least-squares fit t = a + b N + c N^2 per series and the analytic
FLOPs of ``benchmarks/flops.py`` (with the attention share) are reported beside the times.

The fit and the plot use ``--stat``: ``min`` by default, because on a shared machine the fastest
of a few runs is the least disturbed estimate of the cost (other processes only ever add time);
the table shows the median and the spread as well.

Outputs: a Markdown table (stdout), ``--json`` and ``--png`` (matplotlib if importable, else a
plain PIL drawing).
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks import flops as fl
from benchmarks.latency import DTYPES, STEP_T, random_conditions, stats, time_calls
from igr_sdk.contract import parse_resolution
from train.checkpoint import load_checkpoint, new_model
from train.config import IGRConfig, preset
from train.model import FORMS, IGRModel
from train.pipeline import ReferencePipeline

# Valid for ``small`` (multiples of 32); 192x144 and 320x240 are not, so 192x128 and 320x256 stand in.
DEFAULT_RESOLUTIONS = ((128, 96), (192, 128), (256, 192), (320, 256), (384, 288))
DEFAULT_BATCHES = (1, 2)


def tokens(config: IGRConfig) -> int:
    h, w = config.latent_size
    return h * w


def measure_point(
    model: IGRModel, config: IGRConfig, batch: int, form: str, repeats: int, warmup: int, device, dtype
) -> dict[str, Any]:
    """One (resolution, batch, form) point: step time stats and analytic FLOPs."""
    ref = ReferencePipeline(model)  # runs on the model's device and dtype
    cond = random_conditions(config, batch, device, dtype)
    step = ref.step_fn(cond, form)  # GarmNet (+ K/V cache) runs here, outside the timing
    h, w = config.latent_size
    latents = torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    times, _ = time_calls(lambda: step(latents, STEP_T), repeats, warmup, device)
    count = fl.count_graphs(config, batch, form)["denoiser"]
    s = stats(times)
    return {
        "height": config.height,
        "width": config.width,
        "tokens": tokens(config),
        "batch": batch,
        "form": form,
        **s,
        "gflop": count.total() / 1e9,
        "attention_gflop": count.total(("attention",)) / 1e9,
        "gflop_per_s": count.total() / 1e9 / s["median_s"],
    }


def run(
    model: IGRModel,
    resolutions: list[tuple[int, int]],
    batches: list[int],
    forms: list[str],
    repeats: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    base = model.config
    rows = []
    for h, w in resolutions:
        config = base.with_resolution(h, w)  # the weights do not depend on the resolution
        for b in batches:
            for f in forms:
                rows.append(measure_point(model, config, b, f, repeats, warmup, device, dtype))
    return rows


def fit_quadratic(n: list[float], t: list[float]) -> tuple[float, float, float] | None:
    """Non-negative least-squares a, b, c of t = a + b N + c N^2, or None with fewer than 3 points.

    Non-negative because each term is a cost; an unconstrained fit of noisy timings happily trades
    a negative linear term for a larger quadratic one. Three unknowns: try every support.
    """
    if len(set(n)) < 3:
        return None
    x = np.asarray(n, float)
    y = np.asarray(t, float)
    cols = np.stack([np.ones_like(x), x, x**2], axis=1)  # (P, 3)
    best, best_err = np.zeros(3), float("inf")
    for support in ((0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,)):
        coef, *_ = np.linalg.lstsq(cols[:, support], y, rcond=None)
        if (coef < 0).any():
            continue
        err = float(np.sum((cols[:, support] @ coef - y) ** 2))
        if err < best_err:
            best_err, best = err, np.zeros(3)
            best[list(support)] = coef
    return float(best[0]), float(best[1]), float(best[2])


def series(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["form"], r["batch"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["tokens"]) for k, v in out.items()}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], stat: str = "min") -> str:
    lines = [
        f"## Denoiser step vs resolution: preset {meta['preset']}, {meta['device']} {meta['dtype']}, "
        f"{meta['threads']} threads, median of {meta['repeats']} after {meta['warmup']} warm-up",
        "",
        "| H x W | N (level 1) | batch | form | median ms | min–max ms | GFLOP | attention % | GFLOP/s (median) | "
        f"vs naive ({stat}) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    naive = {(r["tokens"], r["batch"]): r[f"{stat}_s"] for r in rows if r["form"] == "naive"}
    for r in rows:
        base = naive.get((r["tokens"], r["batch"]))
        vs = f"{base / r[f'{stat}_s']:.2f}x" if base else ""
        lines.append(
            f"| {r['height']}x{r['width']} | {r['tokens']} | {r['batch']} | {r['form']} | {r['median_s'] * 1e3:,.1f} | "
            f"{r['min_s'] * 1e3:,.1f}–{r['max_s'] * 1e3:,.1f} | {r['gflop']:,.2f} | "
            f"{100 * r['attention_gflop'] / r['gflop']:.0f} | {r['gflop_per_s']:,.1f} | {vs} |"
        )
    lines += [
        "",
        f"Non-negative fit of the {stat} time t = a + b N + c N^2 (ms); N^2 share = c N^2 / t at the largest N.",
        "",
        "| form | batch | a | b (per 1k tokens) | c (per 1M tokens^2) | N^2 share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (form, b), pts in series(rows).items():
        fit = fit_quadratic([p["tokens"] for p in pts], [p[f"{stat}_s"] * 1e3 for p in pts])
        if fit is None:
            continue
        a, lin, c = fit
        n, t = pts[-1]["tokens"], pts[-1][f"{stat}_s"] * 1e3
        lines.append(f"| {form} | {b} | {a:.2f} | {lin * 1e3:.2f} | {c * 1e6:.2f} | {100 * c * n * n / t:.0f}% |")
    return "\n".join(lines)


# --- plot ----------------------------------------------------------------------------------------------
COLORS = {"cached": (31, 119, 180), "naive": (214, 39, 40), "per_step_garmnet": (44, 160, 44)}


def plot(rows: list[dict[str, Any]], path: Path, title: str, stat: str = "min") -> str:
    """Time per step (ms, the ``stat`` of the runs) against N; returns which library drew it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pil(rows, path, title, stat)
        return "PIL"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (form, b), pts in series(rows).items():
        color = tuple(c / 255 for c in COLORS.get(form, (0, 0, 0)))
        ax.plot(
            [p["tokens"] for p in pts],
            [p[f"{stat}_s"] * 1e3 for p in pts],
            marker="o" if b == 1 else "s",
            linestyle="-" if b == 1 else "--",
            color=color,
            label=f"{form}, batch {b}",
        )
    ax.set_xlabel("tokens N of the first level (latent h x w)")
    ax.set_ylabel(f"ms per denoiser step (CFG batch 2B), {stat} of runs")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _nice_ticks(hi: float, n: int = 5) -> list[float]:
    raw = hi / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    return [i * step for i in range(int(hi // step) + 2)]


def _plot_pil(rows: list[dict[str, Any]], path: Path, title: str, stat: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 900, 600, 80, 220, 50, 60
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    xs = [r["tokens"] for r in rows]
    ys = [r[f"{stat}_s"] * 1e3 for r in rows]
    xt, yt = _nice_ticks(max(xs)), _nice_ticks(max(ys))
    x_hi = next(t for t in xt if t >= max(xs))
    y_hi = next(t for t in yt if t >= max(ys))
    pw, ph = width - left - right, height - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return left + pw * x / x_hi, top + ph * (1 - y / y_hi)

    for t in (t for t in xt if t <= x_hi):
        x, _ = px(t, 0)
        d.line([(x, top), (x, top + ph)], fill=(230, 230, 230))
        d.text((x, top + ph + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in (t for t in yt if t <= y_hi):
        _, y = px(0, t)
        d.line([(left, y), (left + pw, y)], fill=(230, 230, 230))
        d.text((left - 6, y), f"{t:g}", fill="black", font=font, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    d.text(
        (left + pw / 2, height - 20), "tokens N of the first level (latent h x w)", fill="black", font=font, anchor="mm"
    )
    d.text((12, top - 20), f"ms per denoiser step (CFG batch 2B), {stat} of runs", fill="black", font=font)
    d.text((width / 2, 16), title, fill="black", font=font, anchor="mm")
    for i, ((form, b), pts) in enumerate(series(rows).items()):
        color = COLORS.get(form, (0, 0, 0))
        coords = [px(p["tokens"], p[f"{stat}_s"] * 1e3) for p in pts]
        d.line(coords, fill=color, width=3 if b == 1 else 1)
        for x, y in coords:
            box = [x - 4, y - 4, x + 4, y + 4]
            d.ellipse(box, fill=color) if b == 1 else d.rectangle(box, outline=color)
        ly = top + 10 + 22 * i
        d.line([(left + pw + 15, ly), (left + pw + 45, ly)], fill=color, width=3 if b == 1 else 1)
        d.text((left + pw + 52, ly), f"{form}, batch {b}", fill="black", font=font, anchor="lm")
    img.save(path)


def _resolutions(text: str, config: IGRConfig) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        h, w = parse_resolution(item, "--resolutions")
        config.with_resolution(h, w)  # raises with the valid multiple if not
        out.append((h, w))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--resolutions", default=",".join(f"{h}x{w}" for h, w in DEFAULT_RESOLUTIONS))
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--stat", default="min", choices=("min", "median"), help="what the fit and the plot use")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path, default=Path("scaling.png"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    model = load_checkpoint(a.checkpoint) if a.checkpoint else new_model(preset(a.preset), seed=0)
    model = model.to(device, dtype).eval()
    resolutions = _resolutions(a.resolutions, model.config)
    batches = [int(b) for b in a.batches.split(",")]
    forms = [f.strip() for f in a.forms.split(",")]
    bad = [f for f in forms if f not in FORMS]
    if bad:
        p.error(f"unknown form {bad[0]!r}; expected some of {FORMS}")
    rows = run(model, resolutions, batches, forms, a.repeats, a.warmup, device, dtype)
    meta = {
        "preset": model.config.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "repeats": a.repeats,
        "warmup": a.warmup,
        "torch": torch.__version__,
    }
    meta["stat"] = a.stat
    print(markdown(rows, meta, a.stat))
    title = f"IGR denoiser step, preset {meta['preset']}, {meta['device']} {a.dtype}, {meta['threads']} threads"
    drawn = plot(rows, a.png, title, a.stat)
    print(f"\nplot: {a.png} ({drawn})")
    report = {"meta": meta, "points": rows}
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

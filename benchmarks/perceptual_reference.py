"""LPIPS and DISTS of fixed image pairs computed by the official ``lpips`` and ``DISTS_pytorch`` packages.

tests/test_metrics.py checks ``benchmarks.metrics`` against the values this prints. It runs in a
throwaway virtual environment that sees the project's packages (torch, numpy, safetensors) but
installs the two reference packages only there::

    python3.11 -m venv /tmp/igr-ref
    /tmp/igr-ref/bin/pip install --no-deps lpips==0.1.4 dists-pytorch==0.1
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/igr-ref/lib/python3.11/site-packages/project.pth
    /tmp/igr-ref/bin/python benchmarks/perceptual_reference.py [--weights DIR]

Both packages build their trunk with torchvision's ``models.vgg16(pretrained=True).features``;
torchvision cannot be installed next to the project's torch and would download the weights. So
before they are imported, a minimal ``torchvision`` module is registered whose ``models.vgg16``
returns torchvision's layer layout (31 modules: 3x3 convolutions with padding 1, in-place ReLUs,
2x2 max pools) with the weights of ``DIR/vgg16.safetensors`` (written by
benchmarks/fetch_metric_weights.py). Everything else is the packages' own code and data:
``lpips.LPIPS(net="vgg")`` with its bundled ``weights/v0.1/vgg.pth`` and inputs from
``lpips.im2tensor``, and ``DISTS_pytorch.DISTS()`` with its bundled ``weights.pt`` and inputs
scaled to [0, 1] as ``transforms.ToTensor`` does.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks.metrics import VGG16_FILE, default_weights_dir

# --------------------------------------------------------------------------------------------
# fixed image pairs (numpy only, deterministic)


def _noise_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    return a, b


def _pattern(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = 128 + 100 * np.sin(xx / 3.0)
    g = 128 + 100 * np.cos(yy / 5.0)
    b = ((yy // 8 + xx // 8) % 2) * 180 + 40
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def _shift_pair() -> tuple[np.ndarray, np.ndarray]:
    a = _pattern(64, 48)
    b = np.roll(a, (1, 2), axis=(0, 1)).copy()
    b[20:30, 10:30] = 255
    return a, b


def _blur_pair() -> tuple[np.ndarray, np.ndarray]:
    a = _pattern(48, 64)
    p = np.pad(a.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    b = sum(p[i : i + 48, j : j + 64] for i in range(3) for j in range(3)) / 9.0
    return a, b.round().astype(np.uint8)


def _colour_pair() -> tuple[np.ndarray, np.ndarray]:
    a = _pattern(56, 56)
    b = np.clip(a.astype(np.float64) * (0.8, 0.9, 1.1) + (30, 0, -10), 0, 255).round().astype(np.uint8)
    return a, b


PAIRS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "noise": _noise_pair,
    "shift": _shift_pair,
    "blur": _blur_pair,
    "colour": _colour_pair,
}


# --------------------------------------------------------------------------------------------
# the official packages, with torchvision's VGG16 built from the cached weights


def _register_torchvision(vgg_file: Path) -> None:
    import torch.nn as nn
    from safetensors.torch import load_file

    def vgg16(pretrained: bool = True, **_: object) -> nn.Module:
        layers: list[nn.Module] = []
        c_in = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        net = nn.Module()
        net.features = nn.Sequential(*layers)
        if pretrained:
            state = {k.removeprefix("features."): t for k, t in load_file(str(vgg_file)).items()}
            net.features.load_state_dict(state, strict=True)
        return net

    models = types.ModuleType("torchvision.models")
    models.vgg16 = vgg16
    transforms = types.ModuleType("torchvision.transforms")
    tv = types.ModuleType("torchvision")
    tv.models, tv.transforms = models, transforms
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.transforms": transforms})


def reference_values(weights: Path) -> dict[str, tuple[float, float]]:
    """{pair: (LPIPS, DISTS)} from lpips.LPIPS(net="vgg") and DISTS_pytorch.DISTS()."""
    import torch

    _register_torchvision(weights / VGG16_FILE)
    import lpips
    from DISTS_pytorch import DISTS

    lpips_model = lpips.LPIPS(net="vgg", verbose=False).eval()
    dists_model = DISTS().eval()
    out = {}
    with torch.no_grad():
        for name, make in PAIRS.items():
            a, b = make()
            lp = lpips_model(lpips.im2tensor(a), lpips.im2tensor(b)).item()
            x, y = (torch.from_numpy(im).permute(2, 0, 1)[None].float().div(255) for im in (a, b))
            out[name] = (lp, dists_model(x, y).item())
    return out


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=default_weights_dir(), help="folder with vgg16.safetensors")
    a = p.parse_args(argv)
    if not (a.weights / VGG16_FILE).is_file():
        raise SystemExit(f"no {VGG16_FILE} in {a.weights}; run benchmarks/fetch_metric_weights.py first")
    values = reference_values(a.weights)
    print("{")
    for name, (lp, ds) in values.items():
        print(f"    {name!r}: ({lp!r}, {ds!r}),")
    print("}")
    return values


if __name__ == "__main__":
    main()

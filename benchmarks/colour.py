"""Garment colour error: CIEDE2000 between mean CIELAB colours, in numpy only.

Conventions (state them next to any number you publish):

- sRGB -> CIELAB: 8-bit sRGB (IEC 61966-2-1 transfer curve) -> linear RGB -> CIE XYZ with the sRGB
  primaries and the D65 white -> CIELAB (CIE 1976) relative to D65 (X_n, Y_n, Z_n) =
  (0.95047, 1.0, 1.08883). sRGB white maps to L* = 100, a* = b* = 0.
- Colour difference: CIEDE2000 (CIE 142-2001) with k_L = k_C = k_H = 1, as written out in
  Sharma, Wu and Dalal, "The CIEDE2000 color-difference formula: implementation notes,
  supplementary test data, and mathematical observations", Color Res. Appl. 30(1), 2005.
- Garment pixels: see ``garment_pixels``; the colour error compares mean colours over them
  (``garment_colour_error``).
"""

from __future__ import annotations

import numpy as np

# linear sRGB -> CIE XYZ (D65), rows X, Y, Z
_XYZ_FROM_RGB = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
D65_WHITE = np.array([0.95047, 1.0, 1.08883])
WHITE_LEVEL = 240  # an 8-bit channel value at or above this counts as white background
COLOUR_CONVENTION = (
    "garment colour error: CIEDE2000 (kL = kC = kH = 1) between the mean CIELAB (D65) colours of the output "
    f"and the ground truth over the ground truth's garment pixels (some channel < {WHITE_LEVEL})"
)
OVERLAP_CONVENTION = (
    "colour error on the overlap: the same, over the pixels that are garment in both the output and the ground truth"
)


def _uint8_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim < 1 or image.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB values of shape (..., 3), got {image.dtype} {image.shape}")
    return image


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """8-bit sRGB (..., 3) uint8 -> CIELAB (..., 3) float64 (L* in [0, 100])."""
    c = _uint8_rgb(rgb, "srgb_to_lab").astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _XYZ_FROM_RGB.T / D65_WHITE  # (..., 3), relative to the white point
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3.0 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _hue_degrees(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Hue angle in [0, 360); 0 for a neutral colour (a = b = 0)."""
    return np.mod(np.degrees(np.arctan2(b, a)), 360.0)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of CIELAB colours (..., 3) and (..., 3) (broadcast) -> (...)."""
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    if lab1.shape[-1:] != (3,) or lab2.shape[-1:] != (3,):
        raise ValueError(f"ciede2000: expected CIELAB arrays of shape (..., 3), got {lab1.shape} and {lab2.shape}")
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)

    # 1. a' stretched by G, which depends on the mean chroma; C' and h' from (a', b)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    g = 0.5 * (1.0 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = _hue_degrees(b1, a1p), _hue_degrees(b2, a2p)

    # 2. differences in lightness, chroma and hue
    neutral = c1p * c2p == 0.0
    dl = l2 - l1
    dc = c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(neutral, 0.0, dh)
    dhh = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2.0)

    # 3. means, weighting functions and the rotation term
    l_mean = (l1 + l2) / 2.0
    cp_mean = (c1p + c2p) / 2.0
    h_sum, h_apart = h1p + h2p, np.abs(h1p - h2p) > 180.0
    h_mean = np.where(h_apart, np.where(h_sum < 360.0, h_sum + 360.0, h_sum - 360.0), h_sum) / 2.0
    h_mean = np.where(neutral, h_sum, h_mean)
    t = (
        1.0
        - 0.17 * np.cos(np.radians(h_mean - 30.0))
        + 0.24 * np.cos(np.radians(2.0 * h_mean))
        + 0.32 * np.cos(np.radians(3.0 * h_mean + 6.0))
        - 0.20 * np.cos(np.radians(4.0 * h_mean - 63.0))
    )
    d_theta = 30.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2))
    r_c = 2.0 * np.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
    s_l = 1.0 + 0.015 * (l_mean - 50.0) ** 2 / np.sqrt(20.0 + (l_mean - 50.0) ** 2)
    s_c = 1.0 + 0.045 * cp_mean
    s_h = 1.0 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c
    tl, tc, th = dl / s_l, dc / s_c, dhh / s_h
    return np.sqrt(tl**2 + tc**2 + th**2 + r_t * tc * th)


def garment_pixels(truth: np.ndarray) -> np.ndarray:
    """(H, W) bool: the ground truth's garment pixels, those with some channel below ``WHITE_LEVEL``.

    In-shop garment images lie on a white background, so "not near-white" separates the garment from
    it; JPEG ringing on the background stays above the level. A white or near-white garment has no
    garment pixels by this rule (its colour error is then NaN).
    """
    return _uint8_rgb(truth, "ground truth").min(axis=-1) < WHITE_LEVEL


def mean_lab(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(3,) mean CIELAB colour over ``pixels`` (H, W) bool of an (H, W, 3) uint8 image: the mean of
    the per-pixel CIELAB values, not the CIELAB value of the mean RGB."""
    return srgb_to_lab(_uint8_rgb(image, "image")[pixels]).mean(axis=0)


def garment_colour_error(output: np.ndarray, truth: np.ndarray) -> float:
    """CIEDE2000 between the mean CIELAB colours of ``output`` and ``truth`` (both (H, W, 3) uint8)
    over ``garment_pixels(truth)``; NaN when the ground truth has no garment pixels.

    It measures whether the garment's overall colour is restored, whatever its shape or texture.
    """
    output, truth = _uint8_rgb(output, "output"), _uint8_rgb(truth, "ground truth")
    if output.shape != truth.shape or output.ndim != 3:
        raise ValueError(f"output {output.shape} and ground truth {truth.shape} must both be (H, W, 3) of one size")
    pixels = garment_pixels(truth)
    if not pixels.any():
        return float("nan")
    return float(ciede2000(mean_lab(output, pixels), mean_lab(truth, pixels)))


def overlap_colour_error(output: np.ndarray, truth: np.ndarray) -> float:
    """CIEDE2000 between mean CIELAB colours over the pixels that are garment in both images; NaN
    when they share none.

    ``garment_colour_error`` counts an output's white background inside the true garment's outline,
    so a garment drawn in the right colour but the wrong shape (short sleeves for long) scores far
    off; this one reads the colour where a garment was drawn, and the two together tell a wrong
    colour from a wrong shape.
    """
    output, truth = _uint8_rgb(output, "output"), _uint8_rgb(truth, "ground truth")
    if output.shape != truth.shape or output.ndim != 3:
        raise ValueError(f"output {output.shape} and ground truth {truth.shape} must both be (H, W, 3) of one size")
    pixels = garment_pixels(truth) & garment_pixels(output)
    if not pixels.any():
        return float("nan")
    return float(ciede2000(mean_lab(output, pixels), mean_lab(truth, pixels)))

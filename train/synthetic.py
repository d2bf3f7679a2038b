"""Deterministic synthetic person/garment pairs for garment restoration (virtual try-off).

Each pair is a simple drawn figure wearing a textured garment (the input), the garment's
visible-region mask, and the same garment laid flat on white (the ground truth). Every pair
is derived from its own seed (base seed + index), so pair ``i`` does not depend on how many
pairs are generated, and the same seed always gives the same bytes on disk.

Some pairs carry, on purpose, the defects that make real try-off data hard (IGR, Fig. 2):
``occlusion``, ``truncation``, ``side_view`` and ``extreme_proportion``. They are flagged
in the metadata so the curation tool (train/curate.py) can be checked against them.

Geometry lives in "canonical units": the body is about 9 units tall (head top at y=-1.6,
feet at y=7.5), the shoulders are 2 units wide and x=0 is the body's centre line. Garment
pieces are polygons in the *flat* canonical pose (how the garment lies on the table); the worn
garment rotates sleeves and legs about their joints, and every worn pixel is mapped back to
flat coordinates to look up the same texture, so the ground truth is exactly the un-warped
garment.

Only stdlib, numpy, PIL and ``igr_sdk.contract`` are imported so this runs as a plain script:
``python train/synthetic.py --out DIR --count N --seed S --size 256x192``.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from igr_sdk.contract import CATEGORIES, resolution_arg

log = logging.getLogger(__name__)

DEFECTS = ("occlusion", "truncation", "side_view", "extreme_proportion")
GARMENT_TYPES: dict[str, tuple[str, ...]] = {
    "upper": ("tshirt", "longsleeve", "tank"),
    "lower": ("trousers", "shorts", "skirt"),
    "full": ("dress", "sleeveless_dress", "jumpsuit"),
}
TEXTURES = ("solid", "stripes", "checks", "dots", "gradient", "blocks")
DECALS = ("none", "text", "logo")
BACKGROUNDS = ("plain", "gradient", "noise", "room", "stripes")
OCCLUDERS = ("arm", "hair", "bag")
# The parts of a label map (``make_pair(..., labels=True)``), in label order: what a human parser
# learns to tell apart. Every garment takes the label of its kind, as a real parser's label map has it:
# the target garment its category's, the plain trousers worn under a target top "lower_garment", the
# plain top worn over a target skirt or trousers "upper_garment"; shoes are "other_clothing", a bag is
# an "occluder". Which garment is the target is the caller's category, not something a parser could
# see in the photo.
PARTS = (
    "background",
    "skin",
    "hair",
    "upper_garment",
    "lower_garment",
    "full_garment",
    "other_clothing",
    "occluder",
)
GARMENT_PARTS = {"upper": "upper_garment", "lower": "lower_garment", "full": "full_garment"}

DEFAULT_SIZE = (256, 192)  # (H, W), VITON-HD's aspect ratio
MIN_SIZE = (64, 48)
DEFAULT_HARD_RATE = 0.25
# How the photo is framed. "garment": around the garment, which spans GARMENT_FILL of the frame's
# tighter side, as in VITON-HD (upper body) and DressCode (per-category crops), so the garment is a
# third or more of the photo; "figure": the whole figure in the frame, the garment 5-13% of it.
FRAMINGS = ("garment", "figure")
DEFAULT_FRAMING = "garment"
GARMENT_FILL = (0.6, 0.85)
JPEG_QUALITY = 95

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in canonical units

# Canonical body landmarks (units, see module docstring).
_ARM_JOINT = (0.9, 0.3)  # right shoulder joint; the left one is mirrored
_ARM_LEN = 3.1
_HIP_JOINT = (0.47, 3.15)
_LEG_LEN = 4.1
_FLAT_ARM_DEG = 38.0  # sleeve angle of the garment lying flat
_FLAT_LEG_DEG = 4.0

_WORDS = (
    "SALE",
    "RUN",
    "NOVA",
    "BLOOM",
    "WAVE",
    "CITY",
    "ZEN",
    "LOVE",
    "ACME",
    "PEACE",
    "URBAN",
    "SUN",
    "2024",
    "NO.7",
    "WILD",
    "SURF",
)
_SKIN = ((255, 219, 184), (241, 194, 150), (224, 172, 130), (198, 134, 90), (161, 102, 62), (112, 70, 45), (87, 52, 32))
_HAIR = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (180, 140, 80), (200, 180, 140), (120, 30, 20), (90, 90, 95))


@dataclass(frozen=True, eq=False)
class Pair:
    """One synthetic example. Arrays are (H, W, 3) uint8 / (H, W) bool; ``meta`` is JSON-ready."""

    person: np.ndarray  # (H, W, 3) uint8, figure wearing the garment
    mask: np.ndarray  # (H, W) bool, garment pixels visible on the person
    garment: np.ndarray  # (H, W, 3) uint8, flat garment centred on white
    category: str  # one of CATEGORIES
    flags: tuple[str, ...]  # planted defects, a subset of DEFECTS (at most one)
    meta: dict[str, Any]
    labels: np.ndarray | None = None  # (H, W) uint8 indices into PARTS, when asked for


# --------------------------------------------------------------------------------------------
# small geometry helpers (3x3 homogeneous affine matrices, points as (N, 2) arrays)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _rotation_about(joint: Sequence[float], d_from: np.ndarray, d_to: np.ndarray) -> np.ndarray:
    """Rotation about ``joint`` taking unit direction ``d_from`` to ``d_to``."""
    c = float(d_from @ d_to)
    s = float(d_from[0] * d_to[1] - d_from[1] * d_to[0])
    jx, jy = joint
    r = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    t_in = np.array([[1.0, 0.0, -jx], [0.0, 1.0, -jy], [0.0, 0.0, 1.0]])
    t_out = np.array([[1.0, 0.0, jx], [0.0, 1.0, jy], [0.0, 0.0, 1.0]])
    return t_out @ r @ t_in


def _direction(deg: float, side: int) -> np.ndarray:
    """Unit vector pointing down and outward by ``deg`` from vertical; side -1 is the figure's left (x<0)."""
    a = math.radians(deg)
    return np.array([side * math.sin(a), math.cos(a)])


def _limb(joint: Sequence[float], d: np.ndarray, length: float, w0: float, w1: float, start: float = 0.0) -> np.ndarray:
    """Quadrilateral along ``d`` from ``joint`` (widths w0 at the top, w1 at the end), (4, 2)."""
    n = np.array([-d[1], d[0]])
    a = np.asarray(joint, dtype=float) + d * start
    b = a + d * length
    return np.array([a + n * w0 / 2, b + n * w1 / 2, b - n * w1 / 2, a - n * w0 / 2])


def _mirror_half(half: list[tuple[float, float]]) -> np.ndarray:
    """Close a right-half outline (x >= 0, top to bottom) into a symmetric polygon."""
    pts = half + [(-x, y) for x, y in reversed(half)]
    return np.array(pts, dtype=float)


# --------------------------------------------------------------------------------------------
# garment pieces (flat canonical pose)


@dataclass(frozen=True, eq=False)
class _Piece:
    kind: str  # "torso" (no articulation), "sleeve" or "leg"
    side: int  # -1 / +1 for limbs, 0 for torso
    poly: np.ndarray  # (N, 2) flat canonical outline
    axis: tuple[float, float, float, float]  # joint x, y and unit direction of the piece's long axis
    half_width: float  # for cylinder shading across the axis


def _torso_half(rng: np.random.Generator, style: str, hem_y: float) -> list[tuple[float, float]]:
    """Right half of a top's body outline, from the neckline centre down to the hem corner."""
    wk = rng.uniform(0.95, 1.08)  # fit
    flare = rng.uniform(0.95, 1.1)
    neck_w = rng.uniform(0.32, 0.42)
    depth = {"crew": 0.18, "round": rng.uniform(0.3, 0.45), "v": rng.uniform(0.55, 0.8)}[
        str(rng.choice(["crew", "round", "v"]))
    ]
    if style == "tank":
        neck_w, depth = neck_w + 0.08, depth + 0.2
    if depth > 0.5:  # a V neck is straight, the others are arcs
        neck = [(0.0, depth), (neck_w, -0.04)]
    else:
        t = np.linspace(0.0, 1.0, 6)
        neck = [(neck_w * math.sin(a * math.pi / 2), -0.04 + (depth + 0.04) * math.cos(a * math.pi / 2)) for a in t]
    if style == "tank":
        body = [(neck_w + 0.26, -0.02), (0.74, 0.35), (0.96 * wk, 0.9)]
    else:
        body = [(1.02 * wk, 0.04), (0.98 * wk, 0.85)]
    body += [(0.88 * wk, 2.2), (0.98 * wk * flare, hem_y)]
    return neck + body


def _sleeves(length: float, w1: float) -> list[_Piece]:
    out = []
    for side in (-1, 1):
        joint = (side * _ARM_JOINT[0], _ARM_JOINT[1])
        d = _direction(_FLAT_ARM_DEG, side)
        poly = _limb(joint, d, length, 0.82, w1, start=-0.18)
        out.append(_Piece("sleeve", side, poly, (joint[0], joint[1], d[0], d[1]), 0.41))
    return out


def _legs(length: float, w1: float) -> list[_Piece]:
    out = []
    for side in (-1, 1):
        joint = (side * _HIP_JOINT[0], _HIP_JOINT[1])
        d = _direction(_FLAT_LEG_DEG, side)
        poly = _limb(joint, d, length + 0.35, 1.04, w1, start=-0.35)
        out.append(_Piece("leg", side, poly, (joint[0], joint[1], d[0], d[1]), 0.52))
    return out


def _torso_piece(poly: np.ndarray, half_width: float) -> _Piece:
    return _Piece("torso", 0, poly, (0.0, 0.0, 0.0, 1.0), half_width)


def _garment_pieces(rng: np.random.Generator, gtype: str) -> list[_Piece]:
    """Pieces in drawing order (legs first, then the body, then sleeves)."""
    if gtype in ("tshirt", "longsleeve", "tank"):
        half = _torso_half(rng, gtype, rng.uniform(3.0, 3.45))
        pieces = [_torso_piece(_mirror_half(half), 1.1)]
        if gtype == "tshirt":
            pieces += _sleeves(rng.uniform(0.95, 1.35), rng.uniform(0.6, 0.7))
        elif gtype == "longsleeve":
            pieces += _sleeves(rng.uniform(2.7, 3.0), rng.uniform(0.48, 0.56))
        return pieces
    if gtype in ("trousers", "shorts"):
        pelvis = _mirror_half([(0.0, 2.5), (0.88, 2.5), (0.99, 3.2), (0.12, 3.55)])
        length = rng.uniform(3.6, 3.95) if gtype == "trousers" else rng.uniform(1.2, 1.7)
        w1 = rng.uniform(0.55, 0.7) if gtype == "trousers" else rng.uniform(0.8, 0.95)
        return [*_legs(length, w1), _torso_piece(pelvis, 1.0)]
    if gtype == "skirt":
        hem_y, hem_x = rng.uniform(4.0, 5.3), rng.uniform(1.2, 1.6)
        outline = [(0.0, 2.5), (0.86, 2.5), (0.99, 3.2), (hem_x, hem_y), (hem_x * 0.5, hem_y + 0.08)]
        skirt = _mirror_half(outline)
        return [_torso_piece(skirt, hem_x)]
    if gtype in ("dress", "sleeveless_dress"):
        style = "tank" if gtype == "sleeveless_dress" else "tee"
        half = _torso_half(rng, style, 2.25)[:-1]  # stop at the waist, the skirt continues it
        hem_y, hem_x = rng.uniform(4.4, 5.6), rng.uniform(1.3, 1.7)
        half += [(0.86, 2.3), (0.99, 3.1), (hem_x, hem_y), (hem_x * 0.5, hem_y + 0.1)]
        pieces = [_torso_piece(_mirror_half(half), hem_x)]
        if gtype == "dress":
            pieces += _sleeves(rng.uniform(0.6, 1.1), rng.uniform(0.66, 0.74))
        return pieces
    if gtype == "jumpsuit":
        half = [*_torso_half(rng, "tee", 3.3)[:-1], (0.99, 3.2), (0.12, 3.55)]
        legs = _legs(rng.uniform(3.4, 3.9), rng.uniform(0.55, 0.7))
        pieces = [*legs, _torso_piece(_mirror_half(half), 1.1)]
        if rng.random() < 0.5:
            pieces += _sleeves(rng.uniform(0.8, 1.2), rng.uniform(0.62, 0.7))
        return pieces
    raise ValueError(f"unknown garment type {gtype!r}; expected one of {sum(GARMENT_TYPES.values(), ())}")


def _pieces_bbox(polys: Sequence[np.ndarray]) -> Box:
    allp = np.concatenate(list(polys))
    return float(allp[:, 0].min()), float(allp[:, 1].min()), float(allp[:, 0].max()), float(allp[:, 1].max())


# --------------------------------------------------------------------------------------------
# textures: functions of flat canonical coordinates, so worn and flat versions agree


def _colour(rng: np.random.Generator) -> np.ndarray:
    # V <= 0.85 keeps every channel <= 217, so garments never blend into the white ground truth.
    h, s, v = rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.22, 0.85)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _distinct_colour(rng: np.random.Generator, others: Sequence[np.ndarray], min_dist: float = 70.0) -> np.ndarray:
    c = _colour(rng)
    for _ in range(20):  # bounded retries keep the rng stream finite and deterministic
        if all(float(np.linalg.norm(c - o)) >= min_dist for o in others):
            break
        c = _colour(rng)
    return c


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=20)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def _text_raster(word: str) -> np.ndarray:
    font = _font()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), word, font=font)
    im = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(im).text((2 - x0, 2 - y0), word, fill=255, font=font)
    return np.asarray(im, dtype=np.float32) / 255.0


def _logo_raster(rng: np.random.Generator) -> np.ndarray:
    n = 48
    im = Image.new("L", (n, n), 0)
    dr = ImageDraw.Draw(im)
    shape = str(rng.choice(["circle", "ring", "triangle", "star", "diamond", "bars"]))
    if shape == "circle":
        dr.ellipse((4, 4, n - 5, n - 5), fill=255)
    elif shape == "ring":
        dr.ellipse((3, 3, n - 4, n - 4), fill=255)
        dr.ellipse((14, 14, n - 15, n - 15), fill=0)
    elif shape == "triangle":
        dr.polygon([(n / 2, 3), (n - 4, n - 5), (3, n - 5)], fill=255)
    elif shape == "diamond":
        dr.polygon([(n / 2, 2), (n - 3, n / 2), (n / 2, n - 3), (2, n / 2)], fill=255)
    elif shape == "star":
        pts = [
            (
                n / 2 + (21 if k % 2 == 0 else 9) * math.sin(k * math.pi / 5),
                n / 2 - (21 if k % 2 == 0 else 9) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
        dr.polygon(pts, fill=255)
    else:
        for k in range(3):
            dr.rectangle((4, 6 + k * 14, n - 5, 14 + k * 14), fill=255)
    return np.asarray(im, dtype=np.float32) / 255.0


@dataclass(frozen=True, eq=False)
class _Texture:
    kind: str
    c1: np.ndarray
    c2: np.ndarray
    c3: np.ndarray
    period: float
    angle: float  # radians
    duty: float
    variant: int
    extent: Box  # flat garment bbox, for gradients and blocks
    decal: str
    decal_img: np.ndarray | None  # (h, w) float32 alpha in [0, 1]
    decal_box: tuple[float, float, float, float]  # x0, y0, width, height in flat canonical units
    decal_col: np.ndarray


def _make_texture(rng: np.random.Generator, category: str, extent: Box) -> _Texture:
    kind = str(rng.choice(TEXTURES))
    c1 = _colour(rng)
    c2 = _distinct_colour(rng, [c1])
    c3 = _distinct_colour(rng, [c1, c2], 50.0)
    angle = float(rng.choice([0.0, 90.0, 45.0, -45.0]) + rng.uniform(-8, 8))
    decal = str(rng.choice(DECALS, p=[0.4, 0.3, 0.3]))
    decal_img = None
    decal_box = (0.0, 0.0, 0.0, 0.0)
    if decal != "none":
        if decal == "text":
            word = (
                str(rng.choice(_WORDS))
                if rng.random() < 0.7
                else "".join(chr(int(c)) for c in rng.integers(65, 91, size=int(rng.integers(2, 6))))
            )
            decal_img = _text_raster(word)
            w = rng.uniform(0.9, 1.3) if category != "lower" else rng.uniform(0.5, 0.7)
        else:
            decal_img = _logo_raster(rng)
            w = rng.uniform(0.55, 0.95) if category != "lower" else rng.uniform(0.4, 0.55)
        h = w * decal_img.shape[0] / decal_img.shape[1]
        if category == "lower":  # on a thigh, below the pelvis piece's seam
            cx, cy = float(rng.choice([-0.5, 0.5])), rng.uniform(3.7, 4.0)
        else:  # on the chest
            cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(0.9, 1.5)
        decal_box = (cx - w / 2, cy - h / 2, w, h)
    return _Texture(
        kind,
        c1,
        c2,
        c3,
        period=rng.uniform(0.22, 0.7),
        angle=math.radians(angle),
        duty=rng.uniform(0.3, 0.6),
        variant=int(rng.integers(0, 3)),
        extent=extent,
        decal=decal,
        decal_img=decal_img,
        decal_box=decal_box,
        decal_col=_distinct_colour(rng, [c1, c2], 90.0),
    )


def _texture_rgb(tex: _Texture, u: np.ndarray, v: np.ndarray, piece: _Piece) -> np.ndarray:
    """Garment colour at flat canonical coordinates (N,) -> (N, 3) float32 in [0, 255]."""
    ca, sa = math.cos(tex.angle), math.sin(tex.angle)
    t = (u * ca + v * sa) / tex.period
    if tex.kind == "solid":
        sel = np.zeros(u.shape, dtype=bool)
    elif tex.kind == "stripes":
        sel = (t - np.floor(t)) < tex.duty
    elif tex.kind == "checks":
        p = tex.period * 1.3
        sel = ((np.floor(u / p) + np.floor(v / p)) % 2) == 1
    elif tex.kind == "dots":
        p = tex.period * 1.6
        gu = u / p - np.round(u / p)
        gv = v / p - np.round(v / p)
        sel = gu * gu + gv * gv < (0.45 * tex.duty) ** 2 * 2
    elif tex.kind == "gradient":
        x0, y0, x1, y1 = tex.extent
        proj = np.array([x0 * ca + y0 * sa, x1 * ca + y0 * sa, x0 * ca + y1 * sa, x1 * ca + y1 * sa])
        w = np.clip((u * ca + v * sa - proj.min()) / max(float(np.ptp(proj)), 1e-6), 0.0, 1.0)[:, None]
        rgb = tex.c1 * (1.0 - w) + tex.c2 * w
        return _apply_decal(tex, u, v, rgb)
    else:  # colour blocks: limbs in a contrast colour, or a horizontal / vertical split
        x0, y0, x1, y1 = tex.extent
        if tex.variant == 0 and piece.kind != "torso":
            sel = np.ones(u.shape, dtype=bool)
        elif tex.variant == 1:
            sel = v > y0 + (y1 - y0) * (0.35 + 0.3 * tex.duty)
        else:
            sel = u > 0.0
        band = np.abs(v - (y0 + (y1 - y0) * 0.3)) < 0.18  # a third-colour band for a bit of detail
        rgb = np.where(sel[:, None], tex.c2, tex.c1)
        rgb = np.where(band[:, None], tex.c3, rgb)
        return _apply_decal(tex, u, v, rgb)
    rgb = np.where(sel[:, None], tex.c2, tex.c1)
    return _apply_decal(tex, u, v, rgb)


def _apply_decal(tex: _Texture, u: np.ndarray, v: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    if tex.decal_img is None:
        return rgb.astype(np.float32)
    x0, y0, w, h = tex.decal_box
    dh, dw = tex.decal_img.shape
    iu = np.floor((u - x0) / w * dw).astype(np.int64)
    iv = np.floor((v - y0) / h * dh).astype(np.int64)
    inside = (iu >= 0) & (iu < dw) & (iv >= 0) & (iv < dh)
    alpha = np.zeros(u.shape, dtype=np.float32)
    alpha[inside] = tex.decal_img[iv[inside], iu[inside]]
    a = alpha[:, None]
    return (rgb * (1.0 - a) + tex.decal_col * a).astype(np.float32)


# --------------------------------------------------------------------------------------------
# backgrounds


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    kind = str(rng.choice(BACKGROUNDS))
    c1 = np.array(rng.integers(40, 256, 3), dtype=np.float32)
    c2 = np.array(rng.integers(0, 256, 3), dtype=np.float32)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    if kind == "plain":
        bg = np.broadcast_to(c1, (h, w, 3))
    elif kind == "gradient":
        t = yy if rng.random() < 0.5 else xx
        bg = np.broadcast_to(c1 * (1 - t) + c2 * t, (h, w, 3))
    elif kind == "noise":
        coarse = rng.integers(0, 256, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
        grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(4, 14)
        bg = smooth * 0.6 + c1 * 0.4 + grain
    elif kind == "room":
        horizon = int(h * rng.uniform(0.62, 0.8))
        bg = np.empty((h, w, 3), dtype=np.float32)
        bg[:horizon] = c1
        bg[horizon:] = c2 * 0.7
        bg[horizon : horizon + max(2, h // 60)] = c1 * 0.6  # skirting board
        px0 = int(rng.integers(0, w - w // 4))
        py0 = int(rng.integers(h // 12, h // 3))
        bg[py0 : py0 + h // 5, px0 : px0 + w // 4] = c2  # a picture or window on the wall
    else:  # stripes (wallpaper)
        period = float(rng.uniform(8, 30)) * w / 192
        sel = (np.arange(w) % period) < period * 0.5
        bg = np.where(sel[None, :, None], c1, c1 * 0.8 + c2 * 0.2) * np.ones((h, 1, 1), np.float32)
    return np.array(bg, dtype=np.float32), kind


# --------------------------------------------------------------------------------------------
# the figure: an ordered list of layers in posed canonical coordinates


@dataclass(frozen=True, eq=False)
class _Layer:
    shape: str  # "poly", "ellipse" or "garment"
    pts: np.ndarray  # poly: (N, 2); ellipse: (cx, cy, rx, ry); garment: flat piece outline
    colour: np.ndarray | None = None
    piece: _Piece | None = None
    pose: np.ndarray | None = None  # garment: flat -> posed canonical (3x3)
    occluder: bool = False
    part: str = "background"  # one of PARTS for the label map; a garment layer takes its category's

    def posed_points(self) -> np.ndarray:
        if self.shape == "ellipse":
            cx, cy, rx, ry = self.pts
            return np.array([[cx - rx, cy - ry], [cx + rx, cy + ry]])
        if self.shape == "garment":
            return _apply(self.pose, self.pts)
        return self.pts


@dataclass(frozen=True)
class _Pose:
    arm_deg: tuple[float, float]  # left, right; negative = across the body
    leg_deg: float
    far_side: int  # side view: the arm hidden behind the body (-1/+1), 0 otherwise


def _garment_layer(piece: _Piece, pose: _Pose) -> _Layer:
    if piece.kind == "torso":
        m = np.eye(3)
    else:
        deg = pose.arm_deg[(piece.side + 1) // 2] if piece.kind == "sleeve" else pose.leg_deg
        d_flat = np.array(piece.axis[2:])
        m = _rotation_about(piece.axis[:2], d_flat, _direction(deg, piece.side))
    return _Layer("garment", piece.poly, piece=piece, pose=m)


def _figure_layers(
    rng: np.random.Generator, category: str, pieces: list[_Piece], pose: _Pose, occluder: str | None
) -> tuple[list[_Layer], dict[str, Any]]:
    skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))], np.float32)
    skin = skin + rng.uniform(-8, 8, 3).astype(np.float32)
    hair = np.array(_HAIR[int(rng.integers(len(_HAIR)))], np.float32)
    other = np.array(rng.integers(20, 230, 3), np.float32)  # the clothes that are not the target garment
    shoes = np.array(rng.integers(10, 120, 3), np.float32)
    info: dict[str, Any] = {}

    # a layer's part follows from its paint: skin, hair and the other clothes each have one colour
    # per figure; anything else is skin when part of the figure (the eyes) and an occluder otherwise
    worn = "lower_garment" if category == "upper" else "upper_garment"  # `other` is unused for "full"
    paints = {id(skin): "skin", id(hair): "hair", id(other): worn, id(shoes): "other_clothing"}

    def part(c: np.ndarray, occ: bool) -> str:
        return paints.get(id(c), "occluder" if occ else "skin")

    def poly(p: np.ndarray, c: np.ndarray, occ: bool = False) -> _Layer:
        return _Layer("poly", np.asarray(p, float), colour=c, occluder=occ, part=part(c, occ))

    def ellipse(cx: float, cy: float, rx: float, ry: float, c: np.ndarray, occ: bool = False) -> _Layer:
        return _Layer("ellipse", np.array([cx, cy, rx, ry]), colour=c, occluder=occ, part=part(c, occ))

    limb_pieces = {(p.kind, p.side): p for p in pieces if p.kind != "torso"}

    def arm(side: int, occ: bool = False) -> list[_Layer]:
        joint = (side * _ARM_JOINT[0], _ARM_JOINT[1])
        d = _direction(pose.arm_deg[(side + 1) // 2], side)
        end = np.asarray(joint) + d * _ARM_LEN
        shoulder = other if category == "lower" else skin  # under the non-target top's sleeve
        out = [
            ellipse(joint[0], joint[1], 0.3, 0.3, shoulder, occ),
            poly(_limb(joint, d, _ARM_LEN, 0.5, 0.34), skin, occ),
            ellipse(float(end[0]), float(end[1]), 0.23, 0.23, skin, occ),
        ]
        sleeve = limb_pieces.get(("sleeve", side))
        if sleeve is not None:
            out.append(_garment_layer(sleeve, pose))
        elif category == "lower":  # the non-target top has short sleeves
            out.append(poly(_limb(joint, d, 0.9, 0.8, 0.62, start=-0.18), other))
        return out

    layers: list[_Layer] = []
    if pose.far_side:
        layers += arm(pose.far_side)
    legs_col = other if category == "upper" else skin
    for side in (-1, 1):
        joint = (side * _HIP_JOINT[0], _HIP_JOINT[1])
        d = _direction(pose.leg_deg, side)
        end = np.asarray(joint) + d * _LEG_LEN
        layers.append(poly(_limb(joint, d, _LEG_LEN, 0.8, 0.42, start=-0.2), legs_col))
        layers.append(ellipse(float(end[0]) + side * 0.12, float(end[1]) + 0.12, 0.32, 0.16, shoes))
    top_col = other if category == "lower" else skin
    layers.append(poly(_mirror_half([(0.0, 2.4), (0.9, 2.4), (0.97, 3.25), (0.15, 3.5)]), legs_col))
    layers.append(
        poly(_mirror_half([(0.0, -0.1), (0.3, -0.1), (1.02, 0.05), (0.95, 0.8), (0.82, 2.2), (0.92, 2.9)]), top_col)
    )
    layers.append(poly(np.array([[-0.2, -0.55], [0.2, -0.55], [0.22, 0.0], [-0.22, 0.0]]), skin))
    layers.append(ellipse(0.0, -0.98, 0.56, 0.64, hair))  # hair behind the face
    layers.append(ellipse(0.0, -0.9, 0.47, 0.58, skin))
    fringe = np.array([[-0.5, -1.2], [0.0, -1.62], [0.5, -1.2], [0.45, -1.05], [-0.45, -1.05]])
    layers.append(poly(fringe, hair))
    for side in (-1, 1):
        layers.append(ellipse(side * 0.18, -0.9, 0.06, 0.05, np.array([40, 30, 30], np.float32)))
    layers += [_garment_layer(p, pose) for p in pieces if p.kind == "leg"]
    layers += [_garment_layer(p, pose) for p in pieces if p.kind == "torso"]
    for side in (-1, 1):
        if side != pose.far_side:
            layers += arm(side, occ=occluder == "arm" and pose.arm_deg[(side + 1) // 2] < 0)

    if occluder == "hair":  # long hair falling over the chest on one or both sides
        end_y = rng.uniform(1.6, 2.4)
        sides = (-1, 1) if rng.random() < 0.6 else (int(rng.choice([-1, 1])),)
        for side in sides:
            layers.append(
                poly(
                    np.array(
                        [
                            [side * 0.2, -1.3],
                            [side * 0.62, -1.1],
                            [side * 0.85, end_y - 0.3],
                            [side * 0.5, end_y],
                            [side * 0.15, end_y - 0.5],
                        ]
                    ),
                    hair,
                    occ=True,
                )
            )
        info["hair_end_y"] = end_y
    elif occluder == "bag":
        side = int(rng.choice([-1, 1]))
        if category == "lower":
            cx, cy, bw, bh = side * rng.uniform(0.3, 0.6), rng.uniform(3.8, 4.3), rng.uniform(1.1, 1.4), 1.0
        else:
            cx, cy, bw, bh = side * rng.uniform(0.2, 0.5), rng.uniform(1.6, 2.3), rng.uniform(1.2, 1.5), 1.1
        bag_col = np.array(rng.integers(20, 160, 3), np.float32)
        tilt = rng.uniform(-0.15, 0.15)
        body = np.array([[-bw / 2, -bh / 2], [bw / 2, -bh / 2], [bw / 2, bh / 2], [-bw / 2, bh / 2]])
        rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
        layers.append(poly(body @ rot.T + [cx, cy], bag_col, occ=True))
        shoulder = np.array([-side * 0.8, 0.05])
        strap_d = np.array([cx, cy - bh / 2]) - shoulder
        length = float(np.linalg.norm(strap_d))
        layers.append(poly(_limb(shoulder, strap_d / length, length, 0.14, 0.14), bag_col * 0.7, occ=True))
        info["bag_centre"] = [cx, cy]
    return layers, info


# --------------------------------------------------------------------------------------------
# rendering


def _raster(layer: _Layer, m_px: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean (H, W) coverage of one layer under the canonical -> pixel matrix."""
    im = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(im)
    if layer.shape == "ellipse":
        (x0, y0), (x1, y1) = _apply(m_px, layer.posed_points())
        dr.ellipse((float(x0), float(y0), float(x1), float(y1)), fill=255)
    else:
        pts = _apply(m_px, layer.posed_points())
        dr.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(im) > 0


@dataclass(frozen=True)
class _Folds:
    """Smooth displacement (flat units) and darkening bands that make the worn garment look draped."""

    amp: tuple[float, float]
    freq: tuple[float, float, float, float]
    phase: tuple[float, float, float]
    band_dir: tuple[float, float]
    band_freq: float
    band_strength: float
    light: float

    @staticmethod
    def sample(rng: np.random.Generator) -> _Folds:
        a = rng.uniform(0, math.pi)
        return _Folds(
            amp=(rng.uniform(0.03, 0.1), rng.uniform(0.03, 0.1)),
            freq=tuple(float(f) for f in rng.uniform(0.25, 0.8, 4)),
            phase=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 3)),
            band_dir=(math.cos(a), math.sin(a)),
            band_freq=rng.uniform(0.5, 1.3),
            band_strength=rng.uniform(0.15, 0.35),
            light=rng.uniform(-0.08, 0.08),
        )


def _worn_rgb(tex: _Texture, folds: _Folds, piece: _Piece, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    two_pi = 2 * math.pi
    fu, fv, gu, gv = folds.freq
    du = folds.amp[0] * np.sin(two_pi * (fu * u + fv * v) + folds.phase[0])
    dv = folds.amp[1] * np.sin(two_pi * (gu * u - gv * v) + folds.phase[1])
    rgb = _texture_rgb(tex, u + du, v + dv, piece)
    # cylinder shading across the piece's long axis + thin dark fold bands + a side light
    jx, jy, ax, ay = piece.axis
    across = ((u - jx) * ay - (v - jy) * ax) / piece.half_width
    shade = 1.0 - 0.25 * np.clip(across, -1.0, 1.0) ** 2
    band = np.sin(two_pi * folds.band_freq * (u * folds.band_dir[0] + v * folds.band_dir[1]) + folds.phase[2])
    shade = shade * (1.0 - folds.band_strength * np.maximum(band, 0.0) ** 6) * (1.0 + folds.light * u)
    return rgb * shade[:, None].astype(np.float32)


def _render_person(
    layers: list[_Layer],
    m_px: np.ndarray,
    bg: np.ndarray,
    tex: _Texture,
    folds: _Folds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paint the layers in order.

    Returns the person (H, W, 3) float32, the visible garment mask, the whole garment (as if nothing
    were in front of it) and where a planted occluder is the top layer, all (H, W) bool.
    """
    h, w = bg.shape[:2]
    canvas = bg.copy()
    visible = np.zeros((h, w), dtype=bool)
    whole = np.zeros((h, w), dtype=bool)
    occluder_on_top = np.zeros((h, w), dtype=bool)
    for layer in layers:
        cover = _raster(layer, m_px, h, w)
        occluder_on_top[cover] = layer.occluder
        if layer.shape != "garment":
            canvas[cover] = layer.colour
            visible[cover] = False
            continue
        ys, xs = np.nonzero(cover)
        inv = np.linalg.inv(m_px @ layer.pose)
        uv = _apply(inv, np.stack([xs, ys], axis=1).astype(np.float64))
        canvas[ys, xs] = _worn_rgb(tex, folds, layer.piece, uv[:, 0], uv[:, 1])
        visible[ys, xs] = True
        whole[ys, xs] = True
    return canvas, visible, whole, occluder_on_top


def _render_labels(layers: list[_Layer], m_px: np.ndarray, h: int, w: int, category: str) -> np.ndarray:
    """The label map: for every pixel, the PARTS index of the top layer there, (H, W) uint8."""
    labels = np.zeros((h, w), dtype=np.uint8)
    for layer in layers:
        part = GARMENT_PARTS[category] if layer.shape == "garment" else layer.part
        labels[_raster(layer, m_px, h, w)] = PARTS.index(part)
    return labels


def _render_flat(pieces: list[_Piece], tex: _Texture, h: int, w: int) -> np.ndarray:
    """The ground truth: flat garment, front view, centred on white, (H, W, 3) uint8."""
    x0, y0, x1, y1 = _pieces_bbox([p.poly for p in pieces])
    s = 0.86 * min(h / (y1 - y0), w / (x1 - x0))
    m = np.array([[s, 0, w / 2 - s * (x0 + x1) / 2], [0, s, h / 2 - s * (y0 + y1) / 2], [0, 0, 1]])
    labels = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(labels)
    for k, p in enumerate(pieces):  # later pieces win where they overlap, as on the person
        dr.polygon([(float(x), float(y)) for x, y in _apply(m, p.poly)], fill=k + 1)
    lab = np.asarray(labels)
    out = np.full((h, w, 3), 255.0, dtype=np.float32)
    inv = np.linalg.inv(m)
    for k, p in enumerate(pieces):
        ys, xs = np.nonzero(lab == k + 1)
        uv = _apply(inv, np.stack([xs, ys], axis=1).astype(np.float64))
        out[ys, xs] = _texture_rgb(tex, uv[:, 0], uv[:, 1], p)
    return _to_uint8(out)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# framing: where the figure sits in the frame (this is where truncation / proportion defects live)


def _fit(
    rng: np.random.Generator,
    fig: Box,
    gar: Box,
    squeeze: float,
    h: int,
    w: int,
    defect: str | None,
    framing: str = DEFAULT_FRAMING,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Canonical (posed) -> pixel matrix. ``fig``/``gar`` are posed bboxes before the horizontal squeeze."""
    fx0, fy0, fx1, fy1 = fig[0] * squeeze, fig[1], fig[2] * squeeze, fig[3]
    gx0, gy0, gx1, gy1 = gar[0] * squeeze, gar[1], gar[2] * squeeze, gar[3]
    info: dict[str, Any] = {}
    margin = 3.0
    if defect == "extreme_proportion" and rng.random() < 0.5:
        # huge: the garment alone fills almost the whole frame; head and feet fall outside
        g = rng.uniform(0.92, 0.96)
        s = g * min(h / (gy1 - gy0), w / (gx1 - gx0))
        tx = w / 2 - s * (gx0 + gx1) / 2
        ty = h / 2 - s * (gy0 + gy1) / 2
        info["proportion"] = "huge"
        info["framing"] = "garment"
    elif framing == "garment" and defect != "extreme_proportion":
        fill = rng.uniform(*GARMENT_FILL)
        s = fill * min((h - 2 * margin) / (gy1 - gy0), (w - 2 * margin) / (gx1 - gx0))
        # the garment's box stays inside the frame; head, feet and hands may leave it, as in a crop
        tx = margin - s * gx0 + rng.uniform(0, w - 2 * margin - s * (gx1 - gx0))
        ty = margin - s * gy0 + rng.uniform(0, h - 2 * margin - s * (gy1 - gy0))
        info["framing"] = "garment"
    else:
        if defect == "extreme_proportion":
            fill = rng.uniform(0.2, 0.25)
            info["proportion"] = "tiny"
        elif squeeze < 1.0:  # side view: a narrow figure, keep it tall so the garment is not tiny as well
            fill = rng.uniform(0.88, 0.97)
        else:
            fill = rng.uniform(0.8, 0.95)
        s = fill * min((h - 2 * margin) / (fy1 - fy0), (w - 2 * margin) / (fx1 - fx0))
        tx = margin - s * fx0 + rng.uniform(0, w - 2 * margin - s * (fx1 - fx0))
        ty = margin - s * fy0 + rng.uniform(0, h - 2 * margin - s * (fy1 - fy0))
        info["framing"] = "figure"
    if defect == "truncation":
        # push a border through the garment: 25-45% of its extent ends up outside the frame
        side = str(rng.choice(["left", "right", "top", "bottom"]))
        cut = rng.uniform(0.25, 0.45)
        if side == "left":
            tx = -s * gx0 - cut * s * (gx1 - gx0)
        elif side == "right":
            tx = w - s * gx1 + cut * s * (gx1 - gx0)
        elif side == "top":
            ty = -s * gy0 - cut * s * (gy1 - gy0)
        else:
            ty = h - s * gy1 + cut * s * (gy1 - gy0)
        info.update(cut_side=side, cut_fraction=cut)
    info["scale_px_per_unit"] = s
    return np.array([[s * squeeze, 0.0, tx], [0.0, s, ty], [0.0, 0.0, 1.0]]), info


# --------------------------------------------------------------------------------------------
# public API


def pair_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of pair ``index`` in a set generated with ``seed`` (independent of the set's size)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if h < MIN_SIZE[0] or w < MIN_SIZE[1]:
        raise ValueError(f"size {h}x{w} is too small; expected at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (HxW)")
    return h, w


def make_pair(
    rng: np.random.Generator | np.random.SeedSequence | int,
    size: Sequence[int] = DEFAULT_SIZE,
    *,
    category: str | None = None,
    defect: str | None = None,
    hard_rate: float = DEFAULT_HARD_RATE,
    framing: str = DEFAULT_FRAMING,
    labels: bool = False,
) -> Pair:
    """Draw one person/mask/garment triple.

    ``category`` and ``defect`` force those choices (``defect`` one of DEFECTS); left as None they are
    drawn from ``rng``, a defect with probability ``hard_rate``. ``size`` is (H, W). ``labels`` adds
    the label map (``Pair.labels``, indices into PARTS); it draws nothing from ``rng``, so the rest
    of the pair is the same with or without it.
    """
    h, w = _check_size(size)
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECTS} or None")
    if not 0.0 <= hard_rate <= 1.0:
        raise ValueError(f"hard_rate must be in [0, 1], got {hard_rate!r}")
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; expected one of {FRAMINGS}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    # Draw the scene choices first, in a fixed order, so forcing one does not shift the others' stream.
    cat = str(rng.choice(CATEGORIES))
    hard = rng.random() < hard_rate
    drawn_defect = str(rng.choice(DEFECTS))
    cat = category or cat
    if defect is None and hard:
        defect = drawn_defect

    gtype = str(rng.choice(GARMENT_TYPES[cat]))
    pieces = _garment_pieces(rng, gtype)
    flat_box = _pieces_bbox([p.poly for p in pieces])
    tex = _make_texture(rng, cat, flat_box)
    folds = _Folds.sample(rng)
    bg, bg_kind = _background(rng, h, w)

    side_view = defect == "side_view"
    # side view: arms close to the body; otherwise 8-30 degrees, which keeps figures taller than wide
    arm_deg = [float(a) for a in (rng.uniform(5, 20, 2) if side_view else rng.uniform(8, 30, 2))]
    leg_deg = float(rng.uniform(0, 3) if side_view else rng.uniform(0, 10))
    occluder = None
    if defect == "occlusion":
        has_long_sleeves = gtype == "longsleeve"
        choices = ["bag"] if cat == "lower" else (["hair", "bag"] if has_long_sleeves else list(OCCLUDERS))
        occluder = str(rng.choice(choices))
        if occluder == "arm":  # one forearm crosses the torso
            arm_deg[int(rng.integers(2))] = -float(rng.uniform(28, 42))
    far_side = int(rng.choice([-1, 1])) if side_view else 0
    squeeze = float(rng.uniform(0.3, 0.42)) if side_view else 1.0
    pose = _Pose(arm_deg=(arm_deg[0], arm_deg[1]), leg_deg=leg_deg, far_side=far_side)

    layers, occ_info = _figure_layers(rng, cat, pieces, pose, occluder)
    fig_box = _pieces_bbox([lay.posed_points() for lay in layers])
    gar_box = _pieces_bbox([lay.posed_points() for lay in layers if lay.shape == "garment"])
    m_px, fit_info = _fit(rng, fig_box, gar_box, squeeze, h, w, defect, framing)

    person_f, mask, whole, occluded = _render_person(layers, m_px, bg, tex, folds)
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * 2.0  # sensor noise, so flat areas aren't flat
    person = _to_uint8(person_f + grain)
    garment = _render_flat(pieces, tex, h, w)

    whole_px = int(whole.sum())
    meta: dict[str, Any] = {
        "category": cat,
        "garment_type": gtype,
        "texture": tex.kind,
        "decal": tex.decal,
        "colours": [[int(c) for c in np.rint(col)] for col in (tex.c1, tex.c2)],
        "background": bg_kind,
        "pose": {"arm_deg": list(pose.arm_deg), "leg_deg": pose.leg_deg, "squeeze": squeeze, "far_side": far_side},
        "occluder": occluder,
        # share of the garment hidden by the planted occluder (hands and arms at the sides don't count)
        "occluded_fraction": int((whole & occluded).sum()) / whole_px if whole_px else 0.0,
        "mask_fraction": float(mask.mean()),
        **fit_info,
        **occ_info,
    }
    flags = (defect,) if defect else ()
    label_map = _render_labels(layers, m_px, h, w, cat) if labels else None
    return Pair(
        person=person, mask=mask, garment=garment, category=cat, flags=flags, meta=_round(meta), labels=label_map
    )


def _round(x: Any) -> Any:
    """Round floats for stable, readable JSON."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def pair_name(index: int) -> str:
    return f"{index:05d}_00"


def save_pair(pair: Pair, out_dir: str | Path, name: str) -> None:
    """Write one pair in VITON-HD's layout (image/, cloth/, agnostic-mask/)."""
    out = Path(out_dir)
    # Fixed JPEG settings (no optimize / progressive) so the bytes only depend on the pixels.
    Image.fromarray(pair.person).save(out / "image" / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    Image.fromarray(pair.garment).save(out / "cloth" / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    mask = Image.fromarray(pair.mask.astype(np.uint8) * 255, mode="L")
    mask.save(out / "agnostic-mask" / f"{name}_mask.png")


def generate(
    out_dir: str | Path,
    count: int,
    seed: int,
    size: Sequence[int] = DEFAULT_SIZE,
    hard_rate: float = DEFAULT_HARD_RATE,
    framing: str = DEFAULT_FRAMING,
) -> list[dict[str, Any]]:
    """Write ``count`` pairs to ``out_dir`` in VITON-HD's layout; returns the metadata records.

    Categories cycle upper/lower/full by index so every set is balanced; everything else comes from
    ``pair_seed(seed, i)``.
    """
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    h, w = _check_size(size)
    pair_seed(seed, 0)  # validates the seed before anything is written
    if not 0.0 <= hard_rate <= 1.0:
        raise ValueError(f"hard_rate must be in [0, 1], got {hard_rate!r}")
    out = Path(out_dir)
    for sub in ("image", "cloth", "agnostic-mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        name = pair_name(i)
        category = CATEGORIES[i % len(CATEGORIES)]
        pair = make_pair(pair_seed(seed, i), (h, w), category=category, hard_rate=hard_rate, framing=framing)
        save_pair(pair, out, name)
        records.append(
            {
                "name": name,
                "category": pair.category,
                "flags": list(pair.flags),
                "seed": int(seed),
                "index": i,
                **{k: v for k, v in pair.meta.items() if k != "category"},
            }
        )
    (out / "pairs.txt").write_text("".join(f"{r['name']}.jpg {r['name']}.jpg\n" for r in records))
    (out / "metadata.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    log.info("wrote %d pairs (%d with a defect) to %s", count, sum(bool(r["flags"]) for r in records), out)
    return records


def _parse_size(text: str) -> tuple[int, int]:
    size = resolution_arg("--size", "256x192")(text)
    try:
        return _check_size(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_rate(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        r = -1.0
    if not 0.0 <= r <= 1.0:
        raise argparse.ArgumentTypeError(f"--hard-rate must be a number in [0, 1], got {text!r}")
    return r


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (VITON-HD layout)")
    ap.add_argument("--count", required=True, type=int, help="number of pairs")
    ap.add_argument("--seed", type=int, default=0, help="base seed (non-negative)")
    ap.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="H x W, default 256x192")
    ap.add_argument(
        "--hard-rate",
        type=_parse_rate,
        default=DEFAULT_HARD_RATE,
        help=f"fraction of pairs with a planted defect (default {DEFAULT_HARD_RATE})",
    )
    ap.add_argument(
        "--framing",
        choices=FRAMINGS,
        default=DEFAULT_FRAMING,
        help="garment: photo framed around the garment, as in VITON-HD (default); figure: the whole figure",
    )
    args = ap.parse_args(argv)
    if args.count < 0:
        ap.error(f"--count must be >= 0, got {args.count}")
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    records = generate(args.out, args.count, args.seed, args.size, args.hard_rate, args.framing)
    dt = time.perf_counter() - t0
    counts = {d: sum(d in r["flags"] for r in records) for d in DEFECTS}
    per_pair = 1000 * dt / max(len(records), 1)
    print(f"{len(records)} pairs -> {args.out} in {dt:.2f}s ({per_pair:.1f} ms/pair); defects: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

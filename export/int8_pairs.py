"""The pairs an int8 build calibrates on and measures with: synthetic by default, or the user's.

A pair is what a restore request needs (person photo, garment mask, category) plus, where the
data has one, the ground-truth garment the quality measurement compares against.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.build import BuildError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Pair:
    name: str
    person: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    category: str
    garment: np.ndarray | None = None  # the ground-truth flat garment, when the pair has one


def synthetic_pairs(count: int, seed: int, size: tuple[int, int]) -> list[Pair]:
    from train.synthetic import CATEGORIES, MIN_SIZE, make_pair, pair_seed

    h, w = max(size[0], MIN_SIZE[0]), max(size[1], MIN_SIZE[1])
    out = []
    for i in range(count):
        p = make_pair(pair_seed(seed, i), (h, w), category=CATEGORIES[i % len(CATEGORIES)])
        out.append(Pair(f"synthetic-{seed}-{i:05d}", p.person, p.mask, p.category, p.garment))
    return out


def open_folder(root: Path):
    """The user's calibration pairs as a ``train.datasets`` data set, or a ``BuildError`` naming the folder."""
    from train.datasets import DataError, open_dataset

    try:
        ds = open_dataset(root)
    except DataError as e:
        raise BuildError(f"--calibration {root}: {e}") from None
    if len(ds) < 2:
        raise BuildError(
            f"--calibration {root} has {len(ds)} usable pair; expected at least 2 (calibration pairs and "
            "held-out pairs to measure quality on)"
        )
    return ds


def folder_pairs(root: Path, pairs: int, eval_pairs: int) -> tuple[list[Pair], list[Pair]]:
    """(calibration, held-out) pairs of a user's folder: the first ones calibrate, the last are held out."""
    from train.datasets import DataError

    ds = open_folder(root)
    n = len(ds)
    n_eval = min(eval_pairs, n // 2)
    n_cal = min(pairs, n - n_eval)
    if n_cal < pairs or n_eval < eval_pairs:
        log.warning("--calibration %s has %d pairs: using %d to calibrate and %d held out", root, n, n_cal, n_eval)

    def load(i: int) -> Pair:
        try:
            s = ds[i]
        except DataError as e:
            raise BuildError(f"--calibration {root}: {e}") from None
        return Pair(s.name, s.person, s.mask, s.category, s.garment)

    return [load(i) for i in range(n_cal)], [load(i) for i in range(n - n_eval, n)]


def pairs_sha256(pairs: Sequence[Pair]) -> str:
    """Hash of what the engines see of a pair set: names, categories, person and mask pixels."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.name, p.category, list(p.person.shape), list(p.mask.shape)]).encode())
        h.update(np.ascontiguousarray(p.person, dtype=np.uint8).tobytes())
        h.update(np.packbits(np.ascontiguousarray(p.mask, dtype=bool)).tobytes())
    return h.hexdigest()

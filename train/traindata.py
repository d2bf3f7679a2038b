"""Training inputs: pairs -> model tensors, the seeded data order, the held-out validation pairs.

Inputs go through ``igr_sdk.preprocess.prepare``, the function the runtime uses, so training and
inference see identical pixels: the person resized and padded (white) to (H, W), the mask averaged
over latent cells, the CLIP crop of the masked garment. The target garment is fitted the same way.

The data order is a stream: position p of the run is pair ``perm_e[p mod n]`` with e = p div n and
``perm_e`` a permutation seeded by (seed, e). Micro-batch j of the run covers positions
[j B, (j + 1) B); with several processes, process r takes micro-batches j * world + r. A run resumed
at optimizer step k starts at micro-batch k * grad_accum and so sees exactly the batches an
uninterrupted run would have seen, whatever the number of data-loader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from igr_sdk import InputError
from igr_sdk.preprocess import MIN_SIDE, Prepared, fit, prepare
from train.config import CATEGORIES, IGRConfig
from train.datasets import DataError, PairDataset, Sample, open_dataset, read_name_list
from train.objective import AUX_SIZE

log = logging.getLogger(__name__)

REFRAME_EXTENT = 0.6  # resize_and_pad pairs: the garment's bbox spans this much of the reframed photo


@dataclass(frozen=True)
class Source:
    """One data root and the options that pick its pairs."""

    root: Path
    subset: Path | None = None  # a list file (train/curate.py output): train on these names only
    resize_and_pad: Path | None = None  # a list file of names to reframe around the garment


def reframe(person: np.ndarray, mask: np.ndarray, aspect: float, extent: float = REFRAME_EXTENT):
    """Crop or pad (white) around the garment so its bbox spans ``extent`` of a frame of H/W ``aspect``.

    The paper's "resize and pad" for pairs whose garment is tiny or fills the photo; ``prepare``
    then fits the result to the model resolution as usual.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return person, mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fh = max((y1 - y0) / extent, (x1 - x0) / extent * aspect, MIN_SIDE, MIN_SIDE * aspect)  # prepare's minimum
    fh, fw = round(fh), round(fh / aspect)
    top, left = (y0 + y1 - fh) // 2, (x0 + x1 - fw) // 2
    out = np.full((fh, fw, 3), 255, dtype=np.uint8)
    out_m = np.zeros((fh, fw), dtype=bool)
    # the part of the frame that lies on the photo
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + fh, person.shape[0]), min(left + fw, person.shape[1])
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = person[sy0:sy1, sx0:sx1]
    out_m[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = mask[sy0:sy1, sx0:sx1]
    return out, out_m


def prepare_sample(sample: Sample, config: IGRConfig, where: str) -> tuple[Prepared, np.ndarray]:
    """(model inputs, target garment (3, H, W) in [-1, 1]) of one pair; bad pairs raise DataError."""
    h, w = config.height, config.width
    try:
        prep = prepare(sample.person, sample.mask, h, w, config.vae.downsample_factor)
    except InputError as e:
        raise DataError(f"pair {sample.name} in {where}: {e}") from None
    g = sample.garment
    garment, _ = fit(g, np.ones(g.shape[:2], dtype=bool), h, w)
    target = (garment.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy()
    return prep, target


def thumbnail(target: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (3, 16, 12) box-filtered garment: the target of the training-only thumbnail head."""
    c, h, w = target.shape
    th, tw = AUX_SIZE
    if h % th or w % tw:
        return np.asarray(
            torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(target)[None], AUX_SIZE)[0], dtype=np.float32
        )
    return target.reshape(c, th, h // th, tw, w // tw).mean(axis=(2, 4)).astype(np.float32)


class TrainSet(Dataset):
    """A PairDataset as dicts of tensors: ``mask``, ``garment_crop``, ``category``, ``thumbnail``, and
    either the images ``person`` and ``target`` or, once :meth:`use_latents` is called, their
    cached VAE latents ``person_latent`` and ``target_latent``."""

    def __init__(self, pairs: PairDataset, config: IGRConfig, reframe_names: Sequence[str] = ()):
        self.pairs = pairs
        self.config = config
        self.reframe_names = frozenset(reframe_names)
        self.latents: dict[str, torch.Tensor] | None = None

    def cache_key(self, index: int) -> str:
        """The latent-cache entry of a pair: its name, and whether it is reframed (another photo)."""
        name = self.pairs.names[index]
        return f"{name}|{'reframed' if name in self.reframe_names else 'as-is'}"

    def use_latents(self, latents: dict[str, torch.Tensor]) -> None:
        """Serve ``person_latent``/``target_latent`` from ``latents`` (keys ``cache_key(i) + '|person'``
        and ``'|target'``) instead of the images: a training step then never runs the VAE."""
        self.latents = latents

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, index: int) -> Sample:
        s = self.pairs[index]
        if s.name in self.reframe_names:
            person, mask = reframe(s.person, s.mask, self.config.height / self.config.width)
            s = Sample(s.name, person, mask, s.garment, s.category)
        return s

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.sample(index)
        prep, target = prepare_sample(s, self.config, str(self.pairs.root))
        item = {
            "mask": torch.from_numpy(prep.mask),  # (1, h, w)
            "garment_crop": torch.from_numpy(prep.garment_crop),  # (3, 224, 224)
            "category": torch.tensor(CATEGORIES.index(s.category)),
            "thumbnail": torch.from_numpy(thumbnail(target)),  # (3, 16, 12)
        }
        if self.latents is None:
            item["person"] = torch.from_numpy(prep.person)  # (3, H, W)
            item["target"] = torch.from_numpy(target)  # (3, H, W)
        else:
            key = self.cache_key(index)
            item["person_latent"] = self.latents[key + "|person"]  # (4, h, w)
            item["target_latent"] = self.latents[key + "|target"]  # (4, h, w)
        return item


class StreamBatchSampler:
    """Endless micro-batches of indices in the seeded stream order (module docstring)."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._perm[1]

    def micro_batch(self, j: int) -> list[int]:
        """Indices of the run's micro-batch j (over all processes)."""
        out = []
        for p in range(j * self.batch_size, (j + 1) * self.batch_size):
            epoch, i = divmod(p, self.size)
            out.append(int(self.permutation(epoch)[i]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        j = self.start
        while True:
            yield self.micro_batch(j * self.world + self.rank)
            j += 1


def open_sources(
    sources: Sequence[Source], split: str, holdout: int = 0
) -> tuple[list[PairDataset], list[list[str]], list[tuple[PairDataset, int]]]:
    """Open every source; returns (training data sets, their reframe names, held-out (data set, index)).

    With ``holdout`` > 0 the last ``holdout`` pairs of the first source are held out of training for
    validation images (used when the data has no test split and no --val-data is given).
    """
    sets, reframes, held = [], [], []
    for k, src in enumerate(sources):
        names = None
        if src.subset is not None:
            names = read_name_list(src.subset)
            if not names:
                raise DataError(f"--subset {src.subset} lists no pair names")
        ds = open_dataset(src.root, split=split, names=names)
        if names is not None and len(ds) == 0:
            raise DataError(f"--subset {src.subset}: none of its names is a pair in {src.root}")
        frames = read_name_list(src.resize_and_pad) if src.resize_and_pad is not None else []
        if k == 0 and holdout:
            if len(ds) <= holdout:
                raise DataError(
                    f"--data {src.root} has {len(ds)} pairs: too few to hold {holdout} out for validation "
                    "(use --val-count 0, --val-data DIR, or more data)"
                )
            keep = list(ds.names[:-holdout])
            held = [(ds, i) for i in range(len(ds) - holdout, len(ds))]
            ds = open_dataset(src.root, split=split, names=keep)
        sets.append(ds)
        reframes.append(frames)
        log.info("training data %s: %d pairs%s", ds.root, len(ds), f" (subset {src.subset})" if src.subset else "")
    return sets, reframes, held


def validation_pairs(
    sources: Sequence[Source], val_data: Path | None, count: int, split: str
) -> tuple[list[tuple[PairDataset, int]], bool]:
    """Up to ``count`` validation pairs from --val-data or the first source's test split.

    Returns (pairs, hold_out): when neither exists, ``hold_out`` says the caller must hold pairs out of
    the training set instead.
    """
    if count <= 0:
        return [], False
    if val_data is not None:
        ds = open_dataset(val_data, split="test" if (Path(val_data) / "test").is_dir() else split)
    elif split != "test" and (sources[0].root / "test" / "image").is_dir():
        ds = open_dataset(sources[0].root, split="test")
    else:
        return [], True
    n = min(count, len(ds))
    return [(ds, i) for i in range(n)], False

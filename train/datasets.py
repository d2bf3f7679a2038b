"""Readers for garment-restoration pairs: VITON-HD (also the synthetic set's layout) and DressCode.

Every item is a :class:`Sample`: the person photo, the mask of the garment worn in it, the flat in-shop
garment (the target) and the garment's category. Pairs are "paired": the person's own garment.

Problems are never skipped silently. Pairs whose files are missing are logged with the path and kept
in ``dataset.problems`` at construction; a file that exists but cannot be decoded raises
:class:`DataError` naming it when the item is read. Only numpy and PIL are needed, and the datasets
are plain Python objects (``len`` / indexing), so they work with a torch ``DataLoader`` as they are.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from igr_sdk.contract import CATEGORIES

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # preference order when one stem has several files
DEFAULT_MAX_PIXELS = 50_000_000  # refuse larger images before decoding them

# LIP labels used by VITON-HD's image-parse-v3 maps: upper-clothes 5, dress 6, coat 7, pants 9,
# jumpsuits 10, skirt 12.
LIP_LABELS: dict[str, tuple[int, ...]] = {"upper": (5, 7), "lower": (9, 12), "full": (6, 10)}
# DressCode label_maps: upper_clothes 4, skirt 5, pants 6, dress 7.
DRESSCODE_LABELS: dict[str, tuple[int, ...]] = {"upper": (4,), "lower": (5, 6), "full": (7,)}
DRESSCODE_DIRS: dict[str, str] = {"upper_body": "upper", "lower_body": "lower", "dresses": "full"}

VITON_LAYOUT = (
    "VITON-HD layout: <root>/{train,test}/ or a split folder with image/ and cloth/, masks in "
    "agnostic-mask/<stem>_mask.png or image-parse-v3/<stem>.png, and optionally pairs.txt / "
    "<split>_pairs.txt and metadata.jsonl"
)
DRESSCODE_LAYOUT = (
    "DressCode layout: <root>/{upper_body,lower_body,dresses}/images/NNNNNN_0.jpg "
    "(person) and NNNNNN_1.jpg (garment), masks in masks/ or label_maps/NNNNNN_4.png, "
    "pairs in train_pairs.txt / test_pairs_paired.txt"
)


class DataError(ValueError):
    """A data set or one of its files is missing, empty, unreadable or not what was expected."""


@dataclass(frozen=True, eq=False)
class Sample:
    name: str
    person: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the garment's pixels on the person
    garment: np.ndarray  # (H', W', 3) uint8, flat garment; (H, W) when the data set has a ``size``
    category: str  # "upper", "lower" or "full"


@dataclass(frozen=True)
class Problem:
    """A pair left out of the index (or a bad line in an index file), with the path at fault."""

    name: str | None  # the pair's name, None for problems with a whole file (e.g. a bad metadata line)
    path: Path
    reason: str


@dataclass(frozen=True)
class Entry:
    """Where one pair's files are. ``mask_labels`` is None for a binary mask, else the label ids to keep."""

    name: str
    person: Path
    garment: Path
    mask: Path
    mask_labels: tuple[int, ...] | None
    category: str


# --------------------------------------------------------------------------------------------
# file reading


def _open_image(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily and check the header's size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # we apply our own, lower, limit below; PIL's bomb warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DataError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.1f} MP")
    return im


def _decode(path: Path, max_pixels: int, mode: str | None, label_map: bool = False) -> np.ndarray:
    im = _open_image(path, max_pixels)
    if label_map and im.mode not in ("P", "L", "I", "I;16"):
        # converting RGB colours to ids would silently produce nonsense labels
        im.close()
        raise DataError(
            f"label map {path} has mode {im.mode}; expected a single-channel map of label ids (mode P or L)"
        )
    try:
        with im:
            return np.array(im.convert(mode) if mode is not None else im)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data shows up on decode
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL-readable image."""
    return _decode(Path(path), max_pixels, "RGB")


def read_binary_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W) bool: pixels >= 128 after conversion to grey."""
    return _decode(Path(path), max_pixels, "L") >= 128


def read_label_mask(path: str | Path, labels: Iterable[int], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W) bool: pixels of a parse/label map whose id is in ``labels``."""
    ids = _decode(Path(path), max_pixels, None, label_map=True)
    return np.isin(ids, np.asarray(list(labels)))


def read_name_list(path: str | Path) -> list[str]:
    """Names from a list file (one per line, ``#`` comments), e.g. the output of train/curate.py."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read name list {path}: {exc}") from exc
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def _stem_index(folder: Path, strip_suffix: str = "") -> dict[str, Path]:
    """{stem: path} of the images in ``folder`` (one directory listing instead of a stat per file)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTS)}
    with os.scandir(folder) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() not in rank or not e.is_file():
                continue
            if strip_suffix:
                if not stem.endswith(strip_suffix):
                    continue
                stem = stem[: -len(strip_suffix)]
            old = found.get(stem)
            if old is None or rank[ext.lower()] < rank[old.suffix.lower()]:
                found[stem] = Path(e.path)
    return found


# --------------------------------------------------------------------------------------------
# the common dataset


class PairDataset:
    """Indexed pairs with ``len`` / ``[i]`` -> :class:`Sample`. Built by the layout classes below."""

    layout = "pairs"

    def __init__(
        self,
        root: Path,
        entries: Sequence[Entry],
        problems: Sequence[Problem],
        metadata: dict[str, dict[str, Any]],
        size: Sequence[int] | None,
        max_pixels: int,
    ) -> None:
        self.root = root
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.problems: list[Problem] = list(problems)
        self._metadata = metadata
        self.size = _check_size(size)
        self.max_pixels = int(max_pixels)
        self._by_name = {e.name: i for i, e in enumerate(self.entries)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def problem_count(self) -> int:
        return len(self.problems)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, pairs={len(self)}, problems={self.problem_count})"

    def index_of(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no pair named {name!r} in {self.root}") from None

    def metadata(self, index: int) -> dict[str, Any] | None:
        """The pair's metadata.jsonl record (synthetic sets), None when there is none."""
        return self._metadata.get(self.entries[self._check_index(index)].name)

    def _check_index(self, index: int) -> int:
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} pairs")
        return index % n

    def _resize(self, a: np.ndarray, nearest: bool) -> np.ndarray:
        if self.size is None or a.shape[:2] == self.size:
            return a
        h, w = self.size
        if a.dtype == bool:
            im = Image.fromarray(a.astype(np.uint8) * 255)
            return np.asarray(im.resize((w, h), Image.NEAREST)) >= 128
        return np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))

    def load_person(self, index: int) -> np.ndarray:
        e = self.entries[self._check_index(index)]
        return self._resize(read_rgb(e.person, self.max_pixels), nearest=False)

    def load_garment(self, index: int) -> np.ndarray:
        e = self.entries[self._check_index(index)]
        return self._resize(read_rgb(e.garment, self.max_pixels), nearest=False)

    def load_mask(self, index: int) -> np.ndarray:
        e = self.entries[self._check_index(index)]
        if e.mask_labels is None:
            mask = read_binary_mask(e.mask, self.max_pixels)
        else:
            mask = read_label_mask(e.mask, e.mask_labels, self.max_pixels)
        return self._resize(mask, nearest=True)

    def __getitem__(self, index: int) -> Sample:
        e = self.entries[self._check_index(index)]
        person = self.load_person(index)
        mask = self.load_mask(index)
        if mask.shape != person.shape[:2]:
            raise DataError(
                f"mask {e.mask} is {mask.shape[1]}x{mask.shape[0]} but person image {e.person} "
                f"is {person.shape[1]}x{person.shape[0]}; expected the same size"
            )
        garment = self.load_garment(index)
        return Sample(name=e.name, person=person, mask=mask, garment=garment, category=e.category)


def _check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W) or None, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    return h, w


class _Indexer:
    """Collects entries and problems while a layout is indexed; logs each problem as it is found."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.problems: list[Problem] = []

    def problem(self, name: str | None, path: Path, reason: str) -> None:
        self.problems.append(Problem(name, path, reason))
        log.warning("%s: %s%s", reason, path, f" (pair {name})" if name else "")

    def finish(self, folder: Path, layout: str) -> None:
        if not self.entries:
            detail = ""
            if self.problems:
                first = self.problems[0]
                detail = f"; {len(self.problems)} problems, first: {first.reason}: {first.path}"
            raise DataError(f"no usable pairs in {folder}{detail}. Expected the {layout}")
        log.info("indexed %d pairs in %s (%d problems)", len(self.entries), folder, len(self.problems))


def _read_pairs(path: Path, idx: _Indexer) -> list[str]:
    """Person file names (first column) from a pairs file, duplicates reported."""
    names: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first = line.split()[0]
        if first in seen:
            idx.problem(Path(first).stem, Path(f"{path}:{lineno}"), "duplicate pair line")
            continue
        seen.add(first)
        names.append(first)
    return names


def _select(names: list[str], wanted: Iterable[str] | None, folder: Path, idx: _Indexer) -> set[str]:
    """The names to index: all of them, or those in ``wanted`` (unknown wanted names are problems)."""
    if wanted is None:
        return set(names)
    wanted = set(wanted)
    for w in sorted(wanted - set(names)):
        idx.problem(w, folder, "requested name not in the pairs list")
    return wanted


def _require_root(root: str | Path, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder. Expected the {layout}")
    return root


# --------------------------------------------------------------------------------------------
# VITON-HD (and the synthetic set)


def _read_metadata(paths: Iterable[Path], idx: _Indexer) -> dict[str, dict[str, Any]]:
    for path in paths:
        if not path.is_file():
            continue
        out: dict[str, dict[str, Any]] = {}
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name = str(rec["name"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                idx.problem(None, Path(f"{path}:{lineno}"), f"bad metadata line ({exc})")
                continue
            out[name] = rec
        return out
    return {}


class VitonHDDataset(PairDataset):
    """VITON-HD layout, paired mode (person ``image/X`` with garment ``cloth/X``).

    ``root`` is the data set root (with ``train/`` and ``test/``) or a split folder itself. Pair names are
    the person files' stems (``00000_00``). ``names`` restricts the index to those names (e.g. a curated
    list); ``size`` (H, W) resizes every array on reading.
    """

    layout = "viton-hd"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        pairs_file: str | Path | None = None,
        names: Iterable[str] | None = None,
        size: Sequence[int] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        root = _require_root(root, VITON_LAYOUT)
        folder = root / split if (root / split / "image").is_dir() else root
        image_dir, cloth_dir = folder / "image", folder / "cloth"
        if not image_dir.is_dir() or not cloth_dir.is_dir():
            raise DataError(f"{folder} has no image/ and cloth/ folders (split {split!r}). Expected the {VITON_LAYOUT}")
        idx = _Indexer()
        metadata = _read_metadata([folder / "metadata.jsonl", root / "metadata.jsonl"], idx)

        persons, cloths = _stem_index(image_dir), _stem_index(cloth_dir)
        masks = _stem_index(folder / "agnostic-mask", strip_suffix="_mask")
        parses = _stem_index(folder / "image-parse-v3")

        pair_files = self._pair_names(root, folder, split, pairs_file, persons, idx)
        selected = _select([Path(f).stem for f in pair_files], names, folder, idx)
        for file_name in pair_files:
            stem = Path(file_name).stem
            if stem not in selected:
                continue
            category = "upper"  # VITON-HD is upper-body only; the synthetic set says otherwise in metadata
            rec = metadata.get(stem)
            if rec is not None and "category" in rec:
                category = rec["category"]
                if category not in CATEGORIES:
                    idx.problem(
                        stem, folder / "metadata.jsonl", f"unknown category {category!r} (expected one of {CATEGORIES})"
                    )
                    continue
            ok = True
            if stem not in persons:
                idx.problem(stem, image_dir / file_name, "missing person image")
                ok = False
            if stem not in cloths:
                idx.problem(stem, cloth_dir / file_name, "missing garment image")
                ok = False
            if stem in masks:
                mask, labels = masks[stem], None
            elif stem in parses:
                mask, labels = parses[stem], LIP_LABELS[category]
            else:
                idx.problem(
                    stem,
                    folder / "agnostic-mask" / f"{stem}_mask.png",
                    "missing mask (looked in agnostic-mask/<stem>_mask.png and image-parse-v3/<stem>.png)",
                )
                ok = False
            if ok:
                idx.entries.append(Entry(stem, persons[stem], cloths[stem], mask, labels, category))
        idx.finish(folder, VITON_LAYOUT)
        super().__init__(folder, idx.entries, idx.problems, metadata, size, max_pixels)

    @staticmethod
    def _pair_names(
        root: Path, folder: Path, split: str, pairs_file: str | Path | None, persons: dict[str, Path], idx: _Indexer
    ) -> list[str]:
        if pairs_file is not None:
            path = Path(pairs_file)
            if not path.is_file():
                raise DataError(f"pairs file {path} does not exist")
            return _read_pairs(path, idx)
        for path in (
            folder / "pairs.txt",
            folder / f"{split}_pairs.txt",
            root / f"{split}_pairs.txt",
            root / "pairs.txt",
        ):
            if path.is_file():
                return _read_pairs(path, idx)
        # no pairs file: every person image is a pair with its own garment
        log.info("no pairs file in %s; pairing every image/ file with cloth/ of the same name", folder)
        return [p.name for _, p in sorted(persons.items())]


# --------------------------------------------------------------------------------------------
# DressCode


class DressCodeDataset(PairDataset):
    """DressCode layout, paired mode. Pair names are ``<category folder>/<person stem>``, e.g.
    ``upper_body/048392_0``. ``categories`` picks folders ("upper_body" or "upper", ...); default all present.
    """

    layout = "dresscode"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        categories: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        size: Sequence[int] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        root = _require_root(root, DRESSCODE_LAYOUT)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        idx = _Indexer()
        subs = self._category_dirs(root, categories, idx)
        person_files = {sub: self._person_files(root / sub, split, idx) for sub in subs}
        all_names = [f"{sub}/{Path(f).stem}" for sub in subs for f in person_files[sub]]
        selected = _select(all_names, names, root, idx)
        for sub in subs:
            self._index_category(root / sub, sub, person_files[sub], selected, idx)
        idx.finish(root, DRESSCODE_LAYOUT)
        super().__init__(root, idx.entries, idx.problems, {}, size, max_pixels)

    @staticmethod
    def _category_dirs(root: Path, categories: Iterable[str] | None, idx: _Indexer) -> list[str]:
        aliases = {v: k for k, v in DRESSCODE_DIRS.items()}
        if categories is None:
            subs = [d for d in DRESSCODE_DIRS if (root / d).is_dir()]
            if not subs:
                raise DataError(f"{root} has none of {list(DRESSCODE_DIRS)}. Expected the {DRESSCODE_LAYOUT}")
            return subs
        subs = []
        for c in categories:
            sub = aliases.get(c, c)
            if sub not in DRESSCODE_DIRS:
                raise ValueError(
                    f"unknown DressCode category {c!r}; expected one of {list(DRESSCODE_DIRS) + list(aliases)}"
                )
            if (root / sub).is_dir():
                subs.append(sub)
            else:
                idx.problem(None, root / sub, "missing category folder")
        return subs

    @staticmethod
    def _person_files(folder: Path, split: str, idx: _Indexer) -> list[str]:
        candidates = ["train_pairs.txt"] if split == "train" else ["test_pairs_paired.txt", "test_pairs.txt"]
        pairs_path = next((folder / c for c in candidates if (folder / c).is_file()), None)
        if pairs_path is not None:
            return _read_pairs(pairs_path, idx)
        log.info("no %s in %s; using every images/*_0 file", candidates[0], folder)
        return [p.name for s, p in sorted(_stem_index(folder / "images").items()) if s.endswith("_0")]

    @staticmethod
    def _index_category(folder: Path, sub: str, person_files: list[str], selected: set[str], idx: _Indexer) -> None:
        category = DRESSCODE_DIRS[sub]
        image_dir = folder / "images"
        images = _stem_index(image_dir)
        masks = _stem_index(folder / "masks")
        labels = _stem_index(folder / "label_maps")
        for file_name in person_files:
            stem = Path(file_name).stem
            name = f"{sub}/{stem}"
            if name not in selected:
                continue
            pid, _, kind = stem.rpartition("_")
            if kind != "0" or not pid:
                idx.problem(name, image_dir / file_name, "unexpected person name (expected NNNNNN_0.jpg)")
                continue
            ok = True
            if stem not in images:
                idx.problem(name, image_dir / file_name, "missing person image")
                ok = False
            if f"{pid}_1" not in images:
                idx.problem(name, image_dir / f"{pid}_1.jpg", "missing garment image")
                ok = False
            mask_key = next((k for k in (stem, f"{stem}_mask", pid, f"{pid}_4") if k in masks), None)
            if mask_key is not None:
                mask, mask_labels = masks[mask_key], None
            elif f"{pid}_4" in labels:
                mask, mask_labels = labels[f"{pid}_4"], DRESSCODE_LABELS[category]
            else:
                idx.problem(
                    name,
                    folder / "label_maps" / f"{pid}_4.png",
                    "missing mask (looked in masks/ and label_maps/NNNNNN_4.png)",
                )
                ok = False
            if ok:
                idx.entries.append(Entry(name, images[stem], images[f"{pid}_1"], mask, mask_labels, category))


# --------------------------------------------------------------------------------------------


def open_dataset(root: str | Path, split: str = "train", **kwargs: Any) -> PairDataset:
    """DressCode when ``root`` has upper_body/, lower_body/ or dresses/, else VITON-HD (and synthetic)."""
    root = _require_root(root, f"{VITON_LAYOUT}; or the {DRESSCODE_LAYOUT}")
    if any((root / d).is_dir() for d in DRESSCODE_DIRS):
        return DressCodeDataset(root, split, **kwargs)
    return VitonHDDataset(root, split, **kwargs)

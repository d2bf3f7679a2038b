"""Curation for the fine stage (HQFT): keep the clean pairs, drop the defective ones, mark odd framings.

    python train/curate.py --data DIR --out LIST.txt [--keep-drop FILE]

Each pair gets automatic flags computed from its mask and garment image:

* ``truncation``: the garment mask touches the frame border on more than ``border_px`` pixels
  (part of the garment is outside the photo, so the target cannot be recovered from it);
* ``coverage``: the mask covers less than ``min_coverage`` or more than ``max_coverage`` of the
  frame, i.e. the mask is broken rather than the garment small or large;
* ``side_view``: the metadata says so when the data set has metadata (synthetic sets); otherwise the
  worn garment's bbox aspect (w/h) divided by the flat garment's is below ``side_view_ratio``: seen
  from the side a garment looks much narrower than it lies flat;
* ``occlusion``: only from metadata (a mask alone cannot tell a hidden part from a short garment);
* ``extreme_proportion``: the mask's bbox spans less than ``tiny_extent`` or more than
  ``huge_extent`` of the frame in its larger relative dimension. These are kept and listed as
  ``resize_and_pad`` (crop around the garment and resize/pad) instead of being dropped;
* ``unreadable``: the files could not be decoded (the error is logged with the path).

A manual list (lines ``keep NAME`` / ``drop NAME``, ``#`` comments) overrides the automatic decision.
The output is the kept subset, one name per line, readable with ``train.datasets.read_name_list`` and
usable as ``names=`` of the data set classes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from train.datasets import DataError, open_dataset

log = logging.getLogger(__name__)

# Drop reasons in priority order: an item flagged with several is counted under the first.
DROP_REASONS = ("unreadable", "manual", "truncation", "coverage", "side_view", "occlusion")
FLAGS = ("unreadable", "truncation", "coverage", "side_view", "occlusion", "extreme_proportion")
RESIZE_AND_PAD = "resize_and_pad"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class CurationConfig:
    border_px: int = 3  # truncation: more mask pixels than this on the outermost rows/columns
    min_coverage: float = 0.002  # mask area / frame area bounds of a sane mask
    max_coverage: float = 0.85
    side_view_ratio: float = 0.5  # (worn w/h) / (flat w/h) below this -> side view
    tiny_extent: float = 0.2  # max(bbox_h / H, bbox_w / W) below this -> extreme_proportion (tiny)
    huge_extent: float = 0.9  # ... above this -> extreme_proportion (huge)
    white_level: int = 235  # garment-image pixels with every channel >= this are background
    use_metadata: bool = True  # take side_view / occlusion from metadata.jsonl when a pair has a record
    drop_occlusion: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_coverage < self.max_coverage <= 1.0:
            raise ValueError(
                f"coverage bounds must satisfy 0 <= min < max <= 1, got "
                f"min_coverage={self.min_coverage}, max_coverage={self.max_coverage}"
            )
        if not 0.0 < self.tiny_extent < self.huge_extent <= 1.0:
            raise ValueError(
                f"extent bounds must satisfy 0 < tiny < huge <= 1, got "
                f"tiny_extent={self.tiny_extent}, huge_extent={self.huge_extent}"
            )
        if self.border_px < 0:
            raise ValueError(f"border_px must be >= 0, got {self.border_px}")
        if self.side_view_ratio <= 0:
            raise ValueError(f"side_view_ratio must be > 0, got {self.side_view_ratio}")


@dataclass(frozen=True)
class Measurements:
    border_pixels: int  # mask pixels on the outermost rows/columns
    coverage: float  # mask area / frame area
    extent: float  # max(bbox_h / H, bbox_w / W) of the mask, 0 for an empty mask
    worn_aspect: float  # mask bbox w / h (0 when empty)
    flat_aspect: float  # garment-image silhouette bbox w / h (0 when none found)


def measure(mask: np.ndarray, garment: np.ndarray, white_level: int = 235) -> Measurements:
    """Numbers behind the automatic flags. mask (H, W) bool, garment (H', W', 3) uint8 on white."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    h, w = mask.shape
    border = int(mask[0].sum() + mask[-1].sum() + mask[1:-1, 0].sum() + mask[1:-1, -1].sum())
    area = int(mask.sum())
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if area:
        bh, bw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        extent, worn = max(bh / h, bw / w), bw / bh
    else:
        extent = worn = 0.0
    # flat silhouette: ignore rows/cols with a single stray pixel (JPEG ringing, dust on the white)
    fg = (garment < white_level).any(axis=-1)
    frows, fcols = np.flatnonzero(fg.sum(axis=1) >= 2), np.flatnonzero(fg.sum(axis=0) >= 2)
    flat = (fcols[-1] - fcols[0] + 1) / (frows[-1] - frows[0] + 1) if len(frows) and len(fcols) else 0.0
    return Measurements(border, area / (h * w), float(extent), float(worn), float(flat))


def auto_flags(m: Measurements, meta: Mapping[str, Any] | None, config: CurationConfig) -> tuple[str, ...]:
    """Automatic flags (in FLAGS order) from the measurements and, when allowed, the pair's metadata."""
    meta_flags = set(meta.get("flags", ())) if (config.use_metadata and meta is not None) else None
    flags = []
    truncated = m.border_pixels > config.border_px
    if truncated:
        flags.append("truncation")
    if not config.min_coverage <= m.coverage <= config.max_coverage:
        flags.append("coverage")
    if meta_flags is not None:
        side = "side_view" in meta_flags
    else:
        # a truncated or empty mask has a meaningless bbox; those are dropped for another reason anyway
        side = (
            not truncated
            and m.worn_aspect > 0
            and m.flat_aspect > 0
            and m.worn_aspect / m.flat_aspect < config.side_view_ratio
        )
    if side:
        flags.append("side_view")
    if meta_flags is not None and "occlusion" in meta_flags:
        flags.append("occlusion")
    if m.coverage > 0 and not config.tiny_extent <= m.extent <= config.huge_extent:
        flags.append("extreme_proportion")
    return tuple(flags)


@dataclass(frozen=True)
class Decision:
    name: str
    flags: tuple[str, ...]  # automatic flags
    action: str  # "keep", "drop" or "resize_and_pad" (kept)
    reason: str | None  # the drop reason (first of DROP_REASONS that applies), None when kept
    manual: str | None  # "keep" / "drop" when the manual list decided, else None


@dataclass(frozen=True)
class CurationReport:
    kept: tuple[str, ...]  # the curated subset (includes resize_and_pad), data set order
    dropped: dict[str, tuple[str, ...]]  # drop reason -> names, every reason in DROP_REASONS present
    resize_and_pad: tuple[str, ...]
    decisions: tuple[Decision, ...]
    flag_counts: dict[str, int]  # how many pairs got each automatic flag (before manual overrides)
    counts: dict[str, int]  # total, kept, dropped, resize_and_pad, manual_keep, manual_drop, problems
    unknown_manual: tuple[str, ...] = field(default=())  # names in the keep/drop list not in the data set

    def table(self) -> str:
        lines = [f"{'reason':<20}{'flagged':>9}{'dropped':>9}"]
        for reason in FLAGS:
            dropped = len(self.dropped.get(reason, ()))
            lines.append(f"{reason:<20}{self.flag_counts.get(reason, 0):>9}{dropped:>9}")
        lines.append(f"{'manual':<20}{self.counts['manual_drop']:>9}{len(self.dropped['manual']):>9}")
        c = self.counts
        lines.append(
            f"total {c['total']}, kept {c['kept']} (of which {c['resize_and_pad']} resize_and_pad), "
            f"dropped {c['dropped']}, manual keep/drop {c['manual_keep']}/{c['manual_drop']}, "
            f"index problems {c['problems']}"
        )
        return "\n".join(lines)


class CurationSource(Protocol):
    """What curate() needs from a data set (train.datasets.PairDataset provides it)."""

    names: Sequence[str]

    def __len__(self) -> int: ...
    def load_mask(self, index: int) -> np.ndarray: ...
    def load_garment(self, index: int) -> np.ndarray: ...
    def metadata(self, index: int) -> Mapping[str, Any] | None: ...


def _normalise_name(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in _IMAGE_SUFFIXES else name


def read_keep_drop(path: str | Path) -> dict[str, str]:
    """{name: "keep" | "drop"} from lines ``keep NAME`` / ``drop NAME``; ``#`` starts a comment."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read keep/drop list {path}: {exc}") from exc
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0].lower() not in ("keep", "drop"):
            raise ValueError(f"{path}:{lineno}: expected 'keep NAME' or 'drop NAME', got {raw.strip()!r}")
        verb, name = parts[0].lower(), _normalise_name(parts[1])
        if out.get(name, verb) != verb:
            raise ValueError(f"{path}:{lineno}: {name!r} is both kept and dropped in the list")
        out[name] = verb
    return out


def curate(
    dataset_or_dir: CurationSource | str | Path,
    config: CurationConfig | None = None,
    *,
    manual: Mapping[str, str] | str | Path | None = None,
    split: str = "train",
) -> CurationReport:
    """Flag every pair, apply the manual overrides and return the report (nothing is written).

    ``manual`` is a keep/drop list file or an already parsed {name: "keep" | "drop"} mapping.
    """
    config = config or CurationConfig()
    ds = open_dataset(dataset_or_dir, split) if isinstance(dataset_or_dir, (str, Path)) else dataset_or_dir
    if manual is None:
        overrides: dict[str, str] = {}
    elif isinstance(manual, (str, Path)):
        overrides = read_keep_drop(manual)
    else:
        overrides = {_normalise_name(k): v for k, v in manual.items()}
    bad = {k: v for k, v in overrides.items() if v not in ("keep", "drop")}
    if bad:
        raise ValueError(f"manual decisions must be 'keep' or 'drop', got {bad}")

    names = list(ds.names)
    decisions = []
    for i, name in enumerate(names):
        try:
            m = measure(ds.load_mask(i), ds.load_garment(i), config.white_level)
            flags = auto_flags(m, ds.metadata(i), config)
        except DataError as exc:
            log.warning("pair %s is unreadable: %s", name, exc)
            flags = ("unreadable",)
        decisions.append(_decide(name, flags, overrides.get(name), config))

    known = set(names)
    unknown = tuple(sorted(n for n in overrides if n not in known))
    for n in unknown:
        log.warning("keep/drop list names %r, which is not in the data set", n)
    return _report(decisions, unknown, len(getattr(ds, "problems", ())))


def _decide(name: str, flags: tuple[str, ...], manual: str | None, config: CurationConfig) -> Decision:
    if "unreadable" in flags:  # a manual "keep" cannot make broken files trainable
        return Decision(name, flags, "drop", "unreadable", manual)
    if manual == "drop":
        return Decision(name, flags, "drop", "manual", "drop")
    resize = "extreme_proportion" in flags
    if manual == "keep":
        return Decision(name, flags, RESIZE_AND_PAD if resize else "keep", None, "keep")
    drops = set(flags) - ({"occlusion"} if not config.drop_occlusion else set())
    reason = next((r for r in DROP_REASONS if r in drops), None)
    if reason is not None:
        return Decision(name, flags, "drop", reason, None)
    return Decision(name, flags, RESIZE_AND_PAD if resize else "keep", None, None)


def _report(decisions: list[Decision], unknown: tuple[str, ...], problems: int) -> CurationReport:
    kept = tuple(d.name for d in decisions if d.action != "drop")
    resize = tuple(d.name for d in decisions if d.action == RESIZE_AND_PAD)
    dropped = {r: tuple(d.name for d in decisions if d.reason == r) for r in DROP_REASONS}
    flag_counts = {f: sum(f in d.flags for d in decisions) for f in FLAGS}
    counts = {
        "total": len(decisions),
        "kept": len(kept),
        "dropped": len(decisions) - len(kept),
        "resize_and_pad": len(resize),
        "manual_keep": sum(d.manual == "keep" for d in decisions),
        "manual_drop": sum(d.manual == "drop" for d in decisions),
        "problems": problems,
    }
    return CurationReport(kept, dropped, resize, tuple(decisions), flag_counts, counts, unknown)


def write_list(names: Iterable[str], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Curate pairs for the fine stage (HQFT).")
    ap.add_argument("--data", required=True, type=Path, help="data root (VITON-HD / synthetic or DressCode)")
    ap.add_argument("--out", required=True, type=Path, help="list file of the kept names")
    ap.add_argument("--keep-drop", type=Path, help="manual overrides: lines 'keep NAME' / 'drop NAME'")
    ap.add_argument("--split", default="train", help="split folder when --data has train/ and test/")
    ap.add_argument("--resize-list", type=Path, help="also write the resize_and_pad names here")
    d = CurationConfig()
    ap.add_argument("--border-px", type=int, default=d.border_px)
    ap.add_argument("--min-coverage", type=float, default=d.min_coverage)
    ap.add_argument("--max-coverage", type=float, default=d.max_coverage)
    ap.add_argument("--side-view-ratio", type=float, default=d.side_view_ratio)
    ap.add_argument("--tiny-extent", type=float, default=d.tiny_extent)
    ap.add_argument("--huge-extent", type=float, default=d.huge_extent)
    ap.add_argument("--no-metadata", action="store_true", help="ignore metadata.jsonl (heuristics only)")
    ap.add_argument("--keep-occluded", action="store_true", help="do not drop pairs flagged as occluded")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = CurationConfig(
            border_px=args.border_px,
            min_coverage=args.min_coverage,
            max_coverage=args.max_coverage,
            side_view_ratio=args.side_view_ratio,
            tiny_extent=args.tiny_extent,
            huge_extent=args.huge_extent,
            use_metadata=not args.no_metadata,
            drop_occlusion=not args.keep_occluded,
        )
        report = curate(args.data, config, manual=args.keep_drop, split=args.split)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_list(report.kept, args.out)
    if args.resize_list is not None:
        write_list(report.resize_and_pad, args.resize_list)
    print(report.table())
    print(f"wrote {len(report.kept)} names to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

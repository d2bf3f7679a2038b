"""A catalogue to restore: rows planned from a VITON-HD or DressCode folder or from a CSV / JSON-lines list.

Planning only lists files (no image is opened); a row that cannot be planned (a bad line, a missing
mask, an unknown category) becomes an error record instead of stopping the job. Paths in a list are
relative to the list's folder; every output is a PNG relative to the output folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")  # preference order when one stem has several files
LIST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
LIST_COLUMNS = ("person", "mask", "category", "seed", "output")
MAX_SEED = 2**64 - 1

# The layouts' label ids for each category, as in train/datasets.py (kept equal by a test).
# VITON-HD image-parse-v3 (LIP): upper-clothes 5, dress 6, coat 7, pants 9, jumpsuits 10, skirt 12.
LIP_LABELS: dict[str, tuple[int, ...]] = {"upper": (5, 7), "lower": (9, 12), "full": (6, 10)}
# DressCode label_maps: upper_clothes 4, skirt 5, pants 6, dress 7.
DRESSCODE_LABELS: dict[str, tuple[int, ...]] = {"upper": (4,), "lower": (5, 6), "full": (7,)}
DRESSCODE_DIRS: dict[str, str] = {"upper_body": "upper", "lower_body": "lower", "dresses": "full"}

EXPECTED_INPUT = (
    "a VITON-HD folder (image/ with agnostic-mask/<stem>_mask.png or image-parse-v3/<stem>.png, "
    "or split folders holding those), a DressCode folder (upper_body/, lower_body/, dresses/ with "
    "images/NNNNNN_0.jpg and masks/ or label_maps/NNNNNN_4.png), or a .csv, .jsonl or .json list with "
    "the columns person, mask, category, seed, output"
)


@dataclass(frozen=True)
class Row:
    """One person to restore. Paths are absolute; ``input`` / ``mask_input`` are as the catalogue names them."""

    index: int
    input: str
    person: str
    category: str
    seed: int
    output: str  # relative to the output folder, posix separators, ".png"
    mask: str = ""  # "" when the row has none
    mask_input: str = ""
    mask_labels: tuple[int, ...] = ()  # label ids of a parse map; () for a binary mask

    def record(self) -> dict[str, Any]:
        """The fields of this row's results record that planning knows."""
        return {
            "row": self.index,
            "input": self.input,
            "mask": self.mask_input or None,
            "category": self.category,
            "seed": self.seed,
            "output": self.output,
        }


@dataclass
class Plan:
    layout: str
    root: Path
    rows: list[Row] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # results records of rows that failed planning

    def fail(self, index: int, input_: str | None, error: str, **extra: Any) -> None:
        rec = {"row": index, "input": input_, **extra, "error": error}
        self.errors.append(rec)
        log.warning("row %d (%s): %s", index, input_, error)


class CatalogueError(ValueError):
    """The catalogue as a whole cannot be read (no usable layout, unreadable list file)."""


# --- paths ------------------------------------------------------------------------------------------
def _relative(value: Any, what: str) -> str:
    """A relative path that stays inside its folder (checked on the text, so symlinks are allowed)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty relative path, got {value!r}")
    text = value.strip().replace("\\", "/")
    norm = posixpath.normpath(text)
    if posixpath.isabs(text) or (len(text) > 1 and text[1] == ":") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{what} {value!r} must be relative to the catalogue's folder and stay inside it")
    return norm


def output_for(relative_input: str) -> str:
    """The default output of a person image: its relative path with the suffix ``.png``."""
    return posixpath.splitext(relative_input)[0] + ".png"


def check_output(value: Any) -> str:
    out = _relative(value, "output")
    if not out.lower().endswith(".png"):
        raise ValueError(f"output {value!r} must name a .png file")
    return out


def check_seed(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {value!r}")
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {value!r}")
    return value


def _stem_index(folder: Path, strip_suffix: str = "") -> dict[str, Path]:
    """{stem: path} of the images in ``folder``, one directory listing."""
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


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- planning ---------------------------------------------------------------------------------------
def plan(source: str | os.PathLike, categories: Sequence[str], category: str | None = None, seed: int = 0) -> Plan:
    """Rows of a catalogue. ``category``: the default where the catalogue names none (DressCode: the
    only category folder read); ``seed``: the seed of rows without one."""
    src = Path(source)
    if category is not None and category not in categories:
        raise CatalogueError(f"unknown category {category!r}; expected one of {tuple(categories)}")
    if src.is_dir():
        if any((src / d).is_dir() for d in DRESSCODE_DIRS):
            p = _plan_dresscode(src, categories, category, seed)
        elif _viton_folders(src):
            p = _plan_viton(src, categories, category, seed)
        else:
            raise CatalogueError(f"{str(src)!r} is a folder of no known layout; expected {EXPECTED_INPUT}")
    elif src.is_file():
        kind = LIST_SUFFIXES.get(src.suffix.lower())
        if kind is None:
            raise CatalogueError(
                f"{str(src)!r} is neither a folder nor a .csv / .jsonl list; expected {EXPECTED_INPUT}"
            )
        p = _plan_list(src, kind, categories, category, seed)
    else:
        raise CatalogueError(f"input {str(src)!r} does not exist; expected {EXPECTED_INPUT}")
    _drop_duplicate_outputs(p)
    log.info("planned %d rows from %s (%s), %d failed planning", len(p.rows), src, p.layout, len(p.errors))
    return p


def _drop_duplicate_outputs(p: Plan) -> None:
    first: dict[str, int] = {}
    kept = []
    for r in p.rows:
        if r.output in first:
            p.fail(
                r.index,
                r.input,
                f"output {r.output!r} is also the output of row {first[r.output]}; give each row its own "
                "`output` column",
                output=r.output,
            )
            continue
        first[r.output] = r.index
        kept.append(r)
    p.rows = kept


def _viton_folders(root: Path) -> list[Path]:
    if (root / "image").is_dir():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "image").is_dir())


def _metadata_categories(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if "category" in rec:
                out[str(rec["name"])] = rec["category"]
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s:%d: bad metadata line ignored (%s)", path, lineno, e)
    return out


def _plan_viton(root: Path, categories: Sequence[str], category: str | None, seed: int) -> Plan:
    p = Plan("viton-hd", root)
    for folder in _viton_folders(root):
        meta = _metadata_categories(folder)
        masks = _stem_index(folder / "agnostic-mask", strip_suffix="_mask")
        parses = _stem_index(folder / "image-parse-v3")
        for stem, person in sorted(_stem_index(folder / "image").items()):
            index, rel = len(p.rows) + len(p.errors), _rel(person, root)
            cat = meta.get(stem, category or "upper")
            if cat not in categories:
                p.fail(index, rel, f"unknown category {cat!r} in metadata.jsonl; expected one of {tuple(categories)}")
                continue
            if stem in masks:
                mask, labels = masks[stem], ()
            elif stem in parses:
                mask, labels = parses[stem], LIP_LABELS[cat]
            else:
                where = f"{_rel(folder, root) if folder != root else '.'}/agnostic-mask/{stem}_mask.png"
                p.fail(index, rel, f"no mask: looked for {where} and image-parse-v3/{stem}.png")
                continue
            p.rows.append(Row(index, rel, str(person), cat, seed, output_for(rel), str(mask), _rel(mask, root), labels))
    return p


def _plan_dresscode(root: Path, categories: Sequence[str], category: str | None, seed: int) -> Plan:
    p = Plan("dresscode", root)
    for sub, cat in DRESSCODE_DIRS.items():
        if not (root / sub).is_dir() or (category is not None and cat != category) or cat not in categories:
            continue
        images = _stem_index(root / sub / "images")
        masks = _stem_index(root / sub / "masks")
        label_maps = _stem_index(root / sub / "label_maps")
        for stem, person in sorted(images.items()):
            pid, _, kind = stem.rpartition("_")
            if kind != "0" or not pid:
                continue  # NNNNNN_1 is the in-shop garment, other files are not persons
            index, rel = len(p.rows) + len(p.errors), _rel(person, root)
            key = next((k for k in (stem, f"{stem}_mask", pid, f"{pid}_4") if k in masks), None)
            if key is not None:
                mask, labels = masks[key], ()
            elif f"{pid}_4" in label_maps:
                mask, labels = label_maps[f"{pid}_4"], DRESSCODE_LABELS[cat]
            else:
                p.fail(index, rel, f"no mask: looked in {sub}/masks/ and {sub}/label_maps/{pid}_4.png")
                continue
            p.rows.append(Row(index, rel, str(person), cat, seed, output_for(rel), str(mask), _rel(mask, root), labels))
    return p


def _list_records(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """(row number, record) per line; a line that cannot be parsed is yielded as its ValueError."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if kind == "csv":
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "person" not in [c.strip() for c in reader.fieldnames]:
                    raise CatalogueError(f"{str(path)!r} has no `person` column (columns: {reader.fieldnames})")
                for i, rec in enumerate(reader, start=1):
                    if None in rec:
                        yield i, ValueError(f"line {reader.line_num} has more fields than the header")
                        continue
                    yield i, {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in rec.items() if k}
            elif f.read(4096).lstrip().startswith("["):  # a .json file holding one array of objects
                f.seek(0)
                try:
                    records = json.load(f)
                except ValueError as e:
                    raise CatalogueError(f"{str(path)!r} is not a JSON array of objects ({e})") from None
                yield from enumerate(records, start=1)
            else:
                f.seek(0)
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield i, json.loads(line)
                    except ValueError as e:
                        yield i, ValueError(f"line {i} is not JSON ({e})")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CatalogueError(f"cannot read the list {str(path)!r}: {e}") from None


def _plan_list(path: Path, kind: str, categories: Sequence[str], category: str | None, seed: int) -> Plan:
    root = path.parent
    p = Plan(kind, root)
    for index, rec in enumerate(rec for _, rec in _list_records(path, kind)):
        if isinstance(rec, ValueError):
            p.fail(index, None, str(rec))
            continue
        if not isinstance(rec, dict):
            p.fail(index, None, f"expected an object with the columns {LIST_COLUMNS}, got {type(rec).__name__}")
            continue
        given = rec.get("person")
        try:
            rel = _relative(given, "person")
            mask_rel = _relative(rec["mask"], "mask") if rec.get("mask") not in (None, "") else ""
            cat = rec.get("category") or category or "upper"
            if cat not in categories:
                raise ValueError(f"unknown category {cat!r}; expected one of {tuple(categories)}")
            row_seed = check_seed(rec["seed"]) if rec.get("seed") not in (None, "") else seed
            out = check_output(rec["output"]) if rec.get("output") not in (None, "") else output_for(rel)
        except ValueError as e:
            p.fail(index, given if isinstance(given, str) else None, str(e))
            continue
        mask_abs = str(root / mask_rel) if mask_rel else ""
        p.rows.append(Row(index, rel, str(root / rel), cat, row_seed, out, mask_abs, mask_rel))
    return p


# --- the results file -------------------------------------------------------------------------------
def _read_records(path: Path) -> Iterable[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short when a job was stopped
                log.warning("%s:%d: unreadable results line ignored", path, lineno)
                continue
            if isinstance(rec, dict):
                yield rec


def done_hashes(results: Path) -> dict[str, str]:
    """{output: input hash} of the rows a previous run restored."""
    done: dict[str, str] = {}
    for rec in _read_records(results):
        out = rec.get("output")
        if isinstance(out, str):
            if rec.get("error") is None and isinstance(rec.get("input_hash"), str):
                done[out] = rec["input_hash"]
            else:
                done.pop(out, None)
    return done


def _key(rec: dict[str, Any]) -> str:
    out = rec.get("output")
    return f"output:{out}" if isinstance(out, str) else f"row:{rec.get('row')}:{rec.get('input')}"


def compact(results: Path) -> int:
    """Keep the latest record of each output (or each unplanned row); returns the records kept."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in _read_records(results):
        key = _key(rec)
        latest.pop(key, None)
        latest[key] = rec
    tmp = results.with_name(results.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in latest.values():
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, results)
    return len(latest)

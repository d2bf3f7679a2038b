"""Examples an engine directory may bundle: ``examples/examples.json`` and the images it names.

The listing and every image are hashed in ``manifest.json`` (its ``examples`` entry) and checked
before they are read. Each example's ``name`` becomes an output file name (``<name>.png``), so it is
a plain name: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from igr_sdk._errors import EngineError
from igr_sdk._manifest import Manifest, check_file

LISTING = "examples/examples.json"
FILE_KEYS = ("person", "mask", "ground_truth")
RESERVED_NAMES = ("sheet",)  # the CLI writes sheet.png beside the examples
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Example:
    name: str
    category: str
    person: Path
    mask: Path
    ground_truth: Path | None


def _plain(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise EngineError(
            f"{where}: {what} {value!r} is not a plain name (letters, digits, '_', '-', '.', "
            "starting with a letter or digit, at most 100 characters)"
        )
    return value


def parse_listing(data: Any, categories: tuple[str, ...] | list[str], where: str) -> list[dict[str, Any]]:
    """Check the examples listing: a list of {name, category, person, mask[, ground_truth]}."""
    if not isinstance(data, list) or not data:
        raise EngineError(f"{where}: expected a non-empty list of examples, got {type(data).__name__}")
    seen: set[str] = set()
    for i, e in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(e, dict):
            raise EngineError(f"{at}: expected an object with name, category, person and mask, got {e!r}")
        name = _plain(e.get("name"), "name", at)
        if name.lower() in RESERVED_NAMES or name.lower() in seen:
            raise EngineError(f"{at}: name {name!r} is used twice or reserved ({list(RESERVED_NAMES)})")
        seen.add(name.lower())
        if e.get("category") not in categories:
            raise EngineError(f"{at}: category {e.get('category')!r}; expected one of {list(categories)}")
        for key in FILE_KEYS:
            if key != "ground_truth" or e.get(key) is not None:
                _plain(e.get(key), key, at)
    return data


def read_examples(manifest: Manifest) -> list[Example]:
    """The bundled examples, every file checked against its manifest hash first."""
    entry = manifest.raw.get("examples")
    if entry is None:
        raise EngineError(f"{str(manifest.root)!r} has no bundled examples: its manifest.json lists no examples entry")
    listing = manifest.resolve(entry["file"])
    check_file(listing, entry["sha256"], "examples file")
    try:
        data = json.loads(listing.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise EngineError(f"examples file {str(listing)!r} is not valid JSON: {e}") from None
    hashed = {manifest.resolve(d["file"]): d["sha256"] for d in entry.get("data", [])}
    folder = PurePosixPath(entry["file"]).parent
    examples = []
    for e in parse_listing(data, manifest.categories, repr(str(listing))):
        files = {}
        for key in FILE_KEYS:
            if e.get(key) is None:
                files[key] = None
                continue
            path = manifest.resolve((folder / e[key]).as_posix())
            if path not in hashed:
                raise EngineError(
                    f"examples file {str(listing)!r} names {e[key]!r}, which manifest.json does not list "
                    "with a hash under examples.data"
                )
            check_file(path, hashed[path], "example file")
            files[key] = path
        examples.append(Example(e["name"], e["category"], files["person"], files["mask"], files["ground_truth"]))
    return examples

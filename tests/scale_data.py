"""Synthetic catalogues for the scale-out tests, made from the examples bundled with the default model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EXAMPLES = Path(__file__).resolve().parents[1] / "igr_sdk" / "models" / "default" / "examples"


def variants(count: int) -> list[tuple[str, Image.Image, Image.Image, str]]:
    """(name, person, mask, category) pairs: the bundled examples, mirrored and shifted."""
    examples = json.loads((EXAMPLES / "examples.json").read_text())
    out = []
    for k in range(count):
        e = examples[k % len(examples)]
        person = Image.open(EXAMPLES / e["person"]).convert("RGB")
        mask = Image.open(EXAMPLES / e["mask"]).convert("L")
        variant = k // len(examples)
        if variant % 2:
            person, mask = ImageOps.mirror(person), ImageOps.mirror(mask)
        shift = 4 * (variant // 2)
        if shift:
            person = Image.fromarray(np.roll(np.asarray(person), shift, axis=1))
            mask = Image.fromarray(np.roll(np.asarray(mask), shift, axis=1))
        out.append((f"{e['name']}_{k:02d}", person, mask, e["category"]))
    return out


def write_list(root: Path, count: int, kind: str = "csv", bad: int = 0) -> Path:
    """A catalogue list of ``count`` good rows (seed = row number) and ``bad`` rows with a corrupt photo."""
    (root / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, person, mask, category) in enumerate(variants(count)):
        person.save(root / "photos" / f"{name}.jpg", quality=95)
        mask.save(root / "photos" / f"{name}_mask.png")
        rows.append(
            {"person": f"photos/{name}.jpg", "mask": f"photos/{name}_mask.png", "category": category, "seed": i}
        )
    for j in range(bad):
        (root / "photos" / f"broken_{j}.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
        rows.append({"person": f"photos/broken_{j}.jpg", "mask": rows[0]["mask"], "category": "upper", "seed": 0})
    path = root / f"catalogue.{kind}"
    if kind == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["person", "mask", "category", "seed"])
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

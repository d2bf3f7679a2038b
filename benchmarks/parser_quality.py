"""Masks from the photo, measured: the parser's garment masks against the true ones on held-out
synthetic pairs, and what restoring from them costs against restoring from the true masks.

    python benchmarks/parser_quality.py --parser ~/igr-runs/parser --pairs 300
    python benchmarks/parser_quality.py --parser ~/igr-runs/parser --pairs 300 --restore 45 [--engines DIR]

The parser is a Hugging Face SegFormer folder (exported to ONNX first, as ``build_engines.py
--parser`` does) or, with ``--engines DIR`` and no ``--parser``, the engine folder's own parser
graph. Masks go through the runtime's own code (``igr_sdk._parse``: resize, normalisation, argmax,
label union, cleanup). Pairs are ``train/synthetic.py``'s for ``--seed`` (categories in turn, default
defects and framing, persons through the same JPEG round trip as on disk); the default seed is the
demo's held-out test split, which no parser of this project trains on.

Reported per category: IoU of the parsed mask with the true one (mean over pairs, its 10th
percentile, before and after the cleanup), pairs where no garment was found, and the parser's time
per image. One more column takes the union of every category's labels instead of the asked
category's: the gap to it is what choosing the wrong garment category costs.

``--restore N``: the first N pairs are restored twice by ``Restorer`` (``--engines``, default the
bundled model), with the true and with the parsed mask, same seed; SSIM and LPIPS of each against
the ground-truth garment and the paired difference (parsed - true, mean and 95% bootstrap
interval). ``--out PREFIX`` writes PREFIX.json.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

import numpy as np
from PIL import Image

from igr_sdk.engines import Manifest, read_manifest
from igr_sdk.preprocess import Parser, clean, label_map, resize_mask
from train.synthetic import CATEGORIES, DEFAULT_SIZE, JPEG_QUALITY, make_pair, pair_seed

log = logging.getLogger(__name__)

HELD_OUT_SEED = 424242


def held_out(seed: int, count: int, size=DEFAULT_SIZE):
    """(category, person as decoded from its JPEG, true mask, ground-truth garment) per pair."""
    for i in range(count):
        pair = make_pair(pair_seed(seed, i), size, category=CATEGORIES[i % len(CATEGORIES)])
        buf = io.BytesIO()
        Image.fromarray(pair.person).save(buf, "JPEG", quality=JPEG_QUALITY)
        yield pair.category, np.asarray(Image.open(buf).convert("RGB")), pair.mask, pair.garment


def open_parser(folder: Path | None, engines: Path | None, tmp: Path, threads: int) -> Parser:
    if folder is None:
        return Parser(read_manifest(engines), threads=threads)
    from export.parser import ParserOptions, build_parser

    return Parser(Manifest(tmp, {"parser": build_parser(ParserOptions(folder), tmp)}), threads=threads)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def parse_all(parser: Parser, pairs: list) -> list[dict]:
    """Per pair: the raw and cleaned masks' IoU, the cleaned mask and the parser's seconds."""
    out = []
    every = sorted({i for ids in parser.categories.values() for i in ids})
    for cat, rgb, true, _ in pairs:
        t0 = time.perf_counter()
        logits = parser.logits(rgb)
        seconds = time.perf_counter() - t0
        labels = label_map(logits, parser.height, parser.width)
        raw = resize_mask(np.isin(labels, parser.categories[cat]), *rgb.shape[:2])
        found = clean(np.isin(labels, parser.categories[cat]), parser.min_component, parser.max_hole)
        cleaned = resize_mask(found, *rgb.shape[:2])
        anything = resize_mask(clean(np.isin(labels, every), parser.min_component, parser.max_hole), *rgb.shape[:2])
        out.append(
            {
                "category": cat,
                "iou_raw": iou(raw, true),
                "iou": iou(cleaned, true),
                "iou_any_garment": iou(anything, true),
                "mask": cleaned,
                "s": seconds,
            }
        )
    return out


def summarise(rows: list[dict]) -> dict:
    out = {}
    for c in (*CATEGORIES, "all"):
        sel = [r for r in rows if c in ("all", r["category"])]
        ious = np.array([r["iou"] for r in sel])
        out[c] = {
            "n": len(sel),
            "iou": float(ious.mean()),
            "iou_p10": float(np.percentile(ious, 10)),
            "iou_raw": float(np.mean([r["iou_raw"] for r in sel])),
            "iou_any_garment": float(np.mean([r["iou_any_garment"] for r in sel])),
            "not_found": sum(not r["mask"].any() for r in sel),
        }
    out["seconds_per_image"] = float(np.median([r["s"] for r in rows]))
    return out


def restore_both(engines: Path | None, pairs: list, parsed: list[dict], steps: int) -> dict:
    """Restores from the true and the parsed masks (same seed); SSIM and LPIPS against the garment."""
    from benchmarks.metrics import LPIPS, ssim
    from benchmarks.quality import paired_difference
    from igr_sdk import Restorer

    restorer = Restorer.from_dir(engines, backend="onnxruntime")
    lpips = LPIPS()
    per_pair, skipped = [], 0
    for i, ((cat, rgb, true, garment), p) in enumerate(zip(pairs, parsed)):
        if not p["mask"].any():
            skipped += 1
            continue
        scores = {}
        for name, mask in (("true", true), ("parsed", p["mask"])):
            img = np.asarray(restorer.restore(rgb, mask, cat, steps=steps, seed=i).image)
            scores[name] = {"ssim": ssim(img, garment), "lpips": lpips(img, garment)}
        per_pair.append({"category": cat, "scores": scores})
        log.info("restore %d/%d", i + 1, len(pairs))
    result = {"metrics": ["ssim", "lpips"], "per_pair": per_pair}
    means = {
        s: {m: float(np.mean([p["scores"][s][m] for p in per_pair])) for m in ("ssim", "lpips")}
        for s in ("true", "parsed")
    }
    return {
        "n": len(per_pair),
        "skipped_no_garment": skipped,
        "mean": means,
        "parsed_minus_true": paired_difference(result, "true", "parsed"),
    }


def _report(summary: dict, restores: dict | None) -> str:
    lines = [
        "| category | n | IoU (mean) | IoU p10 | IoU before cleanup | IoU, any garment label | no garment found |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in (*CATEGORIES, "all"):
        s = summary[c]
        lines.append(
            f"| {c} | {s['n']} | {s['iou']:.3f} | {s['iou_p10']:.3f} | {s['iou_raw']:.3f} | "
            f"{s['iou_any_garment']:.3f} | {s['not_found']} |"
        )
    lines.append(f"parser: {summary['seconds_per_image'] * 1e3:.1f} ms per image (median, ONNX Runtime CPU)")
    if restores:
        for m in ("ssim", "lpips"):
            d = restores["parsed_minus_true"][m]
            lines.append(
                f"{m}: true masks {restores['mean']['true'][m]:.4f}, parsed {restores['mean']['parsed'][m]:.4f}, "
                f"parsed - true {d['mean']:+.4f} [95% {d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] over {d['n']} pairs"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parser", type=Path, help="a Hugging Face SegFormer parser folder")
    ap.add_argument("--engines", type=Path, help="engine folder: its parser (without --parser) and the restores")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--restore", type=int, default=0, metavar="N", help="also restore the first N pairs both ways")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", type=Path, help="write PREFIX.json")
    args = ap.parse_args(argv)
    if args.parser is None and args.engines is None:
        ap.error("give --parser DIR or --engines DIR (an engine folder with a parser)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        parser = open_parser(args.parser, args.engines, Path(tmp), threads)
        pairs = list(held_out(args.seed, args.pairs))
        rows = parse_all(parser, pairs)
    summary = summarise(rows)
    restores = restore_both(args.engines, pairs[: args.restore], rows, args.steps) if args.restore else None
    print(_report(summary, restores))
    if args.out:
        report = {
            "seed": args.seed,
            "pairs": args.pairs,
            "parser": str(args.parser or args.engines),
            "iou": summary,
            "restores": restores,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

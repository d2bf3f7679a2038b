"""Bundle a trained checkpoint as igr_sdk's embedded default model, with example inputs.

    python scripts/bundle_demo.py --checkpoint runs/full-fine/final --data runs/data/test [--parser ~/igr-runs/parser]
        [--precision int8|fp32]

Builds ONNX Runtime CPU engines (each checked against torch), copies only what the runtime reads
(manifest, constants, the optimised engines) into igr_sdk/models/default/, and adds one
held-out example per category (person, mask, ground-truth garment) under examples/, listed and
hashed in the manifest (its ``examples`` entry) like every other file the runtime reads. With
``--parser`` (the folder ``train/train_parser.py`` writes) the bundle also carries the parser graph,
so ``igr-restore --examples`` restores them from the photo alone; each example's listing records the
IoU of the parsed mask against the true one.

``--precision int8`` (the default) builds the int8 engines the way ``export/build_engines.py
--precision int8`` does: each graph is quantised where its measured quality allows and stays fp32
where not, recorded per graph in the manifest (``quantization``). Only the engine the runtime loads
is copied: an int8 graph's entry keeps the hashes of the fp32 engine and ONNX graph it was quantised
from, not their files (``export/build_engines.py --checkpoint models/demo-small`` rebuilds them).
The choice scores LPIPS, so ``python benchmarks/fetch_metric_weights.py`` must have run once.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 50


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="held-out synthetic split (VITON-HD layout)")
    ap.add_argument("--out", type=Path, default=REPO / "igr_sdk" / "models" / "default")
    ap.add_argument("--parser", type=Path, help="a parser folder to bundle (Hugging Face SegFormer layout)")
    ap.add_argument("--parser-labels", help="its label set or mapping file (default: from its config.json)")
    ap.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default="int8",
        help="int8: quantised where measured quality allows (default); fp32: every graph fp32",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from export.build import BuildOptions, build, register_examples
    from export.parser import ParserOptions
    from train.datasets import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        parser = ParserOptions(args.parser, labels=args.parser_labels) if args.parser else None
        options = BuildOptions(checkpoint=args.checkpoint, out=Path(tmp), parser=parser, precision=args.precision)
        manifest = build(options)
        copy_runtime_files(manifest, Path(tmp), args.out)
        if "parser" in manifest:
            manifest["parser"]["source"]["path"] = args.parser.as_posix()
        manifest["source_checkpoint"]["path"] = args.checkpoint.as_posix()
        # the training metadata records absolute paths of the machine it ran on; keep them repo-relative
        # (and the metric-weight cache home-relative)
        text = json.dumps(manifest, indent=2).replace(str(REPO) + "/", "").replace(str(Path.home()) + "/", "~/")
        (args.out / "manifest.json").write_text(text)

    ds = open_dataset(args.data, split="test")
    chosen: dict[str, str] = {}
    for i, name in enumerate(ds.names):
        meta = ds.metadata(i)
        if not meta.get("flags") and meta["category"] not in chosen:
            chosen[meta["category"]] = name
    ex = args.out / "examples"
    ex.mkdir()
    listing = []
    restorer = None
    if args.parser:
        from igr_sdk import Restorer

        restorer = Restorer.from_dir(args.out, backend="onnxruntime")
    for category in ("upper", "lower", "full"):
        sample = ds[ds.index_of(chosen[category])]
        Image.fromarray(sample.person).save(ex / f"{category}_person.jpg", quality=95)
        Image.fromarray(sample.mask.astype("uint8") * 255).save(ex / f"{category}_mask.png")
        Image.fromarray(sample.garment).save(ex / f"{category}_garment.jpg", quality=95)
        listing.append(
            {
                "name": category,
                "category": category,
                "person": f"{category}_person.jpg",
                "mask": f"{category}_mask.png",
                "ground_truth": f"{category}_garment.jpg",
                "source": f"{args.data.as_posix()}:{sample.name}",
            }
        )
        if restorer is not None:  # fails here, naming the example, if the parser finds no garment
            parsed = np.asarray(restorer.parse(ex / f"{category}_person.jpg", category)) > 0
            iou = (parsed & sample.mask).sum() / (parsed | sample.mask).sum()
            listing[-1]["parsed_mask_iou"] = round(float(iou), 4)
            print(f"{category}: parsed mask IoU {iou:.3f} against the true mask")
    (ex / "examples.json").write_text(json.dumps(listing, indent=2))
    register_examples(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    print(f"bundled {args.out} ({total:.1f} MB)")
    if total > LIMIT_MB:
        print(f"warning: the bundle is over {LIMIT_MB} MB", file=sys.stderr)
    return 0


def copy_runtime_files(manifest: dict, src: Path, dst: Path) -> None:
    """Copy what the runtime reads from the engine folder ``src`` into a fresh ``dst`` and trim
    ``manifest`` (in place) to it; the caller writes the manifest."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for graph in manifest["graphs"].values():
        for entry in graph["engines"].values():
            # the plain ONNX, and an int8 graph's fp32 source, stay out of the package: the runtime
            # never reads them; their hashes stay, naming what the int8 engine was made from
            onnx = entry.pop("onnx", None)
            fp32 = entry.pop("fp32", None)
            if fp32 is not None:
                entry["quantized_from"] = {"engine": _file_record(fp32), "onnx": _file_record(onnx)}
            for f in (entry, *entry["data"]):
                shutil.copy2(src / f["file"], dst / f["file"])
    shutil.copy2(src / manifest["constants"]["file"], dst / manifest["constants"]["file"])
    if "parser" in manifest:
        for f in (manifest["parser"], *manifest["parser"]["data"]):
            shutil.copy2(src / f["file"], dst / f["file"])


def _file_record(entry: dict | None) -> dict | None:
    return None if entry is None else {"file": entry["file"], "sha256": entry["sha256"]}


if __name__ == "__main__":
    sys.exit(main())

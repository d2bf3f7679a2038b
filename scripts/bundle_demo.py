"""Bundle a trained checkpoint as igr_sdk's embedded default model, with example inputs.

    python scripts/bundle_demo.py --checkpoint runs/full-fine/final --data runs/data/test [--parser ~/igr-runs/parser]

Builds ONNX Runtime CPU engines (fp32, each checked against torch), copies only what the runtime
reads (manifest, constants, the optimised engines) into igr_sdk/models/default/, and adds one
held-out example per category (person, mask, ground-truth garment) under examples/, listed and
hashed in the manifest (its ``examples`` entry) like every other file the runtime reads. With
``--parser`` (the folder ``train/train_parser.py`` writes) the bundle also carries the parser graph,
so ``igr-restore --examples`` restores them from the photo alone; each example's listing records the
IoU of the parsed mask against the true one.
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from export.build import BuildOptions, build, register_examples
    from export.parser import ParserOptions
    from train.datasets import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        parser = ParserOptions(args.parser, labels=args.parser_labels) if args.parser else None
        manifest = build(BuildOptions(checkpoint=args.checkpoint, out=Path(tmp), parser=parser))
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        for graph in manifest["graphs"].values():
            for entry in graph["engines"].values():
                entry.pop("onnx", None)  # the plain ONNX stays out of the package: the runtime never reads it
                for f in (entry, *entry["data"]):
                    shutil.copy2(Path(tmp) / f["file"], args.out / f["file"])
        shutil.copy2(Path(tmp) / manifest["constants"]["file"], args.out / manifest["constants"]["file"])
        if "parser" in manifest:
            for f in (manifest["parser"], *manifest["parser"]["data"]):
                shutil.copy2(Path(tmp) / f["file"], args.out / f["file"])
            manifest["parser"]["source"]["path"] = args.parser.as_posix()
        manifest["source_checkpoint"]["path"] = args.checkpoint.as_posix()
        # the training metadata records absolute paths of the machine it ran on; keep them repo-relative
        text = json.dumps(manifest, indent=2).replace(str(REPO) + "/", "")
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


if __name__ == "__main__":
    sys.exit(main())

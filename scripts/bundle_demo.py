"""Bundle a trained checkpoint as igr_sdk's embedded default model, with example inputs.

    python scripts/bundle_demo.py --checkpoint runs/full-fine/final --data runs/data/test

Builds ONNX Runtime CPU engines (fp32, each checked against torch), copies only what the runtime
reads (manifest, constants, the optimised engines) into igr_sdk/models/default/, and adds one
held-out example per category (person, mask, ground-truth garment) under examples/, listed and
hashed in the manifest (its ``examples`` entry) like every other file the runtime reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 50


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="held-out synthetic split (VITON-HD layout)")
    ap.add_argument("--out", type=Path, default=REPO / "igr_sdk" / "models" / "default")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from export.build import BuildOptions, build, register_examples
    from train.datasets import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(BuildOptions(checkpoint=args.checkpoint, out=Path(tmp)))
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        for graph in manifest["graphs"].values():
            for entry in graph["engines"].values():
                entry.pop("onnx", None)  # the plain ONNX stays out of the package: the runtime never reads it
                for f in (entry, *entry["data"]):
                    shutil.copy2(Path(tmp) / f["file"], args.out / f["file"])
        shutil.copy2(Path(tmp) / manifest["constants"]["file"], args.out / manifest["constants"]["file"])
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
    (ex / "examples.json").write_text(json.dumps(listing, indent=2))
    register_examples(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    print(f"bundled {args.out} ({total:.1f} MB)")
    if total > LIMIT_MB:
        print(f"warning: the bundle is over {LIMIT_MB} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

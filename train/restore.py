"""Write a restored garment image with the torch reference pipeline.

    python -m train.restore --preset tiny --out out/reference.png
    python -m train.restore --checkpoint RUN/final --person p.jpg --mask m.png --category upper --out g.png

Without --checkpoint the preset is built with seeded random weights (the output then shows the
pipeline working, not a garment). Without --person a synthetic person from train/synthetic.py is
used, and a side-by-side sheet (person | restored | ground truth) is written next to --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from igr_sdk import InputError
from igr_sdk.preprocess import sheet
from train.checkpoint import CheckpointError, load_checkpoint, new_model
from train.config import CATEGORIES, PRESETS, preset
from train.model import FORMS
from train.pipeline import ReferencePipeline

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="IGR checkpoint folder")
    src.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="random weights of a preset")
    ap.add_argument("--person", type=Path, help="person photo (default: a synthetic person)")
    ap.add_argument("--mask", type=Path, help="garment mask (required with --person)")
    ap.add_argument("--category", choices=CATEGORIES, default="upper")
    ap.add_argument("--out", type=Path, required=True, help="output PNG")
    ap.add_argument("--form", choices=FORMS, default="cached")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = load_checkpoint(args.checkpoint) if args.checkpoint else new_model(preset(args.preset), args.seed)
        truth = None
        if args.person is None:
            from train.synthetic import make_pair

            pair = make_pair(args.seed, (model.config.height, model.config.width), category=args.category)
            person, mask, truth = pair.person, pair.mask, Image.fromarray(pair.garment)
        elif args.mask is None:
            raise InputError("--mask is required with --person")
        else:
            person, mask = args.person, args.mask
        t0 = time.perf_counter()
        result = ReferencePipeline(model).restore(
            person, mask, args.category, args.steps, args.guidance, args.seed, form=args.form
        )
        seconds = time.perf_counter() - t0
    except (InputError, CheckpointError) as e:
        print(f"restore: error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(args.out)
    log.info("wrote %s (%s, %s form, %d steps, %.2f s)", args.out, model.config.name, args.form, args.steps, seconds)
    if truth is not None:
        side = args.out.with_name(args.out.stem + "_sheet.png")
        person_img = Image.fromarray(np.asarray(person))
        sheet([[person_img, result.images[0], truth]], model.config.height).save(side)
        log.info("wrote %s (person | restored | ground truth)", side)
    return 0


if __name__ == "__main__":
    sys.exit(main())

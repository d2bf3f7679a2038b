"""Train the human parser of the bundled demo model on synthetic persons and their label maps.

The synthetic generator knows every pixel's part (``train.synthetic.PARTS``: background, skin, hair,
the upper, lower and full garment, other clothing, occluders), so a parser learns them from
``make_pair(..., labels=True)``. The model is a small SegFormer (transformers'
``SegformerForSemanticSegmentation`` built from a config, about 0.47 M parameters, 1.9 MB), saved as a
Hugging Face folder (``config.json`` with ``id2label``, ``model.safetensors``,
``preprocessor_config.json``) that ``export/build_engines.py --parser DIR`` exports like any public
parser. Training stops after ``--steps`` or ``--minutes`` of CPU time, whichever comes first; the
model is then scored on a held-out seed: per category, the IoU of the garment mask it parses
against the true one.

    python train/train_parser.py --out runs/parser                      # about 50 CPU minutes
    python train/train_parser.py --evaluate runs/parser                 # the held-out score alone
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python train/train_parser.py`: the script folder would shadow the `train` package itself
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from train.synthetic import CATEGORIES, DEFAULT_SIZE, GARMENT_PARTS, JPEG_QUALITY, PARTS, make_pair, pair_seed

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HELD_OUT_SEED = 424242  # the demo's test split; the parser never trains on it
GARMENT_WEIGHT = 2.0  # loss weight of the three garment labels: the masks are what the parser is for
# Four stages as in SegFormer-B0, narrower: logits at a quarter of the input resolution. The deep,
# low-resolution stages (where telling a top from a dress happens) are cheap, the wide early ones not.
MODEL_CONFIG = {
    "hidden_sizes": [16, 32, 64, 96],
    "depths": [1, 1, 3, 2],
    "num_attention_heads": [1, 1, 2, 3],
    "sr_ratios": [8, 4, 2, 1],
    "mlp_ratios": [4, 4, 2, 2],
    "decoder_hidden_size": 64,
    "classifier_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
}


@dataclass(frozen=True)
class Samples:
    """Synthetic persons (N, H, W, 3) uint8, their label maps (N, H, W) uint8 and categories."""

    images: np.ndarray
    labels: np.ndarray
    categories: tuple[str, ...]

    def masks(self) -> np.ndarray:
        """The true garment masks (N, H, W) bool: the pixels labelled with each pair's garment."""
        ids = np.array([PARTS.index(GARMENT_PARTS[c]) for c in self.categories], dtype=np.uint8)
        return self.labels == ids[:, None, None]


def synthesize(seed: int, count: int, size: tuple[int, int] = DEFAULT_SIZE) -> Samples:
    """Pairs ``0..count-1`` of ``seed`` as ``train/synthetic.py`` writes them (categories in turn,
    the default defect rate and framing), the persons through the same JPEG round trip."""
    h, w = size
    images = np.empty((count, h, w, 3), np.uint8)
    labels = np.empty((count, h, w), np.uint8)
    cats = []
    for i in range(count):
        pair = make_pair(pair_seed(seed, i), size, category=CATEGORIES[i % len(CATEGORIES)], labels=True)
        buf = io.BytesIO()
        Image.fromarray(pair.person).save(buf, "JPEG", quality=JPEG_QUALITY)
        images[i] = np.asarray(Image.open(buf).convert("RGB"))
        labels[i] = pair.labels
        cats.append(pair.category)
    return Samples(images, labels, tuple(cats))


def new_model(seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_labels=len(PARTS),
        id2label=dict(enumerate(PARTS)),
        label2id={p: i for i, p in enumerate(PARTS)},
        image_size=max(size),
        **MODEL_CONFIG,
    )
    return SegformerForSemanticSegmentation(config)


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ImageNet-normalised as the parser's processor does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def full_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Logits upsampled (bilinear) from the decoder's quarter resolution to the input's."""
    logits = model(pixel_values=x).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def predict_masks(model, samples: Samples, batch: int = 16) -> np.ndarray:
    """Each pair's garment mask as the parser sees it: argmax in its category's garment label."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(samples.images), batch):
            labels = full_logits(model, to_input(samples.images[start : start + batch])).argmax(1).numpy()
            cats = samples.categories[start : start + batch]
            ids = np.array([PARTS.index(GARMENT_PARTS[c]) for c in cats])
            out.append(labels == ids[:, None, None])
    return np.concatenate(out)


def iou_by_category(pred: np.ndarray, true: np.ndarray, categories: tuple[str, ...]) -> dict[str, dict]:
    """Per category: mean IoU over pairs, its 10th percentile and the count (IoU 1 when both are empty)."""
    inter = (pred & true).sum(axis=(1, 2))
    union = (pred | true).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    out = {}
    for c in (*CATEGORIES, "all"):
        sel = np.array([c in ("all", k) for k in categories])
        out[c] = {"iou": float(iou[sel].mean()), "p10": float(np.percentile(iou[sel], 10)), "n": int(sel.sum())}
    return out


def _lr(step: int, steps: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    model, data: Samples, steps: int, batch: int, lr: float, minutes: float, seed: int
) -> list[tuple[int, float]]:
    """AdamW on cross-entropy (garment labels weighted) over full-resolution logits, horizontal flips;
    returns (step, loss) every 50."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    weights = torch.ones(len(PARTS))
    weights[[PARTS.index(p) for p in GARMENT_PARTS.values()]] = GARMENT_WEIGHT
    model.train()
    cpu0 = time.process_time()
    history, running = [], []
    for step in range(steps):
        idx = rng.integers(0, len(data.images), batch)
        images, labels = data.images[idx], data.labels[idx]
        flip = rng.random(batch) < 0.5  # the parts have no left or right
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        labels = np.where(flip[:, None, None], labels[:, :, ::-1], labels)
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        loss = F.cross_entropy(full_logits(model, to_input(images)), torch.from_numpy(labels).long(), weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            history.append((step + 1, float(np.mean(running))))
            cpu = (time.process_time() - cpu0) / 60
            log.info("step %d/%d  loss %.4f  %.1f CPU min", step + 1, steps, history[-1][1], cpu)
            running = []
            if cpu >= minutes:
                log.warning("stopping at step %d: the %.1f CPU-minute budget is spent", step + 1, minutes)
                break
    return history


def save(model, out: Path, size: tuple[int, int], report: dict) -> None:
    """A Hugging Face folder: config.json (id2label), model.safetensors, preprocessor_config.json."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    h, w = size
    processor = {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_reduce_labels": False,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


def evaluate(model, seed: int, count: int, size: tuple[int, int]) -> dict[str, dict]:
    held_out = synthesize(seed, count, size)
    return iou_by_category(predict_masks(model, held_out), held_out.masks(), held_out.categories)


def _show(scores: dict[str, dict]) -> str:
    return "  ".join(f"{c} {s['iou']:.3f} (p10 {s['p10']:.3f}, n={s['n']})" for c, s in scores.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for the trained parser (Hugging Face layout)")
    ap.add_argument("--evaluate", type=Path, metavar="DIR", help="only score the parser saved in DIR")
    ap.add_argument("--seed", type=int, default=1, help="synthetic training seed (default 1)")
    ap.add_argument("--pairs", type=int, default=6000, help="training pairs (default 6000)")
    ap.add_argument("--steps", type=int, default=9000, help="optimiser steps (default 9000)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=60.0, help="CPU-time budget of the training loop")
    ap.add_argument("--eval-seed", type=int, default=HELD_OUT_SEED, help="held-out seed (default the test split's)")
    ap.add_argument("--eval-pairs", type=int, default=300)
    args = ap.parse_args(argv)
    if (args.out is None) == (args.evaluate is None):
        ap.error("give --out (train) or --evaluate DIR (score a trained parser)")
    if args.eval_seed == args.seed:
        ap.error(f"--eval-seed {args.eval_seed} is the training seed; the score must come from held-out pairs")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size = DEFAULT_SIZE

    if args.evaluate is not None:
        from transformers import SegformerForSemanticSegmentation

        model = SegformerForSemanticSegmentation.from_pretrained(args.evaluate, local_files_only=True)
        print(_show(evaluate(model, args.eval_seed, args.eval_pairs, size)))
        return 0

    t0 = time.process_time()
    data = synthesize(args.seed, args.pairs, size)
    log.info("%d training pairs in %.0f CPU s", args.pairs, time.process_time() - t0)
    model = new_model(args.seed, size)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("parser: %d parameters (%.2f MB in fp32)", n_params, n_params * 4 / 1e6)
    t1 = time.process_time()
    history = train(model, data, args.steps, args.batch, args.lr, args.minutes, args.seed)
    train_minutes = (time.process_time() - t1) / 60
    scores = evaluate(model, args.eval_seed, args.eval_pairs, size)
    print(f"held-out IoU (seed {args.eval_seed}): {_show(scores)}")
    report = {
        "parameters": n_params,
        "train": {
            "seed": args.seed,
            "pairs": args.pairs,
            "steps": history[-1][0],
            "batch": args.batch,
            "lr": args.lr,
            "cpu_minutes": round(train_minutes, 2),
            "threads": torch.get_num_threads(),
        },
        "loss": history,
        "held_out": {"seed": args.eval_seed, "pairs": args.eval_pairs, "iou": scores},
    }
    save(model, args.out, size, report)
    log.info("saved %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

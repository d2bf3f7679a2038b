"""VAE latents of the training pairs, computed once per VAE and data set and kept on disk.

IGR trains with its VAE frozen, so the latent of a pair's person photo and of its target garment
never change during a run. Encoding them at every step costs about a third of a CPU training step
of the ``small`` preset; encoding them once and reading them back removes that cost for every
later step, stage and ablation that shares the VAE.

One safetensors file per (data root, VAE, resolution) in the cache folder, named by a fingerprint
of all three; its keys are ``TrainSet.cache_key(i) + "|person"`` and ``"|target"`` ((4, h, w)
float32, scaled like the model's latents). A file only grows: pairs of a new subset or a newly
reframed pair are encoded and added.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.model import DECODER_PREFIXES, IGRModel
from train.traindata import TrainSet, prepare_sample

log = logging.getLogger(__name__)


def vae_fingerprint(model: IGRModel) -> str:
    """sha256 over the VAE encoder's weights, its latent scale and the model resolution (16 hex digits).

    The decoder is left out: the cache holds what the encoder makes, so a fine-tuned or widened
    decoder (train/swap_decoder.py, train/grow_decoder.py) keeps using it.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.vae.state_dict().items()):
        if name.startswith(DECODER_PREFIXES):
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    c = model.config
    h.update(f"{c.vae.scaling_factor}|{c.height}x{c.width}".encode())
    return h.hexdigest()[:16]


def cache_file(cache_dir: Path, root: Path, fingerprint: str) -> Path:
    where = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"latents-{where}-{fingerprint}.safetensors"


@torch.no_grad()
def attach_latents(trainset: TrainSet, model: IGRModel, cache_dir: Path, batch: int = 16) -> Path:
    """Give ``trainset`` the VAE latents of all its pairs, encoding the ones the cache lacks."""
    path = cache_file(cache_dir, trainset.pairs.root, vae_fingerprint(model))
    latents = load_file(str(path)) if path.is_file() else {}
    missing = [i for i in range(len(trainset)) if trainset.cache_key(i) + "|target" not in latents]
    if missing:
        log.info("encoding %d of %d pairs into the latent cache %s", len(missing), len(trainset), path)
        dev = next(model.vae.parameters()).device
        for start in range(0, len(missing), batch):
            idx = missing[start : start + batch]
            persons, targets = [], []
            for i in idx:
                prep, target = prepare_sample(trainset.sample(i), model.config, str(trainset.pairs.root))
                persons.append(torch.from_numpy(prep.person))
                targets.append(torch.from_numpy(target))
            zp = model.vae_encode(torch.stack(persons).to(dev)).float().cpu()  # (b, 4, h, w)
            zt = model.vae_encode(torch.stack(targets).to(dev)).float().cpu()
            for k, i in enumerate(idx):
                key = trainset.cache_key(i)
                latents[key + "|person"] = zp[k].contiguous()
                latents[key + "|target"] = zt[k].contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(latents, str(tmp))
        os.replace(tmp, path)  # a run killed while writing keeps the previous, complete file
    trainset.use_latents(latents)
    return path


def main(argv: list[str] | None = None) -> int:
    """Fill the cache ahead of runs that share it (e.g. a model and its ablations started together)."""
    import argparse

    from train.checkpoint import load_checkpoint
    from train.traindata import Source, open_sources

    ap = argparse.ArgumentParser(description="Encode the VAE latents of training pairs into a cache folder.")
    ap.add_argument("--init", required=True, type=Path, help="checkpoint whose VAE encodes (the runs' --init)")
    ap.add_argument("--data", required=True, type=Path, help="data root (VITON-HD layout)")
    ap.add_argument("--subset", type=Path, help="name list: these pairs only")
    ap.add_argument("--resize-list", type=Path, help="pairs to reframe, as the fine stage does")
    ap.add_argument("--split", default="train")
    ap.add_argument("--cache", required=True, type=Path, help="cache folder (the runs' --latent-cache)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = load_checkpoint(args.init)
    (pairs,), (frames,), _ = open_sources([Source(args.data, args.subset, args.resize_list)], args.split)
    path = attach_latents(TrainSet(pairs, model.config, frames), model, args.cache)
    log.info("cache %s holds %d pairs of %s", path, len(pairs), args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The IGR checkpoint: one folder that export and training resume read, and nothing else.

Layout::

    config.json                IGRConfig (+ "format")
    denoiser.safetensors       GarmDenoiser UNet with its IP-Adapter K/V layers
    garmnet.safetensors        GarmNet UNet (5-channel conv_in)
    image_proj.safetensors     IP-Adapter image projection
    vae.safetensors            AutoencoderKL
    image_encoder.safetensors  CLIP vision tower with projection
    prompt_embeds.safetensors  "prompt_embeds": (3, 77, C), categories in CATEGORIES order
    meta.json                  free-form facts about how it was made (step, stage, sources)
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from train.config import IGRConfig
from train.model import IGRModel

log = logging.getLogger(__name__)

PART_FILES = ("denoiser", "garmnet", "image_proj", "vae", "image_encoder")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or not an IGR checkpoint."""


def new_model(config: IGRConfig, seed: int = 0) -> IGRModel:
    """A randomly initialised model, the same for the same config and seed, global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IGRModel(config)
        model.prompt_embeds.copy_(torch.randn(model.prompt_embeds.shape))
    return model.eval()


def save_checkpoint(model: IGRModel, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder atomically: into a hidden temporary folder beside it, then renamed.

    A process killed while saving leaves the previous folder (or none) and a hidden ``.NAME.tmp-*``
    folder that the next save of NAME removes; never a folder that looks complete but is not.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_parts(model, tmp, meta)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", out)
    return out


def _write_parts(model: IGRModel, folder: Path, meta: dict[str, Any] | None) -> None:
    (folder / "config.json").write_text(model.config.to_json())
    for name, module in model.parts().items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
    save_file(
        {"prompt_embeds": model.prompt_embeds.detach().contiguous().cpu()}, str(folder / "prompt_embeds.safetensors")
    )
    (folder / "meta.json").write_text(json.dumps(meta or {}, indent=2, default=str))


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; a previous ``out`` is moved aside first and removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is None:
        return
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _remove_leftovers(out: Path) -> None:
    """Hidden folders of an earlier save of ``out`` that was killed."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def read_config(path: str | Path) -> IGRConfig:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint folder {str(p)!r} does not exist")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{str(p)!r} is not an IGR checkpoint: it has no config.json")
    try:
        return IGRConfig.from_dict(json.loads(cfg.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{str(cfg)!r} is not an IGR config: {e}") from None


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> IGRModel:
    p = Path(path)
    config = read_config(p)
    model = IGRModel(config)
    for name, module in model.parts().items():
        _load_into(module, p / f"{name}.safetensors", map_location)
    embeds = _read(p / "prompt_embeds.safetensors", map_location)
    if "prompt_embeds" not in embeds or embeds["prompt_embeds"].shape != model.prompt_embeds.shape:
        raise CheckpointError(
            f"{str(p / 'prompt_embeds.safetensors')!r} does not hold prompt_embeds of shape "
            f"{tuple(model.prompt_embeds.shape)}"
        )
    model.prompt_embeds.copy_(embeds["prompt_embeds"])
    return model.eval()


def _read(file: Path, map_location: str) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {str(file)!r} is missing")
    try:
        return load_file(str(file), device=map_location)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"checkpoint file {str(file)!r} is unreadable: {e}") from None


def _load_into(module: torch.nn.Module, file: Path, map_location: str) -> None:
    state = _read(file, map_location)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{str(file)!r} does not match the config's architecture: {detail}")
    module.load_state_dict(state, strict=True)

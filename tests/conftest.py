"""Shared seeded fixtures: tiny models, their public-layout folders, and a simple person + mask."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_config():
    from train.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from train.checkpoint import new_model

    return new_model(tiny_config, seed=0)


@pytest.fixture(scope="session")
def person_and_mask():
    """A 120x90 person-like image (textured block on grey) and its garment mask."""
    rng = np.random.default_rng(7)
    img = np.full((120, 90, 3), 200, dtype=np.uint8)
    yy = np.mgrid[0:60, 0:50][0]
    stripes = ((yy // 4) % 2)[..., None] * np.array([180, 30, 40]) + 40
    img[30:90, 20:70] = stripes.astype(np.uint8)
    img += rng.integers(0, 8, img.shape, dtype=np.uint8)
    mask = np.zeros((120, 90), dtype=bool)
    mask[30:90, 20:70] = True
    return img, mask


def _write_tokenizer(path: Path) -> None:
    from transformers import CLIPTokenizer

    path.mkdir(parents=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)


@dataclass
class PublicLayouts:
    sd15: Path
    ip_adapter_bin: Path
    ip_adapter_safetensors: Path
    clip_vision: Path
    unet: object
    vae: object
    clip: object
    ip_state: dict


@pytest.fixture(scope="session")
def public_layouts(tmp_path_factory, tiny_config) -> PublicLayouts:
    """Tiny random models saved exactly as SD1.5, ip-adapter_sd15 and CLIP vision are published."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("public")
    c = tiny_config
    torch.manual_seed(123)
    unet = UNet2DConditionModel(**c.unet.diffusers_kwargs(4)).eval()
    vae = AutoencoderKL(**c.vae.diffusers_kwargs()).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=200,
            hidden_size=c.unet.cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=189,
            bos_token_id=188,
        )
    )
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**c.image_encoder.transformers_kwargs())).eval()
    unet.save_pretrained(root / "sd15" / "unet")
    vae.save_pretrained(root / "sd15" / "vae")
    text.save_pretrained(root / "sd15" / "text_encoder")
    _write_tokenizer(root / "sd15" / "tokenizer")
    clip.save_pretrained(root / "clip_vision")

    cross = c.unet.cross_attention_dim
    n_attn2 = sum(".attn2." in n for n in unet.attn_processors)
    inner = [
        unet.get_submodule(n.removesuffix(".processor")).to_k.out_features
        for n in unet.attn_processors
        if ".attn2." in n
    ]
    ip_state = {
        "image_proj": {
            "proj.weight": torch.randn(c.ip_tokens * cross, c.image_encoder.projection_dim) * 0.1,
            "proj.bias": torch.randn(c.ip_tokens * cross) * 0.1,
            "norm.weight": 1 + 0.1 * torch.randn(cross),
            "norm.bias": 0.1 * torch.randn(cross),
        },
        "ip_adapter": {
            f"{2 * j + 1}.to_{kv}_ip.weight": torch.randn(inner[j], cross) * 0.2 for j in range(n_attn2) for kv in "kv"
        },
    }
    torch.save(ip_state, root / "ip-adapter_sd15.bin")
    flat = {f"{part}.{k}": v.contiguous() for part, d in ip_state.items() for k, v in d.items()}
    save_file(flat, str(root / "ip-adapter_sd15.safetensors"))
    return PublicLayouts(
        root / "sd15",
        root / "ip-adapter_sd15.bin",
        root / "ip-adapter_sd15.safetensors",
        root / "clip_vision",
        unet,
        vae,
        clip,
        ip_state,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    from train.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny")


def _build(checkpoint, out, **kw):
    from export.build import BuildOptions, build

    build(BuildOptions(checkpoint=checkpoint, out=out, **kw))
    return out


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory, tiny_checkpoint):
    """ONNX Runtime CPU engines of the tiny checkpoint, exported once per test session."""
    return _build(tiny_checkpoint, tmp_path_factory.mktemp("engines") / "b1")


@pytest.fixture(scope="session")
def tiny_engines_b2(tmp_path_factory, tiny_checkpoint):
    return _build(tiny_checkpoint, tmp_path_factory.mktemp("engines") / "b2", batch=2)

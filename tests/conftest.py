"""Shared seeded fixtures: tiny models, their public-layout folders, and a simple person + mask."""

from __future__ import annotations

import json
import math
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


def _random_vgg16_state(seed: int = 0) -> dict:
    """torchvision's VGG16 keys with random weights (the real ones are never downloaded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    convs = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256)]
    convs += [(17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    for i, c_in, c_out in convs:
        std = math.sqrt(2.0 / (9 * c_in))  # He init keeps activations alive through 13 layers
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * std
        state[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.01
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file has these too; they are ignored
    return state


@pytest.fixture(scope="session")
def perceptual_weights(tmp_path_factory):
    """Random LPIPS (VGG16 + lin layers) and DISTS (alpha/beta) weight files, written once."""
    import torch

    root = tmp_path_factory.mktemp("perceptual")
    g = torch.Generator().manual_seed(1)
    torch.save(_random_vgg16_state(), root / "vgg16.pth")
    lins = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate((64, 128, 256, 512, 512))
    }
    torch.save(lins, root / "lpips_vgg.pth")
    torch.save({**_random_vgg16_state(), **lins}, root / "lpips_all.pth")
    ab = {"alpha": torch.rand(1, 1475, 1, 1, generator=g), "beta": torch.rand(1, 1475, 1, 1, generator=g)}
    torch.save(ab, root / "dists_weights.pt")
    return root


@pytest.fixture(scope="session")
def bundle_demo():
    """scripts/bundle_demo.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "bundle_demo.py"
    spec = importlib.util.spec_from_file_location("bundle_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

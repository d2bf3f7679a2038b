"""The five exported graphs (DESIGN.md section 3): wrappers with explicit named inputs.

Each ``GraphSpec`` knows its torch module, the names, shapes and dtypes of its inputs and outputs
at a build's resolution and batch, and which checkpoint parts its weights come from (so a build
knows what a changed checkpoint invalidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from igr_sdk.contract import CLIP_SIZE
from igr_sdk.contract import GRAPHS as GRAPHS  # the graph names, re-exported for the exporter
from train.model import IGRModel


class ImageEncoderGraph(nn.Module):
    def __init__(self, model: IGRModel):
        super().__init__()
        self.image_encoder, self.image_proj = model.image_encoder, model.image_proj

    def forward(self, garment_crop: torch.Tensor) -> torch.Tensor:
        embeds = self.image_encoder(pixel_values=garment_crop).image_embeds  # (B, D)
        return self.image_proj(embeds)  # (B, T_ip, C)


class VAEEncoderGraph(nn.Module):
    def __init__(self, model: IGRModel):
        super().__init__()
        self.vae, self.scale = model.vae, model.config.vae.scaling_factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mean * self.scale  # (B, 4, h, w)


class VAEDecoderGraph(nn.Module):
    def __init__(self, model: IGRModel):
        super().__init__()
        self.vae, self.scale = model.vae, model.config.vae.scaling_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scale).sample  # (B, 3, H, W)


class GarmNetGraph(nn.Module):
    """GarmNet once at t = 0 plus the denoiser's attn1 K/V projections: the reference cache."""

    def __init__(self, model: IGRModel):
        super().__init__()
        self.model = model

    def forward(self, person_latent: torch.Tensor, mask: torch.Tensor, text_embeds: torch.Tensor):
        feats = self.model.garmnet_features(person_latent, mask, text_embeds)
        ks, vs = self.model.reference_kv(feats)
        return (*ks, *vs)  # ref_k_0..n-1, ref_v_0..n-1, each (B, N_i, C_i)


class DenoiserGraph(nn.Module):
    """One CFG-batched noise prediction; the first ``batch`` rows are unconditional."""

    def __init__(self, model: IGRModel, batch: int):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        ip_tokens: torch.Tensor,
        ref_k: list[torch.Tensor],
        ref_v: list[torch.Tensor],
    ) -> torch.Tensor:
        t = timestep.expand(sample.shape[0])  # (1,) -> (2B,)
        return self.model.denoise(sample, t, text_embeds, ip_tokens, self.batch, ref_k=list(ref_k), ref_v=list(ref_v))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name: "float32" / "float16"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parts: tuple[str, ...]  # checkpoint files the weights come from


def block_shapes(model: IGRModel, height: int, width: int) -> list[tuple[int, int]]:
    """(N_i, C_i) of the reference K/V of every transformer block at a resolution."""
    f = model.config.vae.downsample_factor
    h, w = height // f, width // f
    shapes = []
    for name, attn in _named_attn1(model):
        level = _level(name, len(model.config.unet.block_out_channels))
        shapes.append(((h >> level) * (w >> level), attn.to_k.out_features))
    return shapes


def _named_attn1(model: IGRModel):
    from train.attention import attention_names

    names, _ = attention_names(model.denoiser)
    return [(n, model.denoiser.get_submodule(n.removesuffix(".processor"))) for n in names]


def _level(name: str, n_levels: int) -> int:
    """Downsampling level of a transformer block from its module path."""
    part, idx = name.split(".")[:2]
    if part == "down_blocks":
        return int(idx)
    if part == "mid_block":
        return n_levels - 1
    return n_levels - 1 - int(idx)  # up_blocks run from the deepest level back to the first


def specs(model: IGRModel, height: int, width: int, batch: int, dtype: str = "float32") -> dict[str, GraphSpec]:
    c = model.config
    f = c.vae.downsample_factor
    h, w = height // f, width // f
    cross, t_ip = c.unet.cross_attention_dim, c.ip_tokens
    b = batch
    blocks = block_shapes(model, height, width)
    ref_k = tuple(TensorSpec(f"ref_k_{i}", (b, n, ch), dtype) for i, (n, ch) in enumerate(blocks))
    ref_v = tuple(TensorSpec(f"ref_v_{i}", (b, n, ch), dtype) for i, (n, ch) in enumerate(blocks))

    def t(name, *shape):
        return TensorSpec(name, tuple(shape), dtype)

    return {
        "image_encoder": GraphSpec(
            "image_encoder",
            (t("garment_crop", b, 3, CLIP_SIZE, CLIP_SIZE),),
            (t("ip_tokens", b, t_ip, cross),),
            ("image_encoder", "image_proj"),
        ),
        "vae_encoder": GraphSpec(
            "vae_encoder", (t("image", b, 3, height, width),), (t("latent", b, 4, h, w),), ("vae",)
        ),
        "garmnet": GraphSpec(
            "garmnet",
            (t("person_latent", b, 4, h, w), t("mask", b, 1, h, w), t("text_embeds", b, c.text_len, cross)),
            ref_k + ref_v,
            ("garmnet", "denoiser"),
        ),
        "denoiser": GraphSpec(
            "denoiser",
            (
                t("sample", 2 * b, 4, h, w),
                TensorSpec("timestep", (1,), "float32"),
                t("text_embeds", 2 * b, c.text_len, cross),
                t("ip_tokens", 2 * b, t_ip, cross),
                *ref_k,
                *ref_v,
            ),
            (t("noise_pred", 2 * b, 4, h, w),),
            ("denoiser",),
        ),
        "vae_decoder": GraphSpec(
            "vae_decoder", (t("latent", b, 4, h, w),), (t("image", b, 3, height, width),), ("vae",)
        ),
    }


def module_for(model: IGRModel, name: str, batch: int) -> nn.Module:
    return {
        "image_encoder": lambda: ImageEncoderGraph(model),
        "vae_encoder": lambda: VAEEncoderGraph(model),
        "garmnet": lambda: GarmNetGraph(model),
        "denoiser": lambda: DenoiserGraph(model, batch),
        "vae_decoder": lambda: VAEDecoderGraph(model),
    }[name]().eval()


def example_inputs(spec: GraphSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic inputs in each tensor's natural range, for export and parity checks."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in spec.inputs:
        dtype = getattr(torch, s.dtype)
        if s.name == "timestep":
            out[s.name] = torch.tensor([500.0])
        elif s.name == "mask":
            out[s.name] = torch.rand(s.shape, generator=g).round().to(dtype)
        elif s.name == "image":
            out[s.name] = (torch.rand(s.shape, generator=g) * 2 - 1).to(dtype)
        else:
            out[s.name] = torch.randn(s.shape, generator=g).to(dtype)
    return out


def call_args(spec: GraphSpec, inputs: dict[str, torch.Tensor]) -> tuple:
    """Positional arguments of the wrapper's forward from named inputs (ref K/V as lists)."""
    if spec.name != "denoiser":
        return tuple(inputs[s.name] for s in spec.inputs)
    n = sum(s.name.startswith("ref_k_") for s in spec.inputs)
    head = tuple(inputs[k] for k in ("sample", "timestep", "text_embeds", "ip_tokens"))
    return (*head, [inputs[f"ref_k_{i}"] for i in range(n)], [inputs[f"ref_v_{i}"] for i in range(n)])

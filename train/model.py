"""IGR in PyTorch: GarmDenoiser, GarmNet, IP-Adapter, VAE and CLIP image encoder.

Shapes use B for requests, 2B for the CFG batch [uncond x B ; cond x B], h x w for the latent grid
and N_i / C_i for the token count and width of transformer block i (execution order).
"""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.autoencoders.vae import Decoder
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from train.attention import (
    FusionContext,
    install_denoiser_processors,
    install_garmnet_processors,
    self_attention_modules,
)
from train.config import CATEGORIES, IGRConfig

log = logging.getLogger(__name__)

FORMS = ("cached", "naive", "per_step_garmnet")


class ImageProjection(nn.Module):
    """IP-Adapter's projection: one CLIP image embedding -> ``tokens`` cross-attention tokens.

    Parameter names (``proj``, ``norm``) follow the public ip-adapter_sd15 ``image_proj`` layout.
    """

    def __init__(self, embed_dim: int, cross_attention_dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Linear(embed_dim, tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(image_embeds)  # (B, T * C)
        return self.norm(x.reshape(-1, self.tokens, self.cross_attention_dim))  # (B, T, C)


def build_unet(config: IGRConfig, in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(**config.unet.diffusers_kwargs(in_channels))


DECODER_PREFIXES = ("decoder.", "post_quant_conv.")  # the VAE parameters that turn latents into pixels


def build_vae(config: IGRConfig) -> AutoencoderKL:
    vae = AutoencoderKL(**config.vae.diffusers_kwargs())
    c = config.vae
    if c.decoder_channels != tuple(c.block_out_channels):
        # AutoencoderKL takes one set of widths for both halves; a wider decoder replaces its own,
        # built as AutoencoderKL builds it
        vae.decoder = Decoder(
            in_channels=c.latent_channels,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * len(c.decoder_channels),
            block_out_channels=c.decoder_channels,
            layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
            act_fn="silu",
            mid_block_add_attention=True,
        )
        # keep the encoder-width decoder's layer structure: a resnet that changed width there keeps its
        # 1x1 shortcut conv even where the wider decoder's widths happen to match, so that a narrow
        # decoder's weights can grow into this one (train/grow_decoder.py)
        narrow = tuple(reversed(c.block_out_channels))  # up block i maps narrow[i - 1] -> narrow[i]
        for i, block in enumerate(vae.decoder.up_blocks):
            first = block.resnets[0]
            if first.conv_shortcut is None and narrow[max(i - 1, 0)] != narrow[i]:
                first.use_in_shortcut = True
                first.conv_shortcut = nn.Conv2d(first.in_channels, first.out_channels, kernel_size=1)
    return vae


def build_image_encoder(config: IGRConfig) -> CLIPVisionModelWithProjection:
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.image_encoder.transformers_kwargs()))
    return enc.eval()


class IGRModel(nn.Module):
    """All of IGR's networks plus the category prompt embeddings (a buffer, not trained)."""

    def __init__(self, config: IGRConfig):
        super().__init__()
        self.config = config
        c = config.unet.cross_attention_dim
        self.denoiser = build_unet(config, in_channels=4)
        install_denoiser_processors(self.denoiser, c, config.ip_scale)
        self.garmnet = build_unet(config, in_channels=config.garmnet_in_channels)
        install_garmnet_processors(self.garmnet)
        self.vae = build_vae(config)
        self.image_encoder = build_image_encoder(config)
        self.image_proj = ImageProjection(config.image_encoder.projection_dim, c, config.ip_tokens)
        self.register_buffer("prompt_embeds", torch.zeros(len(CATEGORIES), config.text_len, c))

    # --- the parts a checkpoint stores, by file name ------------------------------------------
    def parts(self) -> dict[str, nn.Module]:
        return {
            "denoiser": self.denoiser,
            "garmnet": self.garmnet,
            "image_proj": self.image_proj,
            "vae": self.vae,
            "image_encoder": self.image_encoder,
        }

    @property
    def self_attentions(self) -> list[nn.Module]:
        return self_attention_modules(self.denoiser)

    # --- conditions ----------------------------------------------------------------------------
    def text_embeds(self, categories: list[str]) -> torch.Tensor:
        bad = [c for c in categories if c not in CATEGORIES]
        if bad:
            raise ValueError(f"unknown category {bad[0]!r}; expected one of {CATEGORIES}")
        idx = torch.tensor([CATEGORIES.index(c) for c in categories])
        return self.prompt_embeds[idx]  # (B, 77, C)

    def ip_tokens(self, garment_crop: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised (B, 3, 224, 224) garment crops -> (B, T_ip, C)."""
        embeds = self.image_encoder(pixel_values=garment_crop).image_embeds  # (B, D)
        return self.image_proj(embeds)

    def uncond_ip_tokens(self, batch: int) -> torch.Tensor:
        """IP tokens of a zero image embedding: the unconditional branch's IP input."""
        zero = self.image_proj.proj.weight.new_zeros(1, self.config.image_encoder.projection_dim)
        return self.image_proj(zero).expand(batch, -1, -1)  # (B, T_ip, C)

    def vae_encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latent mean (B, 4, h, w)."""
        return self.vae.encode(image).latent_dist.mean * self.config.vae.scaling_factor

    def vae_decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.config.vae.scaling_factor).sample  # (B, 3, H, W)

    # --- GarmNet and the reference cache ------------------------------------------------------
    def garmnet_features(
        self, person_latent: torch.Tensor, mask: torch.Tensor, text_embeds: torch.Tensor
    ) -> list[torch.Tensor]:
        """GarmNet at t = 0 -> the norm1 output R_i of every transformer block, (B, N_i, C_i)."""
        if not self.config.use_garmnet:  # ablation: an empty reference for every block
            b = person_latent.shape[0]
            return [person_latent.new_zeros(b, 0, a.to_k.in_features) for a in self.self_attentions]
        x = torch.cat([person_latent, mask], dim=1)  # (B, 5, h, w)
        t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        ctx = FusionContext(mode="record")
        self.garmnet(x, t, encoder_hidden_states=text_embeds, cross_attention_kwargs={"igr": ctx})
        return ctx.recorded

    def reference_kv(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """W_k R_i and W_v R_i with the denoiser's own attn1 weights: constant over timesteps."""
        attns = self.self_attentions
        return [a.to_k(r) for a, r in zip(attns, feats)], [a.to_v(r) for a, r in zip(attns, feats)]

    # --- the denoiser --------------------------------------------------------------------------
    def denoise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        ip_tokens: torch.Tensor,
        n_uncond: int,
        ref_k: list[torch.Tensor] | None = None,
        ref_v: list[torch.Tensor] | None = None,
        ref_feats: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One noise prediction over a batch whose first ``n_uncond`` rows are unconditional.

        Give ``ref_k``/``ref_v`` (the product's cached form) or ``ref_feats`` (the paper-literal
        form); they hold the conditional rows only.
        """
        if ref_feats is not None:
            ctx = FusionContext(mode="naive", n_uncond=n_uncond, ref_feats=ref_feats, ip_tokens=ip_tokens)
        elif ref_k is not None:
            ctx = FusionContext(mode="cached", n_uncond=n_uncond, ref_k=ref_k, ref_v=ref_v, ip_tokens=ip_tokens)
        else:
            if n_uncond != sample.shape[0]:
                raise ValueError("conditional rows need reference inputs (ref_k/ref_v or ref_feats)")
            ctx = FusionContext(mode="none", n_uncond=n_uncond, ip_tokens=ip_tokens)
        out = self.denoiser(sample, timestep, encoder_hidden_states=text_embeds, cross_attention_kwargs={"igr": ctx})
        return out.sample  # (2B, 4, h, w)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def denoiser_base_parameters(model: IGRModel) -> int:
    """Parameters of the denoiser UNet without its IP-Adapter K/V layers."""
    ip = sum(p.numel() for n, p in model.denoiser.named_parameters() if "_ip." in n)
    return count_parameters(model.denoiser) - ip

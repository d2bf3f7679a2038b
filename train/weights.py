"""Build an IGR model from real weights in their public layouts (all local, never downloaded).

- a Stable Diffusion 1.5 diffusers folder: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``;
- an IP-Adapter file in the ``ip-adapter_sd15`` layout, ``.bin`` or ``.safetensors``, with
  ``image_proj`` (``proj.*``, ``norm.*``) and ``ip_adapter`` (``1.to_k_ip.weight``, ...) parts;
- a CLIP vision folder (transformers' CLIPVisionModelWithProjection: ``config.json`` + weights).

The architecture is read from those files, never assumed. GarmNet starts as a copy of the SD1.5
UNet whose extra (mask) input channel has zero weights, so at initialisation it computes exactly
what the UNet computes on the person latent.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from train.attention import ip_adapter_key_order
from train.config import DEFAULT_PROMPTS, IGRConfig, ImageEncoderConfig, UNetConfig, VAEConfig
from train.model import IGRModel

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Local weights are missing, unreadable or not in the expected public layout."""


# UNet options IGR's model does not represent; a folder that changes them is refused, not guessed.
_UNET_FIXED = (
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "mid_block_type",
    "only_cross_attention",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_eps",
    "transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "num_attention_heads",
    "dual_cross_attention",
    "class_embed_type",
    "addition_embed_type",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "time_embedding_type",
    "time_cond_proj_dim",
    "conv_in_kernel",
    "conv_out_kernel",
    "attention_type",
)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise WeightsError(f"{what}: folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file() and what != "tokenizer":
        raise WeightsError(f"{what}: {str(path)!r} has no config.json; expected a diffusers/transformers folder")
    return path


def unet_config_from(cfg: dict[str, Any]) -> UNetConfig:
    defaults = {k: p.default for k, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()}
    changed = [k for k in _UNET_FIXED if k in cfg and _norm(cfg[k]) != _norm(defaults[k])]
    if changed:
        raise WeightsError(f"the UNet config sets {changed}, which IGR's model does not support")
    if cfg.get("in_channels", 4) != 4 or cfg.get("out_channels", 4) != 4:
        raise WeightsError(
            f"expected a 4-channel SD UNet, got in/out channels {cfg.get('in_channels')}/{cfg.get('out_channels')}"
        )
    lpb = cfg["layers_per_block"]
    if not isinstance(lpb, int):
        raise WeightsError(f"per-block layers_per_block {lpb} is not supported")
    return UNetConfig(
        block_out_channels=tuple(cfg["block_out_channels"]),
        down_block_types=tuple(cfg["down_block_types"]),
        up_block_types=tuple(cfg["up_block_types"]),
        layers_per_block=lpb,
        cross_attention_dim=cfg["cross_attention_dim"],
        attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=cfg["norm_num_groups"],
        use_linear_projection=cfg.get("use_linear_projection", False),
    )


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def vae_config_from(cfg: dict[str, Any]) -> VAEConfig:
    return VAEConfig(
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=cfg["norm_num_groups"],
        scaling_factor=cfg.get("scaling_factor", 0.18215),
    )


def image_encoder_config_from(cfg) -> ImageEncoderConfig:
    fields = ImageEncoderConfig.__dataclass_fields__
    return ImageEncoderConfig(**{k: getattr(cfg, k) for k in fields})


def load_ip_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (image_proj state, ip_adapter state) from an ``ip-adapter_sd15`` file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"IP-Adapter file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        flat = load_file(str(p))
        parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            head, _, rest = k.partition(".")
            if head in parts:
                parts[head][rest] = v
    elif p.suffix in (".bin", ".pt", ".pth"):
        try:
            parts = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"IP-Adapter file {str(p)!r} is unreadable: {e}") from None
    else:
        raise WeightsError(f"IP-Adapter file {str(p)!r}: expected .safetensors or .bin")
    if not isinstance(parts, dict) or not parts.get("image_proj") or not parts.get("ip_adapter"):
        raise WeightsError(f"IP-Adapter file {str(p)!r} lacks the 'image_proj' and 'ip_adapter' parts")
    return parts["image_proj"], parts["ip_adapter"]


def ip_adapter_state(model: IGRModel) -> dict[str, dict[str, torch.Tensor]]:
    """The model's IP-Adapter weights in the public ``ip-adapter_sd15`` layout (for saving)."""
    ip = {}
    for j, name in enumerate(ip_adapter_key_order(model.denoiser)):
        proc = model.denoiser.get_submodule(name)
        ip[f"{2 * j + 1}.to_k_ip.weight"] = proc.to_k_ip.weight.detach().clone()
        ip[f"{2 * j + 1}.to_v_ip.weight"] = proc.to_v_ip.weight.detach().clone()
    proj = {k: v.detach().clone() for k, v in model.image_proj.state_dict().items()}
    return {"image_proj": proj, "ip_adapter": ip}


@torch.no_grad()
def encode_prompts(
    text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str], length: int = 77
) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids  # (3, 77)
    return text_encoder(ids).last_hidden_state  # (3, 77, C)


def from_public_layouts(
    sd15_dir: str | Path,
    ip_adapter: str | Path,
    clip_vision_dir: str | Path,
    height: int = 1024,
    width: int = 768,
    name: str = "sd15",
    prompts: tuple[tuple[str, str], ...] = DEFAULT_PROMPTS,
) -> IGRModel:
    sd = Path(sd15_dir)
    if not sd.is_dir():
        raise WeightsError(f"Stable Diffusion folder {str(sd)!r} does not exist")
    unet = UNet2DConditionModel.from_pretrained(_require_dir(sd / "unet", "unet"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(_require_dir(sd / "vae", "vae"), local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(
        _require_dir(sd / "text_encoder", "text_encoder"), local_files_only=True
    )
    tokenizer = CLIPTokenizer.from_pretrained(_require_dir(sd / "tokenizer", "tokenizer"), local_files_only=True)
    clip = CLIPVisionModelWithProjection.from_pretrained(
        _require_dir(Path(clip_vision_dir), "CLIP vision"), local_files_only=True
    )
    image_proj, ip_layers = load_ip_adapter(ip_adapter)

    unet_cfg = unet_config_from(dict(unet.config))
    cross = unet_cfg.cross_attention_dim
    proj_w = image_proj.get("proj.weight")
    if proj_w is None or proj_w.shape[0] % cross:
        raise WeightsError(
            f"IP-Adapter image_proj.proj.weight {None if proj_w is None else tuple(proj_w.shape)} "
            f"does not produce tokens of width {cross}"
        )
    config = IGRConfig(
        name=name,
        height=height,
        width=width,
        unet=unet_cfg,
        vae=vae_config_from(dict(vae.config)),
        image_encoder=image_encoder_config_from(clip.config),
        ip_tokens=proj_w.shape[0] // cross,
        text_len=tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77,
        prompts=prompts,
    )
    model = IGRModel(config)

    base = unet.state_dict()
    den = dict(base)
    names = ip_adapter_key_order(model.denoiser)
    expected = {f"{2 * j + 1}.to_{kv}_ip.weight" for j in range(len(names)) for kv in "kv"}
    if set(ip_layers) != expected:
        raise WeightsError(
            f"IP-Adapter has {len(ip_layers)} K/V weights for a UNet with {len(names)} "
            "cross-attentions; it was made for another UNet"
        )
    for j, n in enumerate(names):
        for kv in "kv":
            den[f"{n}.to_{kv}_ip.weight"] = ip_layers[f"{2 * j + 1}.to_{kv}_ip.weight"]
    model.denoiser.load_state_dict(den, strict=True)

    garm = dict(base)
    w = base["conv_in.weight"]  # (C, 4, 3, 3)
    extra = config.garmnet_in_channels - w.shape[1]
    garm["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    model.garmnet.load_state_dict(garm, strict=True)

    model.vae.load_state_dict(vae.state_dict(), strict=True)
    model.image_encoder.load_state_dict(clip.state_dict(), strict=True)
    model.image_proj.load_state_dict(image_proj, strict=True)
    model.prompt_embeds.copy_(encode_prompts(text_encoder, tokenizer, [p for _, p in prompts], config.text_len))
    log.info("built %s from %s, %s, %s", name, sd, ip_adapter, clip_vision_dir)
    return model.eval()

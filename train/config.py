"""IGR model configuration: one frozen dataclass that fully describes a model.

The config travels inside every checkpoint (``config.json``) so that export and the runtime never
guess an architecture. Presets:

- ``tiny``: tests; builds in well under a second.
- ``small``: CPU demo and benchmark size, 256x192 pixels.
- ``sd15``: the exact Stable Diffusion 1.5 UNet and VAE with a CLIP ViT-H/14 image encoder at
  1024x768 (random weights unless real ones are loaded, see ``train.weights``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from igr_sdk.contract import CATEGORIES

CONFIG_FORMAT = "igr-config/1"


@dataclass(frozen=True)
class UNetConfig:
    """The UNet2DConditionModel structure shared by GarmDenoiser and GarmNet."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    # diffusers' legacy name: for SD1.5 this is the number of heads, not their width. One number for
    # every level, or one per down block (finest first; the mid block takes the last, up blocks mirror).
    attention_head_dim: int | tuple[int, ...] = 8
    norm_num_groups: int = 32
    use_linear_projection: bool = False

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        heads = self.heads_per_level
        if len(heads) != n:
            raise ValueError(
                f"attention_head_dim: give one head count per down block ({n}), got {self.attention_head_dim}"
            )
        for width, h in zip(self.block_out_channels, heads):
            if h <= 0 or width % h:
                raise ValueError(f"attention_head_dim: {h} heads do not divide a block width of {width} channels")

    @property
    def heads_per_level(self) -> tuple[int, ...]:
        h = self.attention_head_dim
        return (h,) * len(self.block_out_channels) if isinstance(h, int) else tuple(h)

    def diffusers_kwargs(self, in_channels: int) -> dict[str, Any]:
        return {
            "in_channels": in_channels,
            "out_channels": 4,
            "block_out_channels": tuple(self.block_out_channels),
            "down_block_types": tuple(self.down_block_types),
            "up_block_types": tuple(self.up_block_types),
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "use_linear_projection": self.use_linear_projection,
        }

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    # The decoder may be wider than the encoder, one width per level as block_out_channels (None: the
    # same widths). Only the decoder turns latents into pixels, so it can grow after a denoiser has
    # learned the encoder's latents (train/grow_decoder.py).
    decoder_block_out_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        d = self.decoder_block_out_channels
        if d is None:
            return
        if len(d) != len(self.block_out_channels):
            raise ValueError(
                f"decoder_block_out_channels: give one width per level ({len(self.block_out_channels)}), got {d}"
            )
        bad = [c for c in d if c <= 0 or c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"decoder_block_out_channels: widths must be positive multiples of norm_num_groups "
                f"({self.norm_num_groups}), got {d}"
            )

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        return tuple(self.decoder_block_out_channels or self.block_out_channels)

    def diffusers_kwargs(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
        }

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """A CLIP vision tower with projection (transformers' CLIPVisionModelWithProjection)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 1024
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def transformers_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SchedulerConfig:
    """SD1.5's DDIM constants (DESIGN.md section 2).

    ``rescale_betas_zero_snr`` with ``timestep_spacing="trailing"`` is the zero-terminal-SNR
    schedule of Lin et al. 2024 (igr_sdk/_scheduler.py says why), for v-prediction models trained
    from scratch; SD1.5 weights keep SD1.5's schedule.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    timestep_spacing: str = "leading"
    set_alpha_to_one: bool = False
    prediction_type: str = "epsilon"
    clip_sample: bool = False
    rescale_betas_zero_snr: bool = False

    def diffusers_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_PROMPTS = (
    ("upper", "a photo of an upper-body garment, front view, on a white background"),
    ("lower", "a photo of a lower-body garment, front view, on a white background"),
    ("full", "a photo of a full-body garment, front view, on a white background"),
)


@dataclass(frozen=True)
class IGRConfig:
    name: str = "sd15"
    height: int = 1024
    width: int = 768
    unet: UNetConfig = field(default_factory=UNetConfig)
    garmnet_in_channels: int = 5  # person latent (4) + garment mask on the latent grid (1)
    # False is the paper's "w/o GarmNet" ablation: conditional rows get IP-Adapter tokens but no
    # reference tokens (a zero-length reference), so the denoiser's self-attention sees its own tokens.
    use_garmnet: bool = True
    vae: VAEConfig = field(default_factory=VAEConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    ip_tokens: int = 4
    ip_scale: float = 1.0
    text_len: int = 77
    prompts: tuple[tuple[str, str], ...] = DEFAULT_PROMPTS
    cond_drop_prob: float = 0.1
    guidance_scale: float = 1.5
    num_inference_steps: int = 25
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        cats = tuple(c for c, _ in self.prompts)
        if cats != CATEGORIES:
            raise ValueError(f"prompts must be given for categories {CATEGORIES} in that order, got {cats}")
        m = self.resolution_multiple
        if self.height % m or self.width % m or self.height <= 0 or self.width <= 0:
            raise ValueError(
                f"resolution {self.height}x{self.width} is not a positive multiple of {m} "
                f"(VAE factor x UNet downsampling of preset {self.name!r})"
            )
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")

    @property
    def resolution_multiple(self) -> int:
        return self.vae.downsample_factor * self.unet.downsample_factor

    @property
    def latent_size(self) -> tuple[int, int]:
        f = self.vae.downsample_factor
        return self.height // f, self.width // f

    @property
    def categories(self) -> tuple[str, ...]:
        return CATEGORIES

    def with_resolution(self, height: int, width: int) -> IGRConfig:
        return dataclasses.replace(self, height=height, width=width)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IGRConfig:
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt != CONFIG_FORMAT:
            raise ValueError(f"config format {fmt!r} is not {CONFIG_FORMAT!r}")
        sub = {"unet": UNetConfig, "vae": VAEConfig, "image_encoder": ImageEncoderConfig, "scheduler": SchedulerConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}")
        for key, typ in sub.items():
            if key in d:
                d[key] = typ(**_tuples(d[key]))
        if "prompts" in d:
            d["prompts"] = tuple(tuple(p) for p in d["prompts"])
        return cls(**d)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _tiny() -> IGRConfig:
    return IGRConfig(
        name="tiny",
        height=64,
        width=48,
        unet=UNetConfig(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        ),
        vae=VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
        image_encoder=ImageEncoderConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=32,
            projection_dim=32,
            hidden_act="quick_gelu",
        ),
    )


def _small() -> IGRConfig:
    return IGRConfig(
        name="small",
        height=256,
        width=192,
        unet=UNetConfig(
            block_out_channels=(32, 64, 128),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=16,
        ),
        vae=VAEConfig(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
        image_encoder=ImageEncoderConfig(
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=4,
            num_attention_heads=4,
            patch_size=16,
            projection_dim=64,
            hidden_act="quick_gelu",
        ),
        # trained from scratch: v-prediction learns the high-noise steps (the silhouette) far sooner
        scheduler=SchedulerConfig(prediction_type="v_prediction"),
    )


PRESETS = {"tiny": _tiny, "small": _small, "sd15": IGRConfig}


def preset(name: str) -> IGRConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()

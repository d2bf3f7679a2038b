"""IGR's training objective: epsilon- or v-prediction MSE with GarmNet and IP-Adapter conditions.

One :class:`DiffusionObjective` wraps the :class:`~train.model.IGRModel` so that a whole training
forward (VAE encode, CLIP, GarmNet, reference K/V, denoiser, loss) is one ``nn.Module.forward``:
DDP and DeepSpeed only synchronise gradients of computations that run inside the wrapped module's
forward, so nothing trainable may be called from outside it.

Batch convention (DESIGN.md section 2): condition drop removes *both* garment conditions of a
sample together. The caller orders the batch so the ``n_uncond`` dropped samples come first; they
see no reference tokens and the IP tokens of a zero image embedding, and GarmNet runs on the kept
rows only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from train.config import SchedulerConfig
from train.model import IGRModel

log = logging.getLogger(__name__)

VAE_KL_WEIGHT = 1e-6  # the KL term of an SD-style autoencoder: keeps latents near N(0, I), no more


def alphas_cumprod(config: SchedulerConfig) -> torch.Tensor:
    """(T,) float32 cumulative alphas of the config's DDPM schedule, exactly as diffusers builds them."""
    sched = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.rescale_betas_zero_snr,
    )
    return sched.alphas_cumprod.to(torch.float32)


@dataclass(frozen=True)
class Draws:
    """The random numbers of one micro-batch, all drawn on the CPU from one seeded generator."""

    noise: torch.Tensor  # (B, 4, h, w) float32
    timesteps: torch.Tensor  # (B,) int64 in [0, T)
    drop: torch.Tensor  # (B,) bool: this sample's garment conditions are dropped

    @property
    def order(self) -> torch.Tensor:
        """Row order that puts the dropped samples first (stable, so it is reproducible)."""
        return torch.cat([torch.nonzero(self.drop).flatten(), torch.nonzero(~self.drop).flatten()])


def micro_batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A 63-bit seed for (run seed, optimizer step, micro-batch, process): no global RNG involved."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def draw(seed: int, batch: int, latent_shape: tuple[int, int], num_timesteps: int, drop_prob: float) -> Draws:
    g = torch.Generator().manual_seed(seed)
    h, w = latent_shape
    noise = torch.randn((batch, 4, h, w), generator=g)
    timesteps = torch.randint(0, num_timesteps, (batch,), generator=g)
    drop = torch.rand((batch,), generator=g) < drop_prob
    return Draws(noise, timesteps, drop)


AUX_SIZE = (16, 12)  # (h, w) of the garment thumbnail the IP tokens are asked to carry


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight of Min-SNR-gamma (Hang et al. 2023), (B,) float32.

    The weight on the x0 error is min(SNR, gamma); expressed on the epsilon error it is
    min(SNR, gamma) / SNR and on the v error min(SNR, gamma) / (SNR + 1). Low-noise steps, which
    are easy and numerous, stop dominating the gradient.
    """
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


class GarmentThumbnailHead(nn.Module):
    """Training-only probe: the IP tokens -> a (3, 16, 12) thumbnail of the target garment.

    Its loss makes the image encoder put the garment's colours and layout into the IP tokens from
    the first steps, instead of waiting for the denoiser's weak early gradient to ask for them. It is
    not part of the model: checkpoints and engines never contain it.
    """

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(tokens * dim, 3 * AUX_SIZE[0] * AUX_SIZE[1])

    def forward(self, ip_tokens: torch.Tensor) -> torch.Tensor:
        b = ip_tokens.shape[0]
        return self.proj(ip_tokens.reshape(b, -1)).view(b, 3, *AUX_SIZE)  # (B, 3, 16, 12)


class DiffusionObjective(nn.Module):
    """Loss of one (micro-)batch; its state dict is the model's (prefixed ``igr.``) plus the
    thumbnail head (``thumb.``) when ``thumbnail_weight`` > 0."""

    def __init__(
        self,
        model: IGRModel,
        train_vae: bool = False,
        snr_gamma: float | None = None,
        thumbnail_weight: float = 0.0,
    ):
        super().__init__()
        self.igr = model
        self.train_vae = train_vae
        self.snr_gamma = snr_gamma
        self.thumbnail_weight = thumbnail_weight
        if thumbnail_weight > 0:
            with torch.random.fork_rng(devices=[]):  # the same start in every run: resume stays exact
                torch.manual_seed(0)
                self.thumb = GarmentThumbnailHead(model.config.ip_tokens, model.config.unet.cross_attention_dim)
        c = model.config.scheduler
        if c.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {c.prediction_type!r} is not supported for training")
        self.prediction_type = c.prediction_type
        # A plain attribute, not a buffer: DeepSpeed's bf16 mode casts every floating buffer to bf16,
        # and the schedule (alphas down to 0.005) must stay fp32.
        self.alphas_cumprod = alphas_cumprod(c)  # (T,) float32, CPU

    @property
    def dtype(self) -> torch.dtype:
        # fp32 under autocast; bf16/fp16 when DeepSpeed has cast the whole module
        return self.igr.denoiser.conv_in.weight.dtype

    def _coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1) float32
        return ab.sqrt(), (1.0 - ab).sqrt()

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps, in fp32 (diffusers' DDPMScheduler.add_noise)."""
        a, s = self._coefficients(t)
        return a * z0.float() + s * noise.float()

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise.float()
        a, s = self._coefficients(t)
        return a * noise.float() - s * z0.float()  # v-prediction

    def _encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled latent mean, and (with --train-vae) the autoencoder loss of this image."""
        if not self.train_vae:
            with torch.no_grad():
                return self.igr.vae_encode(image), None
        post = self.igr.vae.encode(image).latent_dist
        rec = self.igr.vae.decode(post.mean).sample
        ae = F.mse_loss(rec.float(), image.float()) + VAE_KL_WEIGHT * post.kl().float().mean()
        # the diffusion loss must not shape the latent space (it would collapse it): stop its gradient
        return (post.mean * self.igr.config.vae.scaling_factor).detach(), ae

    def forward(
        self,
        mask: torch.Tensor,  # (B, 1, h, w) in [0, 1]
        garment_crop: torch.Tensor,  # (B, 3, 224, 224) CLIP-normalised
        category: torch.Tensor,  # (B,) int64 index into CATEGORIES
        noise: torch.Tensor,  # (B, 4, h, w)
        timesteps: torch.Tensor,  # (B,) int64
        n_uncond: int,
        person: torch.Tensor | None = None,  # (B, 3, H, W) in [-1, 1]
        target: torch.Tensor | None = None,  # (B, 3, H, W) in [-1, 1]: the in-shop garment
        person_latent: torch.Tensor | None = None,  # (B, 4, h, w): cached, instead of ``person``
        target_latent: torch.Tensor | None = None,  # (B, 4, h, w): cached, instead of ``target``
        thumbnail: torch.Tensor | None = None,  # (B, 3, 16, 12) in [-1, 1]: the thumbnail head's target
    ) -> dict[str, torch.Tensor]:
        igr, dt = self.igr, self.dtype
        b = mask.shape[0]
        mask, garment_crop = mask.to(dt), garment_crop.to(dt)

        if target_latent is not None:
            z0, ae_target = target_latent.float(), None
        else:
            z0, ae_target = self._encode(target.to(dt))  # (B, 4, h, w)
        text = igr.prompt_embeds[category].to(dt)  # (B, 77, C): fixed category prompts
        ip = igr.uncond_ip_tokens(n_uncond)  # (B_u, T_ip, C)
        ref_k = ref_v = None
        ae_person = None
        thumb_loss = None
        if n_uncond < b:
            kept = slice(n_uncond, b)
            if person_latent is not None:
                zp = person_latent[kept].to(dt)
            else:
                zp, ae_person = self._encode(person[kept].to(dt))  # (B_c, 4, h, w)
            ip_kept = igr.ip_tokens(garment_crop[kept])  # (B_c, T_ip, C)
            ip = torch.cat([ip, ip_kept])  # (B, T_ip, C)
            # GarmNet is trained through the denoiser's attention: no detach here
            feats = igr.garmnet_features(zp, mask[kept], text[kept])
            ref_k, ref_v = igr.reference_kv(feats)  # per block (B_c, N_i, C_i)
            if self.thumbnail_weight > 0:
                thumb_loss = F.mse_loss(self.thumb(ip_kept).float(), thumbnail[kept].float())

        zt = self.add_noise(z0, noise, timesteps).to(dt)
        pred = igr.denoise(zt, timesteps, text, ip.to(dt), n_uncond, ref_k=ref_k, ref_v=ref_v)
        err = (pred.float() - self.target(z0, noise, timesteps)).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if self.snr_gamma is not None:
            ab = self.alphas_cumprod.to(timesteps.device)[timesteps]
            err = err * min_snr_weight(ab, self.snr_gamma, self.prediction_type)
        diffusion = err.mean()
        loss = diffusion
        out_extra = {}
        if thumb_loss is not None:
            loss = loss + self.thumbnail_weight * thumb_loss
            out_extra["thumbnail"] = thumb_loss.detach()
        elif self.thumbnail_weight > 0:
            loss = loss + 0.0 * sum(p.sum() for p in self.thumb.parameters())
        if n_uncond == b:
            # Nothing reached GarmNet (or a trained image encoder) in this batch. DDP and ZeRO expect a
            # gradient for every trainable parameter on every rank, so give them an exact zero.
            loss = loss + 0.0 * sum(p.sum() for p in self._condition_only_parameters())
        out = {"diffusion": diffusion.detach(), **out_extra}
        if self.train_vae and ae_target is not None:
            ae = ae_target if ae_person is None else 0.5 * (ae_target + ae_person)
            loss = loss + ae
            out["autoencoder"] = ae.detach()
        out["loss"] = loss
        return out

    def _condition_only_parameters(self):
        for module in (self.igr.garmnet, self.igr.image_encoder):
            yield from (p for p in module.parameters() if p.requires_grad)


def set_trainable(model: IGRModel, train_vae: bool = False, train_image_encoder: bool = False) -> list[str]:
    """requires_grad for IGR's trainable parts; returns the names of GarmNet parameters left frozen.

    Trainable: the denoiser (with its IP-Adapter K/V layers), GarmNet and the image projection.
    Frozen unless asked: VAE and CLIP image encoder (kept in eval mode). The prompt embeddings are a
    buffer and never trained. GarmNet parameters that cannot reach the loss (everything after the
    last transformer block's norm1) are frozen too: they would only carry ``None`` gradients, which
    DDP and ZeRO treat as an error.
    """
    model.requires_grad_(False)
    for part in (model.denoiser, model.garmnet, model.image_proj):
        part.requires_grad_(True)
    model.vae.requires_grad_(train_vae)
    model.image_encoder.requires_grad_(train_image_encoder)
    unused = unreachable_garmnet_parameters(model)
    params = dict(model.garmnet.named_parameters())
    for name in unused:
        params[name].requires_grad_(False)
    log.info("GarmNet: %d of %d parameter tensors cannot reach the loss and stay frozen", len(unused), len(params))
    return unused


def unreachable_garmnet_parameters(model: IGRModel) -> list[str]:
    """Names of GarmNet parameters with no path to its recorded features (found by one tiny backward).

    Which parameters are used does not depend on the input size, so the probe runs on the smallest
    latent the UNet accepts.
    """
    c = model.config
    if not c.use_garmnet:  # the ablation without GarmNet: none of it reaches the loss
        return [n for n, _ in model.garmnet.named_parameters()]
    p = next(model.garmnet.parameters())
    side = c.unet.downsample_factor
    latent = p.new_zeros(1, 4, side, side)
    mask = p.new_zeros(1, 1, side, side)
    text = model.prompt_embeds[:1].to(p.dtype)
    named = [(n, q) for n, q in model.garmnet.named_parameters() if q.requires_grad]
    with torch.enable_grad():
        feats = model.garmnet_features(latent, mask, text)
        total = sum(f.float().sum() for f in feats)
        grads = torch.autograd.grad(total, [q for _, q in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads) if g is None]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

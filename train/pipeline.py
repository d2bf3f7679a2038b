"""The torch reference pipeline: what the exported engines and the runtime must reproduce.

Stages (DESIGN.md section 4):
  1. validate and preprocess (shared with the runtime: ``igr_sdk.preprocess``)
  2. garment crop -> CLIP image encoder -> IP tokens
  3. VAE encode the person; GarmNet once -> reference features (-> K/V cache for ``cached``)
  4. DDIM with diffusers' DDIMScheduler over the [uncond x B ; cond x B] batch, CFG combine
  5. VAE decode -> PIL

Forms: ``cached`` (the product's math), ``naive`` (paper-literal concatenation, reference
features re-projected every step) and ``per_step_garmnet`` (GarmNet re-run at every step, as
IDM-VTON-style code does; a compute baseline only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from igr_sdk import InputError
from igr_sdk.preprocess import ImageLike, Prepared, check_request, prepare, to_image
from igr_sdk.scheduler import check_prediction_type, schedule_timesteps
from train.config import CATEGORIES
from train.model import FORMS, IGRModel


@dataclass(frozen=True)
class ReferenceResult:
    images: list[Image.Image]
    latents: np.ndarray  # (B, 4, h, w), the final DDIM latent
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Conditions:
    """Everything the denoiser needs that does not change over the steps (the CFG batch)."""

    text: torch.Tensor  # (2B, 77, C)
    ip: torch.Tensor  # (2B, T_ip, C): [zero-embedding tokens x B ; garment tokens x B]
    person_latent: torch.Tensor  # (B, 4, h, w)
    mask: torch.Tensor  # (B, 1, h, w)
    text_cond: torch.Tensor  # (B, 77, C)


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> np.ndarray:
    """One float32 standard-normal latent per seed: (B, 4, h, w). The runtime draws the same."""
    return np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])


class ReferencePipeline:
    """Runs on the model's own device and dtype; the DDIM state stays fp32. The model's train/eval
    mode is left as it is (training draws validation grids mid-run)."""

    def __init__(self, model: IGRModel):
        self.model = model
        self.config = model.config
        p = model.denoiser.conv_in.weight
        self.device, self.dtype = p.device, p.dtype

    def scheduler(self) -> DDIMScheduler:
        """diffusers' DDIM with every constant of the config, ``prediction_type`` included; only the
        prediction types the runtime supports are accepted, so the two always sample alike."""
        check_prediction_type(self.config.scheduler.prediction_type)
        return DDIMScheduler(**self.config.scheduler.diffusers_kwargs())

    def _tensor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).to(self.device, self.dtype)

    # 1. inputs ---------------------------------------------------------------------------------
    def prepare(self, persons: list[ImageLike], masks: list[ImageLike]) -> list[Prepared]:
        if len(persons) != len(masks):
            raise InputError(f"got {len(persons)} person images but {len(masks)} masks")
        c = self.config
        return [prepare(p, m, c.height, c.width, c.vae.downsample_factor) for p, m in zip(persons, masks)]

    # 2-3. conditions -----------------------------------------------------------------------------
    @torch.no_grad()
    def conditions(self, prepared: list[Prepared], categories: list[str]) -> Conditions:
        m = self.model
        b = len(prepared)
        text = m.text_embeds(categories).to(self.dtype)
        ip_cond = m.ip_tokens(self._tensor([p.garment_crop for p in prepared]))  # from (B, 3, 224, 224)
        person = self._tensor([p.person for p in prepared])  # (B, 3, H, W)
        return Conditions(
            text=torch.cat([text, text]),
            ip=torch.cat([m.uncond_ip_tokens(b).to(self.dtype), ip_cond]),
            person_latent=m.vae_encode(person),
            mask=self._tensor([p.mask for p in prepared]),
            text_cond=text,
        )

    # 4. one guided noise prediction ------------------------------------------------------------
    @torch.no_grad()
    def step_fn(self, cond: Conditions, form: str = "cached"):
        """A function latents (B, 4, h, w), t -> CFG batch noise prediction (2B, 4, h, w)."""
        if form not in FORMS:
            raise InputError(f"unknown form {form!r}; expected one of {FORMS}")
        m = self.model
        b = cond.person_latent.shape[0]
        feats = m.garmnet_features(cond.person_latent, cond.mask, cond.text_cond)
        ref_k, ref_v = m.reference_kv(feats)

        def call(latents: torch.Tensor, t: int) -> torch.Tensor:
            sample = torch.cat([latents, latents]).to(self.dtype)  # (2B, 4, h, w)
            ts = torch.full((2 * b,), t, dtype=torch.int64, device=self.device)
            with torch.no_grad():
                if form == "cached":
                    return m.denoise(sample, ts, cond.text, cond.ip, b, ref_k=ref_k, ref_v=ref_v)
                step_feats = feats
                if form == "per_step_garmnet":
                    step_feats = m.garmnet_features(cond.person_latent, cond.mask, cond.text_cond)
                return m.denoise(sample, ts, cond.text, cond.ip, b, ref_feats=step_feats)

        return call

    # 1-5. the whole restore --------------------------------------------------------------------
    @torch.no_grad()
    def restore(
        self,
        person: ImageLike | list[ImageLike],
        mask: ImageLike | list[ImageLike],
        category: str | list[str] = "upper",
        steps: int = 25,
        guidance_scale: float = 1.5,
        seed: int | list[int] | None = None,
        form: str = "cached",
    ) -> ReferenceResult:
        req = check_request(person, mask, category, guidance_scale, seed, CATEGORIES)
        schedule_timesteps(dataclasses.asdict(self.config.scheduler), steps)  # the SDK's step-count check
        persons, masks, categories, seeds = req.persons, req.masks, req.categories, tuple(req.seeds)

        decoded, latents = self.sample(self.prepare(persons, masks), categories, steps, guidance_scale, seeds, form)
        return ReferenceResult([to_image(x) for x in decoded], latents, seeds)

    # 2-5. from preprocessed inputs ----------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prepared: list[Prepared],
        categories: list[str],
        steps: int,
        guidance_scale: float,
        seeds: Sequence[int],
        form: str = "cached",
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> decoded images (B, 3, H, W) in about [-1, 1] and the final latents (B, 4, h, w)."""
        cond = self.conditions(prepared, categories)
        step = self.step_fn(cond, form)
        sched = self.scheduler()
        sched.set_timesteps(steps)
        h, w = self.config.latent_size
        latents = torch.from_numpy(initial_noise(seeds, (4, h, w))).to(self.device)  # fp32 DDIM state
        b = len(prepared)
        for t in sched.timesteps:
            pred = step(latents, int(t)).float()  # (2B, 4, h, w): eps or v, as the config predicts
            pred = pred[:b] + guidance_scale * (pred[b:] - pred[:b])  # eq. 2 of the paper, on the model output
            latents = sched.step(pred, t, latents).prev_sample
        decoded = self.model.vae_decode(latents.to(self.dtype)).float().cpu().numpy()
        return decoded, latents.cpu().numpy()

"""``Restorer``: garment restoration over an engine directory, torch-free.

Stages of one request (DESIGN.md section 4):
  1. validate and preprocess inputs (resize and pad, garment crop, mask on the latent grid); with no
     mask, the engine folder's parser finds the garment in the photo (igr_sdk._parse)
  2. ``image_encoder`` on the garment crop -> IP tokens
  3. ``vae_encoder`` on the person, then ``garmnet`` once -> reference K/V, kept on the device
  4. DDIM: one ``denoiser`` call per step on [uncond x B ; cond x B], CFG combine, numpy update
  5. ``vae_decoder`` -> PIL images
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from igr_sdk import _scheduler as ddim
from igr_sdk._backend import Backend, open_backend
from igr_sdk._errors import EngineError, InputError, NonFiniteError
from igr_sdk._manifest import Manifest, read_constants, read_manifest
from igr_sdk._parse import Parser, open_parser
from igr_sdk._preprocess import (
    ImageLike,
    Prepared,
    check_count,
    check_request,
    load_mask,
    load_rgb,
    match_mask,
    prepare,
    to_image,
)

STAGES = ("preprocess", "parser", "image_encoder", "vae_encoder", "garmnet", "denoiser", "vae_decoder", "postprocess")


@dataclass(frozen=True)
class RestoreResult:
    images: tuple[Image.Image, ...]  # one garment per person, at the engines' resolution
    timings: dict[str, float]  # seconds per stage (STAGES) and "total"
    seeds: tuple[int, ...]
    masks: tuple[Image.Image, ...] = ()  # the mask used for each person (given or parsed), "L" 0/255, photo size

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def mask(self) -> Image.Image:
        return self.masks[0]


class Restorer:
    """Restores in-shop garment images from person photos with exported IGR engines.

    Thread-safe: a call keeps all its state in locals; with a backend whose engines bind fixed device
    buffers (TensorRT), concurrent calls are served one engine batch at a time.

    ``close()`` (or leaving a ``with Restorer.from_dir(...) as restorer:`` block) releases the engines
    and their device memory; a closed Restorer refuses to restore.
    """

    def __init__(
        self, manifest: Manifest, backend: Backend, constants: dict[str, np.ndarray], parser: Parser | None = None
    ):
        self.manifest = manifest
        self.backend = backend
        self.parser = parser  # the engine folder's human parser, for requests without a mask
        self._closed = False
        # a backend that binds fixed device buffers (TensorRT) serves one request at a time
        self._serial = contextlib.nullcontext() if getattr(backend, "reentrant", False) else threading.Lock()
        self._prompt_embeds = constants["prompt_embeds"]  # (3, 77, C)
        self._uncond_ip = constants["uncond_ip_tokens"]  # (1, T_ip, C)
        sched = manifest.raw["scheduler"]
        self._alpha_bar = ddim.schedule_alphas(sched)
        self._final_alpha_bar = 1.0 if sched["set_alpha_to_one"] else float(self._alpha_bar[0])
        self._prediction_type = sched.get("prediction_type")
        if self._prediction_type not in ddim.PREDICTION_TYPES:
            raise EngineError(
                f"manifest scheduler predicts {self._prediction_type!r}; "
                f"supported: {', '.join(map(repr, ddim.PREDICTION_TYPES))}"
            )

    @classmethod
    def from_dir(
        cls,
        engine_dir: str | Path | None = None,
        backend: str = "auto",
        device: str | int | None = None,
        threads: int | None = None,
        *,
        cuda_graph: bool = False,
        pinned: bool = False,
    ) -> Restorer:
        """Open an engine directory written by ``export/build_engines.py``.

        backend: "auto" (TensorRT when its plans match this GPU, else ONNX Runtime), "onnxruntime"
        or "tensorrt". device: "cpu", "cuda" or "cuda:N" for ONNX Runtime, a GPU index for TensorRT.
        threads: ONNX Runtime's intra-op threads (default: one per physical core). A request runs
        its graphs one after another, so ``threads`` is the number of cores one request uses. One
        request at a time: threads = the physical cores, for the lowest latency. R requests at a
        time on C physical cores: R workers, each its own Restorer (a process, or a thread with its
        own Restorer; calls sharing one Restorer share its thread pool) with threads = C // R, so
        that R x threads <= C; past 2-4 threads a small graph gains little per request, so more
        workers with fewer threads serve more requests per second. Keep other thread pools
        (torch, OMP_NUM_THREADS) off those cores. fp32 and int8 engines split the same way.
        cuda_graph: TensorRT only, capture the denoiser step in a CUDA graph and replay it.
        pinned: TensorRT only, stage host->device copies in page-locked memory.
        """
        if engine_dir is None:
            from igr_sdk._default import default_engine_dir

            engine_dir = default_engine_dir()
        threads = check_count(threads, "threads", 1, 1024)
        manifest = read_manifest(engine_dir)
        constants = read_constants(manifest)
        opened = open_backend(manifest, backend, device, threads, cuda_graph=cuda_graph, pinned=pinned)
        try:
            return cls(manifest, opened, constants, open_parser(manifest, device, threads))
        except BaseException:
            opened.close()  # device memory is not left to the garbage collector
            raise

    def close(self) -> None:
        """Release the backend's engines and device memory; idempotent."""
        if not self._closed:
            self._closed = True
            self.backend.close()
            if self.parser is not None:
                self.parser.close()

    def __enter__(self) -> Restorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- public API -----------------------------------------------------------------------------
    def restore(
        self,
        person: ImageLike | Sequence[ImageLike],
        mask: ImageLike | Sequence[ImageLike | None] | None = None,
        category: str | Sequence[str] = "upper",
        steps: int = 25,
        guidance_scale: float = 1.5,
        seed: int | Sequence[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RestoreResult:
        """Restore the garment worn in ``person`` (one image or a list, restored as batches).

        mask: the garment's mask (image or 0/1 array, any size with the person's aspect ratio); None
            (for all, or for some persons of a list): the engine folder's parser finds the garment of
            the category in the photo. The masks used come back in the result.
        seed: int for all, one per person, or None for fresh seeds (returned in the result).
        progress: called as progress(done_steps, total_steps) after every denoiser step.
        """
        if self._closed:
            raise EngineError("this Restorer is closed; open another with Restorer.from_dir")
        req = check_request(person, mask, category, guidance_scale, seed, self.manifest.categories)
        timesteps = ddim.schedule_timesteps(self.manifest.raw["scheduler"], steps)
        persons, masks, cats, seeds = req.persons, req.masks, req.categories, req.seeds
        n = len(persons)
        if self.parser is None and any(m is None for m in masks):
            raise InputError(_NO_PARSER.format(root=self.manifest.root))

        timings = dict.fromkeys(STAGES, 0.0)
        t_start = time.perf_counter()
        h, w = self.manifest.resolution
        prepared, used = [], []
        for i, (p, m, c) in enumerate(zip(persons, masks, cats)):
            rgb, m = self._person_and_mask(p, m, c, _name(p, i, n), timings)
            prepared.append(prepare(rgb, m, h, w, self.manifest.latent_factor))
            used.append(Image.fromarray(m.astype(np.uint8) * 255))
        timings["preprocess"] = time.perf_counter() - t_start - timings["parser"]

        b = self.manifest.batch
        images: list[Image.Image] = []
        total_steps = len(timesteps) * math.ceil(n / b)
        for start in range(0, n, b):
            chunk = list(range(start, min(start + b, n)))
            pad = chunk + [chunk[-1]] * (b - len(chunk))  # engines have a static batch: repeat the last
            with self._serial:
                out = self._restore_batch(
                    [prepared[i] for i in pad],
                    [cats[i] for i in pad],
                    [seeds[i] for i in pad],
                    timesteps,
                    float(guidance_scale),
                    timings,
                    progress,
                    start // b * len(timesteps),
                    total_steps,
                )
            images.extend(out[: len(chunk)])
        timings["total"] = time.perf_counter() - t_start
        return RestoreResult(tuple(images), timings, tuple(seeds), tuple(used))

    def parse(self, person: ImageLike, category: str = "upper") -> Image.Image:
        """The garment of ``category`` that the engine folder's parser finds in ``person``: a mask
        ("L", 0 or 255) at the photo's size. InputError when there is no parser or no such garment."""
        if not isinstance(category, str) or category not in self.manifest.categories:
            raise InputError(f"unknown category {category!r}; expected one of {self.manifest.categories}")
        if self.parser is None:
            raise InputError(_NO_PARSER.format(root=self.manifest.root))
        rgb = load_rgb(person, "person image")
        return Image.fromarray(self.parser.mask(rgb, category, _name(person, 0, 1)).astype(np.uint8) * 255)

    def _person_and_mask(self, person, mask, category: str, name: str, timings: dict) -> tuple[np.ndarray, np.ndarray]:
        """The photo (H, W, 3) uint8 and the garment mask (H, W) bool at its size, given or parsed."""
        rgb = load_rgb(person, "person image")
        if mask is not None:
            m = load_mask(mask, "mask")
            return rgb, match_mask(m, rgb.shape[:2]) if m.any() else m  # prepare() names an empty mask
        t0 = time.perf_counter()
        m = self.parser.mask(rgb, category, name)
        timings["parser"] += time.perf_counter() - t0
        return rgb, m

    # --- one engine batch ------------------------------------------------------------------------
    def _restore_batch(
        self,
        prepared: list[Prepared],
        cats: list[str],
        seeds: list[int],
        timesteps: np.ndarray,
        guidance_scale: float,
        timings: dict,
        progress,
        done: int,
        total: int,
    ) -> list[Image.Image]:
        be = self.backend
        b = len(prepared)

        def cast(graph: str, name: str, x: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(x, dtype=be.input_dtype(graph, name))

        def timed(stage: str, graph: str, feeds: dict) -> dict:
            t0 = time.perf_counter()
            out = be.run(graph, feeds)
            timings[stage] += time.perf_counter() - t0
            return out

        text = self._prompt_embeds[[self.manifest.categories.index(c) for c in cats]]  # (B, 77, C)
        # 2. IP tokens: [zero-embedding tokens x B ; garment tokens x B]
        crops = np.stack([p.garment_crop for p in prepared])  # (B, 3, 224, 224)
        ip = be.to_host(
            timed("image_encoder", "image_encoder", {"garment_crop": cast("image_encoder", "garment_crop", crops)})[
                "ip_tokens"
            ]
        )
        require_finite(ip, "image_encoder", "ip_tokens")
        ip2 = np.concatenate([np.repeat(self._uncond_ip, b, axis=0), ip.astype(np.float32)])  # (2B, T_ip, C)

        # 3. person latent and the reference K/V cache (stays wherever the backend keeps it)
        person = np.stack([p.person for p in prepared])  # (B, 3, H, W)
        latent = timed("vae_encoder", "vae_encoder", {"image": cast("vae_encoder", "image", person)})["latent"]
        require_finite(be.to_host(latent), "vae_encoder", "latent")
        mask = np.stack([p.mask for p in prepared])  # (B, 1, h, w)
        refs = timed(
            "garmnet",
            "garmnet",
            {
                "person_latent": latent,
                "mask": cast("garmnet", "mask", mask),
                "text_embeds": cast("garmnet", "text_embeds", text),
            },
        )

        # 4. DDIM over the CFG batch; constant inputs are converted once, outside the loop
        lat_shape = (4, *(s // self.manifest.latent_factor for s in self.manifest.resolution))
        x = np.stack([np.random.default_rng(s).standard_normal(lat_shape, dtype=np.float32) for s in seeds])
        fixed = {
            "text_embeds": cast("denoiser", "text_embeds", np.concatenate([text, text])),
            "ip_tokens": cast("denoiser", "ip_tokens", ip2),
            **refs,
        }
        for i, t in enumerate(timesteps):
            prev = ddim.previous_timestep(t, len(timesteps), len(self._alpha_bar))
            feeds = {
                "sample": cast("denoiser", "sample", np.concatenate([x, x])),
                "timestep": cast("denoiser", "timestep", np.array([t], dtype=np.float32)),
                **fixed,
            }
            eps = be.to_host(timed("denoiser", "denoiser", feeds)["noise_pred"]).astype(np.float32)
            if not np.isfinite(eps).all():
                self._blame_nonfinite(eps, refs, f"step {i + 1}/{len(timesteps)} (timestep {int(t)})")
            x = ddim.ddim_step(
                x,
                ddim.guided(eps, guidance_scale),  # CFG on the model output (eps or v)
                int(t),
                prev,
                self._alpha_bar,
                self._final_alpha_bar,
                self._prediction_type,
            )
            require_finite(
                x, "DDIM update", f"the latents after step {i + 1}/{len(timesteps)}", _guidance_hint(guidance_scale)
            )
            if progress is not None:
                progress(done + i + 1, total)

        # 5. decode
        image = be.to_host(
            timed("vae_decoder", "vae_decoder", {"latent": cast("vae_decoder", "latent", x)})["image"]
        ).astype(np.float32)
        require_finite(image, "vae_decoder", "image")
        t0 = time.perf_counter()
        out = [to_image(im) for im in image]
        timings["postprocess"] += time.perf_counter() - t0
        return out

    def _blame_nonfinite(self, noise_pred: np.ndarray, refs: dict, where: str) -> None:
        """Name the stage that produced the first NaN or infinity the denoiser returned."""
        for name, ref in refs.items():
            require_finite(self.backend.to_host(ref), "garmnet", name)
        require_finite(noise_pred, "denoiser", f"noise_pred at {where}")


_NO_PARSER = (
    "no mask given, and the engine folder {root} has no parser graph to find the garment: pass a mask, "
    "or export a parser into the folder (python export/build_engines.py --checkpoint CKPT --out DIR "
    "--parser SEGFORMER_DIR)"
)


def _name(person, index: int, count: int) -> str:
    """How an error names a person: its file name, else its place in the call."""
    if isinstance(person, (str, os.PathLike)):
        return Path(person).name
    return f"person image {index + 1}" if count > 1 else "the person image"


def require_finite(x: np.ndarray, stage: str, what: str, hint: str = "") -> None:
    """Raise ``NonFiniteError`` naming the stage unless every value of ``x`` is finite."""
    finite = np.isfinite(x)
    if finite.all():
        return
    raise NonFiniteError(
        f"{stage} produced {finite.size - int(finite.sum())} NaN or infinite values in {what} "
        f"(of {finite.size}); expected finite numbers{hint or ': the engine overflowed (an fp16 engine may need fp32)'}"
    )


def _guidance_hint(guidance_scale: float) -> str:
    return f": guidance_scale {guidance_scale:g} scales the prediction too far; try one near 1.5"

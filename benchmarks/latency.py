"""Latency per stage and end to end of IGR's torch reference pipeline and of the SDK.

Every measured thing is a *system*: named per-stage callables plus one end-to-end callable, built
by a function in ``SYSTEMS``. The torch reference pipeline registers one system per form
(``naive``, ``cached``, ``per_step_garmnet``); ``--engines DIR`` adds ``sdk``, igr_sdk's
``Restorer`` over an engine folder (fp32), and ``--engines-int8 DIR`` adds ``sdk_int8`` over the
folder of ``build_engines.py --precision int8``; the SDK's ``restore`` reports its own per-stage
``timings``. ``--threads 1,2`` measures every system at each thread count (torch intra-op threads
and the SDK's ``threads``), one after the other in one run.

The CPU comparison of issue 13 (SDK int8 vs SDK fp32 vs torch naive and cached, small preset),
engines built from the same checkpoint the torch systems load::

    python export/build_engines.py --checkpoint CKPT --out engines/small-fp32
    python export/build_engines.py --checkpoint CKPT --out engines/small-int8 --precision int8
    python benchmarks/latency.py --checkpoint CKPT --systems naive,cached --threads 1,2 \
        --engines engines/small-fp32 --engines-int8 engines/small-int8 --json latency_int8.json

(``bash benchmarks/int8_cpu.sh CKPT`` runs these three.)

Stages (B requests at the config's resolution, synthetic person + rectangular garment mask):
  preprocess     ReferencePipeline.prepare (resize, pad, crop; numpy)
  image_encoder  CLIP vision tower + IP projection, (B, 3, 224, 224) -> (B, 4, C)
  vae_encoder    (B, 3, H, W) -> (B, 4, h, w)
  garmnet        the form's once-per-request GarmNet work: features + reference K/V (cached),
                 features only (naive), none (per_step_garmnet runs it inside every step)
  denoiser_step  one noise prediction of the (2B, 4, h, w) CFG batch (the pipeline's ``step_fn``)
  vae_decoder    (B, 4, h, w) -> (B, 3, H, W)
  parser         SDK systems whose engine folder has a parser graph: its logits for one photo
                 (resize and normalisation included), what a request without a mask adds
  end_to_end     ``ReferencePipeline.restore`` with ``--steps`` DDIM steps (it computes GarmNet and
                 the K/V cache once for every form, so naive/per_step_garmnet do a little extra).

The reference pipeline runs on the model's device and dtype (``--device``, ``--dtype``).

Times are medians over ``--repeats`` runs after ``--warmup`` runs, with min/max and the
interquartile range; the runs of all systems are interleaved, so load changes hit them alike.
Peak memory is measured on one extra end-to-end run (never a timed one): CUDA
``max_memory_allocated`` above the allocation before it; on CPU the process RSS sampled every
5 ms with psutil (else the ``ru_maxrss`` growth, which only shows a new lifetime peak) above the
RSS before it — approximate, since the allocator may keep freed pages. On a shared CPU, oversubscribed
intra-op threads stall badly: ``--threads 1`` gives steadier numbers there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks import flops as fl
from train.checkpoint import load_checkpoint, new_model, read_config
from train.config import IGRConfig, preset
from train.model import FORMS, IGRModel
from train.pipeline import Conditions, ReferencePipeline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("preprocess", "image_encoder", "vae_encoder", "garmnet", "denoiser_step", "vae_decoder")
STEP_T = 500  # the timestep of the single-step timing; the cost does not depend on it


# --- inputs ------------------------------------------------------------------------------------------
def synthetic_request(config: IGRConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random (H, W, 3) uint8 person image and a (H, W) bool rectangle mask at the config's size."""
    h, w = config.height, config.width
    person = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 5 : 3 * h // 5, w // 4 : 3 * w // 4] = True  # an upper-body-sized box
    return person, mask


def random_conditions(
    config: IGRConfig, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Conditions:
    """Conditions of random tensors at ``config``'s resolution: enough to time the denoiser."""
    c = config
    g = torch.Generator().manual_seed(seed)
    h, w = c.latent_size
    ct = c.unet.cross_attention_dim

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    text = r(batch, c.text_len, ct)
    return Conditions(
        text=torch.cat([text, text]),  # (2B, 77, C)
        ip=r(2 * batch, c.ip_tokens, ct),  # (2B, T_ip, C)
        person_latent=r(batch, 4, h, w),
        mask=(torch.rand(batch, 1, h, w, generator=g) > 0.5).to(device, dtype),
        text_cond=text,
    )


def graph_flops(config: IGRConfig, batch: int, form: str) -> dict[str, float]:
    """``flops.flops``, counted once per (config, batch, form): counting runs the model, and every
    thread count and SDK system asks again."""
    return dict(_counted_flops(config, batch, form))


@functools.cache
def _counted_flops(config: IGRConfig, batch: int, form: str) -> dict[str, float]:
    return fl.flops(config, batch, form)


# --- systems -----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every system builder gets."""

    config: IGRConfig
    batch: int
    steps: int
    guidance: float
    device: torch.device
    dtype: torch.dtype
    persons: list[np.ndarray]
    masks: list[np.ndarray]
    categories: list[str]
    seeds: list[int]
    model: IGRModel | None = None
    engines: Path | None = None
    backend: str = "onnxruntime"
    engines_int8: Path | None = None


@dataclass
class System:
    name: str
    stages: dict[str, Callable[[], Any]]  # one run of each stage
    end_to_end: Callable[[], dict[str, float] | None]  # one restore; may return its own stage timings (s)
    stage_flops: dict[str, float] = field(default_factory=dict)  # FLOPs of one run of each stage
    e2e_flops: float | None = None
    reported_flops: dict[str, float] = field(default_factory=dict)  # FLOPs behind each reported timing
    note: str = ""


class Skipped(Exception):
    """A system that cannot run here; the message says why."""


SYSTEMS: dict[str, Callable[[Setup], System]] = {}


def register(name: str):
    def deco(fn: Callable[[Setup], System]):
        SYSTEMS[name] = fn
        return fn

    return deco


def torch_system(setup: Setup, form: str) -> System:
    m = setup.model
    ref = ReferencePipeline(m)  # on the model's device and dtype
    prepared = ref.prepare(setup.persons, setup.masks)
    crops = ref._tensor([p.garment_crop for p in prepared])  # (B, 3, 224, 224)
    person = ref._tensor([p.person for p in prepared])  # (B, 3, H, W)
    cond = ref.conditions(prepared, setup.categories)
    step = ref.step_fn(cond, form)
    h, w = setup.config.latent_size
    latents = torch.randn(setup.batch, 4, h, w, generator=torch.Generator().manual_seed(0)).to(
        setup.device, setup.dtype
    )

    @torch.no_grad()
    def garmnet():
        feats = m.garmnet_features(cond.person_latent, cond.mask, cond.text_cond)
        return m.reference_kv(feats) if form == "cached" else feats

    stages: dict[str, Callable[[], Any]] = {
        "preprocess": lambda: ref.prepare(setup.persons, setup.masks),
        "image_encoder": torch.no_grad()(lambda: m.ip_tokens(crops)),
        "vae_encoder": torch.no_grad()(lambda: m.vae_encode(person)),
        "garmnet": garmnet,
        "denoiser_step": lambda: step(latents, STEP_T),
        "vae_decoder": torch.no_grad()(lambda: m.vae_decode(latents)),
    }
    if form == "per_step_garmnet":
        del stages["garmnet"]

    def e2e():
        ref.restore(setup.persons, setup.masks, setup.categories, setup.steps, setup.guidance, setup.seeds, form)

    g = graph_flops(setup.config, setup.batch, form)
    stage_flops = {
        "image_encoder": g["image_encoder"],
        "vae_encoder": g["vae_encoder"],
        "garmnet": fl.once_garmnet(g, form),
        "denoiser_step": g["denoiser"],
        "vae_decoder": g["vae_decoder"],
    }
    total = fl.combine(g, setup.steps, form)["total"]
    return System(form, stages, e2e, stage_flops, total, note=f"torch ReferencePipeline ({ref.device}, {ref.dtype})")


for _form in FORMS:
    register(_form)(lambda setup, f=_form: torch_system(setup, f))


def sdk_system(setup: Setup, engines: Path | None = None, name: str = "sdk", option: str = "--engines") -> System:
    try:
        from igr_sdk import Restorer
    except ImportError:
        raise Skipped("igr_sdk.Restorer not available") from None
    engines = setup.engines if engines is None and name == "sdk" else engines
    if engines is None:
        raise Skipped(f"no {option} DIR given")
    try:
        # the same intra-op thread count as torch, so the two are compared on equal cores
        restorer = Restorer.from_dir(engines, backend=setup.backend, threads=torch.get_num_threads())
    except Exception as e:  # a missing backend or a bad engine folder must not end the other measurements
        raise Skipped(f"Restorer.from_dir({str(engines)!r}) failed: {e}") from None
    many = setup.batch > 1
    person = setup.persons if many else setup.persons[0]
    mask = setup.masks if many else setup.masks[0]
    category = setup.categories if many else setup.categories[0]
    seed = setup.seeds if many else setup.seeds[0]

    stages: dict[str, Callable[[], Any]] = {}
    if getattr(restorer, "parser", None) is not None:
        # the parser graph on one photo (its resize and normalisation included), for requests without a mask
        photo = setup.persons[0]
        stages["parser"] = lambda: restorer.parser.logits(photo)

    def e2e() -> dict[str, float]:
        result = restorer.restore(person, mask, category, setup.steps, setup.guidance, seed)
        # the request carries its mask: the parser never runs in it (its own stage row times it)
        timings = {k: float(v) for k, v in result.timings.items() if k != "parser"}
        if "denoiser" in timings:  # the SDK sums its steps; per step compares with the torch stage
            timings["denoiser_step"] = timings["denoiser"] / setup.steps
        return timings

    # The engines implement the cached form at the resolution they were built for.
    res = getattr(getattr(restorer, "manifest", None), "resolution", None)
    config = setup.config.with_resolution(*res) if res else setup.config
    g = graph_flops(config, setup.batch, "cached")
    reported = {k: g[k] for k in ("image_encoder", "vae_encoder", "garmnet", "vae_decoder")}
    reported.update(denoiser=setup.steps * g["denoiser"], denoiser_step=g["denoiser"])
    total = fl.combine(g, setup.steps, "cached")["total"]
    note = (
        f"igr_sdk Restorer, backend {getattr(restorer.backend, 'name', setup.backend)}, {engine_precisions(restorer)}"
    )
    return System(name, stages, e2e, {}, total, reported, note=note)


def engine_precisions(restorer) -> str:
    """'fp32' when every graph runs in one precision, else 'precision: graph int8, ...' per graph."""
    backend = getattr(restorer, "backend", None)
    raw = getattr(getattr(restorer, "manifest", None), "raw", {})
    per_graph = {}
    for g, v in raw.get("graphs", {}).items():
        e = v.get("engines", {}).get(getattr(backend, "name", ""), {})
        per_graph[g] = e.get("precision", "?")
    if len(set(per_graph.values())) == 1:
        return next(iter(per_graph.values()))
    return "precision: " + ", ".join(f"{g} {p}" for g, p in per_graph.items())


register("sdk")(sdk_system)
register("sdk_int8")(lambda setup: sdk_system(setup, setup.engines_int8, "sdk_int8", "--engines-int8"))


# --- measuring ---------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(times: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "q1_s": q[0],
        "q3_s": q[2],
        "times_s": times,
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> tuple[list[float], list[Any]]:
    """Wall times of ``repeats`` calls after ``warmup`` untimed ones, and what the timed calls returned."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        outs.append(out)
    return times, outs


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator, else sampled RSS, else ru_maxrss growth."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval = device, interval_s
        self.peak_bytes: int | None = None
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        try:
            import psutil
        except ImportError:
            self._base = _maxrss_bytes()
            self.method = "ru_maxrss growth"
            return self
        proc = psutil.Process()
        self._base = self._peak = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        self.method = f"psutil RSS sampled every {self.interval * 1e3:g} ms"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method.startswith("psutil"):
            self._stop.set()
            self._thread.join()
            self.peak_bytes = self._peak - self._base
        else:
            self.peak_bytes = _maxrss_bytes() - self._base


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def _with_flops(s: dict[str, Any], f: float | None) -> dict[str, Any]:
    if f:
        s["gflop"] = f / 1e9
        s["gflop_per_s"] = f / 1e9 / s["median_s"] if s["median_s"] > 0 else float("nan")
    return s


def measure(systems: list[System], repeats: int, warmup: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Time every stage and the end to end of every system; one dict of results per system.

    Runs are interleaved — round r times every (system, stage) once before round r + 1 starts — so
    a change in machine load (a shared CPU) lands on all systems alike and the ratios stay fair.
    """
    jobs = [(s, stage, fn) for s in systems for stage, fn in s.stages.items()]
    jobs += [(s, "end_to_end", s.end_to_end) for s in systems]
    for _, _, fn in jobs:
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[tuple[str, str], list[float]] = {(s.name, stage): [] for s, stage, _ in jobs}
    reported: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for _ in range(repeats):
        for s, stage, fn in jobs:
            t, outs = time_calls(fn, 1, 0, device)
            times[(s.name, stage)] += t
            if stage == "end_to_end" and outs[0]:
                reported[s.name].append(outs[0])

    results = {}
    for s in systems:
        out: dict[str, Any] = {"note": s.note, "stages": {}}
        for stage in s.stages:
            out["stages"][stage] = _with_flops(stats(times[(s.name, stage)]), s.stage_flops.get(stage))
        out["end_to_end"] = _with_flops(stats(times[(s.name, "end_to_end")]), s.e2e_flops)
        keys = sorted({k for r in reported[s.name] for k in r})
        if keys:  # the system's own per-stage timings, e.g. the SDK's result.timings
            out["reported"] = {
                k: _with_flops(stats([r[k] for r in reported[s.name] if k in r]), s.reported_flops.get(k)) for k in keys
            }
        with PeakMemory(device) as mem:  # an extra, untimed run: the sampler never disturbs a timing
            s.end_to_end()
        out["peak_memory_bytes"], out["peak_memory_method"] = mem.peak_bytes, mem.method
        results[s.name] = out
    return results


def add_ratios(results: dict[str, dict[str, Any]], baseline: str) -> None:
    """``speedup`` = baseline median / system median, for every stage both have and end to end."""
    base = results.get(baseline)
    if base is None:
        return
    for r in results.values():
        for name, s in [*r["stages"].items(), *r.get("reported", {}).items()]:
            if name in base["stages"] and s["median_s"] > 0:
                s["speedup"] = base["stages"][name]["median_s"] / s["median_s"]
        r["end_to_end"]["speedup"] = base["end_to_end"]["median_s"] / r["end_to_end"]["median_s"]


def card_peak_tflops(device: torch.device) -> tuple[str, float] | None:
    """The dense fp16 peak of the CUDA card in use, if it is in flops.PEAK_TFLOPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in ("H200", "A100", "L4", "A10"):
        if key in name:
            return key, fl.PEAK_TFLOPS[key]
    if "H100" in name:
        key = "H100 PCIe" if "PCIe" in name else "H100 SXM"
        return key, fl.PEAK_TFLOPS[key]
    return None


# --- report -----------------------------------------------------------------------------------------
def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def markdown(results: dict[str, Any], meta: dict[str, Any], skipped: dict[str, str]) -> str:
    base = meta["baseline"]
    peak = meta.get("peak_tflops")
    lines = [
        f"## Latency: preset {meta['preset']} {meta['height']}x{meta['width']}, batch {meta['batch']}, "
        f"{meta['steps']} steps, {meta['device']} {meta['dtype']}, {meta['threads']} threads",
        "",
        f"Median of {meta['repeats']} runs after {meta['warmup']} warm-up; spread = min–max and IQR; "
        f"speedup = {base} median / median (same run).",
        "",
        "| system | stage | median ms | min–max ms | IQR ms | GFLOP | GFLOP/s | "
        + ("% peak | " if peak else "")
        + f"speedup vs {base} |",
        "|---|---|---:|---|---|---:|---:|" + ("---:|" if peak else "") + "---:|",
    ]
    for name, r in results.items():
        rows = [*r["stages"].items(), ("end_to_end", r["end_to_end"])]
        rows += [(f"reported: {k}", v) for k, v in r.get("reported", {}).items()]
        for stage, s in rows:
            gf = f"{s['gflop']:,.2f}" if "gflop" in s else ""
            rate = f"{s['gflop_per_s']:,.1f}" if "gflop_per_s" in s else ""
            pct = f"{100 * s['gflop_per_s'] / 1e3 / peak[1]:.1f}" if peak and "gflop_per_s" in s else ""
            sp = f"{s['speedup']:.2f}x" if "speedup" in s else ""
            label = f"**{stage}**" if stage == "end_to_end" else stage
            lines.append(
                f"| {name} | {label} | {_ms(s['median_s'])} | {_ms(s['min_s'])}–{_ms(s['max_s'])} | "
                f"{_ms(s['q1_s'])}–{_ms(s['q3_s'])} | {gf} | {rate} | " + (f"{pct} | " if peak else "") + f"{sp} |"
            )
    lines += ["", "| system | peak memory (MiB above start) | how |", "|---|---:|---|"]
    for name, r in results.items():
        mib = r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] is not None else float("nan")
        lines.append(f"| {name} | {mib:,.1f} | {r['peak_memory_method']} |")
    for name, why in skipped.items():
        lines.append(f"\n{name}: skipped: {why}")
    return "\n".join(lines)


def resolve_config(args) -> IGRConfig:
    config = read_config(args.checkpoint) if args.checkpoint else preset(args.preset)
    if args.height or args.width:
        config = config.with_resolution(args.height or config.height, args.width or config.width)
    return config


def build_model(args, config: IGRConfig, device: torch.device, dtype: torch.dtype) -> IGRModel:
    """Random weights (seed 0) or the checkpoint's, run at ``config``'s resolution."""
    model = load_checkpoint(args.checkpoint) if args.checkpoint else new_model(config, seed=0)
    model.config = config  # the architecture is resolution-free; only the pipeline reads the size
    return model.to(device, dtype).eval()


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: expected positive integers, e.g. 1 or 1,2") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: expected positive integers, e.g. 1 or 1,2")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--checkpoint", type=Path, help="an IGR checkpoint folder instead of random weights")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--threads",
        type=_thread_counts,
        help="intra-op threads of torch and the SDK; a comma-separated list (1,2) measures each in turn "
        "(default: torch's choice)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--systems", default=",".join(FORMS), help=f"comma-separated, of {sorted(SYSTEMS)}")
    p.add_argument("--baseline", default="naive")
    p.add_argument("--engines", type=Path, help="engine folder: adds the igr_sdk system")
    p.add_argument("--engines-int8", type=Path, help="int8 engine folder (--precision int8): adds sdk_int8")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.batch < 1 or a.steps < 1:
        p.error("--repeats, --batch and --steps must be >= 1 and --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure; returns ``{"meta", "runs": [{"threads", "systems", "skipped"}, ...]}`` (one run per
    thread count, all systems side by side in each)."""
    a = parse_args(argv)
    counts = a.threads or [torch.get_num_threads()]
    torch.set_num_threads(counts[0])
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    config = resolve_config(a)
    names = [n.strip() for n in a.systems.split(",") if n.strip()]
    for option, name in ((a.engines, "sdk"), (a.engines_int8, "sdk_int8")):
        if option and name not in names:
            names.append(name)
    # sd15 in fp32 is gigabytes: build the torch model only when a torch system will use it.
    model = build_model(a, config, device, dtype) if set(names) & set(FORMS) else None
    persons, masks = zip(*(synthetic_request(config, seed=i) for i in range(a.batch)))
    setup = Setup(
        config=config,
        batch=a.batch,
        steps=a.steps,
        guidance=a.guidance,
        device=device,
        dtype=dtype,
        persons=list(persons),
        masks=list(masks),
        categories=["upper"] * a.batch,
        seeds=list(range(a.batch)),
        model=model,
        engines=a.engines,
        backend=a.backend,
        engines_int8=a.engines_int8,
    )
    peak = card_peak_tflops(device)
    meta = {
        "preset": config.name,
        "height": config.height,
        "width": config.width,
        "batch": a.batch,
        "steps": a.steps,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": a.dtype,
        "threads": counts,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "baseline": a.baseline,
        "checkpoint": str(a.checkpoint) if a.checkpoint else None,
        "peak_tflops": peak,
    }
    runs = []
    for threads in counts:
        torch.set_num_threads(threads)  # the SDK systems open their sessions with this count too
        results, skipped = run_systems(setup, names, a.repeats, a.warmup, a.baseline)
        runs.append({"threads": threads, "systems": results, "skipped": skipped})
        print(markdown(results, {**meta, "threads": threads}, skipped), end="\n\n", flush=True)
    if len(runs) > 1 or len(names) > 1:
        print(summary_markdown(runs, a.baseline))
    report = {"meta": meta, "runs": runs}
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


def run_systems(
    setup: Setup, names: list[str], repeats: int, warmup: int, baseline: str
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Build every named system (at the current thread count), measure them side by side."""
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name not in SYSTEMS:
            skipped[name] = f"unknown system; expected one of {sorted(SYSTEMS)}"
            continue
        try:
            systems.append(SYSTEMS[name](setup))
        except Skipped as e:
            skipped[name] = str(e)
    results = measure(systems, repeats, warmup, setup.device)
    add_ratios(results, baseline)
    return results, skipped


def _stage_median(r: dict[str, Any], stage: str) -> float | None:
    s = r["stages"].get(stage) or r.get("reported", {}).get(stage)
    return s["median_s"] if s else None


def summary_markdown(runs: list[dict[str, Any]], baseline: str) -> str:
    """One row per (threads, system): end to end and every stage, median ms, and the end-to-end speedup."""
    stages = [s for s in STAGES if s != "preprocess"]
    if any("parser" in r["stages"] for run in runs for r in run["systems"].values()):
        stages.append("parser")
    lines = [
        "## Side by side (median ms; speedup = end to end of " + baseline + " / end to end, same thread count)",
        "",
        "| threads | system | end to end | speedup | " + " | ".join(stages) + " |",
        "|---:|---|---:|---:|" + "---:|" * len(stages),
    ]
    for run in runs:
        for name, r in run["systems"].items():
            cells = []
            for st in stages:
                m = _stage_median(r, st)
                cells.append(_ms(m) if m is not None else "")
            sp = r["end_to_end"].get("speedup")
            lines.append(
                f"| {run['threads']} | {name} | {_ms(r['end_to_end']['median_s'])} | "
                + (f"{sp:.2f}x" if sp else "")
                + " | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Every GPU check in one run: `sd15` at 1024x768, random weights, fp16, batch 1 with CFG.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (installs carried wheels if needed)
    python benchmarks/gpu_check.py --reduced     # the same code path on CPU with the tiny preset

Measures, with CUDA events after warm-up (median of repeats):
  - one denoiser step (the [uncond ; cond] batch of 2) in the three forms with SDPA:
    cached (Q-only + reference K/V cache), naive (paper-literal 2N queries), per_step_garmnet;
  - the cached step under torch.compile, and replayed from a captured CUDA graph;
  - GarmNet + reference K/V (once per request), VAE encode and decode, the image encoder;
  - the fp16 agreement of naive and cached noise predictions (max abs difference);
  - peak GPU memory of a whole 25-step request in the cached form.
Writes one JSON (``--json``, default gpu_check.json) and prints it at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]


def _timer(device):
    import torch

    if device.type == "cuda":

        def run(fn, repeats: int, warmup: int) -> list[float]:
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            out = []
            for _ in range(repeats):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                out.append(a.elapsed_time(b) / 1000)
            return out

        return run

    def run_cpu(fn, repeats: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    return run_cpu


def _stats(times: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(times) * 1000, 3),
        "min_ms": round(min(times) * 1000, 3),
        "max_ms": round(max(times) * 1000, 3),
        "n": len(times),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="tiny preset, fp32, on CPU: proves the script works")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args(argv)

    import torch

    from benchmarks.flops import flops as graph_flops
    from train.checkpoint import new_model
    from train.config import preset

    cuda = torch.cuda.is_available() and not args.reduced
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    config = preset("tiny" if args.reduced else "sd15")
    repeats, warmup = (2, 1) if args.reduced else (args.repeats, args.warmup)
    result: dict = {
        "preset": config.name,
        "resolution": [config.height, config.width],
        "batch": 1,
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "sdpa": True,
    }
    timer = _timer(device)
    torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    model = new_model(config, seed=0).to(device=device, dtype=dtype)
    result["build_seconds"] = round(time.perf_counter() - t0, 1)

    g = torch.Generator(device="cpu").manual_seed(0)
    h, w = config.latent_size

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    person_latent, mask = rnd(1, 4, h, w), (torch.rand(1, 1, h, w, generator=g) > 0.5).to(device, dtype)
    text = model.text_embeds(["upper"])
    crop = rnd(1, 3, 224, 224)
    latents = rnd(1, 4, h, w)

    with torch.no_grad():
        ip = torch.cat([model.uncond_ip_tokens(1), model.ip_tokens(crop)])  # (2, T_ip, C)
        text2 = torch.cat([text, text])
        feats = model.garmnet_features(person_latent, mask, text)
        ref_k, ref_v = model.reference_kv(feats)
        t = torch.full((2,), 501, device=device)
        sample = torch.cat([latents, latents])

        def cached():
            return model.denoise(sample, t, text2, ip, 1, ref_k=ref_k, ref_v=ref_v)

        def naive():
            return model.denoise(sample, t, text2, ip, 1, ref_feats=feats)

        def per_step():
            f = model.garmnet_features(person_latent, mask, text)
            return model.denoise(sample, t, text2, ip, 1, ref_feats=f)

        def garmnet():
            return model.reference_kv(model.garmnet_features(person_latent, mask, text))

        image = rnd(1, 3, config.height, config.width).clamp(-1, 1)
        stages = {
            "denoiser_step_cached": cached,
            "denoiser_step_naive": naive,
            "denoiser_step_per_step_garmnet": per_step,
            "garmnet_and_ref_kv": garmnet,
            "vae_encode": lambda: model.vae_encode(image),
            "vae_decode": lambda: model.vae_decode(latents),
            "image_encoder": lambda: model.ip_tokens(crop),
        }
        result["timings"] = {k: _stats(timer(fn, repeats, warmup)) for k, fn in stages.items()}

        a, b = cached().float(), naive().float()
        result["naive_vs_cached"] = {
            "max_abs_diff": float((a - b).abs().max()),
            "max_abs_value": float(a.abs().max()),
            "dtype": str(dtype),
        }

    if cuda and not args.no_compile:
        try:
            compiled = torch.compile(model.denoiser, mode="max-autotune-no-cudagraphs", fullgraph=False)
            orig = model.denoiser
            model.denoiser = compiled
            with torch.no_grad():
                result["timings"]["denoiser_step_cached_compiled"] = _stats(timer(cached, repeats, warmup + 2))
            model.denoiser = orig
        except Exception as e:  # report, don't abort the other checks
            result["timings"]["denoiser_step_cached_compiled"] = f"failed: {type(e).__name__}: {e}"[:300]
    if cuda:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad():
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        cached()
                torch.cuda.current_stream().wait_stream(s)
                with torch.cuda.graph(graph):
                    static_out = cached()  # noqa: F841 - the captured output buffer
            result["timings"]["denoiser_step_cached_cuda_graph"] = _stats(timer(graph.replay, repeats, warmup))
        except Exception as e:
            result["timings"]["denoiser_step_cached_cuda_graph"] = f"failed: {type(e).__name__}: {e}"[:300]

    # peak memory of one whole request (25 steps, cached), from a clean counter
    if cuda:
        del feats
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        t0 = time.perf_counter()
        f = model.garmnet_features(person_latent, mask, text)
        k, v = model.reference_kv(f)
        del f
        x = latents
        for step in range(25):
            tt = torch.full((2,), 961 - 40 * step, device=device)
            eps = model.denoise(torch.cat([x, x]), tt, text2, ip, 1, ref_k=k, ref_v=v)
            x = x - 0.01 * (eps[:1] + 1.5 * (eps[1:] - eps[:1]))  # CFG combine; the update itself is not measured
        model.vae_decode(x)
        if cuda:
            torch.cuda.synchronize()
        result["request_25_steps_seconds"] = round(time.perf_counter() - t0, 3)
    if cuda:
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)

    fl = graph_flops(config, batch=1, form="cached")
    step_tflop = fl["denoiser"] / 1e12
    med = result["timings"]["denoiser_step_cached"]["median_ms"] / 1000
    result["denoiser_step_tflop_cached"] = round(step_tflop, 3)
    result["achieved_tflops_cached"] = round(step_tflop / med, 2)
    print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Analytic FLOP accounting of IGR's graphs (DESIGN.md section 3), multiply-add = 2 FLOPs.

The count runs the model's real forward on ``meta`` tensors (shapes only, no memory, no compute),
so it walks exactly the diffusers / transformers module tree and IGR's attention processors that
the product runs, for any preset and resolution — sd15 at 1024x768 costs well under a second.
A ``TorchFunctionMode`` sees every call and counts:

- ``conv``: ``F.conv2d``, 2 x output elements x (C_in / groups x k_h x k_w); the output size is
  the real one at that point of the network (strides, padding, the VAE's asymmetric pad).
- ``linear``: ``F.linear``, 2 x tokens x in_features x out_features.
- ``attention``: ``F.scaled_dot_product_attention``, QK^T and AV per head, 2 x Nq x Nk x d each.
  Nq / Nk are whatever the processors pass: the denoiser's cond rows attend N queries over
  [reference N ; own N] keys in the cached form, 2N queries over 2N keys in the naive form;
  uncond rows N x N; text (77) and IP (4) cross-attention are two separate calls.
- ``matmul``: any other ``matmul``/``bmm``/``baddbmm`` (none in the current graphs; kept so an
  eager attention implementation would still be counted).

Bias additions are not counted (the convention of fvcore and ``torch.utils.flop_counter``).
Normalisation, activations, the attention softmax and residual adds are memory-bound element-wise
work that tensor cores do not execute; they are *not* in the totals. A rough figure for them is
kept under ``elementwise`` (GroupNorm/LayerNorm 5 FLOP per element, SiLU/GELU 4, softmax 3 per
attention score; CLIP's quick_gelu is a plain ``sigmoid``/``mul`` and is not seen) only to show
that they are small next to the matmul work.

Graphs (B requests; the denoiser runs the CFG batch 2B = [uncond x B ; cond x B]):

- ``image_encoder``: CLIP vision tower on (B, 3, 224, 224) + IP-Adapter projection -> (B, 4, C).
  The uncond rows' tokens (a zero embedding) are a constant and not counted.
- ``vae_encoder``: (B, 3, H, W) -> (B, 4, h, w).
- ``garmnet``: ``garmnet_unet`` (the 5-channel UNet at t = 0) + ``reference_kv`` (W_k R_i and
  W_v R_i with the denoiser's attn1 weights, 2 Linear layers per transformer block over N_i tokens).
- ``denoiser``: one step of the form: ``cached``, ``naive``, or ``per_step_garmnet`` = naive +
  ``garmnet_unet`` (the GarmNet re-run each step; the naive form projects the reference inside its
  attention, so no separate reference K/V).
- ``vae_decoder``: (B, 4, h, w) -> (B, 3, H, W).

End to end, the once-per-request GarmNet cost follows the form: ``garmnet`` (with K/V) for cached,
``garmnet_unet`` for naive, nothing for per_step_garmnet (it is inside every step).

For reference, sd15 at 1024x768, one request, 25 steps, cached: 7.38 TFLOP per denoiser step,
184.5 TFLOP for the steps and 199.4 TFLOP in all (0.64 s on an A100 at peak, 0.20 s on an H100).
An earlier estimate of "about 212 TFLOP" equals 25 x (7.38 + 1.10): the steps alone, with one more
N x N self-attention per block and step — what the uncond rows would cost if they, too, attended
over [reference ; own] tokens, which DESIGN.md rules out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from train.config import IGRConfig, preset
from train.model import FORMS, IGRModel

MATMUL_KINDS = ("conv", "linear", "attention", "matmul")  # what the totals (and tensor-core peaks) cover

# Dense (no 2:4 sparsity) FP16/BF16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets:
# A100: "NVIDIA A100 Tensor Core GPU" data sheet, FP16 Tensor Core 312 (624 with sparsity);
# H100 SXM / PCIe: "NVIDIA H100 Tensor Core GPU" data sheet, 1,979 / 1,513 with sparsity -> 989 / 756;
# H200: "NVIDIA H200 Tensor Core GPU" data sheet (SXM), 1,979 with sparsity -> 989;
# L4: "NVIDIA L4 Tensor Core GPU" data sheet, 242 with sparsity -> 121;
# A10: "NVIDIA A10 Tensor Core GPU" data sheet, 250 with sparsity -> 125.
PEAK_TFLOPS = {
    "A100": 312.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "L4": 121.0,
    "A10": 125.0,
}

# Rough per-element costs of the element-wise ops (reported apart, never in totals).
_ELEMENTWISE_COST = {"norm": 5, "act": 4, "softmax": 3}


@dataclass(frozen=True)
class Op:
    module: str  # dotted path inside IGRModel of the innermost module running the op
    kind: str  # conv | linear | attention | matmul | elementwise
    flops: float
    shape: str  # human-readable shapes, for debugging a count


@dataclass
class FlopCount:
    """The ops of one graph run."""

    ops: list[Op] = field(default_factory=list)

    def total(self, kinds: tuple[str, ...] = MATMUL_KINDS) -> float:
        return float(sum(o.flops for o in self.ops if o.kind in kinds))

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for o in self.ops:
            out[o.kind] += o.flops
        return dict(out)

    def under(self, prefix: str, kinds: tuple[str, ...] = MATMUL_KINDS) -> float:
        """FLOPs of the ops run inside module ``prefix`` (a dotted path) or its children."""
        return float(
            sum(
                o.flops
                for o in self.ops
                if o.kind in kinds and (o.module == prefix or o.module.startswith(prefix + "."))
            )
        )

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.ops + other.ops)


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else "?"


class _Counter(TorchFunctionMode):
    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.ops: list[Op] = []

    def _add(self, kind: str, flops: float, shape: str) -> None:
        self.ops.append(Op(self.stack[-1] if self.stack else "", kind, float(flops), shape))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            self._add("linear", 2 * (x.numel() // w.shape[1]) * w.numel(), f"{_shape(x)} @ {_shape(w)}")
        elif func is F.conv2d or func is torch.conv2d:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            # w[0] is one output channel's receptive field: C_in / groups x k_h x k_w multiply-adds.
            self._add("conv", 2 * out.numel() * w[0].numel(), f"{_shape(args[0])} * {_shape(w)} -> {_shape(out)}")
        elif func is F.scaled_dot_product_attention:
            q, k, v = (args + (None,) * 3)[:3]
            q, k, v = kwargs.get("query", q), kwargs.get("key", k), kwargs.get("value", v)
            nq, d, nk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
            rows = q.numel() // (nq * d)  # batch x heads
            self._add("attention", 2 * rows * nq * nk * (d + dv), f"q {_shape(q)} k {_shape(k)}")
            self._add("elementwise", _ELEMENTWISE_COST["softmax"] * rows * nq * nk, "softmax")
        elif func in (torch.matmul, torch.bmm, torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__):
            a = args[1] if func is torch.baddbmm else args[0]
            self._add("matmul", 2 * out.numel() * a.shape[-1], f"{_shape(a)} -> {_shape(out)}")
        elif func in (F.group_norm, F.layer_norm):
            self._add("elementwise", _ELEMENTWISE_COST["norm"] * args[0].numel(), "norm")
        elif func in (F.silu, F.gelu):
            self._add("elementwise", _ELEMENTWISE_COST["act"] * args[0].numel(), "act")
        return out


@contextmanager
def _counting(model: nn.Module) -> Iterator[_Counter]:
    stack: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
        handles.append(mod.register_forward_hook(lambda _m, _a, _o: stack.pop() and None, always_call=True))
    counter = _Counter(stack)
    try:
        with torch.no_grad(), counter:
            yield counter
    finally:
        for h in handles:
            h.remove()


@functools.lru_cache(maxsize=4)
def _meta_model(arch: IGRConfig) -> IGRModel:
    with torch.device("meta"):
        return IGRModel(arch).eval()


def meta_model(config: IGRConfig) -> IGRModel:
    """The config's IGRModel on the meta device; cached per architecture (resolution ignored)."""
    m = config.resolution_multiple
    return _meta_model(dataclasses.replace(config, height=m, width=m))


def _run(model: IGRModel, fn: Callable[[], object]) -> tuple[FlopCount, object]:
    with _counting(model) as c:
        out = fn()
    return FlopCount(c.ops), out


def count_graphs(config: IGRConfig, batch: int = 1, form: str = "cached") -> dict[str, FlopCount]:
    """Per-graph op lists for ``batch`` requests at the config's resolution.

    Keys: image_encoder, vae_encoder, garmnet_unet, reference_kv, garmnet (= the two before),
    denoiser (one step of ``form``), vae_decoder.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    m = meta_model(config)
    b, (h, w) = batch, config.latent_size
    c_text = config.unet.cross_attention_dim
    size = config.image_encoder.image_size

    def e(*shape):
        return torch.empty(*shape, device="meta")

    out: dict[str, FlopCount] = {}
    out["image_encoder"], _ = _run(m, lambda: m.ip_tokens(e(b, 3, size, size)))
    out["vae_encoder"], _ = _run(m, lambda: m.vae_encode(e(b, 3, config.height, config.width)))
    out["garmnet_unet"], feats = _run(
        m, lambda: m.garmnet_features(e(b, 4, h, w), e(b, 1, h, w), e(b, config.text_len, c_text))
    )
    out["reference_kv"], (ref_k, ref_v) = _run(m, lambda: m.reference_kv(feats))
    out["garmnet"] = out["garmnet_unet"] + out["reference_kv"]

    # (2B, ...) CFG batch: rows [:B] uncond, [B:] cond; references hold the B cond rows only.
    args = (e(2 * b, 4, h, w), torch.full((2 * b,), 500, device="meta"), e(2 * b, config.text_len, c_text))
    args += (e(2 * b, config.ip_tokens, c_text), b)
    if form == "cached":
        out["denoiser"], _ = _run(m, lambda: m.denoise(*args, ref_k=ref_k, ref_v=ref_v))
    else:
        out["denoiser"], _ = _run(m, lambda: m.denoise(*args, ref_feats=feats))
        if form == "per_step_garmnet":
            out["denoiser"] = out["denoiser"] + out["garmnet_unet"]
    out["vae_decoder"], _ = _run(m, lambda: m.vae_decode(e(b, 4, h, w)))
    return out


def flops(config: IGRConfig, batch: int = 1, form: str = "cached") -> dict[str, float]:
    """FLOPs (conv + linear + attention) of each graph, one run each; ``denoiser`` is one step."""
    return {k: v.total() for k, v in count_graphs(config, batch, form).items()}


def once_garmnet(per_graph: dict[str, float], form: str) -> float:
    """The per-request GarmNet cost a form needs before its steps."""
    return {"cached": per_graph["garmnet"], "naive": per_graph["garmnet_unet"], "per_step_garmnet": 0.0}[form]


def end_to_end(config: IGRConfig, steps: int = 25, batch: int = 1, form: str = "cached") -> dict[str, float]:
    """Per-graph FLOPs of one whole restore of ``batch`` requests with ``steps`` DDIM steps, and ``total``."""
    return combine(flops(config, batch, form), steps, form)


def combine(g: dict[str, float], steps: int, form: str) -> dict[str, float]:
    """End-to-end FLOPs from the per-graph counts ``g`` of :func:`flops` for ``form``."""
    out = {
        "image_encoder": g["image_encoder"],
        "vae_encoder": g["vae_encoder"],
        "garmnet": once_garmnet(g, form),
        "denoiser": steps * g["denoiser"],
        "vae_decoder": g["vae_decoder"],
    }
    out["total"] = sum(out.values())
    return out


def achieved(tflops: float, seconds: float, peak_tflops: float) -> float:
    """Fraction of a card's peak reached by doing ``tflops`` TFLOP in ``seconds``."""
    return tflops / seconds / peak_tflops


def floor_seconds(tflops: float, peak_tflops: float) -> float:
    """The time ``tflops`` TFLOP take at 100% of a card's peak: no implementation beats it."""
    return tflops / peak_tflops


# --- CLI -------------------------------------------------------------------------------------------
def _g(x: float) -> str:
    return f"{x / 1e9:,.2f}"


def report(config: IGRConfig, batch: int, steps: int, forms: tuple[str, ...]) -> str:
    lines = [
        f"## FLOPs: preset {config.name}, {config.height}x{config.width}, batch {batch} (CFG batch {2 * batch})",
        "",
    ]
    lines += [
        "GFLOP per run (multiply-add = 2); element-wise ops are a rough figure, not in the total.",
        "",
        "| graph | conv | linear | attention | total | element-wise (excl.) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    counts = {f: count_graphs(config, batch, f) for f in forms}
    first = counts[forms[0]]
    rows = [(k, first[k]) for k in ("image_encoder", "vae_encoder", "garmnet_unet", "reference_kv", "garmnet")]
    rows += [(f"denoiser step ({f})", counts[f]["denoiser"]) for f in forms]
    rows += [("vae_decoder", first["vae_decoder"])]
    for name, c in rows:
        k = c.by_kind()
        lines.append(
            f"| {name} | {_g(k.get('conv', 0))} | {_g(k.get('linear', 0))} | "
            f"{_g(k.get('attention', 0) + k.get('matmul', 0))} | **{_g(c.total())}** | {_g(k.get('elementwise', 0))} |"
        )
    cards = ("A100", "H100 SXM", "L4")
    lines += [
        "",
        f"### End to end, {steps} steps",
        "",
        "| form | once (enc + vae + garmnet + dec) TFLOP | denoiser TFLOP | total TFLOP | "
        + " | ".join(f"floor {c} s" for c in cards)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(cards),
    ]
    for f in forms:
        e2e = combine({k: v.total() for k, v in counts[f].items()}, steps, f)
        total = e2e["total"] / 1e12
        once = (e2e["total"] - e2e["denoiser"]) / 1e12
        floors = " | ".join(f"{floor_seconds(total, PEAK_TFLOPS[c]):.3f}" for c in cards)
        lines.append(f"| {f} | {once:,.2f} | {e2e['denoiser'] / 1e12:,.2f} | **{total:,.2f}** | {floors} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd15")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--form", choices=(*FORMS, "all"), default="all")
    a = p.parse_args(argv)
    config = preset(a.preset)
    if a.height or a.width:
        config = config.with_resolution(a.height or config.height, a.width or config.width)
    forms = FORMS if a.form == "all" else (a.form,)
    print(report(config, a.batch, a.steps, forms))


if __name__ == "__main__":
    main()

"""Attention processors for GarmNet and GarmDenoiser (DESIGN.md section 2).

diffusers calls a processor as ``processor(attn, hidden_states, encoder_hidden_states, ...)`` and
forwards the UNet's ``cross_attention_kwargs`` to it; IGR passes one ``FusionContext`` there under
the key ``igr``. The context carries everything that changes per call, so the modules stay
stateless and export sees explicit tensors.

Batch convention: the first ``n_uncond`` rows of the denoiser batch are unconditional (own tokens
only in self-attention, IP tokens of a zero image embedding); the remaining rows are conditional
and attend to [reference ; own] tokens. Reference tensors hold only the conditional rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FusionContext:
    """Per-call inputs of the fused attention.

    mode: ``"record"`` (GarmNet: store each self-attention input), ``"cached"`` (denoiser with
    precomputed reference K/V), ``"naive"`` (denoiser with reference features, paper-literal) or
    ``"none"`` (plain attention, no reference).
    """

    mode: str = "none"
    n_uncond: int = 0
    ref_k: list[torch.Tensor] | None = None  # per block (Bc, N_i, C_i)
    ref_v: list[torch.Tensor] | None = None
    ref_feats: list[torch.Tensor] | None = None  # per block (Bc, N_i, D_i), GarmNet norm1 outputs
    ip_tokens: torch.Tensor | None = None  # (B, T_ip, C_text)
    recorded: list[torch.Tensor] = field(default_factory=list)


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, attn.heads, c // attn.heads).transpose(1, 2)  # (B, h, N, d)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)  # (B, N, C)


def _sdpa(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _merge(F.scaled_dot_product_attention(_heads(attn, q), _heads(attn, k), _heads(attn, v)))


def _out(attn, x: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](x))


def _check_plain(attn) -> None:
    # IGR's math is written for SD1.5-style attention blocks; refuse anything else loudly.
    if attn.norm_q is not None or attn.spatial_norm is not None or attn.group_norm is not None:
        raise NotImplementedError("IGR processors support plain SD1.5 attention blocks only")


class SelfAttnProcessor(nn.Module):
    """Self-attention (attn1) of GarmNet and of GarmDenoiser, block ``index`` in execution order."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        igr: FusionContext | None = None,
    ):
        _check_plain(attn)
        x = hidden_states  # (B, N, C): norm1 output of the transformer block
        mode = igr.mode if igr is not None else "none"
        if mode == "record":
            igr.recorded.append(x)
        if mode in ("none", "record") or igr.n_uncond == x.shape[0]:
            return _out(attn, _sdpa(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x)))

        u = igr.n_uncond
        xu, xc = x[:u], x[u:]  # (B_u, N, C), (B_c, N, C)
        parts = []
        if u:
            parts.append(_sdpa(attn, attn.to_q(xu), attn.to_k(xu), attn.to_v(xu)))
        if mode == "cached":
            k = torch.cat([igr.ref_k[self.index], attn.to_k(xc)], dim=1)  # (B_c, N_r + N, C)
            v = torch.cat([igr.ref_v[self.index], attn.to_v(xc)], dim=1)
            parts.append(_sdpa(attn, attn.to_q(xc), k, v))
        elif mode == "naive":
            # Paper-literal: attend over the spatial concat [R ; X] with 2N queries, keep the latter half.
            ref = igr.ref_feats[self.index]
            cat = torch.cat([ref, xc], dim=1)  # (B_c, N_r + N, C)
            full = _sdpa(attn, attn.to_q(cat), attn.to_k(cat), attn.to_v(cat))
            parts.append(full[:, ref.shape[1] :])
        else:
            raise ValueError(f"unknown fusion mode {mode!r}")
        return _out(attn, torch.cat(parts, dim=0))


class CrossAttnProcessor(nn.Module):
    """GarmNet's plain text cross-attention (attn2)."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        igr: FusionContext | None = None,
    ):
        _check_plain(attn)
        ctx = encoder_hidden_states  # (B, 77, C_text)
        return _out(attn, _sdpa(attn, attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)))


class IPCrossAttnProcessor(nn.Module):
    """Decoupled cross-attention: Attn(Q, K_text, V_text) + scale * Attn(Q, K_ip, V_ip).

    ``to_k_ip``/``to_v_ip`` are named as in the public ip-adapter_sd15 weights.
    """

    def __init__(self, cross_attention_dim: int, hidden_size: int, scale: float):
        super().__init__()
        self.scale = scale
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        igr: FusionContext | None = None,
    ):
        _check_plain(attn)
        if igr is None or igr.ip_tokens is None:
            raise ValueError("the denoiser's cross-attention needs ip_tokens in its FusionContext")
        q = attn.to_q(hidden_states)
        text = encoder_hidden_states  # (B, 77, C_text)
        ip = igr.ip_tokens  # (B, T_ip, C_text)
        out = _sdpa(attn, q, attn.to_k(text), attn.to_v(text))
        out = out + self.scale * _sdpa(attn, q, self.to_k_ip(ip), self.to_v_ip(ip))
        return _out(attn, out)


def attention_names(unet) -> tuple[list[str], list[str]]:
    """attn1 and attn2 processor names of a UNet, each in execution order (down, mid, up)."""
    names = list(unet.attn_processors)
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    ranked = sorted(names, key=lambda n: order[n.split(".")[0]])  # stable: keeps order within a part
    return ([n for n in ranked if ".attn1." in n], [n for n in ranked if ".attn2." in n])


def ip_adapter_key_order(unet) -> list[str]:
    """attn2 names in the order of the public ip-adapter_sd15 keys ``1, 3, 5, ...``.

    Those indices count every processor of ``unet.attn_processors`` (diffusers' registration
    order: down blocks, up blocks, mid block), and the IP layers sit on the odd, attn2, slots.
    """
    return [n for n in unet.attn_processors if ".attn2." in n]


def install_denoiser_processors(unet, ip_tokens_dim: int, ip_scale: float) -> None:
    attn1, attn2 = attention_names(unet)
    procs = {}
    for i, name in enumerate(attn1):
        procs[name] = SelfAttnProcessor(i)
    for name in attn2:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        procs[name] = IPCrossAttnProcessor(ip_tokens_dim, attn.to_k.out_features, ip_scale)
    unet.set_attn_processor(procs)


def install_garmnet_processors(unet) -> None:
    attn1, attn2 = attention_names(unet)
    procs = {name: SelfAttnProcessor(i) for i, name in enumerate(attn1)}
    procs.update({name: CrossAttnProcessor() for name in attn2})
    unet.set_attn_processor(procs)


def self_attention_modules(unet) -> list[nn.Module]:
    """The attn1 modules (diffusers ``Attention``) in execution order."""
    attn1, _ = attention_names(unet)
    return [unet.get_submodule(n.removesuffix(".processor")) for n in attn1]

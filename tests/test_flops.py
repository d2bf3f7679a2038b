"""benchmarks/flops.py against hand counts on the tiny preset and against torch's own flop counter.

Tiny at 64x48: latent 8x6, so level 0 has N = 48 tokens of C = 32 channels (4 heads of d = 8),
level 1 (the mid block) N = 12 tokens of C = 64. Transformer blocks: down 0, mid, up 1 (x2).
Multiply-add = 2 FLOPs; bias additions are not counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# benchmarks/ is a folder of scripts, not an installed package: import it from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import flops as fl

N, C = 48, 32  # level 0 tokens and width
N_MID, C_MID = 12, 64
B = 1  # requests; the denoiser runs 2B rows
ATTN1 = "denoiser.down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module")
def counts(tiny_config):
    return {form: fl.count_graphs(tiny_config, batch=B, form=form) for form in ("cached", "naive", "per_step_garmnet")}


def test_denoiser_conv_in(counts):
    # Conv2d(4 -> 32, 3x3, pad 1) over the (2B, 4, 8, 6) CFG batch: every output element is 4*3*3 MACs.
    hand = 2 * (2 * B * 32 * 8 * 6) * (4 * 3 * 3)
    assert hand == 221_184
    assert counts["cached"]["denoiser"].under("denoiser.conv_in") == hand
    # GarmNet's conv_in is 5 channels wide (latent + mask) and runs on B rows only.
    assert counts["cached"]["garmnet_unet"].under("denoiser.conv_in") == 0
    assert counts["cached"]["garmnet_unet"].under("garmnet.conv_in") == 2 * (B * 32 * 8 * 6) * (5 * 3 * 3)


def test_one_resnet_block(counts):
    rows = 2 * B
    conv = 2 * (rows * 32 * N) * (32 * 3 * 3)  # conv1 and conv2: 3x3, 32 -> 32 at 8x6
    temb = 2 * rows * 128 * 32  # time_emb_proj: Linear(4 * 32 -> 32) once per row, not per token
    hand = 2 * conv + temb  # no conv_shortcut: in == out channels
    assert hand == 3_555_328
    assert counts["cached"]["denoiser"].under("denoiser.down_blocks.0.resnets.0") == hand


def _attn_ops(count, module):
    return [o.flops for o in count.ops if o.module == module and o.kind == "attention"]


def test_self_attention_cached_vs_naive(counts):
    proj = 2 * N * C * C  # one of to_q / to_k / to_v / to_out over N tokens of one row
    # Per head 2*Nq*Nk*d for QK^T plus the same for AV; summed over the 4 heads d -> C.
    nn_attn = 2 * 2 * N * N * C
    uncond = 3 * proj + nn_attn  # own N tokens only
    cached_cond = 3 * proj + 2 * nn_attn  # Q from N own tokens, K/V over [ref N (cached) ; own N]
    naive_cond = 3 * 2 * proj + 4 * nn_attn  # Q, K, V over the 2N concat; 2N x 2N scores
    out = 2 * proj  # to_out on both rows
    assert uncond + cached_cond + out == 1_671_168
    assert uncond + naive_cond + out == 2_555_904
    assert counts["cached"]["denoiser"].under(ATTN1) == uncond + cached_cond + out
    assert counts["naive"]["denoiser"].under(ATTN1) == uncond + naive_cond + out

    # The attention calls themselves: [uncond, cond]; the naive cond row costs exactly twice the cached one.
    assert _attn_ops(counts["cached"]["denoiser"], ATTN1) == [nn_attn, 2 * nn_attn]
    assert _attn_ops(counts["naive"]["denoiser"], ATTN1) == [nn_attn, 4 * nn_attn]


def test_cross_attention_text_and_ip_are_two_calls(counts):
    attn2 = ATTN1.replace("attn1", "attn2")
    # Over the 2B rows: Q (N tokens) x 77 text keys and x 4 IP keys, separately.
    assert _attn_ops(counts["cached"]["denoiser"], attn2) == [2 * 2 * (2 * B) * N * 77 * C, 2 * 2 * (2 * B) * N * 4 * C]


def test_image_encoder_and_image_proj(counts):
    g = counts["cached"]["image_encoder"]
    assert g.under("image_proj") == 2 * B * 32 * (4 * 32)  # Linear(projection_dim 32 -> 4 tokens x 32)
    # CLIP: 224 / 32 = 7x7 patches + class token = 50 tokens of width 32, 2 layers, MLP 64.
    patch = 2 * (B * 32 * 7 * 7) * (3 * 32 * 32)
    t = 50
    layer = 4 * 2 * t * 32 * 32 + 2 * 2 * t * t * 32 + 2 * 2 * t * 32 * 64  # q,k,v,o + QK^T,AV + fc1,fc2
    proj = 2 * B * 32 * 32  # visual_projection on the pooled token
    assert g.under("image_encoder") == patch + 2 * B * layer + proj
    assert g.total() == patch + 2 * B * layer + proj + 2 * B * 32 * 128


def test_garmnet_includes_reference_kv_and_forms_relate(counts):
    c = counts["cached"]
    # W_k R_i and W_v R_i for the 4 transformer blocks, B rows of N_i tokens.
    kv = B * (3 * 2 * 2 * N * C * C + 2 * 2 * N_MID * C_MID * C_MID)
    assert kv == 786_432
    assert c["reference_kv"].total() == kv
    assert c["reference_kv"].by_kind() == {"linear": kv}
    assert c["garmnet"].total() == c["garmnet_unet"].total() + kv

    cached, naive = c["denoiser"].total(), counts["naive"]["denoiser"].total()
    # Naive - cached, per block: Q/K/V of the N reference tokens + the doubled cond-row attention.
    per_block = [(N, C)] * 3 + [(N_MID, C_MID)]
    assert naive - cached == B * sum(3 * 2 * n * ch * ch + 8 * n * n * ch for n, ch in per_block)
    per_step = counts["per_step_garmnet"]["denoiser"].total()
    assert per_step == naive + c["garmnet_unet"].total()


def test_end_to_end_and_batch_scaling(tiny_config, counts):
    g = {k: v.total() for k, v in counts["cached"].items()}
    e2e = fl.end_to_end(tiny_config, steps=3, batch=B, form="cached")
    once = g["image_encoder"] + g["vae_encoder"] + g["garmnet"] + g["vae_decoder"]
    assert e2e["total"] == once + 3 * g["denoiser"]
    naive = fl.end_to_end(tiny_config, steps=3, batch=B, form="naive")
    assert naive["garmnet"] == g["garmnet_unet"]  # no K/V cache to fill
    assert fl.end_to_end(tiny_config, steps=3, batch=B, form="per_step_garmnet")["garmnet"] == 0
    # Every op here is per row, so two requests cost exactly twice one.
    two = fl.flops(tiny_config, batch=2, form="cached")
    assert all(two[k] == 2 * g[k] for k in g)


def test_matches_torch_flop_counter_on_a_real_run(tiny_model):
    """An independent count: torch.utils.flop_counter on real CPU tensors, math attention so it sees the matmuls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config = tiny_model.config
    ours = fl.count_graphs(config, batch=2, form="naive")
    h, w = config.latent_size
    m = tiny_model

    def theirs(fn):
        with FlopCounterMode(display=False) as f, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            out = fn()
        return f.get_total_flops(), out

    total, feats = theirs(
        lambda: m.garmnet_features(torch.randn(2, 4, h, w), torch.rand(2, 1, h, w), torch.randn(2, 77, 32))
    )
    assert total == ours["garmnet_unet"].total()
    args = (torch.randn(4, 4, h, w), torch.full((4,), 500), torch.randn(4, 77, 32), torch.randn(4, 4, 32), 2)
    assert theirs(lambda: m.denoise(*args, ref_feats=feats))[0] == ours["denoiser"].total()
    assert theirs(lambda: m.vae_decode(torch.randn(2, 4, h, w)))[0] == ours["vae_decoder"].total()


def test_achieved_and_floor():
    assert fl.achieved(312.0, 2.0, fl.PEAK_TFLOPS["A100"]) == pytest.approx(0.5)
    assert fl.floor_seconds(989.0, fl.PEAK_TFLOPS["H100 SXM"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown form"):
        fl.flops(fl.preset("tiny"), form="fast")

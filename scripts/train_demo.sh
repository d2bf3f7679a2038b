#!/usr/bin/env bash
# Trains the bundled demo model (the `small` preset on synthetic try-off data) and the two trained
# ablations of the quality benchmark, on CPU:
#   full        coarse (all pairs) COARSE steps, then fine (curated HQFT subset) FINE steps
#   no_garmnet  the same two stages with use_garmnet=False (IP-Adapter only)
#   no_hqft     coarse COARSE steps, then FINE more coarse steps on all pairs (no fine stage)
# These first three use SD1.5's noise schedule, v-prediction, Min-SNR-5 weighting, an EMA of the
# weights (what checkpoints hold), VAE latents cached once, photos framed around the garment. The VAE
# has no pretrained weights at this size: it is pre-trained first (train/pretrain_vae.py); the CLIP
# image encoder is trained jointly with IGR.
# Then step 4 (README, "The demo model"): `full` moved to a zero-terminal-SNR schedule
# with trailing timesteps (ZT_COARSE steps on all pairs, ZT_FINE on the HQFT subset, plain v loss),
# while its VAE decoder is fine-tuned alone on garments (DEC_STEPS) with the encoder, and so the
# latents, fixed; train/swap_decoder.py joins the two into $RUNS/demo.
# Step 5: $RUNS/demo trained on under that schedule, with its two ablations; step 6: step 5 trained on
# the same way; step 7 (not shipped): step 6 trained on the same way once more. Step 8: step 6 trained
# on with a cosine-decaying learning rate, as it is and, side by side, re-split into one attention
# head at the finest level (8h, the shipped model), with 8h's two ablations. Step 9 (not shipped):
# 8h on a second learning-rate cycle, and beside it 8h's VAE decoder widened and fine-tuned. Step 10
# (not shipped): 8h's whole VAE fine-tuned, encoder included, and 8h's UNets re-adapted to its latents.
# One thread per process: two runs share the two cores without oversubscribing them.
# Everything resumes: run the script again after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs}
COARSE=${COARSE:-2400}
FINE=${FINE:-450}
VAE_STEPS=${VAE_STEPS:-3000}
ZT_COARSE=${ZT_COARSE:-3000}
ZT_FINE=${ZT_FINE:-300}
DEC_STEPS=${DEC_STEPS:-6000}
ZT2_COARSE=${ZT2_COARSE:-4200}
ZT2_FINE=${ZT2_FINE:-300}
ZT2_ABL=${ZT2_ABL:-1200}
ZT3_COARSE=${ZT3_COARSE:-4200}
ZT3_FINE=${ZT3_FINE:-300}
ZT4_COARSE=${ZT4_COARSE:-3600}
ZT4_FINE=${ZT4_FINE:-300}
ZT5_COARSE=${ZT5_COARSE:-3000}
ZT5_FINE=${ZT5_FINE:-300}
ZT6_COARSE=${ZT6_COARSE:-4000}
ZT6_FINE=${ZT6_FINE:-300}
WIDE_STEPS=${WIDE_STEPS:-3000}
FULL_VAE_STEPS=${FULL_VAE_STEPS:-3000}
ZT10_COARSE=${ZT10_COARSE:-2400}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
COMMON=(--preset small --batch-size 4 --lr 3e-4 --warmup-steps 100 --train-image-encoder
        --prediction-type v_prediction --snr-gamma 5 --ema-decay 0.999
        --guidance-scale "${GUIDANCE:-1.5}" --latent-cache "$R/cache"
        --save-every 300 --val-every 600 --val-steps 25 --resume -q)

[ -f "$R/data/train/pairs.txt" ] || $PY train/synthetic.py --out "$R/data/train" --count 4000 --seed 1 --size 256x192
[ -f "$R/data/test/pairs.txt" ] || $PY train/synthetic.py --out "$R/data/test" --count 90 --seed 424242 --size 256x192
$PY train/curate.py --data "$R/data/train" --out "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt"

# VAE: 1500 steps without the chroma term, 700 with it, then VAE_STEPS with a cosine decay
[ -f "$R/vae-a/config.json" ] || $PY train/pretrain_vae.py --preset small --steps 1500 --batch 8 \
    --chroma-weight 0 --out "$R/vae-a"
[ -f "$R/vae-b/config.json" ] || $PY train/pretrain_vae.py --preset small --init "$R/vae-a" --steps 700 \
    --batch 8 --out "$R/vae-b"
[ -f "$R/vae/config.json" ] || $PY train/pretrain_vae.py --preset small --init "$R/vae-b" --steps "$VAE_STEPS" \
    --batch 8 --lr 1e-3 --cosine --out "$R/vae"

# an ablation's start: a copy of checkpoint $1 at $2 with GarmNet switched off in its config
without_garmnet() {
    rm -rf "$2" && cp -r "$1" "$2"
    $PY - "$2/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["use_garmnet"] = False; json.dump(c, open(p, "w"), indent=2)
PY
}
# $1 (the name of a flags array) from checkpoint $2: $4 coarse steps on all pairs into $3-coarse, then
# $5 fine steps on the curated subset into $3-fine
coarse_then_fine() {
    local -n flags=$1
    $PY train/train.py "${flags[@]}" --data "$R/data/train" --init "$2" --stage coarse --max-steps "$4" --out "$3-coarse"
    $PY train/train.py "${flags[@]}" --data "$R/data/train" --init "$3-coarse/final" --stage fine \
        --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$5" --out "$3-fine"
}
# the latents of every pair (all pairs, and the curated ones reframed) under the VAE of checkpoint $1
cache_latents() {
    OMP_NUM_THREADS=2 $PY -m train.latent_cache --init "$1" --data "$R/data/train" --cache "$R/cache"
    OMP_NUM_THREADS=2 $PY -m train.latent_cache --init "$1" --data "$R/data/train" --subset "$R/data/hqft.txt" \
        --resize-list "$R/data/hqft_resize.txt" --cache "$R/cache"
}

without_garmnet "$R/vae" "$R/vae-nogarmnet"
cache_latents "$R/vae"  # once, for all five runs

$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/vae" --stage coarse \
    --max-steps "$COARSE" --out "$R/full-coarse" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/vae-nogarmnet" --stage coarse \
    --max-steps "$COARSE" --out "$R/nogarmnet-coarse" &
wait
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/full-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$FINE" --out "$R/full-fine" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/full-coarse/final" --stage coarse \
    --max-steps "$FINE" --out "$R/nohqft-coarse2" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/nogarmnet-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$FINE" --out "$R/nogarmnet-fine" &
wait

# the shipped model: zero-terminal SNR for the denoiser, decoder-only fine-tuning for the VAE, side by side
ZT=(--preset small --batch-size 4 --lr 2e-4 --warmup-steps 100 --train-image-encoder
    --prediction-type v_prediction --zero-terminal-snr --ema-decay 0.999
    --guidance-scale "${GUIDANCE:-1.5}" --latent-cache "$R/cache"
    --save-every 300 --val-every 900 --val-steps 25 --resume -q)
coarse_then_fine ZT "$R/full-fine/final" "$R/zt" "$ZT_COARSE" "$ZT_FINE" &
[ -f "$R/vae-dec/config.json" ] || $PY train/pretrain_vae.py --init "$R/full-fine/final" --decoder-only \
    --steps "$DEC_STEPS" --batch 8 --lr 5e-4 --cosine --out "$R/vae-dec" &
wait
$PY -m train.swap_decoder --model "$R/zt-fine/final" --decoder "$R/vae-dec" --out "$R/demo"

# step 5: step 4 trained on under the same schedule (its VAE, and so the latents, frozen),
# ZT2_COARSE coarse steps on all pairs, then ZT2_FINE on the curated subset. Its ablations start from the
# same weights with equal step budgets: w/o GarmNet (GarmNet switched off in the config) against the full
# run's checkpoint at step ZT2_ABL; w/o HQFT, ZT2_FINE more coarse steps instead of the fine stage.
without_garmnet "$R/demo" "$R/demo-nogarmnet"
cache_latents "$R/demo"  # its decoder differs from step 3's, and the cache is keyed by the whole VAE
ZT2=("${ZT[@]}" --val-every 0 --keep-checkpoints 0)
$PY train/train.py "${ZT2[@]}" --data "$R/data/train" --init "$R/demo" --stage coarse \
    --max-steps "$ZT2_COARSE" --out "$R/zt2-coarse" &
$PY train/train.py "${ZT2[@]}" --data "$R/data/train" --init "$R/demo-nogarmnet" --stage coarse \
    --max-steps "$ZT2_ABL" --out "$R/zt2-nogarmnet" &
wait
$PY train/train.py "${ZT2[@]}" --data "$R/data/train" --init "$R/zt2-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$ZT2_FINE" --out "$R/zt2-fine" &
$PY train/train.py "${ZT2[@]}" --data "$R/data/train" --init "$R/zt2-coarse/final" --stage coarse \
    --max-steps "$ZT2_FINE" --out "$R/zt2-nohqft" &
wait
# step 6: step 5 trained on the same way (the same latents), ZT3_COARSE coarse steps, then ZT3_FINE on
# the curated subset; the parser trains beside them
coarse_then_fine ZT2 "$R/zt2-fine/final" "$R/zt3" "$ZT3_COARSE" "$ZT3_FINE" &
[ -f "$R/parser/config.json" ] || $PY train/train_parser.py --out "$R/parser" &
wait
# step 7 (not shipped): step 6 trained on the same way once more
coarse_then_fine ZT2 "$R/zt3-fine/final" "$R/zt4" "$ZT4_COARSE" "$ZT4_FINE"
# step 8: from step 6 again, the coarse stage's learning rate on a cosine from 2e-4 to 1e-5, the fine
# stage at 1e-5; 8h the same with the finest level's attention re-split from 4 heads into 1
DECAY=(--lr 2e-4 --lr-decay-steps "$ZT5_COARSE" --min-lr 1e-5)
for v in "" h; do
    heads=(); [ "$v" = h ] && heads=(--attention-heads 1,4,4)
    $PY train/train.py "${ZT2[@]}" "${DECAY[@]}" "${heads[@]}" --data "$R/data/train" --init "$R/zt3-fine/final" \
        --stage coarse --max-steps "$ZT5_COARSE" --out "$R/zt5$v-coarse" &
done
wait
for v in "" h; do
    $PY train/train.py "${ZT2[@]}" --lr 1e-5 --data "$R/data/train" --init "$R/zt5$v-coarse/final" --stage fine \
        --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$ZT5_FINE" --out "$R/zt5$v-fine" &
done
wait
# ablations of step 8h with its budgets: w/o HQFT (ZT5_FINE more coarse steps instead of the fine
# stage) and w/o GarmNet (step 6 with GarmNet switched off, then step 8h's two stages)
without_garmnet "$R/zt3-fine/final" "$R/zt3-nogarmnet"
$PY train/train.py "${ZT2[@]}" --lr 1e-5 --data "$R/data/train" --init "$R/zt5h-coarse/final" --stage coarse \
    --max-steps "$ZT5_FINE" --out "$R/zt5h-nohqft" &
(
    $PY train/train.py "${ZT2[@]}" "${DECAY[@]}" --attention-heads 1,4,4 --data "$R/data/train" \
        --init "$R/zt3-nogarmnet" --stage coarse --max-steps "$ZT5_COARSE" --out "$R/zt5h-nogarmnet-coarse"
    $PY train/train.py "${ZT2[@]}" --lr 1e-5 --data "$R/data/train" --init "$R/zt5h-nogarmnet-coarse/final" \
        --stage fine --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$ZT5_FINE" \
        --out "$R/zt5h-nogarmnet-fine"
) &
wait
# step 9 (not shipped: no metric moved): step 8h trained on for a second cosine cycle, lr 1e-4 -> 1e-5
# over ZT6_COARSE steps, then ZT6_FINE at 1e-5; beside it (not shipped: +0.14 dB) 8h's VAE decoder
# widened to 32,64,64,64 without changing its output (train/grow_decoder.py) and fine-tuned alone on
# garments for WIDE_STEPS
$PY train/train.py "${ZT2[@]}" --lr 1e-4 --lr-decay-steps "$ZT6_COARSE" --min-lr 1e-5 --data "$R/data/train" \
    --init "$R/zt5h-fine/final" --stage coarse --max-steps "$ZT6_COARSE" --out "$R/zt6-coarse" &
(
    [ -f "$R/vae-wide0/config.json" ] || $PY -m train.grow_decoder --model "$R/zt5h-fine/final" \
        --channels 32,64,64,64 --out "$R/vae-wide0"
    [ -f "$R/vae-wide/config.json" ] || $PY train/pretrain_vae.py --init "$R/vae-wide0" --decoder-only \
        --steps "$WIDE_STEPS" --batch 8 --lr 2e-4 --cosine --seed 11 --out "$R/vae-wide"
) &
wait
$PY train/train.py "${ZT2[@]}" --lr 1e-5 --data "$R/data/train" --init "$R/zt6-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$ZT6_FINE" --out "$R/zt6-fine"
# step 10 (measured, not shipped): the whole VAE of 8h, encoder included, fine-tuned for FULL_VAE_STEPS
# (lr 2e-4, cosine; its latents change, so they are cached again), and 8h's UNets re-adapted to the new
# latents: ZT10_COARSE coarse steps on a cosine from 2e-4 to 1e-5, then ZT5_FINE fine at 1e-5. Beside
# them, the VAE alone two cycles further (FULL_VAE_STEPS each, new garments; models/demo-small-vae-ft3)
[ -f "$R/vae-full-ft/config.json" ] || $PY train/pretrain_vae.py --init "$R/zt5h-fine/final" \
    --steps "$FULL_VAE_STEPS" --batch 8 --lr 2e-4 --cosine --seed 13 --out "$R/vae-full-ft"
(
    [ -f "$R/vae-full-ft2/config.json" ] || $PY train/pretrain_vae.py --init "$R/vae-full-ft" \
        --steps "$FULL_VAE_STEPS" --batch 8 --lr 2e-4 --cosine --seed 19 --out "$R/vae-full-ft2"
    [ -f "$R/vae-full-ft3/config.json" ] || $PY train/pretrain_vae.py --init "$R/vae-full-ft2" \
        --steps "$FULL_VAE_STEPS" --batch 8 --lr 2e-4 --cosine --seed 23 --out "$R/vae-full-ft3"
) &
cache_latents "$R/vae-full-ft"
$PY train/train.py "${ZT2[@]}" --lr 2e-4 --lr-decay-steps "$ZT10_COARSE" --min-lr 1e-5 --data "$R/data/train" \
    --init "$R/vae-full-ft" --stage coarse --max-steps "$ZT10_COARSE" --out "$R/zt10-coarse"
$PY train/train.py "${ZT2[@]}" --lr 1e-5 --data "$R/data/train" --init "$R/zt10-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$ZT5_FINE" --out "$R/zt10-fine"
wait
echo "bundle: $PY scripts/bundle_demo.py --checkpoint $R/zt5h-fine/final --data $R/data/test --parser $R/parser"
echo "models: $R/zt5h-fine/final (shipped), its ablations $R/zt5h-nogarmnet-fine/final and $R/zt5h-nohqft/final;" \
     "step 10 (not shipped): $R/zt10-fine/final, VAE $R/vae-full-ft3; step 9 (not shipped): $R/zt6-fine/final, decoder $R/vae-wide; step 8: $R/zt5-fine/final; step 7: $R/zt4-fine/final; step 6: $R/zt3-fine/final;" \
     "step 5: $R/zt2-fine/final, $R/zt2-coarse/step-$(printf %06d "$ZT2_ABL") and $R/zt2-nogarmnet/final," \
     "$R/zt2-nohqft/final; step 4: $R/demo; step 3: $R/full-fine/final, $R/nogarmnet-fine/final, $R/nohqft-coarse2/final"

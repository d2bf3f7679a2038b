#!/usr/bin/env bash
# Trains the bundled demo model (the `small` preset on synthetic try-off data) and the two trained
# ablations of the quality benchmark, on CPU, with equal budgets:
#   full      coarse (all pairs) COARSE steps, then fine (curated HQFT subset) FINE steps
#   no_garmnet  the same two stages with use_garmnet=False (IP-Adapter only)
#   no_hqft   coarse COARSE steps, then FINE more coarse steps on all pairs (no fine stage)
# The VAE has no pretrained weights at this size: it is pre-trained first (train/pretrain_vae.py);
# the CLIP image encoder is trained jointly with IGR (--train-image-encoder).
# One thread per process: two runs share the two cores without oversubscribing them.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs}
COARSE=${COARSE:-1800}
FINE=${FINE:-450}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
COMMON=(--preset small --batch-size 4 --lr 2e-4 --warmup-steps 100 --train-image-encoder
        --save-every 450 --val-every 450 --val-steps 10 -q)

[ -f "$R/data/train/pairs.txt" ] || $PY train/synthetic.py --out "$R/data/train" --count 2400 --seed 1 --size 256x192
[ -f "$R/data/test/pairs.txt" ] || $PY train/synthetic.py --out "$R/data/test" --count 90 --seed 424242 --size 256x192
$PY train/curate.py --data "$R/data/train" --out "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt"
# 1500 steps without the chroma term (the published run's first phase), then 700 with it
[ -f "$R/vae-small-a/config.json" ] || $PY train/pretrain_vae.py --preset small --steps 1500 --batch 8 \
    --chroma-weight 0 --out "$R/vae-small-a"
[ -f "$R/vae-small/config.json" ] || $PY train/pretrain_vae.py --preset small --init "$R/vae-small-a" --steps 700 \
    --batch 8 --out "$R/vae-small"

# the ablation's start: the same weights, with GarmNet switched off in the config
rm -rf "$R/vae-small-nogarmnet" && cp -r "$R/vae-small" "$R/vae-small-nogarmnet"
$PY - "$R/vae-small-nogarmnet/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["use_garmnet"] = False; json.dump(c, open(p, "w"), indent=2)
PY

$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/vae-small" --stage coarse \
    --max-steps "$COARSE" --out "$R/full-coarse" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/vae-small-nogarmnet" --stage coarse \
    --max-steps "$COARSE" --out "$R/nogarmnet-coarse" &
wait
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/full-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$FINE" --out "$R/full-fine" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/full-coarse/final" --stage coarse \
    --max-steps "$FINE" --out "$R/nohqft-coarse2" &
$PY train/train.py "${COMMON[@]}" --data "$R/data/train" --init "$R/nogarmnet-coarse/final" --stage fine \
    --subset "$R/data/hqft.txt" --resize-list "$R/data/hqft_resize.txt" --max-steps "$FINE" --out "$R/nogarmnet-fine" &
wait
echo "models: $R/full-fine/final (demo), $R/nogarmnet-fine/final, $R/nohqft-coarse2/final"

#!/usr/bin/env bash
# GPU readiness, one command of a few minutes on a CUDA machine with facekd installed:
#   bash benchmarks/gpu_check.sh [WORKDIR]
# 1. r50 training images/s on one GPU (arcface_torch's recipe: batch 128, fp16, Partial FC), against
#    arcface_torch's published ~600-740 img/s per V100 for r50 (its docs' speed table).
# 2. r100 -> mbf MarginDistillation images/s on one GPU, live teacher (cache off) and cached teacher.
# 3. With 2 or more GPUs: a 2-process NCCL smoke run of `train` and `distill` (margin and kd), all
#    under Partial FC, which exercises the cpu:gloo,cuda:nccl group and every collective on real NCCL.
# Throughput does not depend on the weights, so the teacher is a random r100 with random centres.
set -euo pipefail
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
PY=${PYTHON:-python}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "gpu_check: no CUDA device (torch.cuda.device_count() = 0)" >&2; exit 2; fi
echo "gpu_check: $GPUS GPU(s): $($PY -c 'import torch; print(torch.cuda.get_device_name(0))'); work in $WORK"

# 19,200 images of 112 px: 150 steps of 128, enough for a steady rate after the first windows.
[ -f "$WORK/synth/train/train.rec" ] || $PY -m facekd synth --out "$WORK/synth" --identities 600 \
  --images-per-identity 32 --verify-pairs 200 --workers "$(nproc)" > "$WORK/synth.log"

COMMON=(--set "data.val_bins=[]" --set train.epochs=1 --set train.log_interval=10 --set train.progress=false
        --set train.workers=8 --set train.ckpt_interval=0)

# Median img/s of the log windows after the first two (warm-up: cudnn autotuning, allocator).
rate() { $PY - "$1" <<'PYEOF'
import json, statistics, sys
rates = [e["img_per_s"] for e in map(json.loads, open(sys.argv[1])) if "img_per_s" in e][2:]
print(f"{statistics.median(rates):.0f}" if rates else "nan")
PYEOF
}

rm -rf "$WORK"/r50* "$WORK"/margin_* "$WORK"/kd_* "$WORK"/cache*  # fresh runs: a finished one would be skipped
$PY -m facekd train --config configs/train/ms1mv2_r50.yaml --set data.train="$WORK/synth/train" \
  --set train.out="$WORK/r50" "${COMMON[@]}"
R50=$(rate "$WORK/r50/log.jsonl")
echo "r50 training, 1 GPU, batch 128, fp16: $R50 img/s; arcface_torch r50 on a V100: 600-740 img/s (ratio to 670: $($PY -c "print(f'{float(\"$R50\")/670:.2f}')"))"

$PY - "$WORK" <<'PYEOF'
import sys, torch
from facekd.data import RecordIODataset
from facekd.models import build_backbone
work = sys.argv[1]
classes = RecordIODataset(f"{work}/synth/train").num_classes
torch.save(build_backbone("r100", num_features=512).state_dict(), f"{work}/r100.pth")
torch.save(torch.nn.functional.normalize(torch.randn(classes, 512), dim=1), f"{work}/centres.pt")
PYEOF
for CACHE in off on; do
  $PY -m facekd distill --config configs/distill/ms1mv2_r100_mbf_margin.yaml --data "$WORK/synth/train" \
    --teacher "$WORK/r100.pth" --teacher-head "$WORK/centres.pt" --out "$WORK/margin_$CACHE" \
    --set distill.cache=$CACHE --set distill.cache_dir="$WORK/cache" --set train.batch_size=128 "${COMMON[@]}"
  echo "r100 -> mbf margin, 1 GPU, teacher cache $CACHE: $(rate "$WORK/margin_$CACHE/log.jsonl") img/s"
done

if [ "$GPUS" -ge 2 ]; then
  torchrun --standalone --nproc_per_node 2 -m facekd train --config configs/train/ms1mv2_r50.yaml \
    --set data.train="$WORK/synth/train" --set train.out="$WORK/r50_ddp" "${COMMON[@]}"
  # Distillation under Partial FC: sharded frozen centres (margin) and sharded logits (kd), each rank
  # building its part of a fresh teacher cache.
  for METHOD in margin kd; do
    torchrun --standalone --nproc_per_node 2 -m facekd distill --config configs/distill/ms1mv2_r100_mbf_$METHOD.yaml \
      --data "$WORK/synth/train" --teacher "$WORK/r100.pth" --teacher-head "$WORK/centres.pt" \
      --out "$WORK/${METHOD}_ddp" --set head.partial_fc=true --set distill.cache_dir="$WORK/cache_ddp" \
      --set train.batch_size=128 "${COMMON[@]}"
  done
  echo "2-GPU NCCL smoke: train $(rate "$WORK/r50_ddp/log.jsonl") img/s, distill margin $(rate "$WORK/margin_ddp/log.jsonl")" \
       "and kd $(rate "$WORK/kd_ddp/log.jsonl") img/s (global, Partial FC)"
else
  echo "2-GPU NCCL smoke: skipped (1 GPU)"
fi

#!/usr/bin/env bash
# Continue the shipped models' pre-training on a lent GPU for MINUTES (default 7), all three at once
# (base, lite, lite-causal share the GPU; their pools are built by the machine's cores), and leave
# the states and the log in OUT (default gpu-out/) for the machine that commits them.
#
# Needs, relative to the repository root: DATA/corpus (python -m stream_denoise.train.corpus build),
# the committed states in checkpoints/ (absent: training starts from scratch), and on a machine
# without PyAV (no x264/x265 there) DATA/codec, the next pool's encoded clips made where PyAV is:
#   python -m stream_denoise.train.pretrain codec-cache --model base --out DATA/codec --for-device cuda
# States over 15 MB are split into parts (the device tool returns files of at most 16 MiB);
# join them with `cat base.state.part* > checkpoints/base.state`.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${MINUTES:-7}
data=${DATA:-.device}
out=${OUT:-gpu-out}
mkdir -p "$out" "$data/state"
export PYTHONUNBUFFERED=1
log="$out/train.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c 'import torch, cv2; print("torch", torch.__version__, "cuda", torch.version.cuda, "opencv", cv2.__version__)'; git log -1 --format=%H 2>/dev/null; } >"$log" 2>&1
cp checkpoints/*.state "$data/state/" 2>/dev/null || true
nproc_=$(nproc)
pids=()
for m in base lite lite-causal; do
  if [ "$m" = base ]; then workers=$(( (nproc_ + 1) / 2 )); clips=${BASE_CLIPS:-2000}; reuse=1000
  else workers=$(( (nproc_ + 3) / 4 )); clips=${LITE_CLIPS:-1000}; reuse=4000; fi
  timeout "$(python3 -c "print(int($minutes * 60 + 240))")" python3 -m stream_denoise.train.pretrain continue --model "$m" --minutes "$minutes" \
    --corpus "$data/corpus" --state "$data/state" --codec-cache "$data/codec" --workers "$workers" \
    --pool-clips "$clips" --reuse "$reuse" --checkpoint-every 2000 --no-progress >"$out/$m.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for m in base lite lite-causal; do { echo "== $m"; grep -v "^$" "$out/$m.log" | tail -n 25; } >>"$log"; rm -f "$out/$m.log"; done
for f in "$data"/state/*.state; do
  [ -f "$f" ] || continue
  if [ "$(stat -c %s "$f")" -gt 15000000 ]; then split -b 15000000 -d "$f" "$out/$(basename "$f").part"; else cp "$f" "$out/"; fi
done
ls -la "$out" >>"$log"
exit $status

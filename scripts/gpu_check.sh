#!/usr/bin/env bash
# What a lent GPU machine runs, in one go (see docker/README.md and BENCHMARKS.md "On a GPU"):
# tests/gpu, the GPU runtime benchmark (benchmarks/gpu.py) and the streaming speed benchmark with
# the cuda backend. Results and logs go under $OUT (default gpu-out/). Python packages missing on
# that machine travel as wheels in .whl/ (installed into /tmp/site).
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/nvidia-smi.txt"
echo "== tests/gpu"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/tests-gpu.txt" | tail -4
echo "== benchmarks.gpu"
timeout 300 python3 -m benchmarks.gpu --forms "${FORMS:-fused}" ${GPU_ARGS:-} --out "$out/gpu.json" 2>&1 | tee "$out/gpu.log" | grep "benchmarks.gpu\|rror" | tail -70
echo "== benchmarks speed (cuda)"
timeout 120 python3 -m benchmarks speed --backends '' --models base,lite --resolutions 640x360,1920x1080 \
  --speed-frames 40 --results "$out/r" --md "$out/r/B.md" >"$out/speed.log" 2>&1
echo "speed exit $?"; grep "cuda" "$out/r/B.md" 2>/dev/null | head -8
echo "== benchmarks.streams (issue 25: the multi-process runtime at 1280x720, paced at the clip's 25 fps; drops show how many are held)"
timeout 200 python3 -m benchmarks.streams --streams ${STREAMS:-30,100} --size 1280x720 --realtime 10 \
  --model lite --backend cuda --modes processes --out "$out/streams-gpu-runtime.json" 2>&1 \
  | tee "$out/streams-runtime.log" | grep "streams \|rror" | tail -8

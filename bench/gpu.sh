#!/usr/bin/env bash
# `streamer bench` on an NVIDIA GPU, in one command of a fixed length, into one JSON: the demo models and
# each preset's networks (random weights of the published layouts where the real ones are absent),
# fp16 and fp32, at 1920x1080, with the semantic network alone through torch and ONNX Runtime's CUDA
# and TensorRT providers where installed (bench/gpu_runs.py says what each run does).
#
# On a machine without network: first, where pip reaches PyPI, bench/prepare-gpu-wheels.sh puts the
# missing wheels into bench/wheels/; here they are installed (--no-index) into a folder of their own
# when an import shows them missing. Then:
#
#   bench/gpu.sh [--budget 540] [--out bench-gpu.json] [--runs demo-fp16,...] [--frames 30] [--repeats 2]
#   bench/gpu.sh --device cpu --size 320x180 --frames 2 --repeats 1 --quick     # a dry run on a CPU
#
# --budget (seconds) bounds all the runs together; runs that would not fit are listed as skipped and can
# be run by a second command with --runs. Exit 0 when at least one run was measured, 69 when the wheels
# are missing and cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${STREAMER_GPU_SITE:-/tmp/streamer-gpu-site}
if ! "$PYTHON" -c "import av, pydantic, segmentation_models_pytorch, trackers, yaml, cv2" 2>/dev/null; then
    if ! ls bench/wheels/*.whl >/dev/null 2>&1; then
        echo "gpu.sh: streamer's dependencies are missing and bench/wheels/ holds no wheels; run bench/prepare-gpu-wheels.sh where pip reaches PyPI" >&2
        exit 69
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/wheels/*.whl || {
        echo "gpu.sh: installing bench/wheels/*.whl failed (see above)" >&2; exit 69; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('gpu.sh: torch', torch.__version__, 'CUDA', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
exec "$PYTHON" bench/gpu_runs.py "$@"

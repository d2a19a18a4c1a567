#!/usr/bin/env bash
# Download, on a machine with network, the wheels that bench/gpu.sh installs on a GPU machine without
# network: streamer's dependencies such a machine lacks (an image with Python 3.12, torch and
# torchvision, numpy, OpenCV, timm, onnxruntime, but no PyAV, pydantic, segmentation-models-pytorch or
# trackers), for CPython 3.12 on x86-64 Linux, at the versions installed here (the ones the tests ran
# with). Into bench/wheels/ (git ignores it; about 38 MB).
#
#   bench/prepare-gpu-wheels.sh [--python-version 3.12] [EXTRA_REQUIREMENT ...]
#
# EXTRA_REQUIREMENT: more wheels to carry, e.g. onnxruntime-gpu for ONNX Runtime's CUDA and
# TensorRT providers (over 200 MB: more than some machines take along). Exit 69 when pip cannot
# reach its index, 64 for bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PY_VERSION=3.12
if [ "${1:-}" = "--python-version" ]; then
    [ $# -ge 2 ] || { echo "prepare-gpu-wheels: --python-version needs a value, e.g. 3.12" >&2; exit 64; }
    PY_VERSION=$2; shift 2
fi
DEST=bench/wheels
# streamer's dependencies the GPU image lacks, and theirs (segmentation-models-pytorch's others,
# timm, huggingface-hub, safetensors, are there)
NAMES="av pydantic pydantic-core annotated-types typing-inspection segmentation-models-pytorch trackers supervision pydeprecate defusedxml"
pinned=()
for name in $NAMES; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
    pinned+=("$name${version:+==$version}")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two stop the install
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        "${platforms[@]}" -d "$DEST" "${pinned[@]}" "$@"; then
    echo "prepare-gpu-wheels: pip could not download the wheels (no network, or no wheel for Python $PY_VERSION)" >&2
    exit 69
fi
ls -l "$DEST"
du -sh "$DEST"

#!/usr/bin/env bash
# Build (and optionally push) the trainer images, tagged with the names components/images.py uses.
#
#   images/build.sh                 # build cpu and cuda
#   images/build.sh cpu             # one of: cpu cuda ort
#   PUSH=1 images/build.sh          # build, then push
#   TOKCLS_IMAGE_REGISTRY=registry.example.com/ml TOKCLS_IMAGE_TAG=0.1.0 images/build.sh
#
# The same variables drive components/images.py, so after building with them, compile the components
# with the same environment (python scripts/compile_components.py) and the YAMLs name these images.
# Extra `docker build` flags: DOCKER_BUILD_ARGS="--platform linux/amd64 --build-arg TORCH_CUDA=cu126".
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(cpu cuda)

# Image names from the one place that defines them.
read -r CPU_IMAGE CUDA_IMAGE REGISTRY TAG < <(python3 - <<'PY'
import importlib.util, pathlib
spec = importlib.util.spec_from_file_location("images", pathlib.Path("components/images.py"))
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
print(m.TRAINER_CPU_IMAGE, m.TRAINER_CUDA_IMAGE, m.REGISTRY, m.VERSION)
PY
)
ORT_IMAGE="${TOKCLS_TRAINER_ORT_IMAGE:-${REGISTRY}/trainer-ort:${TAG}}"

export DOCKER_BUILDKIT=1
for target in "${targets[@]}"; do
  case "$target" in
    cpu)  image="$CPU_IMAGE" ;;
    cuda) image="$CUDA_IMAGE" ;;
    ort)  image="$ORT_IMAGE"; echo "note: ONNX Runtime training is deprecated upstream; this image pins its last release (see images/README.md)" >&2 ;;
    *) echo "unknown target '$target' (cpu, cuda, ort)" >&2; exit 2 ;;
  esac
  echo "==> building $image from images/Dockerfile.$target"
  # shellcheck disable=SC2086
  docker build -f "images/Dockerfile.$target" -t "$image" \
    --label "org.opencontainers.image.revision=$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)" \
    --label "org.opencontainers.image.source=kfp-token-classification" \
    ${DOCKER_BUILD_ARGS:-} .
  if [ "${PUSH:-0}" = "1" ]; then
    echo "==> pushing $image"
    docker push "$image"
  fi
done

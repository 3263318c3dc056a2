#!/usr/bin/env bash
# Build (and optionally push) the trainer images, tagged with the names components/images.py uses.
#
#   images/build.sh                 # build cpu and cuda
#   images/build.sh cpu             # one of: cpu cuda ort
#   PUSH=1 images/build.sh          # build, then push (or --push)
#   TOKCLS_IMAGE_REGISTRY=registry.example.com/ml TOKCLS_IMAGE_TAG=0.1.0 images/build.sh
#
# Options (after or before the targets):
#   --engine docker|podman|buildah   the container engine (default: CONTAINER_ENGINE, else docker if its
#                                    daemon answers, else podman, else buildah); see images/engine.sh
#   --base-image NAME                BASE_IMAGE build arg, e.g. a pinned digest, or the local Debian base
#                                    of scripts/build_local_base.sh where no registry is reachable
#   --extra-ca-certs DIR             trust DIR's *.crt / *.pem during the build (hosts behind a TLS-
#                                    intercepting proxy; Debian/Ubuntu keep local CAs in
#                                    /usr/local/share/ca-certificates). Build time only: not in the image.
#   --wheel-dir DIR                  install torch from the wheels in DIR (pip --find-links) instead of
#                                    the PyTorch wheel index, e.g. a host's pip find-links folder
# The last three are also read from TOKCLS_BASE_IMAGE, TOKCLS_EXTRA_CA_CERTS and TORCH_WHEEL_DIR.
# DIRs reach the build as named build contexts (--build-context extra-ca-certs=DIR / torch-wheels=DIR;
# docker needs BuildKit/buildx, podman >= 4.3 or buildah >= 1.28 have them). Only Dockerfile.cpu declares
# them so far; asking for them with another target exits 2.
#
# The same variables drive components/images.py, so after building with them, compile the components
# with the same environment (python scripts/compile_components.py) and the YAMLs name these images.
# Extra build flags: DOCKER_BUILD_ARGS="--platform linux/amd64 --build-arg TORCH_CUDA=cu126".
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=engine.sh
. "$REPO/images/engine.sh"

usage() { sed -n '2,26p' "$REPO/images/build.sh" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

targets=()
BASE_IMAGE="${TOKCLS_BASE_IMAGE:-}"
EXTRA_CA_CERTS="${TOKCLS_EXTRA_CA_CERTS:-}"
WHEEL_DIR="${TORCH_WHEEL_DIR:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --engine|--base-image|--extra-ca-certs|--wheel-dir)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
            case "$1" in
                --engine) CONTAINER_ENGINE="$2" ;;
                --base-image) BASE_IMAGE="$2" ;;
                --extra-ca-certs) EXTRA_CA_CERTS="$2" ;;
                --wheel-dir) WHEEL_DIR="$2" ;;
            esac
            shift ;;
        --engine=*) CONTAINER_ENGINE="${1#*=}" ;;
        --base-image=*) BASE_IMAGE="${1#*=}" ;;
        --extra-ca-certs=*) EXTRA_CA_CERTS="${1#*=}" ;;
        --wheel-dir=*) WHEEL_DIR="${1#*=}" ;;
        --push) PUSH=1 ;;
        -h|--help) usage; exit 0 ;;
        cpu|cuda|ort) targets+=("$1") ;;
        *) die "unknown argument '$1' (targets: cpu cuda ort; options: --engine --base-image --extra-ca-certs --wheel-dir --push)" ;;
    esac
    shift
done
[ ${#targets[@]} -eq 0 ] && targets=(cpu cuda)

build_contexts=()
if [ -n "$EXTRA_CA_CERTS" ]; then
    [ -d "$EXTRA_CA_CERTS" ] || die "--extra-ca-certs '$EXTRA_CA_CERTS' is not a directory"
    compgen -G "$EXTRA_CA_CERTS/*.crt" >/dev/null || compgen -G "$EXTRA_CA_CERTS/*.pem" >/dev/null \
        || die "--extra-ca-certs '$EXTRA_CA_CERTS' holds no *.crt or *.pem file"
    build_contexts+=(--build-context "extra-ca-certs=$(cd "$EXTRA_CA_CERTS" && pwd)")
fi
if [ -n "$WHEEL_DIR" ]; then
    [ -d "$WHEEL_DIR" ] || die "--wheel-dir '$WHEEL_DIR' is not a directory"
    compgen -G "$WHEEL_DIR/torch-*.whl" >/dev/null || die "--wheel-dir '$WHEEL_DIR' holds no torch-*.whl"
    build_contexts+=(--build-context "torch-wheels=$(cd "$WHEEL_DIR" && pwd)")
fi

# Relative DIRs above are relative to where the script was started; from here on, the repository root.
cd "$REPO"

# Image names from the one place that defines them.
read -r CPU_IMAGE CUDA_IMAGE REGISTRY TAG < <(python3 - <<'PY'
import importlib.util, pathlib
spec = importlib.util.spec_from_file_location("images", pathlib.Path("components/images.py"))
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
print(m.TRAINER_CPU_IMAGE, m.TRAINER_CUDA_IMAGE, m.REGISTRY, m.VERSION)
PY
)
ORT_IMAGE="${TOKCLS_TRAINER_ORT_IMAGE:-${REGISTRY}/trainer-ort:${TAG}}"

# The host-input contexts need a stage of that name in the Dockerfile (else they would be silently ignored).
for target in "${targets[@]}"; do
    for ctx in extra-ca-certs torch-wheels; do
        if printf '%s\n' "${build_contexts[@]:-}" | grep -q "^$ctx=" \
                && ! grep -q "^FROM scratch AS $ctx$" "$REPO/images/Dockerfile.$target"; then
            die "images/Dockerfile.$target has no '$ctx' stage: --extra-ca-certs / --wheel-dir work for cpu only"
        fi
    done
done

# podman and buildah keep each stage of a multi-stage build in the image store (their layer cache): the builder stage
# (~2 GB of venv), which the image does not build on, would be left there untagged by every rebuild with new sources.
# So the one new untagged image a build leaves (that stage) is named localhost/tokcls-build-stage:<target>-builder,
# and the image that name had before is removed as the trainer image's is. With several new ones (not expected),
# they are removed. Docker (BuildKit) keeps stages in its build cache, not as images.
tokcls_dangling() {
    [ "$ENGINE" = docker ] && return 0
    "$ENGINE" images --filter dangling=true --no-trunc -q | sed 's/^sha256://' | sort -u
}
tokcls_name_builder() {
    local target="$1" before="$2" replaced="${3#sha256:}" name new old id
    [ "$ENGINE" = docker ] && return 0
    name="localhost/tokcls-build-stage:$target-builder"
    new="$(comm -13 <(printf '%s\n' "$before") <(tokcls_dangling) | sed '/^$/d' | { grep -vx "${replaced:-none}" || true; })"
    [ -n "$new" ] || return 0  # the stages came from the cache (and have their names)
    if [ "$(printf '%s\n' "$new" | wc -l)" -eq 1 ]; then
        old="$(tokcls_image_id "$name")"
        "$ENGINE" tag "$new" "$name"
        tokcls_remove_replaced "$old" "$name"
    else
        for id in $new; do "$ENGINE" rmi "$id" >/dev/null 2>&1 || true; done
    fi
}

tokcls_pick_engine "$REPO"
export DOCKER_BUILDKIT=1
SOURCE_URL="$(tokcls_source_url "$REPO")"
for target in "${targets[@]}"; do
    case "$target" in
        cpu)  image="$CPU_IMAGE" ;;
        cuda) image="$CUDA_IMAGE" ;;
        ort)  image="$ORT_IMAGE"; echo "note: ONNX Runtime training is deprecated upstream; this image pins its last release (see images/README.md)" >&2 ;;
    esac
    dockerfile="images/Dockerfile.$target"
    # OCI labels: version = the image's tag; source only when the git remote gives a URL (tokcls_source_url).
    version="${image##*/}"; [[ "$version" == *:* ]] && version="${version##*:}" || version="$TAG"
    args=(-f "$dockerfile" -t "$image"
          --label "org.opencontainers.image.title=kfp-token-classification trainer-$target"
          --label "org.opencontainers.image.version=$version"
          --label "org.opencontainers.image.revision=$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)")
    [ -n "$SOURCE_URL" ] && args+=(--label "org.opencontainers.image.source=$SOURCE_URL")
    [ -n "$BASE_IMAGE" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    # BuildKit reads <Dockerfile>.dockerignore by itself; podman/buildah are told.
    [ "$ENGINE" != docker ] && [ -f "$dockerfile.dockerignore" ] && args+=(--ignorefile "$dockerfile.dockerignore")
    [ "$ENGINE" = buildah ] && args+=(--layers)  # cache layers as docker and podman do (buildah's default: no)
    args+=("${build_contexts[@]}")
    echo "==> building $image from $dockerfile ($ENGINE${BASE_IMAGE:+, base $BASE_IMAGE})"
    started=$(date +%s)
    replaced="$(tokcls_image_id "$image")"
    dangling="$(tokcls_dangling)"
    # shellcheck disable=SC2086
    "$ENGINE" build "${args[@]}" ${DOCKER_BUILD_ARGS:-} .
    echo "==> built $image in $(( $(date +%s) - started ))s"
    tokcls_remove_replaced "$replaced" "$image"
    tokcls_name_builder "$target" "$dangling" "$replaced"
    if [ "${PUSH:-0}" = "1" ]; then
        echo "==> pushing $image"
        "$ENGINE" push "$image"
    fi
done

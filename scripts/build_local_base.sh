#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built from Debian packages with mmdebstrap and imported into
# the local image store: the BASE_IMAGE of images/Dockerfile.cpu on hosts with no container registry (CI).
#
#   bash scripts/build_local_base.sh                  # build if missing; prints the image name
#   bash scripts/build_local_base.sh --force          # rebuild
#   bash scripts/build_local_base.sh --mirror http://deb.example.com/debian   # (repeatable) other apt mirror(s)
#   images/build.sh cpu --base-image "$(bash scripts/build_local_base.sh --print-name)"
#
# Packages: minbase + python3 (Debian's 3.11.2), python3-venv, python3-pip, ca-certificates (no `python`, g++ or
# Python.h: images/Dockerfile.cpu installs g++ and python3-dev). Mirror: the host's own apt sources when the host is
# bookworm (they then also become the image's apt sources), else deb.debian.org (with updates and security).
# Engine: CONTAINER_ENGINE (podman, docker or buildah; default as in images/engine.sh). Needs root (or
# sudo) for mmdebstrap's root mode; takes ~1 minute. Cached: nothing is done when the image exists.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../images/engine.sh
. "$REPO/images/engine.sh"

IMAGE="${TOKCLS_LOCAL_BASE_IMAGE:-localhost/tokcls-debian-python3:bookworm}"
SUITE=bookworm
FORCE=0
PRINT_NAME=0
MIRRORS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --print-name) PRINT_NAME=1 ;;
        --mirror)
            [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: --mirror needs a value (an apt mirror URL, 'deb ...' line or sources file)" >&2; exit 2; }
            MIRRORS+=("$2"); shift ;;
        --mirror=*) MIRRORS+=("${1#--mirror=}") ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$1' (--force, --mirror URL, --print-name)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$PRINT_NAME" = 1 ]; then
    echo "$IMAGE"
    exit 0
fi

tokcls_pick_engine "$REPO"
if [ "$FORCE" = 0 ] && tokcls_image_exists "$IMAGE"; then
    echo "local base: $IMAGE exists ($ENGINE); --force rebuilds" >&2
    echo "$IMAGE"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
    echo "error: mmdebstrap not found (bash scripts/install_container_tools.sh)" >&2
    exit 2
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ ${#MIRRORS[@]} -eq 0 ]; then
    # The host's apt sources, when they are for this suite (they may point at an internal mirror or a snapshot).
    if grep -qs "^VERSION_CODENAME=$SUITE$" /etc/os-release; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && grep -qsE "^[[:space:]]*(deb |Types:)" "$f" && MIRRORS+=("$f")
        done
    fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
echo "==> mmdebstrap $SUITE (minbase + python3) from: ${MIRRORS[*]:-deb.debian.org}" >&2
$SUDO mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    --aptopt='Acquire::Retries "3"' "$SUITE" "$WORK/rootfs.tar" "${MIRRORS[@]}"

CHANGES=(--change 'ENV LANG=C.UTF-8' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
         --change 'CMD ["/bin/bash"]')
echo "==> importing as $IMAGE ($ENGINE)" >&2
replaced="$(tokcls_image_id "$IMAGE")"
case "$ENGINE" in
    podman|docker)
        quiet=(); [ "$ENGINE" = podman ] && quiet=(--quiet)
        "$ENGINE" import "${quiet[@]}" "${CHANGES[@]}" --message "mmdebstrap --variant=minbase $SUITE + python3" \
            "$WORK/rootfs.tar" "$IMAGE" >/dev/null ;;
    buildah)
        ctr=$(buildah from scratch)
        buildah add "$ctr" "$WORK/rootfs.tar" / >/dev/null
        buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --cmd /bin/bash "$ctr"
        buildah commit --rm "$ctr" "$IMAGE" >/dev/null ;;
esac
echo "local base: $IMAGE built in $(( $(date +%s) - started ))s" >&2
tokcls_remove_replaced "$replaced" "$IMAGE"  # kept while a trainer image built on it is in the store
echo "$IMAGE"

#!/usr/bin/env bash
# Daemonless OCI tooling for building and running the trainer images (Debian/Ubuntu, apt as root or sudo):
#   podman      builds (podman build = buildah) and runs containers; `podman system service` gives the Docker-
#               compatible API that kfp.local.DockerRunner talks to (pipelines/container_runner.py)
#   buildah     the build engine behind podman build (also usable on its own)
#   runc        the OCI runtime; images/containers.conf selects it (crun fails on some hosts' cgroup setups)
#   mmdebstrap  builds the local Debian base image where no registry is reachable (scripts/build_local_base.sh)
# Idempotent: installs only what is missing, and runs `apt-get update` only when an install fails without it.
# Usage: bash scripts/install_container_tools.sh
set -euo pipefail

if [ $# -gt 0 ]; then
    echo "usage: $0 (no arguments)" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null; then
    echo "error: apt-get not found: this script installs Debian packages (install podman, buildah, runc and mmdebstrap with your distribution's tools)" >&2
    exit 2
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "error: not root and no sudo: run as root or install sudo" >&2
        exit 2
    fi
    SUDO="sudo"
fi

# command -> package; uidmap (newuidmap) and slirp4netns keep rootless podman working for non-root users,
# fuse-overlayfs is its overlay driver where the kernel's is not usable rootless.
PACKAGES="podman buildah runc mmdebstrap uidmap slirp4netns fuse-overlayfs"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends $missing >/dev/null; }
fi
echo "podman $(podman version --format '{{.Client.Version}}' 2>/dev/null || podman --version), $(buildah --version), $(runc --version | head -1), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

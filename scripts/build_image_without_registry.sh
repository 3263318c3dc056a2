#!/usr/bin/env bash
# Build the CPU trainer image on a host that reaches no container registry (this project's CI):
#   1. the local Debian base (scripts/build_local_base.sh; cached),
#   2. images/build.sh cpu on that base, trusting this host's extra CA certificates and installing torch from
#      this host's pip find-links, when it has them:
#        CA certificates  TOKCLS_EXTRA_CA_CERTS, else /usr/local/share/ca-certificates when it holds *.crt
#        torch wheel      TORCH_WHEEL_DIR, else the first `pip config` find-links folder with a torch-*.whl
#                         (else the PyTorch CPU index, the Dockerfile's default)
# The image gets the name of components/images.py (the compiled YAMLs' image), so kfp.local pulls nothing.
# Usage: bash scripts/build_image_without_registry.sh      (needs podman/buildah or docker: install_container_tools.sh)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -gt 0 ]; then
    echo "usage: $0 (no arguments; see the header for the environment variables)" >&2
    exit 2
fi

base="$(bash "$REPO/scripts/build_local_base.sh")"

if [ -z "${TOKCLS_EXTRA_CA_CERTS:-}" ] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    export TOKCLS_EXTRA_CA_CERTS=/usr/local/share/ca-certificates
fi
if [ -z "${TORCH_WHEEL_DIR:-}" ]; then
    TORCH_WHEEL_DIR="$(${PYTHON:-python3} - <<'PY'
import glob, os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
links = os.environ.get("PIP_FIND_LINKS", "").split()
for line in out.splitlines():
    key, _, value = line.partition("=")
    if key.endswith(".find-links"):
        links += value.strip().strip("'\"").split()
for link in links:
    path = link[len("file://"):] if link.startswith("file://") else link
    if "://" not in path and glob.glob(os.path.join(path, "torch-*.whl")):
        print(path)
        break
PY
)"
    [ -n "$TORCH_WHEEL_DIR" ] && export TORCH_WHEEL_DIR
fi
echo "base: $base; extra CA certificates: ${TOKCLS_EXTRA_CA_CERTS:-none}; torch wheels: ${TORCH_WHEEL_DIR:-the PyTorch CPU index}"
exec bash "$REPO/images/build.sh" cpu --base-image "$base"

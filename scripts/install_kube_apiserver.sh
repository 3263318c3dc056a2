#!/usr/bin/env bash
# A real Kubernetes control plane for tests/launcher/test_launcher_apiserver.py, from Debian's package archive:
#   etcd            Debian package `etcd-server` (3.4)
#   kube-apiserver  built from Debian's `kubernetes` source package (upstream v1.20.2 with its vendored
#                   dependencies) with Debian's Go 1.19, offline (GOPATH mode + vendor/). Two changes to the
#                   tree: the generated file the tarball lacks (pkg/generated/openapi) is generated with the
#                   vendored openapi-gen, as upstream's `make` does; the vendored modern-go/reflect2 1.0.1, whose
#                   map iteration crashes under Go >= 1.18, is replaced by Debian's 1.0.2 (the upstream fix).
#   kube-controller-manager  from the same tree; the tests run only its garbage collector (ownerReferences).
# Result: $KUBE_BIN_DIR/kube-apiserver and kube-controller-manager (default .cache/kube/). Idempotent: builds what
# is missing; the first run takes ~15 min on 2 cores.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${KUBE_BIN_DIR:-$REPO/.cache/kube}"
VERSION="1.20.5+really1.20.2"
TARBALL="kubernetes_${VERSION}.orig.tar.gz"
SHA256="b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"  # from the Debian .dsc
URL="http://deb.debian.org/debian/pool/main/k/kubernetes/${TARBALL}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

PACKAGES="etcd-server golang-go golang-github-modern-go-reflect2-dev openssl curl ca-certificates"
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
if ! command -v etcd >/dev/null || ! command -v go >/dev/null || ! command -v openssl >/dev/null \
        || [ ! -f "$REFLECT2/go_above_118.go" ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        $PACKAGES >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends $PACKAGES >/dev/null; }
fi

BINARIES=""
for b in kube-apiserver kube-controller-manager; do
    [ -x "$DEST/$b" ] || BINARIES="$BINARIES $b"
done
if [ -z "$BINARIES" ]; then
    echo "kube-apiserver, kube-controller-manager: $DEST ($("$DEST/kube-apiserver" --version)); etcd: $(command -v etcd)"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "downloading $URL"
curl -fsSL --retry 3 -o "$WORK/$TARBALL" "$URL"
echo "$SHA256  $WORK/$TARBALL" | sha256sum -c - >/dev/null
SRC="$WORK/gopath/src/k8s.io/kubernetes"
mkdir -p "$SRC"
tar xzf "$WORK/$TARBALL" -C "$SRC" --strip-components=1
rm -f "$WORK/$TARBALL"

export GO111MODULE=off GOPATH="$WORK/gopath" CGO_ENABLED=0 GOFLAGS="" GOCACHE="${GOCACHE:-$WORK/gocache}"
cd "$SRC"
rm -rf vendor/github.com/modern-go/reflect2 && mkdir vendor/github.com/modern-go/reflect2
cp "$REFLECT2"/*.go vendor/github.com/modern-go/reflect2/ && rm -f vendor/github.com/modern-go/reflect2/*_test.go
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# The packages upstream's Makefile.generated_files feeds to openapi-gen for pkg/generated/openapi.
DIRS=$(find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) -type f -name '*.go' \
    | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
    | sed 's|^./staging/src|vendor|; s|^./||' | xargs -n1 dirname \
    | grep -v '^vendor/k8s.io/code-generator/\|^vendor/k8s.io/sample-apiserver/' | LC_ALL=C sort -u \
    | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$WORK/openapi-gen" --logtostderr -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/violations.report"
mkdir -p "$DEST"
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
for b in $BINARIES; do
    echo "building $b (go $(go env GOVERSION))"
    go build -trimpath -ldflags "-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20" \
        -o "$DEST/$b.tmp" "./cmd/$b"
    mv "$DEST/$b.tmp" "$DEST/$b"
done
echo "kube-apiserver, kube-controller-manager: $DEST ($("$DEST/kube-apiserver" --version)); etcd: $(command -v etcd)"

# Sourced by images/build.sh and scripts/build_local_base.sh: picks the container engine.
#   CONTAINER_ENGINE=docker|podman|buildah   use that one (exit 2 if it is not installed)
#   unset                                    docker if its daemon answers, else podman, else buildah
# For podman/buildah, CONTAINERS_CONF defaults to images/containers.conf (runc, ulimits the CI hosts accept).

tokcls_pick_engine() {
    local repo="$1"
    if [ -n "${CONTAINER_ENGINE:-}" ]; then
        case "$CONTAINER_ENGINE" in
            docker|podman|buildah) ;;
            *) echo "error: CONTAINER_ENGINE='$CONTAINER_ENGINE': expected docker, podman or buildah" >&2; exit 2 ;;
        esac
        if ! command -v "$CONTAINER_ENGINE" >/dev/null; then
            echo "error: CONTAINER_ENGINE=$CONTAINER_ENGINE but '$CONTAINER_ENGINE' is not installed (bash scripts/install_container_tools.sh installs podman and buildah)" >&2
            exit 2
        fi
        ENGINE="$CONTAINER_ENGINE"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v podman >/dev/null; then
        ENGINE=podman
    elif command -v buildah >/dev/null; then
        ENGINE=buildah
    else
        echo "error: no container engine: install docker, or podman/buildah (bash scripts/install_container_tools.sh)" >&2
        exit 2
    fi
    if [ "$ENGINE" != docker ] && [ -z "${CONTAINERS_CONF:-}" ]; then
        export CONTAINERS_CONF="$repo/images/containers.conf"
    fi
    export ENGINE
}

# True when IMAGE is in the engine's local store.
tokcls_image_exists() {
    case "$ENGINE" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

# The ID of IMAGE in the engine's local store (empty when it is not there).
tokcls_image_id() {
    case "$ENGINE" in
        docker|podman) "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true ;;
        buildah) buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true ;;
    esac
}

# After IMAGE was built again: remove OLD_ID, the image the name pointed to before, when no name is left on it.
# Each rebuild otherwise leaves the old image in the store, untagged (the CPU trainer image's own layers are ~2.5 GB,
# and CI rebuilds it on every run). An old image that another name still has stays (podman 4.3 removes an image by
# its ID together with its one remaining name), as does one a container or a child image uses (the engine refuses).
tokcls_remove_replaced() {
    local old="${1#sha256:}" image="$2"
    [ -n "$old" ] && [ "$old" != "$(tokcls_image_id "$image" | sed 's/^sha256://')" ] || return 0
    "$ENGINE" images --filter dangling=true --no-trunc -q | sed 's/^sha256://' | grep -qx "$old" || return 0
    if "$ENGINE" rmi "$old" >/dev/null 2>&1; then
        echo "==> removed the image that $image replaced (${old:0:12})" >&2
    fi
}

# The org.opencontainers.image.source label: the web URL of the git remote the repository at $1 was cloned from
# (origin, else the first remote), without credentials or ".git"; empty (no label) when there is none or it is not a
# network URL (a local path). git@host:owner/repo and ssh://git@host/owner/repo become https://host/owner/repo.
tokcls_source_url() {
    local repo="$1" url remote
    url="$(git -C "$repo" config --get remote.origin.url 2>/dev/null \
           || { remote="$(git -C "$repo" remote 2>/dev/null | head -n 1)"; [ -n "$remote" ] && git -C "$repo" config --get "remote.$remote.url"; } \
           || true)"
    [ -n "$url" ] || return 0
    python3 - "$url" <<'PY'
import re, sys
url = sys.argv[1].strip()
m = re.fullmatch(r"(?:ssh://)?[\w.-]+@([\w.-]+)(?::\d+)?[:/](?!/)(.+)", url)  # git@host:path, ssh://git@host[:port]/path
if m:
    url = f"https://{m.group(1)}/{m.group(2)}"
elif re.match(r"git://", url):
    url = "https://" + url[len("git://"):]
m = re.fullmatch(r"(https?)://(?:[^@/]*@)?([^/]+)/(.+?)(?:\.git)?/?", url)  # drop user:token@ and .git
if m:
    print(f"{m.group(1)}://{m.group(2)}/{m.group(3)}")
PY
}

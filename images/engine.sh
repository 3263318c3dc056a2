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

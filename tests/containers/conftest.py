"""Fixtures for the tests that run the trainer image: an engine (Docker, or podman's API) and the built image.

Without an engine or the image these tests skip, unless TOKCLS_REQUIRE_CONTAINERS=1 (as .ci/run sets): then they
fail. Build the image with `images/build.sh cpu` (here: see images/README.md, "Building without Docker").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE_YAML = REPO / "pipelines" / "token_classification_pipeline.yaml"
REQUIRED = os.environ.get("TOKCLS_REQUIRE_CONTAINERS") == "1"


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"TOKCLS_REQUIRE_CONTAINERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pipeline_images() -> set[str]:
    """The images the compiled pipeline runs (its container executors)."""
    from kfp import components

    spec = components.load_component_from_file(str(PIPELINE_YAML)).pipeline_spec
    return {e["container"]["image"] for e in spec.deployment_spec["executors"].values() if "container" in e}


@pytest.fixture(scope="session")
def docker_url():
    """DOCKER_HOST of a running engine for the whole session (a podman service is started when that is the one)."""
    from pipelines.container_runner import ContainerEngineUnavailable, docker_host, engine_available

    reason = engine_available()
    if reason:
        unavailable(reason)
    previous = os.environ.get("DOCKER_HOST")
    try:
        with docker_host() as url:
            os.environ["DOCKER_HOST"] = url
            yield url
    except ContainerEngineUnavailable as err:
        unavailable(str(err))
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous


@pytest.fixture(scope="session")
def docker_client(docker_url):
    import docker

    client = docker.DockerClient(base_url=docker_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def trainer_image(docker_client) -> str:
    """The image named in the compiled pipeline, present in the engine's store (so kfp pulls nothing)."""
    import docker

    images = pipeline_images()
    assert len(images) == 1, images  # every step of the CPU pipeline runs the CPU trainer image
    image = images.pop()
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        unavailable(f"image {image} is not built here (images/build.sh cpu; see images/README.md)")
    return image

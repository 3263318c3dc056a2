"""Static checks of images/: pins agree with pyproject and the tested environment; non-root; the trainer entry point.

No Docker daemon here, so the images are not built in tests (images/README.md says how to build them).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"


def constraints() -> dict[str, str]:
    pins = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, pinned = line.split("==")
            pins[name.lower()] = pinned
    return pins


def test_constraints_satisfy_pyproject_ranges():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for text in project["dependencies"]:
        req = Requirement(text)
        assert req.name.lower() in pins, f"{req.name} is not pinned in images/constraints.txt"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (req, pins[req.name.lower()])


@pytest.mark.parametrize("name", ["torch", "transformers", "deepspeed", "peft", "accelerate", "mlflow", "kfp",
                                  "kubernetes"])
def test_constraints_are_the_tested_versions(name):
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.skip(f"{name} not installed")
    assert installed.split("+")[0] == constraints()[name]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.ort"])
def test_dockerfiles_run_the_trainer_as_non_root(dockerfile):
    text = (IMAGES / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["token-classification-finetune"\]', text, flags=re.M)
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+", text, flags=re.M)  # a tagged base, never :latest
    assert ":latest" not in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_supported_images_pin_torch_and_use_the_constraints(dockerfile):
    text = (IMAGES / dockerfile).read_text()
    assert f"ARG TORCH_VERSION={constraints()['torch']}" in text
    assert "-c /tmp/constraints.txt /src" in text
    assert (IMAGES / f"{dockerfile}.dockerignore").exists()


def test_ort_image_is_labelled_experimental():
    assert "EXPERIMENTAL / UNSUPPORTED" in (IMAGES / "Dockerfile.ort").read_text()

"""Static checks of images/Dockerfile.* that need no engine (the CUDA and ORT images are not built here):

- the build tools every Dockerfile installs are pinned the same: seqeval is a source distribution whose
  setup_requires=['setuptools_scm'] fails when setuptools fetches the newest setuptools_scm itself (No module named
  'vcs_versioning'), so each image installs setuptools-scm with setuptools and wheel (Dockerfile.cuda once did not);
- the source, the constraints/requirements files and the build's CA bundle reach only stages that are not the image,
  or RUN --mount: never a COPY into the final stage (tests/containers/test_image.py checks the built CPU image's
  layers themselves);
- the images have the Python headers DeepSpeed's JIT-built ops need.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(p.name for p in (REPO / "images").glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))
BUILD_TOOLS = ("setuptools", "wheel", "setuptools-scm")


def build_tool_pins(text: str) -> list[tuple[str, ...]]:
    """The build-tool requirements of each `pip install` that installs setuptools, as a sorted tuple."""
    pins = []
    for command in re.findall(r"pip install ([^&\\\n]*)", text):
        reqs = [r.strip("\"'") for r in command.split() if not r.startswith("-")]
        reqs = [r for r in reqs if re.split(r"[<>=!~ ]", r, 1)[0].lower() in BUILD_TOOLS]
        if reqs:
            pins.append(tuple(sorted(reqs)))
    return pins


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.split(r"(?<!\\)\n", "\n".join(lines)) if i.strip()]


def final_stage(text: str) -> str:
    return re.split(r"^FROM\s", text, flags=re.M)[-1]


def test_there_are_three_dockerfiles():
    assert DOCKERFILES == ["Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.ort"]


def test_every_dockerfile_pins_the_same_build_tools():
    pins = {name: build_tool_pins((REPO / "images" / name).read_text()) for name in DOCKERFILES}
    for name, found in pins.items():
        assert len(found) == 1, f"{name}: expected one pip install of the build tools, found {found}"
        names = {re.split(r"[<>=!~]", r, 1)[0].lower() for r in found[0]}
        assert names == set(BUILD_TOOLS), f"{name} installs {found[0]}: it needs all of {BUILD_TOOLS}"
    assert len({found[0] for found in pins.values()}) == 1, f"the Dockerfiles pin different build tools: {pins}"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.ort"])
def test_no_build_input_is_copied_into_the_image(name):
    text = (REPO / "images" / name).read_text()
    final = final_stage(text)
    copies = re.findall(r"^COPY\s+(.*)$", final, flags=re.M)
    assert all(c.split()[0].startswith("--from=") for c in copies), f"{name}: final stage copies {copies}"
    assert "COPY . /src" in text and "COPY . /src" not in final  # the source goes to a builder stage
    for run in instructions(text):
        # the build's CA bundle: deleted in the RUN that writes it, or it is in a layer
        if "> /tmp/build-ca.pem" in run:
            assert re.search(r"rm (-rf )?(\S+ )*/tmp/build-ca\.pem", run.split("> /tmp/build-ca.pem", 1)[1]), run


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_the_deepspeed_images_have_the_python_headers(name):
    text = (REPO / "images" / name).read_text()
    assert 'sysconfig.get_paths()["include"], "Python.h"' in text  # checked during the build
    assert "python3-dev" in text


@pytest.mark.parametrize("remote, source", [
    ("git@github.com:acme/kfp-token-classification.git", "https://github.com/acme/kfp-token-classification"),
    ("ssh://git@gitlab.example.com:2222/ml/tok.git", "https://gitlab.example.com/ml/tok"),
    ("https://user:secret@github.com/acme/tok.git", "https://github.com/acme/tok"),
    ("https://github.com/acme/tok", "https://github.com/acme/tok"),
    ("/srv/git/tok.git", ""),
    (None, ""),
])
def test_the_source_label_is_a_url_from_the_git_remote_or_nothing(tmp_path, remote, source):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", remote], check=True)
    result = subprocess.run(["bash", "-c", '. images/engine.sh; tokcls_source_url "$1"', "_", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == source

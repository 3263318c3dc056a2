"""Bad input to the image scripts: exit 2 with one clear line on stderr, before anything is built or installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown argument 'bogus'"),
    (["cpu", "--base-image"], "--base-image needs a value"),
    (["cpu", "--wheel-dir", "/nonexistent/wheels"], "--wheel-dir '/nonexistent/wheels' is not a directory"),
    (["cpu", "--wheel-dir", "{empty}"], "holds no torch-*.whl"),
    (["cpu", "--extra-ca-certs", "{empty}"], "holds no *.crt or *.pem file"),
    (["cuda", "--wheel-dir", "{wheels}"], "images/Dockerfile.cuda has no 'torch-wheels' stage"),
    (["cpu", "--engine", "rkt"], "CONTAINER_ENGINE='rkt': expected docker, podman or buildah"),
])
def test_build_sh_rejects_bad_input_with_exit_2(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    args = [a.format(empty=empty, wheels=wheels) for a in args]
    result = run("images/build.sh", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""  # nothing was built


@pytest.mark.parametrize("script, args, message", [
    ("scripts/build_local_base.sh", ["--bogus"], "unknown argument '--bogus'"),
    ("scripts/build_local_base.sh", ["--mirror"], "--mirror needs a value"),
    ("scripts/install_container_tools.sh", ["podman"], "usage:"),
    ("scripts/build_image_without_registry.sh", ["cpu"], "usage:"),
])
def test_container_scripts_reject_bad_input_with_exit_2(script, args, message):
    result = run(script, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_build_local_base_names_its_image_without_building():
    result = run("scripts/build_local_base.sh", "--print-name", env={"TOKCLS_LOCAL_BASE_IMAGE": "localhost/x:y"})
    assert result.returncode == 0 and result.stdout.strip() == "localhost/x:y"

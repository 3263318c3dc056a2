"""The built CPU trainer image itself: its entry point, user, offline settings and torch build."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def readable_copy(src: Path, dst: Path) -> Path:
    """A copy uid 1000 (the image's user) can read: save_pretrained writes 0600 files."""
    shutil.copytree(src, dst)
    for folder, _, files in os.walk(dst):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    return dst


def run(client, image, command, **kwargs) -> tuple[int, str]:
    from pipelines.container_runner import wait_for_exit

    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        code = wait_for_exit(container)
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


def test_entry_point_help_runs_in_the_image(docker_client, trainer_image):
    code, out = run(docker_client, trainer_image, ["--help"])
    assert code == 0, out
    assert out.startswith("usage: token-classification-finetune")
    for flag in ("--preprocess_output", "--model_selector_output", "--pytorch_model_folder", "--max_steps"):
        assert flag in out, flag


def test_image_runs_as_uid_1000_offline_with_a_cpu_torch(docker_client, trainer_image):
    config = docker_client.images.get(trainer_image).attrs["Config"]
    assert config["User"].split(":")[0] == "1000"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    code, out = run(docker_client, trainer_image,
                    ["-c", "import os, torch, trainer.cli, launcher; print(os.getuid(), os.getgid(), torch.version.cuda)"],
                    entrypoint=["python"])
    assert code == 0, out
    assert out.split() == ["1000", "1000", "None"]


def test_a_failing_command_in_the_image_has_its_exit_code(docker_client, trainer_image):
    code, out = run(docker_client, trainer_image, ["--no-such-flag"])
    assert code == 2 and "--no-such-flag" in out


def test_image_labels_name_its_version_and_no_made_up_source(docker_client, trainer_image):
    """images/build.sh labels: version = the image's tag; source only as a URL (from the git remote), else absent."""
    labels = docker_client.images.get(trainer_image).attrs["Config"].get("Labels") or {}
    tag = trainer_image.rsplit("/", 1)[-1].partition(":")[2]
    assert labels.get("org.opencontainers.image.version") == tag, labels
    assert labels.get("org.opencontainers.image.revision"), labels
    assert labels.get("org.opencontainers.image.title", "").endswith("trainer-cpu"), labels
    source = labels.get("org.opencontainers.image.source")
    assert source is None or source.startswith(("https://", "http://")), labels


# Build inputs that must stay out of every layer of the image (not only out of its final file system: a file
# written in one layer and deleted in a later one is still in the image, for anyone who pulls it).
BUILD_ONLY = ("tmp/build-ca.pem", "build-ca", "tmp/build-ca", "src", "tmp/constraints.txt")


def _layer_dirs(attrs) -> list[Path]:
    data = (attrs.get("GraphDriver") or {}).get("Data") or {}
    dirs = [Path(d) for d in (data.get("LowerDir") or "").split(":") + [data.get("UpperDir") or ""] if d]
    return dirs if dirs and all(d.is_dir() for d in dirs) else []


def test_no_layer_of_the_image_holds_build_inputs(docker_client, trainer_image):
    """The CA bundle of the build (the host's extra CAs), the project's source and the constraints file are in no
    layer: Dockerfile.cpu keeps them in stages that are not the image, or in RUN --mount."""
    from tests.containers.conftest import unavailable

    layers = _layer_dirs(docker_client.images.get(trainer_image).attrs)
    if not layers:
        unavailable("the engine does not show the image's layer folders (an overlay store, as root, is needed)")
    leaks = []
    for layer in layers:
        for rel in BUILD_ONLY:
            path = layer / rel
            if not os.path.lexists(path):
                continue
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # an overlay whiteout: the path deleted in this layer (the content is in a lower one)
            leaks.append(str(path))
    assert not leaks, f"build-only files in the image's layers: {leaks}"


def test_the_image_compiles_against_its_python_headers(docker_client, trainer_image):
    """What DeepSpeed's JIT-built ops need first, in seconds: Python.h where the venv's sysconfig says, and a g++
    that compiles against it (the Debian base's python3 has no headers without python3-dev)."""
    script = ('inc="$(python -c \'import sysconfig; print(sysconfig.get_paths()["include"])\')" && ls "$inc/Python.h" '
              '&& printf "#include <Python.h>\\nint main(void) { return PY_MAJOR_VERSION != 3; }\\n" '
              '| g++ -fsyntax-only -x c++ -I"$inc" - && echo headers-ok')
    code, out = run(docker_client, trainer_image, ["-c", script], entrypoint=["bash"])
    assert code == 0 and "headers-ok" in out, out


def test_a_deepspeed_fine_tune_runs_in_the_image(docker_client, trainer_image, tmp_path, tiny_preprocess_output,
                                                 tiny_model_selector):
    """apply_deepspeed=true on CPU: DeepSpeed JIT-builds its deepspeed_shm_comm op at first use, which needs g++ and
    Python.h in the image (the local Debian base has no headers unless the image installs python3-dev)."""
    pre = readable_copy(tiny_preprocess_output, tmp_path / "pre")
    model = readable_copy(tiny_model_selector, tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)  # the image runs as uid 1000
    code, log = run(docker_client, trainer_image,
                    ["--preprocess_output", "/in/pre", "--model_selector_output", "/in/model",
                     "--pytorch_model_folder", "/out/pt", "--mlflow_model_folder", "/out/ml",
                     "--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
                     "--apply_deepspeed", "true", "--export_onnx", "false"],
                    volumes={str(pre): {"bind": "/in/pre", "mode": "ro"},
                             str(model): {"bind": "/in/model", "mode": "ro"},
                             str(out): {"bind": "/out", "mode": "rw"}})
    assert code == 0, log[-4000:]
    assert "Python.h" not in log
    assert (out / "pt" / "config.json").exists(), sorted(p.name for p in out.rglob("*"))

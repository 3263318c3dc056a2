"""Staging of a run's inputs and outputs on storage that every pod of the PyTorchJob can read and write.

Supported: a shared volume (a ReadWriteMany PVC) mounted at the same path in the launcher pod and in
every trainer pod. One run lives in `<mount>/<runs_subdir>/<run_id>/`:

    inputs/preprocess_output/      copy of the preprocess artifact
    inputs/model_selector_output/  copy of the model-import artifact
    inputs/deepspeed.json          the user's DeepSpeed JSON, when one was given as text
    outputs/pytorch_model_folder/  written by rank 0 (checkpoints too: resume finds them here)
    outputs/mlflow_model_folder/   written by rank 0

Object-store staging (s3://, gs://, ...) is not implemented: `check_staging_uri` rejects it at
validation time, before anything is created.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

RUNS_SUBDIR = "tokcls-runs"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StagingError(ValueError):
    """Staging storage that cannot be used (missing, not writable, unsupported URI)."""


def check_staging_uri(staging_uri: Optional[str]) -> None:
    """Reject object-store staging, which this launcher does not implement."""
    if staging_uri:
        scheme = staging_uri.split("://", 1)[0] if "://" in staging_uri else ""
        raise StagingError(
            f"staging_uri={staging_uri!r}: object-store staging ({scheme or 'URI'}) is not implemented; "
            "use a ReadWriteMany PVC (shared_pvc_name + shared_mount_path) and leave staging_uri empty")


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise StagingError(f"run_id {run_id!r} must be 1-63 characters of letters, digits, '.', '_', '-'")


def check_shared_mount(mount_path: str) -> Path:
    """The shared volume must be mounted (a writable folder) in this pod before anything is staged."""
    root = Path(mount_path)
    if not root.is_absolute():
        raise StagingError(f"shared_mount_path {mount_path!r} must be absolute")
    if not root.is_dir():
        raise StagingError(
            f"shared volume not mounted at {mount_path}: mount the same ReadWriteMany PVC into the launcher step "
            "(kfp.kubernetes.mount_pvc(task, pvc_name=..., mount_path=...))")
    if not os.access(root, os.W_OK | os.X_OK):
        raise StagingError(f"shared volume at {mount_path} is not writable by uid {os.getuid()}")
    return root


def _copytree(src: Path, dst: Path) -> None:
    """Copy a folder via a temporary sibling and a rename, so a half-copied folder is never seen as complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp / "x", symlinks=False)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp / "x", dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class SharedVolumeRun:
    """One run's folder on the shared volume; paths are the same in the launcher and the trainer pods."""

    mount_path: str
    run_id: str

    @property
    def run_dir(self) -> Path:
        return Path(self.mount_path) / RUNS_SUBDIR / self.run_id

    @property
    def preprocess_output(self) -> Path:
        return self.run_dir / "inputs" / "preprocess_output"

    @property
    def model_selector_output(self) -> Path:
        return self.run_dir / "inputs" / "model_selector_output"

    @property
    def deepspeed_config(self) -> Path:
        return self.run_dir / "inputs" / "deepspeed.json"

    @property
    def pytorch_model_folder(self) -> Path:
        return self.run_dir / "outputs" / "pytorch_model_folder"

    @property
    def mlflow_model_folder(self) -> Path:
        return self.run_dir / "outputs" / "mlflow_model_folder"

    def stage_inputs(self, preprocess_output: str, model_selector_output: str,
                     deepspeed_json: Optional[str] = None) -> None:
        """Copy the input artifacts in; output folders are created empty (or kept, for a resumed run)."""
        _copytree(Path(preprocess_output), self.preprocess_output)
        _copytree(Path(model_selector_output), self.model_selector_output)
        if deepspeed_json is not None:
            self.deepspeed_config.write_text(deepspeed_json)
        for folder in (self.pytorch_model_folder, self.mlflow_model_folder):
            folder.mkdir(parents=True, exist_ok=True)
        # Trainer pods may run as another uid of the same group (fsGroup): let the group write.
        for path in [self.run_dir, *self.run_dir.rglob("*")]:
            try:
                path.chmod(path.stat().st_mode | 0o070)
            except OSError:
                pass

    def check_outputs(self) -> None:
        """Rank 0 must have written both outputs; an empty folder after 'Succeeded' is a failure, not success."""
        problems = []
        if not self.pytorch_model_folder.is_dir() or not any(self.pytorch_model_folder.iterdir()):
            problems.append(f"{self.pytorch_model_folder} is empty")
        if not (self.mlflow_model_folder / "MLmodel").is_file():
            problems.append(f"{self.mlflow_model_folder}/MLmodel is missing")
        if problems:
            raise StagingError("the job reported success but its outputs are incomplete: " + "; ".join(problems))

    def collect_outputs(self, pytorch_model_folder: str, mlflow_model_folder: str) -> None:
        """Copy rank 0's outputs to the component's output artifact folders (replacing their contents)."""
        for src, dst in ((self.pytorch_model_folder, Path(pytorch_model_folder)),
                         (self.mlflow_model_folder, Path(mlflow_model_folder))):
            dst.mkdir(parents=True, exist_ok=True)
            for child in dst.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=False)

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

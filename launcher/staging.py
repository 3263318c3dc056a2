"""Staging of a run's inputs and outputs on storage that every pod of the PyTorchJob can reach.

Two kinds, with one interface (`RunStorage`) so the launcher does not care which:

- `SharedVolumeRun`: a shared volume (a ReadWriteMany PVC) mounted at the same path in the launcher pod
  and in every trainer pod; one run lives in `<mount>/<runs_subdir>/<run_id>/`.
- `ObjectStoreRun` (single-node jobs): an S3 (or S3-compatible: MinIO, GCS interop) prefix; one run lives under
  `<staging_uri>/<runs_subdir>/<run_id>/`. Each pod pulls the inputs (and earlier checkpoints) into an
  emptyDir, the master pod uploads complete checkpoints while training and, after a successful run, its
  outputs and then the marker `outputs/_SUCCESS` (see launcher/manifest.py and launcher/objstore.py).

The folder layout of a run, the same in both, is `launcher.layout.RunLayout`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from launcher.layout import RunLayout
from launcher.manifest import ObjectStoreSpec
from trainer import objstore
from trainer.constants import SUCCESS_MARKER
from trainer.publish import copy_tree_atomic, remove_entry

log = logging.getLogger(__name__)

RUNS_SUBDIR = "tokcls-runs"
DEFAULT_WORK_DIR = "/workspace/run"  # the pods' emptyDir with object-store staging
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StagingError(ValueError):
    """Staging storage that cannot be used (missing, not writable, unsupported URI)."""


def check_staging_uri(staging_uri: str) -> objstore.S3Uri:
    """Parse an object-store staging URI (s3:// only; GCS/MinIO through their S3 API)."""
    try:
        return objstore.parse_uri(staging_uri)
    except objstore.ObjectStoreError as err:
        raise StagingError(str(err)) from None


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


class RunStorage(Protocol):
    """Where one run's inputs and outputs live; the io paths are the ones the trainer pods see."""

    run_id: str
    preprocess_output: Path
    model_selector_output: Path
    deepspeed_config: Path
    pytorch_model_folder: Path
    mlflow_model_folder: Path

    @property
    def location(self) -> str: ...
    def manifest_fields(self) -> dict[str, Any]: ...
    def check_access(self) -> None: ...
    def stage_inputs(self, preprocess_output: str, model_selector_output: str,
                     deepspeed_json: Optional[str] = None) -> None: ...
    def check_outputs(self) -> None: ...
    def collect_outputs(self, pytorch_model_folder: str, mlflow_model_folder: str) -> None: ...
    def remove(self) -> None: ...


@dataclass
class SharedVolumeRun(RunLayout):
    """One run's folder on the shared volume; paths are the same in the launcher and the trainer pods."""

    mount_path: str
    run_id: str
    pvc_name: str = ""

    @property
    def location(self) -> str:
        return str(self.run_dir)

    def manifest_fields(self) -> dict[str, Any]:
        return {"pvc_name": self.pvc_name, "mount_path": self.mount_path}

    def check_access(self) -> None:
        check_shared_mount(self.mount_path)

    @property
    def run_dir(self) -> Path:
        return Path(self.mount_path) / RUNS_SUBDIR / self.run_id

    @property
    def _root(self) -> Path:
        return self.run_dir

    def stage_inputs(self, preprocess_output: str, model_selector_output: str,
                     deepspeed_json: Optional[str] = None) -> None:
        """Copy the input artifacts in; output folders are created empty (or kept, for a resumed run)."""
        copy_tree_atomic(preprocess_output, self.preprocess_output)
        copy_tree_atomic(model_selector_output, self.model_selector_output)
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
                remove_entry(child)
            shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=False)

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


@dataclass
class ObjectStoreRun(RunLayout):
    """One run under an s3:// prefix; the trainer pods work on a copy in their emptyDir at `work_dir`.

    `secret_name` (optional) is a Secret whose keys `access_key_key` / `secret_key_key` become the pods'
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; `endpoint_url` (MinIO, GCS, ...) is used here and in the pods.
    """

    staging_uri: str
    run_id: str
    endpoint_url: str = ""
    secret_name: str = ""
    access_key_key: str = "AWS_ACCESS_KEY_ID"
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    work_dir: str = DEFAULT_WORK_DIR
    sync_interval_s: int = 300
    client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base = check_staging_uri(self.staging_uri)
        self.run_uri = self.base.join(RUNS_SUBDIR, self.run_id)

    @property
    def location(self) -> str:
        return str(self.run_uri)

    @property
    def _root(self) -> Path:
        return Path(self.work_dir)

    def manifest_fields(self) -> dict[str, Any]:
        secret_env = {"AWS_ACCESS_KEY_ID": self.access_key_key, "AWS_SECRET_ACCESS_KEY": self.secret_key_key}
        return {"object_store": ObjectStoreSpec(
            run_uri=str(self.run_uri), work_dir=self.work_dir, secret_name=self.secret_name,
            secret_env=secret_env if self.secret_name else {}, endpoint_url=self.endpoint_url,
            sync_interval_s=self.sync_interval_s, marker=SUCCESS_MARKER)}

    def _client(self) -> Any:
        if self.client is None:
            self.client = objstore.make_client(self.endpoint_url or None)
        return self.client

    def check_access(self) -> None:
        """The bucket must exist and this step's credentials must reach it (a read; nothing is written)."""
        try:
            objstore.check_bucket(self._client(), self.base)
        except objstore.ObjectStoreError as err:
            raise StagingError(str(err)) from None

    def stage_inputs(self, preprocess_output: str, model_selector_output: str,
                     deepspeed_json: Optional[str] = None) -> None:
        """Replace the run's inputs; outputs (checkpoints of an earlier attempt) stay, an old marker goes."""
        client = self._client()
        objstore.delete_keys(client, self.base.bucket, [self.run_uri.join(RunLayout.OUTPUTS, SUCCESS_MARKER).prefix])
        objstore.delete_prefix(client, self.run_uri.join(RunLayout.INPUTS))
        objstore.upload_tree(client, preprocess_output, self.run_uri.join(RunLayout.PREPROCESS_OUTPUT))
        objstore.upload_tree(client, model_selector_output, self.run_uri.join(RunLayout.MODEL_SELECTOR_OUTPUT))
        if deepspeed_json is not None:
            objstore.put_text(client, self.run_uri.join(RunLayout.DEEPSPEED_CONFIG), deepspeed_json)

    def check_outputs(self) -> None:
        """The master's marker (written after its last upload) and both outputs must be in the store."""
        client = self._client()
        outputs = self.run_uri.join(RunLayout.OUTPUTS)
        marker = outputs.join(SUCCESS_MARKER)
        if not objstore.exists(client, marker):
            raise StagingError(f"the job reported success but {marker} is missing: the master pod did not finish "
                               "uploading its outputs")
        problems = []
        pytorch, mlflow = self.run_uri.join(RunLayout.PYTORCH_MODEL_FOLDER), self.run_uri.join(RunLayout.MLFLOW_MODEL_FOLDER)
        if not objstore.any_object(client, pytorch):
            problems.append(f"{pytorch} is empty")
        if not objstore.exists(client, mlflow.join("MLmodel")):
            problems.append(f"{mlflow.join('MLmodel')} is missing")
        if problems:
            raise StagingError("the job reported success but its outputs are incomplete: " + "; ".join(problems))

    def collect_outputs(self, pytorch_model_folder: str, mlflow_model_folder: str) -> None:
        """Download rank 0's outputs into the component's output artifact folders (replacing their contents)."""
        client = self._client()
        for rel, dst in ((RunLayout.PYTORCH_MODEL_FOLDER, pytorch_model_folder),
                         (RunLayout.MLFLOW_MODEL_FOLDER, mlflow_model_folder)):
            objstore.download_tree(client, self.run_uri.join(rel), dst)

    def remove(self) -> None:
        try:
            objstore.delete_prefix(self._client(), self.run_uri)
        except Exception as err:  # never hide the run's own result behind a cleanup error
            log.warning("could not delete %s: %s", self.run_uri, err)

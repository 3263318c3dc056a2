"""The folder layout of one run: the single definition used by both staging kinds and by the pods' own script.

    inputs/preprocess_output/      copy of the preprocess artifact
    inputs/model_selector_output/  copy of the model-import artifact
    inputs/deepspeed.json          the user's DeepSpeed JSON, when one was given
    outputs/pytorch_model_folder/  written by rank 0 (checkpoints too: resume finds them here)
    outputs/mlflow_model_folder/   written by rank 0

A shared volume holds it under `<mount>/tokcls-runs/<run_id>/`; an object store under
`<staging_uri>/tokcls-runs/<run_id>/`, pulled by each pod into its work folder. The relative paths below are what
`launcher.staging` stages and collects and what `launcher.manifest` writes into the pods' shell script.
"""

from __future__ import annotations

from pathlib import Path


class RunLayout:
    """The run layout under `_root` (the folder the trainer pods see the run in)."""

    INPUTS = "inputs"
    OUTPUTS = "outputs"
    PREPROCESS_OUTPUT = f"{INPUTS}/preprocess_output"
    MODEL_SELECTOR_OUTPUT = f"{INPUTS}/model_selector_output"
    DEEPSPEED_CONFIG = f"{INPUTS}/deepspeed.json"
    PYTORCH_MODEL_FOLDER = f"{OUTPUTS}/pytorch_model_folder"
    MLFLOW_MODEL_FOLDER = f"{OUTPUTS}/mlflow_model_folder"

    @property
    def _root(self) -> Path:
        raise NotImplementedError

    @property
    def preprocess_output(self) -> Path:
        return self._root / self.PREPROCESS_OUTPUT

    @property
    def model_selector_output(self) -> Path:
        return self._root / self.MODEL_SELECTOR_OUTPUT

    @property
    def deepspeed_config(self) -> Path:
        return self._root / self.DEEPSPEED_CONFIG

    @property
    def pytorch_model_folder(self) -> Path:
        return self._root / self.PYTORCH_MODEL_FOLDER

    @property
    def mlflow_model_folder(self) -> Path:
        return self._root / self.MLFLOW_MODEL_FOLDER

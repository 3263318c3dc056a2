"""The MLflow model: a pyfunc on the inference core (trainer.inference), self-contained and served offline.

Layout (written by `save_mlflow_model`): `MLmodel` with a signature and an input example, `artifacts/model/` (the
best model, merged, with its tokenizer and label map: a plain Hugging Face folder, plus tag_scheme.json: the scheme
its entities follow, and serving.json: the precision and window it was trained on and is served in), this file as
the model's code (MLflow "models from code": no pickle), `code/trainer/` (this package: the loader and the core
travel with the model) and explicit pip requirements.

`mlflow.pyfunc.load_model(path).predict(x)` takes a string, a list of strings or of word lists (pre-split), a pandas
DataFrame (its `text` column, else its first), a dict of such columns or a Series, and returns one dict per input
(offsets index the text):
`{"text", "words", "labels", "scores", "offsets", "entities": [{"text", "label", "start", "end", "score"}]}`.
Empty or missing text (None, NaN, pandas' NA) gives empty lists, never an exception; a number is read as its text; a
row that is neither text nor words (bytes, a dict, a word that is a list) is refused as a bad input (HTTP 400 when
served). `mlflow models serve` answers `POST /invocations` with `{"predictions": [...]}` in the same shape.
`load_model(path, model_config={"precision": "32"})` serves a precision-16 model in fp32.

We do not use the `transformers` flavor: its token-classification output parsing raises IndexError on a sentence
without entities (mlflow 3.17), and it returns sub-token labels joined by commas. The signature declares the output
(`OUTPUT_SCHEMA`: `scores` and an entity's `score` declared optional, though every word is scored); the input is
shown by the input example but not declared: mlflow 3.17 enforces a declared string column before the model runs and
rejects `[]` and an empty DataFrame with an exception.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

from trainer.constants import PREDICTIONS_FILES
from trainer.errors import InputError
from trainer.inference import as_word, is_missing

# What the served code imports (trainer.inference; seqeval reads the entity spans: trainer.schemes).
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "seqeval")
MODEL_ARTIFACT = "model"
# What load_model(..., model_config={...}) may override: "precision": "auto" serves in the training precision where
# the device computes it natively (trainer.precision), "32" in fp32.
DEFAULT_MODEL_CONFIG = {"precision": "auto"}
INPUT_EXAMPLE = ["Alice lives in Paris .", "Nothing to see here"]
# Files of a pytorch_model_folder that are not the served model.
NOT_SERVED = ("checkpoint-", ".", "finetune_args.json", "metrics.json", "training_args.bin", "runs",
              *PREDICTIONS_FILES.values())
# One prediction (Prediction.to_dict). mlflow cannot declare an array's items nullable: `scores` is optional, so a
# None item (a word no window holds: none in practice) would pass mlflow's checks.
OUTPUT_SCHEMA = Schema([
    ColSpec(DataType.string, "text"), ColSpec(Array(DataType.string), "words"),
    ColSpec(Array(DataType.string), "labels"), ColSpec(Array(DataType.double), "scores", required=False),
    ColSpec(Array(Array(DataType.long)), "offsets"),
    ColSpec(Array(Object([Property("text", DataType.string), Property("label", DataType.string),
                          Property("start", DataType.long), Property("end", DataType.long),
                          Property("score", DataType.double, required=False)])), "entities"),
])


def pip_requirements() -> list[str]:
    """Explicit pins of what serving needs (without them mlflow infers torchvision and more)."""
    reqs = []
    for name in SERVING_PACKAGES:
        try:
            reqs.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def as_inputs(model_input: Any) -> list[Optional[str | list[str]]]:
    """The inputs a pyfunc call means, one per row: a text, or a list of words (pre-split, as the inference core
    takes it); missing values (None, NaN) are empty texts. A DataFrame gives its `text` column (else its first), a
    dict is read as such columns, and a 0-d array (what `mlflow models serve` makes of `{"inputs": "a text"}`) is
    its one value."""
    if model_input is None:
        return []
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, (list, tuple, pd.Series, np.ndarray)) else [v]
                                    for k, v in model_input.items()})
    if isinstance(model_input, np.ndarray) and model_input.ndim == 0:
        model_input = [model_input.item()]
    if isinstance(model_input, str) or np.isscalar(model_input) or is_missing(model_input):
        return [_one_input(model_input)]  # one value: a text (a number too, as `mlflow models serve` reads it)
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            return []
        model_input = model_input["text" if "text" in model_input.columns else model_input.columns[0]]
    if hasattr(model_input, "tolist"):  # pandas Series, numpy array (a 2-D one: one word list per row)
        model_input = model_input.tolist()
    return [_one_input(v) for v in model_input]


def _one_input(value: Any) -> Optional[str | list[str]]:
    """One row: a text, a list of words (a missing word is blank), or None (missing: `inference.is_missing`); a
    number is its text; anything else (a dict, an object) is refused, as mlflow reports a bad input (HTTP 400)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(value, str):
        return value
    if is_missing(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            return [as_word(w) for w in (value.tolist() if isinstance(value, np.ndarray) else value)]
        except InputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
    if np.isscalar(value) and not isinstance(value, (bytes, np.bytes_)):
        return str(value)
    raise MlflowException(f"expected a text or a list of words per row, got {type(value).__name__}: "
                          f"{str(value)[:80]!r}", error_code=INVALID_PARAMETER_VALUE)


class TokenClassificationModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of trainer.inference.TokenClassifier."""

    def load_context(self, context) -> None:
        from trainer.inference import load_classifier

        config = {**DEFAULT_MODEL_CONFIG, **(context.model_config or {})}  # load_model(..., model_config={...})
        self.classifier = load_classifier(context.artifacts[MODEL_ARTIFACT], precision=str(config["precision"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):  # this hint: no signature inference, no warning
        return [p.to_dict() for p in self.classifier.predict(as_inputs(model_input))]


def serving_copy(model_dir: Path, target: Path) -> None:
    """The served model alone: the root model files of a fine-tune output (no checkpoints, no run records), an
    unmerged LoRA output merged into a plain model, always with the tokenizer, and what the output's run records say
    of serving (they stay behind): its tag scheme in tag_scheme.json, its training precision and window in
    serving.json."""
    from trainer.inference import copy_serving_settings, copy_tag_scheme, load_serving_tokenizer

    tokenizer = load_serving_tokenizer(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    if (model_dir / "adapter_config.json").exists():
        from trainer.model_io import load_token_classification_model

        load_token_classification_model(model_dir).save_pretrained(target)
        tokenizer.save_pretrained(target)
    else:
        for item in model_dir.iterdir():
            if item.is_file() and not item.name.startswith(NOT_SERVED):
                shutil.copy2(item, target / item.name)
    copy_tag_scheme(model_dir, target)
    copy_serving_settings(model_dir, target)


def save_mlflow_model(model_dir: str | Path, path: str | Path, scratch: str | Path | None = None) -> None:
    """Write the MLflow model of a published fine-tune output into `path` (which must not exist yet). The served
    copy is assembled in a temporary folder inside `scratch` (default: the system's), removed at the end."""
    from mlflow.models import ModelSignature

    import trainer
    from trainer.inference import load_classifier, recorded_precision

    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(prefix="mlflow-model-", dir=scratch) as tmp:
        served = Path(tmp) / MODEL_ARTIFACT
        serving_copy(model_dir, served)
        code = Path(tmp) / "code" / "trainer"
        shutil.copytree(Path(trainer.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        classifier = load_classifier(served, device="cpu")
        mlflow.pyfunc.save_model(
            path=str(path), python_model=__file__, artifacts={MODEL_ARTIFACT: str(served)},
            code_paths=[str(code)], pip_requirements=pip_requirements(), input_example=INPUT_EXAMPLE,
            model_config=DEFAULT_MODEL_CONFIG,
            signature=ModelSignature(inputs=None, outputs=OUTPUT_SCHEMA),
            metadata={"source": "kfp-token-classification", "class_names": classifier.class_names,
                      "max_length": classifier.max_length, "tag_scheme": classifier.tag_scheme,
                      "precision": recorded_precision(served)})


if __name__.startswith("code_model_"):  # MLflow executes this file as the model's code (models from code)
    mlflow.models.set_model(TokenClassificationModel())

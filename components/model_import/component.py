"""KFP component: import a local Hugging Face or MLflow model as a model-import (model selector) output."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import TRAINER_CPU_IMAGE


@dsl.component(base_image=TRAINER_CPU_IMAGE, install_kfp_package=False)
def model_import(
    model_selector_output: Output[Model],
    model: Optional[Input[Model]] = None,
    model_path: str = "",
    mlflow_model_path: str = "",
    model_name: str = "",
) -> str:
    """Import a Hugging Face model (folder, LoRA adapter, earlier fine-tune output or MLflow model).

    Args:
        model_selector_output: Folder with the model (and tokenizer) files at its root and model_selector_args.json
            ({"model_name", "model_name_or_path", "model_family", "source"}).
        model: The model as an input artifact (an HF folder or an MLflow transformers model folder); alternative
            to model_path / mlflow_model_path.
        model_path: A Hugging Face model folder already in the container (e.g. on a mounted PVC): config.json
            (or adapter_config.json), weights, tokenizer.
        mlflow_model_path: An MLflow transformers model folder in the container (MLmodel + model/ +
            components/tokenizer/).
        model_name: Name recorded in model_selector_args.json (default: derived from the source).

    Returns:
        The model family (config.model_type).
    """
    import json
    import logging

    from trainer.model_import import model_import as run_import

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sources = [s for s in (model is not None, bool(model_path), bool(mlflow_model_path)) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one model source: the model artifact, model_path or mlflow_model_path")
    if model is not None:
        meta = run_import(output_dir=model_selector_output.path, model_path=model.path, model_name=model_name)
    else:
        meta = run_import(output_dir=model_selector_output.path, model_path=model_path or None,
                          mlflow_model_path=mlflow_model_path or None, model_name=model_name or None)
    for key in ("model_name", "model_family", "source"):
        model_selector_output.metadata[key] = meta.get(key) or ""
    model_selector_output.metadata["framework"] = "transformers"
    print(json.dumps(meta, indent=2))
    return meta.get("model_family") or ""

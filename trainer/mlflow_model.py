"""Saving the best model as an MLflow `transformers` model (task token-classification) that serves offline."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate")


def pip_requirements() -> list[str]:
    """Explicit pins of what serving needs (without them mlflow infers torchvision and more)."""
    reqs = []
    for name in SERVING_PACKAGES:
        try:
            reqs.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def load_for_serving(model_dir: Path):
    """Model + tokenizer from a published pytorch_model_folder; an unmerged LoRA output is merged for serving."""
    from transformers import AutoTokenizer

    from trainer.model_io import load_token_classification_model

    return load_token_classification_model(model_dir), AutoTokenizer.from_pretrained(model_dir)


def save_mlflow_model(model_dir: str | Path, path: str | Path) -> None:
    import mlflow.transformers
    from transformers import pipeline

    model, tokenizer = load_for_serving(Path(model_dir))
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    mlflow.transformers.save_model(
        transformers_model=ner, path=str(path), task="token-classification",
        pip_requirements=pip_requirements(), input_example=["Alice lives in Paris ."],
        metadata={"source": "kfp-token-classification", "id2label": model.config.id2label},
    )

"""Body of the `model_import` component."""

from __future__ import annotations


def run(**args):
    from components.runtime import config_from_args
    from trainer.config import ModelImportConfig
    from trainer.model_import import model_import

    config = config_from_args(ModelImportConfig, args)
    meta = model_import(config)
    artifact = args["model_selector_output"]
    for key in ("model_name", "model_family", "source", "source_uri", "revision"):
        artifact.metadata[key] = meta.get(key) or ""
    artifact.metadata["framework"] = "transformers"

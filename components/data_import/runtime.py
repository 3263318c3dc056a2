"""Body of the `data_import` component."""

from __future__ import annotations


def run(**args):
    from components.runtime import config_from_args
    from trainer.config import DataImportConfig
    from trainer.data_import import data_import

    config = config_from_args(DataImportConfig, args)
    summary = data_import(config)
    artifact = args["data_output"]
    artifact.metadata.update(files=summary["files"], source_uri=summary.get("source_uri", config.data_uri))
    if summary.get("revision"):
        artifact.metadata["revision"] = summary["revision"]

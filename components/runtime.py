"""What every generated component body shares: configs from KFP arguments, and KFP outputs from results.

Runs inside the component's container (the package is installed in the trainer images).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("components")


def config_from_args(config_cls, args: dict[str, Any]):
    """The typed config of a component call: artifacts become their local paths, absent ones None. The program it
    is handed to checks its folders first (`trainer.validation.check_io`: links out of an input, outputs inside
    inputs, writability), as it does under its CLI or from Python."""
    from trainer.cli import configure_logging
    from trainer.params import is_path

    configure_logging()
    values = {}
    for f in dataclasses.fields(config_cls):
        value = args.get(f.name)
        values[f.name] = getattr(value, "path", value) if is_path(f) and value is not None else value
    config = config_cls(**values)
    logger.info("%s:\n%s", config_cls.__name__, config.to_json())
    return config


def log_metrics(metrics, figures: dict[str, float]) -> None:
    for name, value in figures.items():
        metrics.log_metric(name, value)


def write_text(artifact, text: str) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text, encoding="utf-8")


def record_finetune(result: dict, config, *, metrics, report, pytorch_model_folder, mlflow_model_folder,
                    onnx_model_folder=None) -> None:
    """KFP outputs of a finished fine-tune (its FinetuneResult as a dict, e.g. read back from metrics.json)."""
    from trainer.report import finetune_figures, finetune_markdown

    figures = finetune_figures(result)
    log_metrics(metrics, figures)
    write_text(report, finetune_markdown(result, config.metric_for_best_model))
    pytorch_model_folder.metadata.update(framework="transformers", best_checkpoint=str(result.get("best_checkpoint")),
                                         metric_for_best_model=config.metric_for_best_model,
                                         tag_scheme=str(result.get("tag_scheme")))
    if "best_metric" in figures:
        pytorch_model_folder.metadata["best_metric"] = figures["best_metric"]
    mlflow_model_folder.metadata.update(framework="mlflow")
    if onnx_model_folder is not None:
        export = result.get("onnx_export") or {}
        onnx_model_folder.metadata.update(framework="onnx", exported=bool(export.get("exported")),
                                          **{k: export[k] for k in ("opset", "max_abs_logit_diff", "error")
                                             if k in export})

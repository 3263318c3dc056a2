"""Body of the `evaluate` component."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path


def run(**args):
    from components.runtime import config_from_args, log_metrics, write_text
    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate
    from trainer.report import evaluate_figures, evaluate_markdown

    config = config_from_args(EvaluateConfig, args)
    result = evaluate(config)
    metrics = args["metrics"]
    log_metrics(metrics, evaluate_figures(result.split, result.figures, result.per_entity))
    metrics.metadata.update(split=result.split, sentences=result.sentences, source=result.source,
                            tag_scheme=str(result.tag_scheme), seconds=round(result.seconds, 2))
    write_text(args["report"], evaluate_markdown(result.split, result.sentences, result.figures, result.per_entity,
                                                 Path(config.model).name, result.tag_scheme))
    args["predictions"].metadata.update(split=result.split, rows=result.sentences, format="jsonl")
    outputs = namedtuple("EvaluateOutputs", ["f1", "precision", "recall", "accuracy"])
    return outputs(*(float(result.figures[k]) for k in ("f1", "precision", "recall", "accuracy")))

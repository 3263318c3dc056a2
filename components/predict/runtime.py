"""Body of the `predict` component."""

from __future__ import annotations

from collections import namedtuple


def run(**args):
    from components.runtime import config_from_args
    from trainer.config import PredictConfig
    from trainer.predict import predict

    config = config_from_args(PredictConfig, args)
    summary = predict(config)
    args["predictions"].metadata.update(format="jsonl", rows=summary["rows"], words=summary["words"],
                                        entities=summary["entities"], model_format=summary["model_format"])
    outputs = namedtuple("PredictOutputs", ["rows", "entities"])
    return outputs(summary["rows"], summary["entities"])

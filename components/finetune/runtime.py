"""Body of the `finetune` component: run the fine-tune, then fill the KFP outputs."""

from __future__ import annotations

from dataclasses import asdict


def run(**args):
    from components.runtime import config_from_args, record_finetune
    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune

    config = config_from_args(FinetuneConfig, args)
    result = finetune(config)
    record_finetune(asdict(result), config, metrics=args["metrics"], report=args["report"],
                    pytorch_model_folder=args["pytorch_model_folder"], mlflow_model_folder=args["mlflow_model_folder"],
                    onnx_model_folder=args["onnx_model_folder"])

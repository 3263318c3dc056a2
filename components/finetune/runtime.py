"""Body of the `finetune` component: run the fine-tune, then fill the KFP outputs.

With more than one GPU in the pod (the step's accelerator limit), the fine-tune runs under torchrun with one
process per GPU (`trainer.distributed.run_under_torchrun`, which checks every input once in this process first: bad
input is one error, before any rank starts); its outputs are then read back from metrics.json, as the distributed
launcher does. One GPU or none: in this process.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

logger = logging.getLogger("components.finetune")


def run(**args):
    from components.runtime import config_from_args, record_finetune
    from trainer.config import FinetuneConfig
    from trainer.constants import METRICS_FILE
    from trainer.distributed import local_processes, run_under_torchrun
    from trainer.finetune import finetune
    from trainer.jsonio import read_json

    config = config_from_args(FinetuneConfig, args)
    nproc = local_processes()
    if nproc > 1:
        logger.info("%d GPUs in this pod: torchrun with one process per GPU", nproc)
        run_under_torchrun(config, nproc)
        summary = read_json(Path(config.pytorch_model_folder) / METRICS_FILE)
    else:
        summary = asdict(finetune(config))
    record_finetune(summary, config, metrics=args["metrics"], report=args["report"],
                    pytorch_model_folder=args["pytorch_model_folder"], mlflow_model_folder=args["mlflow_model_folder"],
                    onnx_model_folder=args["onnx_model_folder"])
    args["pytorch_model_folder"].metadata["processes"] = nproc

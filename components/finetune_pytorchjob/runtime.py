"""Body of the `finetune_pytorchjob` component: launch, watch, collect, then fill the KFP outputs."""

from __future__ import annotations

from pathlib import Path


def run(**args):
    from components.images import TRAINER_CPU_IMAGE, TRAINER_CUDA_IMAGE
    from components.runtime import config_from_args, record_finetune
    from launcher.cancel import Cancelled
    from launcher.config import LaunchConfig
    from launcher.launch import launch
    from trainer.config import FinetuneConfig
    from trainer.constants import METRICS_FILE
    from trainer.jsonio import read_json

    config = config_from_args(LaunchConfig, args)
    finetune = config_from_args(FinetuneConfig, args)
    if not config.image:
        config.image = TRAINER_CUDA_IMAGE if config.gpus_per_node > 0 else TRAINER_CPU_IMAGE
    try:
        result = launch(config, finetune)
    except Cancelled as err:  # the run was terminated: the job is deleted; exit as a terminated process does
        raise SystemExit(err.exit_code) from None
    summary = read_json(Path(finetune.pytorch_model_folder) / METRICS_FILE)
    if finetune.onnx_model_folder:  # the pods publish the PyTorch and MLflow models; the ONNX export runs here
        from trainer.outputs import export_onnx_output

        summary["onnx_export"] = export_onnx_output(Path(finetune.pytorch_model_folder), finetune)
    record_finetune(summary, finetune, metrics=args["metrics"], report=args["report"],
                    pytorch_model_folder=args["pytorch_model_folder"], mlflow_model_folder=args["mlflow_model_folder"],
                    onnx_model_folder=args["onnx_model_folder"])
    for artifact in (args["pytorch_model_folder"], args["mlflow_model_folder"]):
        artifact.metadata.update(job=result.job_name, backend=result.backend, namespace=result.namespace,
                                 run_id=result.run_id, num_nodes=config.num_nodes, gpus_per_node=config.gpus_per_node)

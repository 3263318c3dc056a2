"""Body of the `finetune_pytorchjob` component: launch, watch, collect, then fill the KFP outputs."""

from __future__ import annotations

import json
from pathlib import Path


def run(**args):
    from components.images import TRAINER_CPU_IMAGE, TRAINER_CUDA_IMAGE
    from components.runtime import config_from_args, record_finetune
    from launcher.config import LaunchConfig
    from launcher.launch import run_pytorchjob
    from trainer.config import FinetuneConfig
    from trainer.constants import METRICS_FILE
    from trainer.deepspeed_config import load_deepspeed_config
    from trainer.jsonio import read_json

    launch = config_from_args(LaunchConfig, args)
    config = config_from_args(FinetuneConfig, args)
    image = launch.image or (TRAINER_CUDA_IMAGE if launch.gpus_per_node > 0 else TRAINER_CPU_IMAGE)
    finetune_args = {f.name: getattr(config, f.name) for f in FinetuneConfig.parameter_fields()}
    # The pods read the DeepSpeed config from the staged run: hand its JSON text to the launcher.
    deepspeed_json = json.dumps(load_deepspeed_config(config.deepspeed)) if config.deepspeed else None
    result = run_pytorchjob(
        preprocess_output=config.preprocess_output, model_selector_output=config.model_selector_output,
        pytorch_model_folder=config.pytorch_model_folder, mlflow_model_folder=config.mlflow_model_folder,
        finetune_args=finetune_args, deepspeed_config_json=deepspeed_json, num_nodes=launch.num_nodes,
        gpus_per_node=launch.gpus_per_node, procs_per_node=launch.procs_per_node or None, image=image,
        namespace=launch.namespace, shared_pvc_name=launch.shared_pvc_name,
        shared_mount_path=launch.shared_mount_path, staging_uri=launch.staging_uri,
        staging_endpoint_url=launch.staging_endpoint_url, staging_secret_name=launch.staging_secret_name,
        staging_access_key_key=launch.staging_access_key_key, staging_secret_key_key=launch.staging_secret_key_key,
        resources=launch.resources, node_selector=launch.node_selector, tolerations=launch.tolerations,
        env=launch.env, timeout_s=launch.timeout_seconds, poll_interval_s=launch.poll_interval_seconds,
        cleanup_policy=launch.cleanup_policy, run_id=launch.run_id, service_account=launch.service_account,
        shm_size=launch.shm_size)
    summary = read_json(Path(config.pytorch_model_folder) / METRICS_FILE)
    if config.onnx_model_folder:  # the pods publish the PyTorch and MLflow models; the ONNX export runs here
        from trainer.outputs import export_onnx_output

        summary["onnx_export"] = export_onnx_output(Path(config.pytorch_model_folder), config)
    record_finetune(summary, config, metrics=args["metrics"], report=args["report"],
                    pytorch_model_folder=args["pytorch_model_folder"], mlflow_model_folder=args["mlflow_model_folder"],
                    onnx_model_folder=args["onnx_model_folder"])
    for artifact in (args["pytorch_model_folder"], args["mlflow_model_folder"]):
        artifact.metadata.update(pytorchjob=result.job_name, namespace=result.namespace, run_id=result.run_id,
                                 num_nodes=launch.num_nodes, gpus_per_node=launch.gpus_per_node)

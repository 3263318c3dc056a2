"""KFP component: run the token-classification fine-tune as a Kubeflow PyTorchJob (DeepSpeed across GPU nodes).

This step is a small launcher (CPU image): it stages the input artifacts to a shared ReadWriteMany PVC
or to an object store (s3://, also MinIO / GCS through their S3 API), creates a `kubeflow.org/v1` PyTorchJob (Master + num_nodes-1 Workers running `torchrun -m trainer.cli`),
follows it to Succeeded/Failed, echoes the master's log, copies rank 0's outputs into its output
artifacts and deletes the job per `cleanup_policy`. All logic is in `launcher.launch.run_pytorchjob`;
see docs/distributed.md.

Trainer parameters: the most used are inputs of their own; any other FinetuneConfig field goes in
`finetune_args` (a JSON object, e.g. '{"lora_r": 16, "warmup_steps": 100}'). A key may not be in both.
With a PVC, the launcher step itself must mount the same PVC at `shared_mount_path` (kfp.kubernetes.mount_pvc);
with `staging_uri`, it needs the store's credentials as AWS_* env vars (kfp.kubernetes.use_secret_as_env).
It runs under a service account bound to manifests/rbac.yaml.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import TRAINER_CPU_IMAGE, TRAINER_CUDA_IMAGE


@dsl.component(base_image=TRAINER_CPU_IMAGE, install_kfp_package=False)
def finetune_pytorchjob(
    preprocess_output: Input[Dataset],
    model_selector_output: Input[Model],
    pytorch_model_folder: Output[Model],
    mlflow_model_folder: Output[Model],
    shared_pvc_name: str = '',
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    procs_per_node: int = 0,
    image: str = '',
    namespace: str = '',
    shared_mount_path: str = '/mnt/shared',
    staging_uri: str = '',
    staging_endpoint_url: str = '',
    staging_secret_name: str = '',
    staging_access_key_key: str = 'AWS_ACCESS_KEY_ID',
    staging_secret_key_key: str = 'AWS_SECRET_ACCESS_KEY',
    resources_json: str = '{}',
    node_selector_json: str = '{}',
    tolerations_json: str = '[]',
    env_json: str = '{}',
    service_account: str = '',
    shm_size: str = '16Gi',
    timeout_seconds: int = 86400,
    poll_interval_seconds: int = 30,
    cleanup_policy: str = 'on_success',
    run_id: str = '',
    num_train_epochs: int = 1,
    max_steps: int = -1,
    per_device_train_batch_size: int = 1,
    per_device_eval_batch_size: int = 1,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 2e-05,
    precision: str = '32',
    seed: int = 42,
    metric_for_best_model: str = 'loss',
    apply_lora: str = 'false',
    apply_deepspeed: str = 'true',
    deepspeed_preset: str = '',
    deepspeed_config_json: str = '',
    resume_from_checkpoint: str = 'false',
    finetune_args: str = '{}',
):
    """Fine-tune for token classification as a multi-node PyTorchJob (torchrun + DeepSpeed) and collect the outputs.

    Staging: give exactly one of shared_pvc_name (a ReadWriteMany PVC) and staging_uri (an s3:// prefix).

    Args:
        preprocess_output: Output folder of the preprocess component (staged to the PVC or object store).
        model_selector_output: Output folder of the model import component (staged to the PVC or object store).
        pytorch_model_folder: Rank 0's pytorch_model_folder: best model at the root plus the checkpoints.
        mlflow_model_folder: Rank 0's best model in MLflow transformers format.
        shared_pvc_name: ReadWriteMany PVC mounted by every trainer pod, and by this step at shared_mount_path. Empty: use staging_uri.
        num_nodes: Number of pods: 1 Master + num_nodes-1 Workers.
        gpus_per_node: GPUs per pod (nvidia.com/gpu limit and torchrun --nproc_per_node); 0 for CPU pods.
        procs_per_node: Processes per pod when gpus_per_node is 0 (default 1).
        image: Trainer image of the pods. Default: components/images.py TRAINER_CUDA_IMAGE, fixed at compile time (give the CPU image for gpus_per_node=0); empty: the launcher image's own components/images.py choice.
        namespace: Namespace of the PyTorchJob; empty: this step's own namespace.
        shared_mount_path: Where the PVC is mounted, in this step and in the trainer pods.
        staging_uri: Object-store staging instead of a PVC, for single-node jobs (num_nodes=1; multi-node runs need the PVC): s3://bucket/prefix (MinIO, GCS and other S3-compatible stores with staging_endpoint_url). The run lives under <staging_uri>/tokcls-runs/<run_id>/; this step uses the AWS_* env vars for its own access.
        staging_endpoint_url: S3 endpoint of the store (AWS_ENDPOINT_URL of this step and the pods), e.g. http://minio-service.kubeflow:9000 or https://storage.googleapis.com; empty: AWS S3 (or this step's AWS_ENDPOINT_URL for itself).
        staging_secret_name: Secret in the job's namespace holding the pods' store credentials (e.g. mlpipeline-minio-artifact); empty: the pods' ambient credentials (IRSA, workload identity).
        staging_access_key_key: Key of staging_secret_name that holds the access key id (accesskey for KFP's MinIO secret).
        staging_secret_key_key: Key of staging_secret_name that holds the secret access key (secretkey for KFP's MinIO secret).
        resources_json: Pod resources as JSON, e.g. {"limits": {"cpu": "16", "memory": "128Gi"}} (GPUs come from gpus_per_node).
        node_selector_json: Node selector of the trainer pods as a JSON object.
        tolerations_json: Tolerations of the trainer pods as a JSON list of Kubernetes toleration objects.
        env_json: Extra environment variables of the trainer pods as a JSON object (e.g. NCCL settings, MLFLOW_TRACKING_URI).
        service_account: Service account of the trainer pods (empty: the namespace default).
        shm_size: Size of the in-memory /dev/shm of each pod.
        timeout_seconds: Fail (and clean up per policy) if the job has not finished after this many seconds.
        poll_interval_seconds: Seconds between status polls.
        cleanup_policy: When to delete the PyTorchJob: always, on_success (keep a failed job's pods and logs) or never.
        run_id: Folder name of the run on the shared volume or in the store; reuse a failed run's id with resume_from_checkpoint=true to resume it. Empty: a new unique id.
        num_train_epochs: Number of epochs.
        max_steps: If positive, total optimizer steps; overrides num_train_epochs.
        per_device_train_batch_size: Per-device training batch size.
        per_device_eval_batch_size: Per-device evaluation batch size.
        gradient_accumulation_steps: Gradient accumulation steps.
        learning_rate: Initial learning rate.
        precision: 16: mixed precision (bf16 where supported, else fp16); 32: full precision.
        seed: Random seed.
        metric_for_best_model: Metric that picks the best checkpoint. One of loss, f1, accuracy, precision, recall.
        apply_lora: If true, enables LoRA (peft). One of true, false.
        apply_deepspeed: If true, trains with DeepSpeed. One of true, false.
        deepspeed_preset: DeepSpeed preset, zero2 or zero3; empty: the trainer's default (ZeRO-2 with 'auto' values).
        deepspeed_config_json: A whole DeepSpeed config as JSON text (staged as a file); overrides deepspeed_preset.
        resume_from_checkpoint: Resume from the latest complete checkpoint of the run folder (with the same run_id). One of true, false.
        finetune_args: Any other FinetuneConfig fields as a JSON object, e.g. {"lora_r": 16, "warmup_steps": 100}.
    """
    import json
    import logging

    from launcher.launch import LaunchConfigError, run_pytorchjob

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def parse(name, text, kind):
        try:
            value = json.loads(text or ("[]" if kind is list else "{}"))
        except json.JSONDecodeError as err:
            raise LaunchConfigError(f"{name} is not valid JSON: {err}") from None
        if not isinstance(value, kind):
            raise LaunchConfigError(f"{name} must be a JSON {'list' if kind is list else 'object'}")
        return value

    explicit = dict(num_train_epochs=num_train_epochs, max_steps=max_steps,
                    per_device_train_batch_size=per_device_train_batch_size,
                    per_device_eval_batch_size=per_device_eval_batch_size,
                    gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
                    precision=precision, seed=seed, metric_for_best_model=metric_for_best_model,
                    apply_lora=apply_lora, apply_deepspeed=apply_deepspeed,
                    resume_from_checkpoint=resume_from_checkpoint)
    extra = parse("finetune_args", finetune_args, dict)
    clash = sorted(set(extra) & (set(explicit) | {"deepspeed"}))
    if clash:
        raise LaunchConfigError(f"finetune_args sets {clash}, which are inputs of their own (or deepspeed_preset)")
    args = {**extra, **explicit}
    if deepspeed_preset and not deepspeed_config_json:
        args["deepspeed"] = deepspeed_preset

    result = run_pytorchjob(
        preprocess_output=preprocess_output.path, model_selector_output=model_selector_output.path,
        pytorch_model_folder=pytorch_model_folder.path, mlflow_model_folder=mlflow_model_folder.path,
        finetune_args=args, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        procs_per_node=procs_per_node or None, image=image, namespace=namespace,
        shared_pvc_name=shared_pvc_name, shared_mount_path=shared_mount_path, staging_uri=staging_uri,
        staging_endpoint_url=staging_endpoint_url, staging_secret_name=staging_secret_name,
        staging_access_key_key=staging_access_key_key, staging_secret_key_key=staging_secret_key_key,
        resources=parse("resources_json", resources_json, dict),
        node_selector=parse("node_selector_json", node_selector_json, dict),
        tolerations=parse("tolerations_json", tolerations_json, list),
        env=parse("env_json", env_json, dict), deepspeed_config_json=deepspeed_config_json or None,
        timeout_s=timeout_seconds, poll_interval_s=poll_interval_seconds, cleanup_policy=cleanup_policy,
        run_id=run_id, service_account=service_account, shm_size=shm_size)
    for artifact in (pytorch_model_folder, mlflow_model_folder):
        artifact.metadata.update(pytorchjob=result.job_name, namespace=result.namespace, run_id=result.run_id,
                                 num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    pytorch_model_folder.metadata["framework"] = "transformers"
    mlflow_model_folder.metadata["framework"] = "mlflow.transformers"
    print(f"PyTorchJob {result.namespace}/{result.job_name} {result.state}; outputs collected from run {result.run_id}")


# The pods' default image comes from components/images.py at compile time. The function's own default cannot
# name that constant: KFP runs the function's source on its own inside the container.
finetune_pytorchjob.component_spec.inputs["image"].default = TRAINER_CUDA_IMAGE

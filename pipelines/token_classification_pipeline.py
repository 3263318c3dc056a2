"""Token-classification pipeline: model import -> preprocess -> finetune -> (optional) evaluate on the test split.

The training data enters as an input artifact via `dsl.importer` from `data_uri` (a folder holding train.* and
optionally validation.*/dev.* and test.* CoNLL or JSON Lines files, or a single training file that is then split
80/10/10). The model comes from a path in the container (`model_path`, e.g. on the PVC mounted at
`pvc_mount_path`) or an MLflow model folder (`mlflow_model_path`).

Compile-time options (`build_pipeline(...)`, or `scripts/compile_components.py`): GPU count and accelerator type
for the fine-tune step (switches it to the CUDA image), and a PVC mount path. At run time: CPU/memory limits of
the fine-tune step, its node selector (dict) and tolerations (list of dicts), the PVC name.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model

from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.images import TRAINER_CUDA_IMAGE
from components.kubernetes import PvcMount, TaskPlacement, apply_placement
from components.model_import.component import model_import
from components.preprocess.component import preprocess

PIPELINE_NAME = "token-classification-finetune"


def build_pipeline(*, gpus: int = 0, accelerator_type: str = "nvidia.com/gpu", pvc_mount_path: Optional[str] = None,
                   name: str = PIPELINE_NAME):
    """The pipeline function for a set of compile-time options (the default: CPU, no PVC)."""
    finetune_op = finetune
    if gpus > 0:
        finetune_op = dsl.component(finetune.python_func, base_image=TRAINER_CUDA_IMAGE, install_kfp_package=False)

    @dsl.pipeline(name=name, description=__doc__.splitlines()[0])
    def token_classification_pipeline(
        data_uri: str,
        model_path: str = "",
        mlflow_model_path: str = "",
        model_name: str = "",
        max_seq_length: int = 512,
        label_all_tokens: str = "false",
        validation_ratio: float = 0.1,
        test_ratio: float = 0.1,
        num_train_epochs: int = 1,
        max_steps: int = -1,
        per_device_train_batch_size: int = 16,
        per_device_eval_batch_size: int = 32,
        learning_rate: float = 5e-05,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        gradient_accumulation_steps: int = 1,
        lr_scheduler_type: str = "linear",
        precision: str = "32",
        seed: int = 42,
        evaluation_strategy: str = "epoch",
        evaluation_steps_interval: float = 0.0,
        eval_steps: int = 500,
        logging_strategy: str = "epoch",
        logging_steps: int = 500,
        metric_for_best_model: str = "f1",
        save_total_limit: int = -1,
        apply_lora: str = "false",
        lora_r: int = 8,
        lora_alpha: int = 128,
        apply_early_stopping: str = "false",
        early_stopping_patience: int = 1,
        run_evaluation: bool = True,
        finetune_cpu_limit: str = "4",
        finetune_memory_limit: str = "16Gi",
        finetune_node_selector: dict = {},
        finetune_tolerations: list = [],
        pvc_name: str = "",
    ) -> NamedTuple("PipelineOutputs", [("pytorch_model_folder", Model), ("mlflow_model_folder", Model),
                                         ("metrics", Metrics), ("report", Markdown)]):
        """Fine-tune a Hugging Face encoder for token classification and evaluate it on the test split.

        Args:
            data_uri: URI of the data (imported as a Dataset): a folder with train.*, validation.* (or dev.*) and
                test.* CoNLL / JSON Lines files, or one training file (split 80/10/10).
            model_path: Hugging Face model folder in the container (e.g. on the mounted PVC).
            mlflow_model_path: MLflow transformers model folder in the container (instead of model_path).
            model_name: Name recorded in the model metadata.
            max_seq_length: Rows are truncated to this many tokens.
            label_all_tokens: "true": continuation sub-tokens get labels too.
            validation_ratio: Split fraction when there is no validation file.
            test_ratio: Split fraction when there is no test file.
            run_evaluation: Evaluate the fine-tuned model on the test split (metrics, report, predictions).
            finetune_cpu_limit: CPU limit of the fine-tune step.
            finetune_memory_limit: Memory limit of the fine-tune step.
            finetune_node_selector: Node selector of the fine-tune step, e.g. {"pool": "gpu"}.
            finetune_tolerations: Tolerations of the fine-tune step (list of Kubernetes toleration objects).
            pvc_name: PersistentVolumeClaim mounted at the compile-time pvc_mount_path (only when compiled
                with one).

        Returns:
            pytorch_model_folder: The fine-tuned model (best checkpoint at the root, all checkpoints).
            mlflow_model_folder: The fine-tuned model in MLflow format.
            metrics: Validation and test figures of the fine-tune.
            report: Per-entity Markdown report of the fine-tune.
        """
        data = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
        data.set_display_name("import-data")

        imported = model_import(model_path=model_path, mlflow_model_path=mlflow_model_path, model_name=model_name)
        mounts = [PvcMount(pvc_name, pvc_mount_path)] if pvc_mount_path else []
        apply_placement(imported, TaskPlacement(pvc_mounts=mounts))

        prep = preprocess(train_data=data.output, model_selector_output=imported.outputs["model_selector_output"],
                          max_seq_length=max_seq_length, label_all_tokens=label_all_tokens,
                          validation_ratio=validation_ratio, test_ratio=test_ratio, split_seed=seed)

        tuned = finetune_op(
            preprocess_output=prep.outputs["preprocess_output"],
            model_selector_output=imported.outputs["model_selector_output"],
            num_train_epochs=num_train_epochs, max_steps=max_steps,
            per_device_train_batch_size=per_device_train_batch_size,
            per_device_eval_batch_size=per_device_eval_batch_size, learning_rate=learning_rate,
            warmup_steps=warmup_steps, weight_decay=weight_decay,
            gradient_accumulation_steps=gradient_accumulation_steps, lr_scheduler_type=lr_scheduler_type,
            precision=precision, seed=seed, evaluation_strategy=evaluation_strategy,
            evaluation_steps_interval=evaluation_steps_interval, eval_steps=eval_steps,
            logging_strategy=logging_strategy, logging_steps=logging_steps,
            metric_for_best_model=metric_for_best_model, save_total_limit=save_total_limit, apply_lora=apply_lora,
            lora_r=lora_r, lora_alpha=lora_alpha, apply_early_stopping=apply_early_stopping,
            early_stopping_patience=early_stopping_patience)
        apply_placement(tuned, TaskPlacement(
            cpu_limit=finetune_cpu_limit, memory_limit=finetune_memory_limit,
            accelerator_type=accelerator_type if gpus > 0 else None, accelerator_limit=gpus if gpus > 0 else None,
            node_selector=finetune_node_selector, tolerations=finetune_tolerations, pvc_mounts=mounts))

        with dsl.If(run_evaluation == True):  # noqa: E712 - a KFP condition, not a Python comparison
            evaluate(model=tuned.outputs["pytorch_model_folder"], preprocess_output=prep.outputs["preprocess_output"],
                     split="test", batch_size=per_device_eval_batch_size)

        outputs = NamedTuple("PipelineOutputs", [("pytorch_model_folder", Model), ("mlflow_model_folder", Model),
                                                  ("metrics", Metrics), ("report", Markdown)])
        return outputs(tuned.outputs["pytorch_model_folder"], tuned.outputs["mlflow_model_folder"],
                       tuned.outputs["metrics"], tuned.outputs["report"])

    return token_classification_pipeline


# The default (CPU, no PVC) pipeline, compiled to token_classification_pipeline.yaml.
token_classification_pipeline = build_pipeline()

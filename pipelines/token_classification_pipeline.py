"""Token-classification pipeline: model import -> preprocess -> finetune -> (optional) evaluate, (optional) predict.

The training data enters as an input artifact via `dsl.importer` from `data_uri` (a folder holding train.* and
optionally validation.*/dev.* and test.* CoNLL or JSON Lines files, or a single training file that is then split
80/10/10). The model comes from a path in the container (`model_path`, e.g. on the PVC mounted at
`pvc_mount_path`) or an MLflow model folder (`mlflow_model_path`). With `predict_data_uri`, the fine-tuned model
labels that unlabelled data (text lines, JSON Lines, CoNLL without tags or CSV) in a `predict` step.

Run parameters: every parameter of the model import, preprocess and finetune components (generated from
`trainer/config.py`, with the same names and defaults), `run_evaluation`, and the fine-tune step's placement
(CPU/memory limits, node selector, tolerations, PVC name). Compile-time options (`build_pipeline(...)`): GPU count
and accelerator type of the fine-tune step (switches it to the CUDA image), the PVC mount path.
"""

import inspect
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model

from components.codegen import pipeline_parameters, with_signature
from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.images import TRAINER_CUDA_IMAGE
from components.kubernetes import PvcMount, TaskPlacement, apply_placement
from components.model_import.component import model_import
from components.predict.component import predict
from components.preprocess.component import preprocess
from trainer.config import FinetuneConfig, ModelImportConfig, PreprocessConfig

PIPELINE_NAME = "token-classification-finetune"
Outputs = NamedTuple("PipelineOutputs", [("pytorch_model_folder", Model), ("mlflow_model_folder", Model),
                                         ("onnx_model_folder", Model), ("metrics", Metrics), ("report", Markdown)])


def _own(name: str, annotation, default, description: str) -> tuple[inspect.Parameter, str]:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=annotation), description


PIPELINE_ONLY = [
    _own("data_uri", str, inspect.Parameter.empty,
         "URI of the data (imported as a Dataset): a folder with train.*, validation.* (or dev.*) and test.* CoNLL "
         "/ JSON Lines files, or one training file (split 80/10/10)."),
    _own("run_evaluation", bool, True, "Evaluate the fine-tuned model on the test split (metrics, report, "
                                       "predictions)."),
    _own("predict_data_uri", str, "", "URI of unlabelled data (imported as a Dataset: text lines, JSON Lines with a "
         "'text' or 'tokens' column, CoNLL without tags, CSV with a 'text' column) that the fine-tuned model labels "
         "in a predict step; empty: no predict step."),
    _own("finetune_cpu_limit", str, "4", "CPU limit of the fine-tune step."),
    _own("finetune_memory_limit", str, "16Gi", "Memory limit of the fine-tune step."),
    _own("finetune_node_selector", dict, {}, "Node selector of the fine-tune step, e.g. {\"pool\": \"gpu\"}."),
    _own("finetune_tolerations", list, [], "Tolerations of the fine-tune step (list of Kubernetes toleration "
                                           "objects)."),
    _own("pvc_name", str, "", "PersistentVolumeClaim mounted at the compile-time pvc_mount_path (only when compiled "
                              "with one)."),
]


def _values(config_cls, values: dict) -> dict:
    return {f.name: values[f.name] for f in config_cls.parameter_fields() if f.name in values}


def build_pipeline(*, gpus: int = 0, accelerator_type: str = "nvidia.com/gpu", pvc_mount_path: Optional[str] = None,
                   name: str = PIPELINE_NAME):
    """The pipeline function for a set of compile-time options (the default: CPU, no PVC)."""
    finetune_op = finetune
    if gpus > 0:
        finetune_op = dsl.component(finetune.python_func, base_image=TRAINER_CUDA_IMAGE, install_kfp_package=False)

    def body(**values) -> Outputs:
        data = dsl.importer(artifact_uri=values["data_uri"], artifact_class=dsl.Dataset, reimport=False)
        data.set_display_name("import-data")
        mounts = [PvcMount(values["pvc_name"], pvc_mount_path)] if pvc_mount_path else []

        imported = model_import(**_values(ModelImportConfig, values))
        apply_placement(imported, TaskPlacement(pvc_mounts=mounts))

        prep = preprocess(train_data=data.output, model_selector_output=imported.outputs["model_selector_output"],
                          **_values(PreprocessConfig, values))

        tuned = finetune_op(preprocess_output=prep.outputs["preprocess_output"],
                            model_selector_output=imported.outputs["model_selector_output"],
                            **_values(FinetuneConfig, values))
        apply_placement(tuned, TaskPlacement(
            cpu_limit=values["finetune_cpu_limit"], memory_limit=values["finetune_memory_limit"],
            accelerator_type=accelerator_type if gpus > 0 else None, accelerator_limit=gpus if gpus > 0 else None,
            node_selector=values["finetune_node_selector"], tolerations=values["finetune_tolerations"],
            pvc_mounts=mounts))

        with dsl.If(values["run_evaluation"] == True):  # noqa: E712 - a KFP condition, not a Python comparison
            evaluate(model=tuned.outputs["pytorch_model_folder"], preprocess_output=prep.outputs["preprocess_output"],
                     split="test", batch_size=values["per_device_eval_batch_size"])

        with dsl.If(values["predict_data_uri"] != ""):
            unlabelled = dsl.importer(artifact_uri=values["predict_data_uri"], artifact_class=dsl.Dataset,
                                      reimport=False)
            unlabelled.set_display_name("import-predict-data")
            predict(model=tuned.outputs["pytorch_model_folder"], data=unlabelled.output,
                    batch_size=values["per_device_eval_batch_size"])

        return Outputs(tuned.outputs["pytorch_model_folder"], tuned.outputs["mlflow_model_folder"],
                       tuned.outputs["onnx_model_folder"], tuned.outputs["metrics"], tuned.outputs["report"])

    parameters = PIPELINE_ONLY[:1] + pipeline_parameters(ModelImportConfig, PreprocessConfig, FinetuneConfig) \
        + PIPELINE_ONLY[1:]
    function = with_signature(body, parameters, "Fine-tune a Hugging Face encoder for token classification and "
                              "evaluate it on the test split.", returns=Outputs, name="token_classification_pipeline")
    return dsl.pipeline(name=name, description=__doc__.splitlines()[0])(function)


# The default (CPU, no PVC) pipeline, compiled to token_classification_pipeline.yaml.
token_classification_pipeline = build_pipeline()

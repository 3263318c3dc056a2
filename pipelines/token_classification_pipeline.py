"""Token-classification pipeline: data + model import -> preprocess -> finetune -> (optional) evaluate, predict.

Everything a run needs is a run parameter; the compiled YAML runs on a cluster as shipped:

- `data_uri`: the labelled data (a folder with train.*, optionally validation.*/dev.* and test.* files in any format
  of README "Data formats and tag schemes": CoNLL, CoNLL-U, JSON Lines, JSON, CSV/TSV, Parquet; a datasets
  save_to_disk folder; or one training file, split 80/10/10): a path in the container, an object-store URI (s3://,
  minio://, gs:// through its S3 API) or a hub dataset (hf://datasets/org/name). Fetched by the `data_import` step.
- `model_path`: the encoder: a hub repository (org/name, revision pinned with `model_revision`), an object-store URI
  (e.g. an earlier run's model artifact, minio://mlpipeline/v2/artifacts/...) or a path in the container; or
  `mlflow_model_path`. Exactly one of the two is required (both default to ''; a run with neither fails at the
  `model_import` step, which fetches the model).
- Credentials of both import steps come from two optional Secrets named by run parameters: `s3_secret_name`
  (keys `accesskey`, `secretkey`, as in KFP's own `mlpipeline-minio-artifact`) and `hf_token_secret_name` (key
  `token`); a Secret that does not exist is skipped.
- `predict_data_uri` (optional): unlabelled data (text lines, JSON Lines, CoNLL without tags or CSV), fetched like
  `data_uri`, that the fine-tuned model labels in a `predict` step.
- Every parameter of the preprocess and finetune components (generated from `trainer/config.py`, same names and
  defaults), `run_evaluation`, and the fine-tune step's placement (CPU/memory limits, node selector, tolerations).
  The finetune component's optional `deepspeed` input is an artifact (a DeepSpeed JSON), not a parameter, so these
  runs pick `deepspeed_preset`; a custom JSON goes to `finetune` in a pipeline of your own (e.g. from
  `dsl.importer`).

Two compiled variants ship: `token_classification_pipeline.yaml` (no volume) and
`token_classification_pipeline_pvc.yaml`, whose import steps also mount the PersistentVolumeClaim named by the run
parameter `pvc_name` at /mnt/pvc (so `data_uri` / `model_path` may be /mnt/pvc/... paths). They are two files
because a PVC mount whose name is empty fails the pod, and choosing between a mounted and an unmounted step at run
time needs `dsl.OneOf` over artifacts, which KFP backends before 2.17 resolve wrongly (kubeflow/pipelines#13436).
Compile-time options (`build_pipeline(...)`): GPU count and accelerator type of the fine-tune step (switches it to
the CUDA image), the PVC mount path.
"""

import inspect
from typing import NamedTuple, Optional

from kfp import dsl, kubernetes
from kfp.dsl import Markdown, Metrics, Model

from components.codegen import output_descriptions, pipeline_parameters, with_signature
from components.data_import.component import data_import
from components.definitions import COMPONENTS
from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.images import TRAINER_CUDA_IMAGE
from components.kubernetes import PvcMount, TaskPlacement, apply_placement
from components.model_import.component import model_import
from components.predict.component import predict
from components.preprocess.component import preprocess
from trainer.config import DataImportConfig, FinetuneConfig, ModelImportConfig, PreprocessConfig

PIPELINE_NAME = "token-classification-finetune"
PVC_MOUNT_PATH = "/mnt/pvc"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
HF_SECRET_KEYS = {"token": "HF_TOKEN"}
Outputs = NamedTuple("PipelineOutputs", [("pytorch_model_folder", Model), ("mlflow_model_folder", Model),
                                         ("onnx_model_folder", Model), ("metrics", Metrics), ("report", Markdown)])


def _own(name: str, annotation, default, description: str) -> tuple[inspect.Parameter, str]:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=annotation), description


DATA_URI = _own("data_uri", str, inspect.Parameter.empty, DataImportConfig.describe(
    next(f for f in DataImportConfig.parameter_fields() if f.name == "data_uri")))
ACCESS = [
    _own("s3_secret_name", str, "mlpipeline-minio-artifact",
         "Secret with the object-store credentials of the import steps (keys accesskey, secretkey); skipped if it "
         "does not exist."),
    _own("hf_token_secret_name", str, "hf-token",
         "Secret with a Hugging Face token for private or gated repositories (key token); skipped if it does not "
         "exist."),
]
PLACEMENT = [
    _own("run_evaluation", bool, True, "Evaluate the fine-tuned model on the test split, or the validation split "
                                       "when the data has none (metrics, report, predictions)."),
    _own("predict_data_uri", str, "", "Unlabelled data that the fine-tuned model labels in a predict step (text "
         "lines, JSON Lines with a 'text' or 'tokens' column, CoNLL without tags, CSV with a 'text' column), fetched "
         "like data_uri (path, object-store URI or hub dataset); empty: no predict step."),
    _own("finetune_cpu_limit", str, "4", "CPU limit of the fine-tune step."),
    _own("finetune_memory_limit", str, "16Gi", "Memory limit of the fine-tune step."),
    _own("finetune_node_selector", dict, {}, "Node selector of the fine-tune step, e.g. {\"pool\": \"gpu\"}."),
    _own("finetune_tolerations", list, [], "Tolerations of the fine-tune step (list of Kubernetes toleration "
                                           "objects)."),
]
SHARED_ACCESS = ("hf_endpoint", "s3_endpoint_url")  # fields of both import configs: one run parameter each
# What holds in this pipeline, said in place of what holds in the component a parameter comes from: model_import's
# `model` artifact input and preprocess's validation_data / test_data inputs are not run parameters here
# (pipeline_parameters fails if a phrase is no longer in the help it rewords).
MODEL_SOURCE_REWORD = {
    "Exactly one model source is required: model, model_path or mlflow_model_path.":
        "Required: give exactly one of model_path and mlflow_model_path (with neither or both the run fails at "
        "model import).",
}
SPLIT_REWORD = {
    "when validation_data is absent": "when data_uri holds no validation.* / dev.* file or datasets validation split",
    "when test_data is absent": "when data_uri holds no test.* file or datasets test split",
}
# The pipeline's outputs are the finetune step's: described as the finetune component describes them.
OUTPUT_DESCRIPTIONS = output_descriptions(next(d for d in COMPONENTS if d.name == "finetune"))


def _values(config_cls, values: dict) -> dict:
    return {f.name: values[f.name] for f in config_cls.parameter_fields() if f.name in values}


def _import_step(task, values: dict, mounts: list[PvcMount]):
    """Credentials (optional Secrets named by run parameters) and the PVC of an import step."""
    kubernetes.use_secret_as_env(task, secret_name=values["s3_secret_name"], secret_key_to_env=S3_SECRET_KEYS,
                                 optional=True)
    kubernetes.use_secret_as_env(task, secret_name=values["hf_token_secret_name"], secret_key_to_env=HF_SECRET_KEYS,
                                 optional=True)
    return apply_placement(task, TaskPlacement(pvc_mounts=mounts))


def build_pipeline(*, gpus: int = 0, accelerator_type: str = "nvidia.com/gpu", pvc_mount_path: Optional[str] = None,
                   name: str = PIPELINE_NAME, function_name: str = "token_classification_pipeline"):
    """The pipeline function for a set of compile-time options (the default: CPU, no PVC). With `pvc_mount_path`,
    the import steps mount the PVC named by the (then required) run parameter `pvc_name` there."""
    finetune_op = finetune
    if gpus > 0:
        finetune_op = dsl.component(finetune.python_func, base_image=TRAINER_CUDA_IMAGE, install_kfp_package=False)

    def body(**values) -> Outputs:
        mounts = [PvcMount(values["pvc_name"], pvc_mount_path)] if pvc_mount_path else []
        data = _import_step(data_import(**_values(DataImportConfig, values)), values, mounts)
        imported = _import_step(model_import(**_values(ModelImportConfig, values)), values, mounts)

        prep = preprocess(train_data=data.outputs["data_output"],
                          model_selector_output=imported.outputs["model_selector_output"],
                          **_values(PreprocessConfig, values))

        tuned = finetune_op(preprocess_output=prep.outputs["preprocess_output"],
                            model_selector_output=imported.outputs["model_selector_output"],
                            **_values(FinetuneConfig, values))
        apply_placement(tuned, TaskPlacement(
            cpu_limit=values["finetune_cpu_limit"], memory_limit=values["finetune_memory_limit"],
            accelerator_type=accelerator_type if gpus > 0 else None, accelerator_limit=gpus if gpus > 0 else None,
            node_selector=values["finetune_node_selector"], tolerations=values["finetune_tolerations"]))

        with dsl.If(values["run_evaluation"] == True):  # noqa: E712 - a KFP condition, not a Python comparison
            evaluate(model=tuned.outputs["pytorch_model_folder"], preprocess_output=prep.outputs["preprocess_output"],
                     split="auto", batch_size=values["per_device_eval_batch_size"])

        with dsl.If(values["predict_data_uri"] != ""):
            unlabelled = _import_step(data_import(**{**_values(DataImportConfig, values),
                                                     "data_uri": values["predict_data_uri"]}), values, mounts)
            unlabelled.set_display_name("import-predict-data")
            predict(model=tuned.outputs["pytorch_model_folder"], data=unlabelled.outputs["data_output"],
                    batch_size=values["per_device_eval_batch_size"])

        return Outputs(tuned.outputs["pytorch_model_folder"], tuned.outputs["mlflow_model_folder"],
                       tuned.outputs["onnx_model_folder"], tuned.outputs["metrics"], tuned.outputs["report"])

    pvc = [_own("pvc_name", str, inspect.Parameter.empty,
                f"PersistentVolumeClaim mounted at {pvc_mount_path} in the data and model import steps (data_uri / "
                f"model_path may then be {pvc_mount_path}/... paths).")] if pvc_mount_path else []
    parameters = ([DATA_URI] + pvc
                  + pipeline_parameters(DataImportConfig, exclude=("data_uri", *SHARED_ACCESS))
                  + pipeline_parameters(ModelImportConfig, reword=MODEL_SOURCE_REWORD)
                  + ACCESS
                  + pipeline_parameters(PreprocessConfig, FinetuneConfig, reword=SPLIT_REWORD)
                  + PLACEMENT)
    function = with_signature(body, parameters, "Fine-tune a Hugging Face encoder for token classification and "
                              "evaluate it on the test split.", returns=Outputs, name=function_name,
                              outputs={name: OUTPUT_DESCRIPTIONS[name] for name in Outputs._fields})
    return dsl.pipeline(name=name, description=__doc__.splitlines()[0])(function)


# The default (CPU, no PVC) pipeline, compiled to token_classification_pipeline.yaml, and its PVC variant, compiled to
# token_classification_pipeline_pvc.yaml.
token_classification_pipeline = build_pipeline()
token_classification_pipeline_pvc = build_pipeline(pvc_mount_path=PVC_MOUNT_PATH, name=f"{PIPELINE_NAME}-pvc",
                                                   function_name="token_classification_pipeline_pvc")

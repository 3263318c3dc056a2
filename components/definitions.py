"""Every KFP component of the package: which typed configs make its signature, its extra outputs, its body.

`scripts/compile_components.py` renders each into `components/<name>/component.py` (then its YAML and README).
To add a component: a config in trainer/config.py (or launcher/config.py), a `components/<name>/runtime.py`
with `run(**kwargs)`, an entry here, then regenerate.
"""

from __future__ import annotations

from components.codegen import ComponentDef
from launcher.config import LaunchConfig
from trainer.config import (DataImportConfig, EvaluateConfig, FinetuneConfig, ModelImportConfig, PredictConfig,
                            PreprocessConfig)

METRICS = ("Metrics", "Every validation (eval_*) and test (test_*) figure, plus best_metric, train_runtime and "
                      "entity_<name>_f1.")
REPORT = ("Markdown", "Markdown report: overall figures and the per-entity precision/recall/F1 table.")

COMPONENTS = [
    ComponentDef(
        name="model_import", configs=(ModelImportConfig,), runtime="components.model_import.runtime",
        summary="Import a Hugging Face model (hub repository, object store, PVC folder, LoRA adapter, earlier "
                "fine-tune output or MLflow model)."),
    ComponentDef(
        name="data_import", configs=(DataImportConfig,), runtime="components.data_import.runtime",
        summary="Import labelled token-classification data (any format preprocess reads: CoNLL, CoNLL-U, JSON "
                "Lines / JSON, CSV / TSV, Parquet, Hugging Face datasets) from a PVC, an object store or the Hugging "
                "Face hub."),
    ComponentDef(
        name="preprocess", configs=(PreprocessConfig,), runtime="components.preprocess.runtime",
        summary="Read labelled token-classification data, split it, tokenize it and align word labels to "
                "sub-tokens.",
        returns=[("num_labels", "int", "Number of classes."),
                 ("class_names", "list", "Class names; label id = index."),
                 ("train_size", "int", "Number of training sentences."),
                 ("tag_scheme", "str", "Tag scheme of the labels (iob1, iob2, bioes, bilou or plain): what the "
                                       "fine-tune's precision/recall/f1 mean.")]),
    ComponentDef(
        name="finetune", configs=(FinetuneConfig,), runtime="components.finetune.runtime",
        summary="Fine-tune a Hugging Face model for token classification (NER, POS, PII), with optional LoRA, "
                "DeepSpeed, ORT.",
        description="Every parameter of the reference spec (tests/data/spec.md in the repository, a copy of "
                    "../shared/spec/token_classification_finetune.md beside the checkout) is an input with the spec's "
                    "name, type and default (booleans are the strings \"true\"/\"false\").",
        outputs={"metrics": METRICS, "report": REPORT}),
    ComponentDef(
        name="evaluate", configs=(EvaluateConfig,), runtime="components.evaluate.runtime",
        summary="Evaluate a fine-tuned model on a split of the preprocess output with the served inference code: "
                "the tag scheme's figures (seqeval entities for span tags, per tag for plain tags), word accuracy, "
                "predictions.",
        outputs={"metrics": ("Metrics", "<split>_f1, <split>_precision, <split>_recall, <split>_accuracy, "
                                        "<split>_loss and per-entity F1 (metadata: source = finetune when the "
                                        "fine-tune's own figures for this split are reported)."),
                 "report": ("Markdown", "Markdown report with the overall figures and the per-entity (per-tag) "
                                        "table.")},
        returns=[("f1", "float", "Micro F1 of the tag scheme (entities for span tags, tags other than O for plain "
                                 "tags)."),
                 ("precision", "float", "Micro precision, as f1."), ("recall", "float", "Micro recall, as f1."),
                 ("accuracy", "float", "Word accuracy (a word's label is its first sub-token's).")]),
    ComponentDef(
        name="predict", configs=(PredictConfig,), runtime="components.predict.runtime",
        summary="Label unlabelled text (text lines, JSON Lines, CoNLL without tags, CSV) with a fine-tuned model "
                "(PyTorch, MLflow or ONNX folder): words, labels, scores and entity spans as JSON Lines.",
        returns=[("rows", "int", "Number of inputs predicted."),
                 ("entities", "int", "Number of entities found.")]),
    ComponentDef(
        name="finetune_pytorchjob", configs=(LaunchConfig, FinetuneConfig),
        runtime="components.finetune_pytorchjob.runtime",
        summary="Fine-tune for token classification as a multi-node Kubeflow job (Trainer v2 TrainJob or "
                "Training Operator PyTorchJob; torchrun + DeepSpeed) and collect the outputs.",
        description="A small launcher step (CPU image): it checks the inputs as the trainer does, stages the input "
                    "artifacts to a ReadWriteMany PVC or an object store, creates a trainer.kubeflow.org/v1alpha1 "
                    "TrainJob (the default backend) or, with backend=pytorchjob, a kubeflow.org/v1 PyTorchJob "
                    "(Master + num_nodes-1 Workers), each pod running torchrun -m trainer.cli; it follows the job "
                    "and rank 0's log, copies rank 0's outputs into its output artifacts and deletes the job per "
                    "cleanup_policy. Terminating the run deletes the job (SIGTERM), "
                    "and the job is owned by this step's pod (garbage-collected with it). Give exactly one of "
                    "shared_pvc_name and staging_uri. See docs/distributed.md.",
        outputs={"metrics": METRICS, "report": REPORT},
        default_exprs={"image": "TRAINER_CUDA_IMAGE"}),
]

"""The typed parameter surfaces of the package's programs: fine-tune, preprocess, model import, evaluate.

Each class is the single source of truth of its program (see `trainer.params`): the CLI is generated from
its fields, the Python API takes it, and `scripts/compile_components.py` generates the KFP component's
signature and docstring from it. To add a parameter, add a field here and regenerate.

`FinetuneConfig` follows the reference spec (`tests/data/spec.md`, a copy of
`../shared/spec/token_classification_finetune.md`): names, types and defaults of the fields marked `spec=True` are a
contract (`tests/test_config_surface.py` checks them); the spec's "true"/"false" strings are accepted wherever a bool
is expected.
"""

from __future__ import annotations

import json
from typing import Optional

from trainer.constants import LENGTH_GROUP_BATCHES
from trainer.errors import ConfigError
from trainer.params import Params, param, path, surface
from trainer.readers import AUTO, FORMATS, SENTENCE_COLUMNS, TAG_COLUMNS, TOKEN_COLUMNS
from trainer.schemes import SCHEMES

# Spec values that no longer exist upstream, mapped openly (README, "Parameters").
# transformers 5 removed its own AdamW (`adamw_hf`); torch's AdamW is the same algorithm. Both AdamW names run
# torch's fused kernel (`adamw_torch_fused`, the transformers 5 default): one optimizer step on a 22M-parameter
# model drops from ~300 ms to ~20 ms on 2 CPU cores (bench/README.md). Under DeepSpeed, plain `adamw_torch`.
OPTIMIZER_MAP = {
    "adamw_hf": "adamw_torch_fused",
    "adamw_torch": "adamw_torch_fused",
    "adafactor": "adafactor",
}
UNFUSED_OPTIMIZER = {"adamw_torch_fused": "adamw_torch"}
METRIC_GREATER_IS_BETTER = {"loss": False, "f1": True, "accuracy": True, "precision": True, "recall": True}
DEEPSPEED_PRESETS = ("zero2", "zero3")


def _spec(default, help, **kwargs):
    return param(default, help, spec=True, **kwargs)


@surface
class FinetuneConfig(Params):
    """Every knob of one token-classification fine-tune (the spec's parameters plus a few of our own)."""

    GROUPS = {"io": "data and model inputs, outputs", "lora": "LoRA", "training": "training",
              "early_stopping": "early stopping", "deepspeed": "DeepSpeed", "ort": "ONNX Runtime",
              "serving": "serving outputs"}
    SPEC = True

    # --- Data and model inputs, outputs -------------------------------------------------------------
    preprocess_output: str = path(
        "Output folder of the preprocess component: encoded train/validation/test splits, class_names.json and "
        "the tokenizer.", artifact="Dataset")
    model_selector_output: str = path(
        "Output folder of the model import component: model files and model_selector_args.json.",
        artifact="Model")
    pytorch_model_folder: str = path(
        "Best model (by metric_for_best_model) at the root, one checkpoint per evaluation (weights, config, "
        "tokenizer, optimizer, scheduler, RNG states), finetune_args.json, metrics.json and the served model's "
        "predictions of the test split (test_predictions.jsonl; validation_predictions.jsonl without one).",
        output=True, artifact="Model")
    mlflow_model_folder: str = path("Best fine-tuned model in MLflow format.", output=True, artifact="Model")
    onnx_model_folder: Optional[str] = path(
        "Best model exported to ONNX (model.onnx with dynamic batch and sequence axes, tokenizer, label map, "
        "onnx_export.json); written when given and export_onnx=true (in KFP it is always given).", output=True,
        artifact="Model", optional=True, spec=False)

    # --- LoRA ---------------------------------------------------------------------------------------
    apply_lora: bool = _spec(False, "If true, enables LoRA (peft).", group="lora")
    merge_lora_weights: bool = _spec(True, "If true, LoRA weights are merged into the base model before saving.",
                                     group="lora")
    lora_alpha: int = _spec(128, "LoRA alpha.", group="lora", minimum=1)
    lora_r: int = _spec(8, "LoRA rank.", group="lora", minimum=1)
    lora_dropout: float = _spec(0.0, "LoRA dropout.", group="lora", minimum=0, below=1)
    lora_target_modules: Optional[str] = param(
        None, "Comma-separated module names for LoRA; defaults to our per-family map.", group="lora")

    # --- Training -----------------------------------------------------------------------------------
    num_train_epochs: int = _spec(1, "Number of epochs.", group="training")
    max_steps: int = _spec(-1, "If positive, total optimizer steps; overrides num_train_epochs.", group="training")
    per_device_train_batch_size: int = _spec(1, "Per-device training batch size.", group="training", minimum=1)
    per_device_eval_batch_size: int = _spec(1, "Per-device evaluation batch size (also of the test scoring); "
                                            "larger is faster, padding is masked, so the figures change only by "
                                            "float rounding.", group="training", minimum=1)
    auto_find_batch_size: bool = _spec(False, "On out-of-memory, retry with a smaller batch until it fits "
                                       "(accelerate: 10% smaller each time).", group="training")
    optim: str = _spec("adamw_hf", "Optimizer (adamw_hf and adamw_torch run torch's fused AdamW; the unfused one "
                       "under DeepSpeed).", choices=tuple(OPTIMIZER_MAP), group="training")
    learning_rate: float = _spec(2e-5, "Initial learning rate.", group="training", above=0)
    warmup_steps: int = _spec(0, "Learning-rate warmup steps.", group="training", minimum=0)
    weight_decay: float = _spec(0.0, "Weight decay (not on bias and LayerNorm weights).", group="training",
                                minimum=0)
    adam_beta1: float = _spec(0.9, "AdamW beta1.", group="training", minimum=0, below=1)
    adam_beta2: float = _spec(0.999, "AdamW beta2.", group="training", minimum=0, below=1)
    adam_epsilon: float = _spec(1e-8, "AdamW epsilon.", group="training", above=0)
    gradient_accumulation_steps: int = _spec(1, "Gradient accumulation steps.", group="training", minimum=1)
    lr_scheduler_type: str = _spec(
        "linear", "Learning-rate scheduler.", group="training",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"))
    precision: str = _spec("32", "16: mixed precision (bf16 where supported, else fp16); 32: full precision.",
                           choices=("32", "16"), group="training")
    seed: int = _spec(42, "Random seed.", group="training", minimum=0, maximum=2**32 - 1)
    enable_full_determinism: bool = _spec(False, "Deterministic algorithms (slower).", group="training")
    dataloader_num_workers: int = _spec(0, "Data-loading worker processes.", group="training", minimum=0)
    ignore_mismatched_sizes: bool = _spec(True, "Re-initialise weights whose shape differs (e.g. a new head).",
                                          group="training")
    max_grad_norm: float = _spec(1.0, "Gradient clipping norm (0: no clipping).", group="training", minimum=0)
    evaluation_strategy: str = _spec("epoch", "When to evaluate (and checkpoint).", choices=("epoch", "steps"),
                                     group="training")
    evaluation_steps_interval: float = _spec(
        0.0, "Evaluate every this fraction of an epoch's optimizer steps; overrides eval_steps if not 0.",
        group="training", minimum=0, maximum=1)
    eval_steps: int = _spec(500, "Optimizer steps between evaluations when evaluation_strategy=steps.",
                            group="training", minimum=1)
    logging_strategy: str = _spec("epoch", "When to log.", choices=("epoch", "steps"), group="training")
    logging_steps: int = _spec(500, "Steps between logs when logging_strategy=steps.", group="training", minimum=1)
    metric_for_best_model: str = _spec("loss", "Metric that picks the best checkpoint.",
                                       choices=tuple(METRIC_GREATER_IS_BETTER), group="training")
    resume_from_checkpoint: bool = _spec(
        False, "Resume from the latest complete checkpoint in pytorch_model_folder (weights, optimizer, "
               "scheduler, RNG).", group="training")
    save_total_limit: int = _spec(-1, "Keep at most this many checkpoints (the best is never deleted); -1 keeps "
                                  "all.", group="training", minimum=-1)
    padding_free: bool = param(True, "Training batches without padding: each batch's rows concatenated into one "
                               "row (transformers' DataCollatorWithFlattening; the row filled to a multiple of 32 "
                               "tokens), each row attending only to itself (trainer/packing.py); random batches of "
                               "WNUT-17 were 41 % padding. On where a check at start-up shows the model computes "
                               "flat batches as it computes padded ones (BERT, RoBERTa and kin; not DeBERTa), else "
                               "padded batches, logged. Evaluation batches stay padded.", group="training")
    group_by_length: bool = param(False, "Batch rows of similar length together (length_group_batches). With "
                                  "padding_free only the attention still pads (step by step on CPU: groups of 4 "
                                  "~2 % faster than random batches, of 32 ~8 %); without it ~1.3x. Length-grouped "
                                  "batches differ from random ones: see length_group_batches.", group="training")
    length_group_batches: int = param(LENGTH_GROUP_BATCHES, "With group_by_length: the training rows are drawn "
                                      "in random groups of this many batches, sorted by length inside each group, "
                                      "and the batches shuffled (trainer/sampling.py). More: less padding, batches "
                                      "further from random ones (on WNUT-17 at 3 epochs, groups of 32 scored 0.4 "
                                      "test-F1 points below the stock recipe's random batches over 20 seeds, groups "
                                      "of 4 did not); 1: random batches.", group="training", minimum=1)
    progress_seconds: float = param(30.0, "Seconds between progress lines (step, loss, tokens/s, ETA) in the log; "
                                    "0 logs every optimizer step.", group="training", minimum=0)
    cpu_speedups: bool = param(True, "CPU training speed-ups: glibc allocator thresholds, an embedding that "
                               "updates only the rows the training data uses (exact under AdamW without weight "
                               "decay), dropout masks from a fast generator seeded by torch's (the same "
                               "Bernoulli distribution, other random draws), and gradient clipping inside the "
                               "fused AdamW step (trainer/speed.py).", group="training")

    # --- Early stopping -----------------------------------------------------------------------------
    apply_early_stopping: bool = _spec(False, "If true, enables early stopping.", group="early_stopping")
    early_stopping_patience: int = _spec(1, "Evaluations without improvement before stopping.",
                                         group="early_stopping", minimum=1)
    early_stopping_threshold: float = _spec(0.0, "Minimum improvement that counts.", group="early_stopping",
                                            minimum=0)

    # --- DeepSpeed / ORT ----------------------------------------------------------------------------
    apply_deepspeed: bool = _spec(False, "If true, trains with DeepSpeed.", group="deepspeed")
    deepspeed: Optional[str] = path(
        "DeepSpeed JSON config file (or a folder holding one); used only with apply_deepspeed=true. Default: "
        "deepspeed_preset.", artifact="Artifact", optional=True, group="deepspeed")
    deepspeed_preset: str = param("zero2", "DeepSpeed config used when no deepspeed file is given: ZeRO-2 or "
                                  "ZeRO-3, every size 'auto'.", choices=DEEPSPEED_PRESETS, group="deepspeed")
    apply_ort: bool = _spec(False, "If true, trains with ONNX Runtime (ORTModule); fails if unavailable.",
                            group="ort")

    # --- Serving outputs ----------------------------------------------------------------------------
    export_onnx: bool = param(True, "Export the best model to ONNX into onnx_model_folder (a few seconds; verified "
                              "against PyTorch). A failed export is logged and recorded, and does not fail the run.",
                              group="serving")

    def validate(self) -> None:
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs and max_steps are both non-positive: nothing to train; "
                              "set num_train_epochs >= 1 or max_steps >= 1")
        if self.save_total_limit == 0:
            raise ConfigError("save_total_limit must be -1 (keep all) or >= 1, got 0")
        if self.deepspeed and not self.apply_deepspeed:
            raise ConfigError("a deepspeed config was given but apply_deepspeed is false; set apply_deepspeed=true "
                              "to use it (the spec requires both)")
        if self.apply_ort and self.apply_deepspeed:
            raise ConfigError("apply_ort and apply_deepspeed cannot be combined")
        if self.lora_target_modules is not None and not self.target_modules:
            raise ConfigError(f"lora_target_modules={self.lora_target_modules!r} names no module")

    # --- Conversions --------------------------------------------------------------------------------
    @property
    def greater_is_better(self) -> bool:
        return METRIC_GREATER_IS_BETTER[self.metric_for_best_model]

    @property
    def hf_optim(self) -> str:
        return OPTIMIZER_MAP[self.optim]

    @property
    def target_modules(self) -> Optional[list[str]]:
        if not self.lora_target_modules:
            return None
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


@surface
class PreprocessConfig(Params):
    """Read labelled data, split it, tokenize it with the imported model's tokenizer and align the labels."""

    GROUPS = {"io": "data and model inputs, output", "data": "data", "encoding": "encoding", "split": "splits"}

    train_data: str = path(
        "Training data: a file in any supported format (CoNLL, CoNLL-U, JSON Lines, JSON, CSV/TSV, Parquet, a "
        "datasets Arrow file), a datasets save_to_disk folder (a DatasetDict gives its splits), or a folder holding "
        "train.* and optionally validation.*/dev.* and test.* files (used when validation_data/test_data are not "
        "given).", artifact="Dataset")
    model_selector_output: str = path(
        "Model import output (or any folder with tokenizer files); its tokenizer is used and saved into the "
        "output.", artifact="Model")
    preprocess_output: str = path(
        "Folder with train/validation/test.jsonl (one window of a sentence per row: input_ids, attention_mask, "
        "labels, word_ids, tokens, tags, sentence, window), class_names.json, preprocess_args.json (with the "
        "tag_scheme) and the tokenizer.", output=True, artifact="Dataset")
    validation_data: Optional[str] = path("Validation data (same formats); if absent, split off the training data.",
                                          artifact="Dataset", optional=True)
    test_data: Optional[str] = path("Test data (same formats); if absent, split off the training data.",
                                    artifact="Dataset", optional=True)
    data_format: str = param("auto", "Format of the data; auto detects it from the content (hf: a datasets "
                             "save_to_disk folder or Arrow file).",
                             choices=(AUTO,) + FORMATS, group="data")
    token_column: str = param(
        "auto", "Column of the words: a name (JSON, CSV, Parquet, datasets; CoNLL-U: form) or an index (CoNLL, "
        "CoNLL-U). auto: the first column in CoNLL, FORM in CoNLL-U, else the first present of "
        f"{', '.join(TOKEN_COLUMNS)}.", group="data")
    tag_column: str = param(
        "auto", "Column of the tags: a name or an index as for token_column; in CoNLL-U also upos, xpos, a "
        "global.columns name or misc:KEY (KEY=value in MISC, O where absent). auto: the last column in CoNLL, UPOS "
        f"in CoNLL-U, else the first present of {', '.join(TAG_COLUMNS)}.", group="data")
    sentence_column: str = param(
        "auto", "Tables with one word per row: the column that numbers the sentences (an empty cell continues the "
        f"sentence above). auto: the first present of {', '.join(SENTENCE_COLUMNS)}.", group="data")
    label_names: str = param(
        "", "Label names in id order, comma-separated (e.g. O,B-PER,I-PER) or a JSON list: integer tags are read as "
        "ids of these names, and the label ids follow this order. Default: the ClassLabel names the data declares, "
        "else the tags as written.", group="data")
    tag_scheme: str = param(
        "auto", "Tag scheme; auto detects it from the tags, plain means tags without span prefixes (e.g. POS). Span "
        "schemes get entity-level precision/recall/f1, plain tags per-tag scores.",
        choices=(AUTO,) + SCHEMES, group="data")
    max_seq_length: int = param(512, "Longest row in sub-tokens (capped at the tokenizer's maximum). Longer sentences "
                                "are split into windows of whole words: nothing is cut, every word is trained on and "
                                "scored once.", group="encoding", minimum=2)
    stride: int = param(32, "Sub-tokens of context on each side of a window (at most a quarter of max_seq_length): "
                        "words of the neighbouring windows that the model sees there without scoring them.",
                        group="encoding", minimum=0)
    label_all_tokens: bool = param(False, "true: continuation sub-tokens are trained on too, with the word's tag (I- "
                                   "inside a span); false: they are not (-100). Scores count each word once either "
                                   "way.", group="encoding")
    add_prefix_space: str = param("auto", "Prefix words with a space before tokenizing (auto: true for byte-level "
                                  "BPE tokenizers such as RoBERTa/GPT-2/DeBERTa).",
                                  choices=("auto", "true", "false"), group="encoding")
    validation_ratio: float = param(0.1, "Fraction of the training data split off as validation when "
                                    "validation_data is absent.", group="split", minimum=0, below=1)
    test_ratio: float = param(0.1, "Fraction of the training data split off as test when test_data is absent (when "
                              "exactly one split is missing it gets validation_ratio + test_ratio, i.e. 80/20).",
                              group="split", minimum=0, below=1)
    split_seed: int = param(42, "Seed of the split shuffle.", group="split", minimum=0)

    def validate(self) -> None:
        if self.validation_ratio + self.test_ratio >= 1:
            raise ConfigError(f"validation_ratio + test_ratio must be < 1, got "
                              f"{self.validation_ratio} + {self.test_ratio}")
        names = self.label_name_list
        if names is not None and (not all(n.strip() for n in names) or len(set(names)) != len(names)):
            raise ConfigError("label_names must name each label once, comma-separated (e.g. O,B-PER,I-PER)")

    @property
    def label_name_list(self) -> Optional[list[str]]:
        """label_names as a list (None when not given)."""
        text = (self.label_names or "").strip()
        if not text:
            return None
        if not text.startswith("["):
            return [n.strip() for n in text.split(",")]
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"label_names is not a JSON list: {err}") from None
        if not isinstance(names, list):
            raise ConfigError("label_names must be a JSON list of names")
        return [str(n) for n in names]


SOURCE_HELP = ("a path in the container (e.g. on the PVC the pipeline mounts), an object-store URI (s3://bucket/prefix; "
               "minio://... for Kubeflow Pipelines' own store, e.g. an earlier run's artifact; gs://... through "
               "GCS's S3 API) or a Hugging Face hub repository (org/name or hf://org/name[@revision])")


@surface
class ModelImportConfig(Params):
    """Bring a Hugging Face model (hub repository, object store, folder, LoRA adapter, earlier fine-tune output,
    MLflow model) into a model-import output folder."""

    GROUPS = {"io": "inputs, output", "source": "model source", "access": "hub and object-store access"}
    INPUT_VALUES = ("model_path", "mlflow_model_path")

    model_selector_output: str = path(
        "Folder with the model (and tokenizer) files at its root and model_selector_args.json "
        "({\"model_name\", \"model_name_or_path\", \"model_family\", \"source\", \"source_uri\", \"revision\"}).",
        output=True, artifact="Model")
    model: Optional[str] = path(
        "The model as an input artifact (e.g. from dsl.importer, or an earlier run's output): an HF folder or an "
        "MLflow transformers model folder; alternative to model_path / mlflow_model_path.", artifact="Model",
        optional=True)
    model_path: str = param("", "Where the model comes from: " + SOURCE_HELP + ". The folder holds config.json "
                            "(or adapter_config.json), weights and tokenizer. Exactly one model source is required: "
                            "model, model_path or mlflow_model_path.", group="source")
    mlflow_model_path: str = param("", "An MLflow transformers model (MLmodel + model/ + components/tokenizer/): a "
                                   "path in the container or an object-store URI. Exactly one model source is "
                                   "required: model, model_path or mlflow_model_path.", group="source")
    model_name: str = param("", "Name recorded in model_selector_args.json (default: derived from the source).",
                            group="source")
    model_revision: str = param("", "Hub revision of a hub model_path: a branch, tag or commit (pin a commit for "
                                "reproducible runs); default main. The commit it resolves to is recorded.",
                                group="source")
    hf_endpoint: str = param("", "Hugging Face hub endpoint (a mirror or proxy); default: HF_ENDPOINT, else "
                             "https://huggingface.co. A token comes from HF_TOKEN.", group="access")
    s3_endpoint_url: str = param("", "S3 API endpoint for s3:// and minio:// sources (MinIO, SeaweedFS, Ceph, ...); "
                                 "default: AWS_ENDPOINT_URL, else AWS. Credentials come from AWS_ACCESS_KEY_ID / "
                                 "AWS_SECRET_ACCESS_KEY.", group="access")

    def validate(self) -> None:
        from trainer.sources import parse_source

        given = [name for name in ("model", "model_path", "mlflow_model_path") if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError(f"give exactly one model source: model, model_path or mlflow_model_path "
                              f"(got {given or 'none'})")
        if self.model_path:
            parse_source(self.model_path, "model_path", revision=self.model_revision,
                         s3_endpoint_url=self.s3_endpoint_url)
        elif self.model_revision:
            raise ConfigError(f"model_revision={self.model_revision!r} applies to a hub model_path only")
        if self.mlflow_model_path:
            source = parse_source(self.mlflow_model_path, "mlflow_model_path", s3_endpoint_url=self.s3_endpoint_url)
            if source.kind == "hub":
                raise ConfigError(f"mlflow_model_path={self.mlflow_model_path!r}: an MLflow model is a folder in "
                                  "the container or in an object store, not a hub repository")
        if self.hf_endpoint and not self.hf_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"hf_endpoint={self.hf_endpoint!r} must be an http(s):// URL")
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"s3_endpoint_url={self.s3_endpoint_url!r} must be an http(s):// URL")


@surface
class DataImportConfig(Params):
    """Bring the labelled data (CoNLL / JSON Lines / CSV files) from where it lives into a Dataset folder."""

    GROUPS = {"io": "output", "source": "data source", "access": "hub and object-store access"}
    INPUT_VALUES = ("data_uri",)

    data_output: str = path("Folder with the data: a source folder's files as they are, or a single source file "
                            "as train.<ext> (then split by preprocess).", output=True, artifact="Dataset")
    data_uri: str = param("", "Where the data comes from: " + SOURCE_HELP.replace("org/name or hf://org/name",
                          "hf://datasets/org/name") + ". A folder holds train.* and optionally validation.*/dev.* "
                          "and test.*; a single file is the training data.", group="source")
    data_revision: str = param("", "Hub revision of a hub data_uri (branch, tag or commit); default main.",
                               group="source")
    hf_endpoint: str = param("", "Hugging Face hub endpoint (a mirror or proxy); default: HF_ENDPOINT, else "
                             "https://huggingface.co. A token comes from HF_TOKEN.", group="access")
    s3_endpoint_url: str = param("", "S3 API endpoint for s3:// and minio:// sources (MinIO, SeaweedFS, Ceph, ...); "
                                 "default: AWS_ENDPOINT_URL, else AWS.", group="access")

    def validate(self) -> None:
        from trainer.sources import parse_source

        if not self.data_uri:
            raise ConfigError("data_uri is required: a path in the container, an s3:// / minio:// / gs:// URI or "
                              "hf://datasets/org/name")
        parse_source(self.data_uri, "data_uri", revision=self.data_revision, s3_endpoint_url=self.s3_endpoint_url)
        for name in ("hf_endpoint", "s3_endpoint_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise ConfigError(f"{name}={value!r} must be an http(s):// URL")


@surface
class EvaluateConfig(Params):
    """Predict one split of a preprocess output with a fine-tuned model and score it (entity-level seqeval, token
    accuracy, loss)."""

    GROUPS = {"io": "inputs, outputs", "evaluation": "evaluation"}

    model: str = path("A fine-tuned model: the finetune component's pytorch_model_folder (merged or unmerged LoRA), "
                      "its mlflow_model_folder or onnx_model_folder.", artifact="Model")
    preprocess_output: str = path("Output folder of the preprocess component (encoded splits with their words and "
                                  "tags, class_names.json).", artifact="Dataset")
    predictions: str = path("JSON Lines, one sentence a line: {\"tokens\", \"tags\", \"predicted_tags\", "
                            "\"scores\"} (a word's score is its label's probability; null for a word without "
                            "sub-tokens).", output=True, artifact="Dataset")
    split: str = param("test", "Which split to evaluate; auto: test, or validation when the preprocess output has no "
                       "test split (the split the fine-tune scores).", choices=("test", "validation", "train", "auto"),
                       group="evaluation")
    batch_size: int = param(16, "Inference batch size (windows are sorted by length first).", group="evaluation",
                            minimum=1)
    rescore: bool = param(False, "Predict and score again even when the model's fine-tune already did so on this "
                          "very split (same file content, same classes): by default its predictions and figures are "
                          "reused without loading the model, so a pipeline shows one test F1 and predicts the split "
                          "once.", group="evaluation")


@surface
class PredictConfig(Params):
    """Label unlabelled text with a fine-tuned model (PyTorch, MLflow or ONNX folder) into predictions JSON Lines."""

    GROUPS = {"io": "inputs, output", "data": "data", "inference": "inference"}

    model: str = path("A fine-tuned model: the finetune component's pytorch_model_folder (merged or unmerged LoRA), "
                      "its mlflow_model_folder or its onnx_model_folder.", artifact="Model")
    data: str = path("Unlabelled data: text lines (one text a line), JSON Lines (a text or a word-list column), CoNLL "
                     "without tags (one word a line, the first column; a blank line between sentences) or CSV (a "
                     "text column); or a folder holding one such file.", artifact="Dataset")
    predictions: str = path("JSON Lines, one input a line, in input order: {\"id\", \"text\", \"words\", "
                            "\"labels\", \"scores\", \"offsets\", \"entities\": [{\"text\", \"label\", "
                            "\"start\", \"end\", \"score\"}]}.", output=True, artifact="Dataset")
    data_format: str = param("auto", "Format of data; auto reads the file suffix: .txt/.text text lines, "
                             ".jsonl/.json/.ndjson JSON Lines, .conll/.tsv/.iob/.bio CoNLL, .csv CSV.",
                             choices=("auto", "text", "jsonl", "conll", "csv"), group="data")
    text_column: str = param("text", "JSON Lines / CSV column holding raw text (cut into words like the served "
                             "model does).", group="data")
    words_column: str = param("tokens", "JSON Lines column holding pre-split words (used when a row has no "
                              "text_column).", group="data")
    batch_size: int = param(32, "Inference batch size (windows are sorted by length first).", group="inference",
                            minimum=1)
    max_length: int = param(0, "Sub-tokens per window; 0: the window the model was trained on (its preprocess "
                            "max_seq_length), else the model's maximum.", group="inference", minimum=0)
    stride: int = param(128, "Sub-tokens repeated between neighbouring windows of a long input (at most half a "
                        "window).", group="inference", minimum=0)
    device: str = param("auto", "Where the model runs: auto (a GPU when there is one), cpu or cuda.",
                        choices=("auto", "cpu", "cuda"), group="inference")

"""Complete, early validation: everything a run reads is checked before anything is created, loaded or trained.

A bad input ends a program with exit code 2 and one line naming the file (and line) or the flag, and the fix
(`trainer.cli`). What is checked:

- the folders of any program (`check_io`, the first thing every program does): outputs never equal, contain or
  sit inside an input or each other (symlinks resolved), each can be created where it is asked for, and no
  symbolic link inside an input folder leads out of it (`check_links`);
- a fine-tune (`validate_finetune`), in this order: the preprocess output (every row's JSON types, its ids against the
  model's vocabulary, position and token-type tables, splits with labels to learn from and to score, the words and
  tags of the split the published model is scored on), the model folder (config.json, a token-classification head for
  its family, the head's label count, intact weight files), the tokenizer, LoRA target modules (matched on a model
  built on the meta device from config.json: no weights loaded), the DeepSpeed JSON (its types, fp16 forced on a CPU,
  values that contradict ours, DeepSpeed's own schema), ONNX Runtime, the MLflow tracking store when
  MLFLOW_TRACKING_URI is set, and the output folders (their contents, free space for what the run will write); its
  input folders alone (`validate_inputs`) are what the distributed launcher checks before staging them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from trainer.constants import BASE_MODEL_SUBDIR, IGNORE_INDEX, SPLIT_FILES
from trainer.errors import ConfigError, InputError
from trainer.jsonio import read_json

TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json")
ADAM_STATES = 2  # AdamW keeps two fp32 tensors per trainable parameter (exp_avg, exp_avg_sq)


def one_line(text: Any) -> str:
    """A message as one line (library errors often span several)."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------
# Folders of any program
# --------------------------------------------------------------------------------------------------
def _paths(config, output: bool) -> list[tuple[str, Path]]:
    from trainer.params import is_path

    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        named = is_path(f) and bool(f.metadata.get("output")) == output
        # a source value (a path, a URI or a hub id) is an input path when it names something here
        local_value = (not output and f.name in type(config).INPUT_VALUES and value and "://" not in str(value)
                       and Path(str(value)).expanduser().exists())
        if value and (named or local_value):
            found.append((f.name, Path(str(value)).expanduser()))
    return found


def _relation(a: Path, b: Path) -> str:
    """How `a` stands to `b` once symlinks are resolved: 'the same as', 'inside', 'contains' or ''."""
    a, b = a.resolve(), b.resolve()
    if a == b:
        return "is the same as"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return ""


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_io(config) -> None:
    """Every input artifact exists; outputs never equal, contain or sit inside an input or another output; each
    output can be created (its nearest existing folder is a folder this process can write in). Nothing is created:
    the probe file has no name."""
    from trainer.params import is_path

    inputs, outputs = _paths(config, output=False), _paths(config, output=True)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if is_path(f) and not f.metadata.get("output") and value and not Path(str(value)).expanduser().exists():
            raise InputError(f"{f.name} not found: {value} (no such file or folder)")
    for i, (name, path) in enumerate(outputs):
        for other, other_path in inputs + outputs[i + 1:]:
            how = _relation(path, other_path)
            if how:
                kind = "the input" if (other, other_path) in inputs else "the output"
                raise ConfigError(f"{name} {path} {how} {kind} {other} {other_path}: outputs never overwrite inputs "
                                  f"or each other; give {name} a folder of its own")
    for name, path in outputs:
        where = _nearest_existing(path)
        folder = where if where.is_dir() else where.parent
        if where != Path(os.path.abspath(path)) and not where.is_dir():
            raise InputError(f"{name} {path} cannot be created: {where} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=folder):  # O_TMPFILE: no directory entry is ever made
                pass
        except OSError as err:
            raise InputError(f"{name} {path} cannot be written: {folder} is not writable ({err.strerror}); give a "
                             "folder on a writable volume") from None
    check_links(config)


def check_links(config) -> None:
    """No symbolic link inside an input folder of `config` leads out of it, is broken or loops
    (`trainer.input_tree`): the programs read those folders' files directly. A link inside the folder is allowed."""
    from trainer.input_tree import iter_files

    for _, path in _paths(config, output=False):
        if path.is_dir():
            list(iter_files(path))


# --------------------------------------------------------------------------------------------------
# A fine-tune
# --------------------------------------------------------------------------------------------------
@dataclass
class Validated:
    data: Any  # trainer.data.PreprocessOutput
    model_dir: Path
    model_config: Any  # transformers.PretrainedConfig
    deepspeed_config: Optional[dict]
    skeleton: Any = None  # the model on the meta device (meta_model)


def validate_finetune(config) -> Validated:
    """Every check of a fine-tune that can fail, before anything is created or loaded (see the module docstring)."""
    from trainer.outputs import validate_outputs

    check_io(config)
    checked = validate_inputs(config)
    check_tracking()
    if config.apply_deepspeed:
        checked.deepspeed_config = check_deepspeed(config, checked.model_config, len(checked.data.train))
    if config.apply_ort:
        from trainer.ort import check_ort_available

        check_ort_available()
    validate_outputs(config)
    check_free_space(config, checked.skeleton, len(checked.data.train))
    return checked


def validate_inputs(config) -> Validated:
    """The checks of a fine-tune's input folders alone, which need neither the machine nor the world size the run
    trains on: the preprocess output, the model folder, the tokenizer, the LoRA target modules (a launcher checks
    them where the folders are, before staging them for the pods). deepspeed_config is left None."""
    from trainer.data import load_preprocess_output
    from trainer.model_io import resolve_model_dir

    data = load_preprocess_output(config.preprocess_output)
    model_dir = resolve_model_dir(config.model_selector_output)
    adapter = (model_dir / "adapter_config.json").exists()
    config_dir = model_dir / BASE_MODEL_SUBDIR if adapter else model_dir
    model_config = read_model_config(config_dir)
    check_head(model_config, config_dir, len(data.class_names), config.ignore_mismatched_sizes, adapter)
    check_weights(config_dir)
    if adapter:
        check_weights(model_dir, adapter=True)
    skeleton = meta_model(model_config, config_dir)
    check_rows(data, skeleton, Path(config.preprocess_output))
    check_scored_words(data, Path(config.preprocess_output))
    check_tokenizer(data.tokenizer_dir)
    if config.apply_lora:
        check_lora_targets(skeleton, model_config.model_type, config.target_modules)
    return Validated(data, model_dir, model_config, None, skeleton)


# --- the model folder ---------------------------------------------------------------------------------------------
def read_model_config(folder: Path):
    """config.json, parsed by transformers after its JSON and the types of its sizes are checked."""
    from transformers import AutoConfig

    path = folder / "config.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a JSON object")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"):
        if key in raw and raw[key] is not None and not (type(raw[key]) is int and raw[key] > 0):
            raise InputError(f"{path}: {key} must be a positive integer, got {raw[key]!r}; re-import the model")
    # 0 is a real value: DeBERTa-v3 has no token-type embedding (microsoft/deberta-v3-*: type_vocab_size 0)
    if raw.get("type_vocab_size") is not None and not (type(raw["type_vocab_size"]) is int
                                                        and raw["type_vocab_size"] >= 0):
        raise InputError(f"{path}: type_vocab_size must be an integer >= 0, got {raw['type_vocab_size']!r}; "
                         "re-import the model")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read the model config {path}: {one_line(err)}") from None


def token_classification_types() -> frozenset[str]:
    """The model types transformers has a token-classification head for: its auto-model table, read from the source
    of transformers.models.auto.modeling_auto without importing it (the import loads torch: 1.35 s, which the model
    import step otherwise never pays); imported when the source cannot be read so."""
    import ast
    import importlib.util

    try:
        package = Path(importlib.util.find_spec("transformers").origin).parent  # found, not imported
        source = (package / "models" / "auto" / "modeling_auto.py").read_text("utf-8")
        start = source.index("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES = OrderedDict(")
        table = ast.literal_eval(source[source.index("[", start):source.index("\n    ]\n)", start) + 6])
        return frozenset(model_type for model_type, _ in table)
    except (AttributeError, OSError, SyntaxError, TypeError, ValueError):
        from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

        return frozenset(MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)


def check_family(model_type: str, where: str) -> None:
    """transformers has a token-classification head for this model type (checked by model import too)."""
    if model_type not in token_classification_types():
        raise InputError(f"{where}: transformers has no token-classification head for model type {model_type!r}; "
                         "import an encoder such as BERT, RoBERTa, DeBERTa or XLM-R")


def check_head(model_config, folder: Path, num_labels: int, ignore_mismatched_sizes: bool, adapter: bool) -> None:
    """transformers has a token-classification head for the family, and a saved head fits our label count
    (or may be replaced: ignore_mismatched_sizes)."""
    check_family(model_config.model_type, str(folder / "config.json"))
    has_head = adapter or any(a.endswith("ForTokenClassification") for a in (model_config.architectures or []))
    if has_head and model_config.num_labels != num_labels and not ignore_mismatched_sizes:
        raise InputError(f"{folder / 'config.json'}: the model's head has {model_config.num_labels} labels but "
                         f"preprocess_output has {num_labels}; set ignore_mismatched_sizes=true to train a new head")


ADAPTER_WEIGHTS_PREFIX = "adapter_model"  # peft's adapter_model.safetensors / adapter_model.bin


def weight_files(folder: Path, adapter: bool = False) -> tuple[list[Path], list[Path]]:
    """(safetensors, pickle archives) a model folder's root holds as its weights: shards included, `adapter_model*`
    for a LoRA adapter, never the Trainer's training_args.bin."""
    prefix = ADAPTER_WEIGHTS_PREFIX if adapter else ""
    return (sorted(folder.glob(f"{prefix}*.safetensors")),
            sorted(p for p in folder.glob(f"{prefix}*.bin") if p.name != "training_args.bin"))


def check_weights(folder: Path, adapter: bool = False) -> None:
    """The weight files are whole: safetensors headers cover their files, zip archives pass their CRCs, every shard
    an index names exists. Nothing is loaded."""
    from safetensors import safe_open

    where = "re-import the model (model_import)"
    for index in sorted(folder.glob("*.index.json")):
        content = read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map object; {where}")
        missing = sorted({str(v) for v in weight_map.values() if not (folder / str(v)).is_file()})
        if missing:
            raise InputError(f"{index} names shard(s) that are missing: {missing[:3]}; {where}")
    safetensors, archives = weight_files(folder, adapter)
    if not safetensors and not archives:
        raise InputError(f"no weight files (*.safetensors, *.bin) in {folder}: the model is incomplete; {where}")
    for path in safetensors:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type
            raise InputError(f"{path} is damaged ({one_line(err)}); {where}") from None
    for path in archives:
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
            except (zipfile.BadZipFile, OSError) as err:
                bad = str(err)
            if bad:
                raise InputError(f"{path} is damaged (bad entry {bad}); {where}")


def meta_model(model_config, folder: Path):
    """The token-classification model of `model_config` on the meta device: its modules and tables, no weights."""
    import torch
    from transformers import AutoModelForTokenClassification

    try:
        # The model's module is imported first, outside the meta context: with torch 2.6 (the apply_ort stack),
        # transformers 5.24 fails to import modeling modules while the default device is meta.
        AutoModelForTokenClassification._model_mapping[type(model_config)]
        with torch.device("meta"):
            return AutoModelForTokenClassification.from_config(model_config)
    except Exception as err:  # noqa: BLE001 - any failure to build is a config.json that cannot work
        raise InputError(f"cannot build a token-classification model from {folder / 'config.json'}: "
                         f"{one_line(err)}") from None


def check_lora_targets(model, model_type: str, override: Optional[list[str]]) -> None:
    """Every LoRA target module name matches a module of the model (peft's own matching rule)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from trainer.lora import target_modules_for

    targets = target_modules_for(model_type, override)
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(check_target_module_exists(LoraConfig(target_modules=[t]), n)
                                             for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, _linear_types())})
        raise ConfigError(f"lora_target_modules: {missing} match no module of the {model_type} model; its linear "
                          f"layers are {leaves}")


def _linear_types() -> tuple:
    import torch
    from transformers.pytorch_utils import Conv1D

    return torch.nn.Linear, torch.nn.Conv1d, Conv1D


# --- the preprocess output against the model ----------------------------------------------------------------------
def _tables(model) -> tuple[int, Optional[int], Optional[int], bool]:
    """(vocabulary size, longest row the position table takes or None, token types or None, takes token_type_ids)."""
    import inspect

    import torch

    vocab = model.get_input_embeddings().num_embeddings
    positions = types = None
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if positions is None and isinstance(table, torch.nn.Embedding):
            positions = table.num_embeddings
            padding = getattr(module, "padding_idx", None)
            if hasattr(module, "create_position_ids_from_input_ids") and isinstance(padding, int):
                positions -= padding + 1  # RoBERTa-style positions start after the padding index
        table = getattr(module, "token_type_embeddings", None)
        if types is None and isinstance(table, torch.nn.Embedding):
            types = table.num_embeddings
    takes_types = "token_type_ids" in inspect.signature(type(model).forward).parameters
    return vocab, positions, types, takes_types


def _line_of(path: Path, row_index: int) -> int:
    """The line number of the row_index-th (0-based) non-blank line of a JSON Lines file."""
    seen = -1
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            seen += bool(line.strip())
            if seen == row_index:
                return line_no
    return row_index + 1


def check_rows(data, model, folder: Path) -> None:
    """Every row fits the model (ids inside its vocabulary, length inside its position table, token types inside
    its table, a 0/1 attention mask), and every split has labels: one that is all -100 trains or scores nothing."""
    vocab, positions, types, takes_types = _tables(model)
    fix = "re-run preprocess with this model's tokenizer"
    for split in ("train", "validation", "test"):
        rows = getattr(data, split)
        if rows is None:
            continue
        path = folder / SPLIT_FILES[split]
        for i, row in enumerate(rows.rows):
            ids, problem = row["input_ids"], ""
            if min(ids) < 0 or max(ids) >= vocab:
                bad = sorted({x for x in ids if x < 0 or x >= vocab})[:3]
                problem = f"input id(s) {bad} outside the model's vocabulary (0..{vocab - 1}); {fix}"
            elif positions is not None and len(ids) > positions:
                problem = (f"{len(ids)} tokens, more than the model's position table takes ({positions}); re-run "
                           f"preprocess with max_seq_length <= {positions}")
            elif "token_type_ids" in row and not takes_types:
                problem = f"token_type_ids, which the {model.config.model_type} model does not take; {fix}"
            elif "token_type_ids" in row and types is not None and row["token_type_ids"] and (
                    min(row["token_type_ids"]) < 0 or max(row["token_type_ids"]) >= types):
                problem = f"token type id(s) outside the model's {types} token types; {fix}"
            elif not set(row["attention_mask"]) <= {0, 1}:
                problem = f"attention_mask values {sorted(set(row['attention_mask']) - {0, 1})[:3]} (only 0 and 1)"
            if problem:
                raise InputError(f"{path.name} line {_line_of(path, i)}: {problem}")
        if not any(label != IGNORE_INDEX for row in rows.rows for label in row["labels"]):
            use = "learn from" if split == "train" else "score"
            raise InputError(f"{path}: every label is {IGNORE_INDEX}, so the {split} split has nothing to {use}; "
                             "re-run preprocess on tagged data")


def check_scored_words(data, folder: Path) -> None:
    """The split a fine-tune scores its published model on (test, else validation) carries the words and tags
    beside the ids: the inference core scores words (trainer.evaluate.read_words), after training."""
    from trainer.evaluate import read_words

    read_words(folder / SPLIT_FILES["test" if data.test is not None else "validation"], data.class_names)


def check_tracking() -> None:
    """MLFLOW_TRACKING_URI, when set (the HF Trainer then reports to MLflow), names a store MLflow opens: mlflow
    3.17 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true, which surfaced as a traceback once the model
    had loaded."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri)
    except MlflowException as err:
        raise InputError(f"MLFLOW_TRACKING_URI={uri}: {one_line(err.message)}") from None


def check_tokenizer(folder: Path) -> None:
    """The tokenizer files parse (JSON named by file), the tokenizer loads and can pad a batch (GPT-2's has no
    padding token: the batch collator failed after the model had loaded)."""
    from transformers import AutoTokenizer

    for name in TOKENIZER_JSON_FILES:
        if (folder / name).is_file():
            read_json(folder / name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise InputError(f"cannot load the tokenizer in {folder}: {one_line(err)}; re-run preprocess") from None
    if tokenizer.pad_token is None:
        raise InputError(f"the tokenizer in {folder} has no padding token, so batches cannot be padded: give the "
                         "model's tokenizer one before model import (e.g. GPT-2: tokenizer.pad_token = "
                         "tokenizer.eos_token; tokenizer.save_pretrained(folder)), then re-run preprocess")


# --- DeepSpeed ------------------------------------------------------------------------------------------------------
def check_deepspeed(config, model_config, num_train_examples: int) -> dict:
    """The DeepSpeed config, checked as the run will use it: sections of the right JSON types, no fp16 forced on a
    CPU, "auto" values filled by the HF Trainer's own rules and no value contradicting ours (its mismatch check),
    then DeepSpeed's own schema (pydantic) on the result."""
    import copy

    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from trainer.deepspeed_config import load_deepspeed_config
    from trainer.distributed import has_cuda, world_size
    from trainer.precision import precision_flags
    from trainer.training_args import steps_per_epoch

    ds_config = load_deepspeed_config(config.deepspeed, config.deepspeed_preset)
    where = f"deepspeed config {config.deepspeed or config.deepspeed_preset}"
    for section in ("zero_optimization", "fp16", "bf16", "optimizer", "scheduler", "activation_checkpointing"):
        if section in ds_config and not isinstance(ds_config[section], dict):
            raise ConfigError(f"{where}: {section} must be a JSON object, got {ds_config[section]!r}")
    for section in ("fp16", "bf16"):
        enabled = ds_config.get(section, {}).get("enabled")
        if enabled is not None and enabled not in (True, False, "auto"):
            raise ConfigError(f'{where}: {section}.enabled must be true, false or "auto", got {enabled!r}')
    if ds_config.get("fp16", {}).get("enabled") is True and not has_cuda():
        raise ConfigError(f'{where} forces fp16, which CPUs do not train in; set fp16.enabled to "auto" or false '
                          "(precision=16 trains in bf16 on CPUs)")
    precision = precision_flags(config.precision)
    steps = config.max_steps if config.max_steps > 0 else \
        config.num_train_epochs * steps_per_epoch(num_train_examples, config, world_size())
    args = SimpleNamespace(
        world_size=world_size(), per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_grad_norm=config.max_grad_norm,
        learning_rate=config.learning_rate, adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon, weight_decay=config.weight_decay, save_on_each_node=False,
        fp16=precision.get("fp16", False), fp16_full_eval=False, bf16=precision.get("bf16", False),
        bf16_full_eval=False, get_warmup_steps=lambda total: config.warmup_steps)
    try:
        hf_config = HfTrainerDeepSpeedConfig(copy.deepcopy(ds_config))
        hf_config.trainer_config_process(args, auto_find_batch_size=config.auto_find_batch_size)
        hf_config.trainer_config_finalize(args, SimpleNamespace(config=model_config), steps)
        filled = hf_config.config
    except (ValueError, TypeError, AttributeError) as err:
        raise ConfigError(f"{where}: {one_line(err)}") from None
    finally:
        unset_hf_deepspeed_config()  # validation leaves no global DeepSpeed state behind
    from deepspeed.runtime.config import DeepSpeedConfig

    checked = copy.deepcopy(filled)
    if isinstance(checked.get("train_batch_size"), int):  # DeepSpeed counts one process before init_distributed
        checked["train_batch_size"] //= world_size()
    try:
        DeepSpeedConfig(checked)
    except Exception as err:  # noqa: BLE001 - pydantic ValidationError, DeepSpeedConfigError, TypeError, ...
        raise ConfigError(f"{where}: {one_line(err)}") from None
    return ds_config


# --- free space -----------------------------------------------------------------------------------------------------
def estimate_output_bytes(config, model, num_train_examples: int) -> tuple[int, int, int]:
    """(bytes of one checkpoint, number of checkpoints on disk at once, bytes of one published model), estimated
    from the parameter count: fp32 weights, plus AdamW's two states per trainable parameter (DeepSpeed adds its
    fp32 master copy); LoRA checkpoints hold the adapters and the head (a few % of the model)."""
    from trainer.distributed import world_size
    from trainer.training_args import resolve_eval_steps, steps_per_epoch

    params = sum(p.numel() for p in model.parameters())
    weights = 4 * params
    trainable = params // 20 if config.apply_lora else params
    states = ADAM_STATES + (1 if config.apply_deepspeed else 0)
    checkpoint = (trainable if config.apply_lora else weights) + 4 * trainable * states
    per_epoch = steps_per_epoch(num_train_examples, config, world_size())
    total = config.max_steps if config.max_steps > 0 else config.num_train_epochs * per_epoch
    if config.evaluation_strategy == "epoch":
        saves = math.ceil(total / per_epoch)
    else:
        saves = math.ceil(total / resolve_eval_steps(config, num_train_examples, world_size()))
    kept = saves if config.save_total_limit == -1 else min(saves, config.save_total_limit + 2)  # + best, + new
    return checkpoint, kept, weights


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def check_free_space(config, model, num_train_examples: int) -> None:
    """Each output volume has room for what the run will write: the checkpoints kept at once and the best model in
    pytorch_model_folder, the model again in mlflow_model_folder (less what a resumed run already wrote)."""
    checkpoint, kept, weights = estimate_output_bytes(config, model, num_train_examples)
    needs: dict[int, list] = {}
    for name, path, size in (("pytorch_model_folder", Path(config.pytorch_model_folder), checkpoint * kept + weights),
                             ("mlflow_model_folder", Path(config.mlflow_model_folder), weights)):
        where = _nearest_existing(path)
        size = max(0, size - (_folder_bytes(path) if name == "pytorch_model_folder" else 0))
        entry = needs.setdefault(where.stat().st_dev, [where, 0, []])
        entry[1] += size
        entry[2].append(name)
    for where, size, names in needs.values():
        free = shutil.disk_usage(where).free
        if free < size:
            raise InputError(
                f"not enough free space for {' and '.join(names)} on {where}: this run writes about {_mb(size)} "
                f"({kept} checkpoint(s) of {_mb(checkpoint)} at once, the model of {_mb(weights)}), {_mb(free)} "
                "free; free some space, lower save_total_limit, or give a folder on a larger volume")


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"

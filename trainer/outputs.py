"""What a fine-tune publishes: the best model in pytorch_model_folder, the MLflow model, the ONNX model,
metrics.json last.

Order (nothing that looks whole before it is, no stale result beside a new one): the best model is staged on
every rank (ZeRO-3 gathers its shards), then the main process removes what an earlier publication left
(`metrics.json` first), adds the tokenizer (every variant carries its own), moves the new model into
`pytorch_model_folder` (weights last), scores that published model on the test split through the inference core
(its predictions beside it: what the evaluate step reuses), stages the MLflow model and the ONNX export beside their
targets and renames them into place (replacing the ones this folder published before, if a killed run left them),
and finally writes `metrics.json`: a folder without it is not a finished run. Every output is self-contained: an unmerged LoRA
output's adapter_config.json names its own `base_model/`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from trainer.checkpoints import CHECKPOINT_RE, list_checkpoints
from trainer.config import FinetuneConfig
from trainer.constants import BASE_MODEL_SUBDIR, FINETUNE_ARGS, METRICS_FILE, PREDICTIONS_FILES
from trainer.errors import InputError
from trainer.jsonio import read_json
from trainer.modeling import load_model, plain_loading
from trainer.publish import (ensure_empty_or_absent, publish_into, publish_output, remove_published, staging_dir,
                             write_file_atomic, write_json_atomic)

logger = logging.getLogger(__name__)
BEST_MODEL_STAGE = ".best_model.incomplete"


def validate_outputs(config: FinetuneConfig) -> None:
    """The output folders can take this run (before anything is created or loaded): pytorch_model_folder is new,
    empty or a fine-tune's own (to resume); the MLflow folder is new, empty or the one this run's
    pytorch_model_folder published (a killed run's, replaced when published again)."""
    root = Path(config.pytorch_model_folder)
    ensure_empty_or_absent(config.mlflow_model_folder, "mlflow_model_folder", published_from=root)
    if config.onnx_model_folder:
        ensure_empty_or_absent(config.onnx_model_folder, "onnx_model_folder", published_from=root)
    if root.exists() and not root.is_dir():
        raise InputError(f"pytorch_model_folder {root} is a file; give a folder")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []
    if not entries:
        return
    if not list_checkpoints(root) and not (root / FINETUNE_ARGS).is_file():
        raise InputError(f"pytorch_model_folder {root} holds files no fine-tune wrote ({', '.join(entries[:5])}); "
                         "give an empty or new folder")
    if not config.resume_from_checkpoint:
        held = "checkpoints" if list_checkpoints(root) else "a fine-tuned model"
        raise InputError(f"pytorch_model_folder {root} already holds {held}; set resume_from_checkpoint=true to "
                         "continue them or give an empty folder")


def publish(trainer, config: FinetuneConfig, model_dir: Path, class_names: list[str], result) -> None:
    """Stage the best model on every rank (ZeRO-3 gathers), then publish from the main process only."""
    from trainer.lora import is_peft_model
    from trainer.ort import original_module

    root = Path(config.pytorch_model_folder)
    stage = root / BEST_MODEL_STAGE
    if trainer.args.should_save and stage.exists():
        shutil.rmtree(stage)
    trainer.accelerator.wait_for_everyone()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    model = original_module(unwrapped)
    peft = is_peft_model(model)
    target = stage / "adapter" if peft else stage
    masters = _deepspeed_master_weights(trainer, model)  # every rank: a collective
    if model is not unwrapped:  # apply_ort (one process): save the model inside ORTModule, with its config
        if trainer.args.should_save:
            model.save_pretrained(target)
    elif masters is None:
        trainer.save_model(str(target))
    elif trainer.args.should_save:
        trainer._save(str(target), state_dict=masters)  # what save_model does under DeepSpeed, with fp32 weights
        if (target / "config.json").is_file():  # save_pretrained records the module's (16-bit) dtype
            write_json_atomic(target / "config.json", {**read_json(target / "config.json"), "dtype": "float32"})
    trainer.accelerator.wait_for_everyone()
    if not trainer.args.should_save:
        return
    with plain_loading(trainer.args):  # the main process alone reloads the model: no collective partitioning
        _publish_main(stage, root, peft, config, model_dir, class_names, result, trainer.processing_class)


def _deepspeed_master_weights(trainer, model):
    """The fp32 weights the optimizer trained, where the module holds 16-bit copies of them: DeepSpeed with bf16 or
    fp16 (ZeRO-1/2/3 alike) casts the module, and transformers 5.24's `save_model` writes that module's weights, so
    a `precision=16` run under DeepSpeed published bf16 weights while every other path publishes fp32. A collective
    (ZeRO-3 gathers each weight): every rank calls it; the main process gets the state dict, the others {}.
    Weights the optimizer does not hold (LoRA's frozen base) are the module's, cast to fp32. None without DeepSpeed
    or when the module is fp32."""
    import torch

    if not trainer.is_deepspeed_enabled:
        return None
    params = list(model.named_parameters(remove_duplicate=False))
    if all(param.dtype == torch.float32 for _, param in params):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    module_weights = trainer.accelerator.get_state_dict(trainer.deepspeed)  # ZeRO-3: gathered to the main process
    masters = {}
    for name, param in params:
        full = safe_get_full_fp32_param(param)
        if full is not None and trainer.args.should_save:
            masters[name] = full.detach().to("cpu", torch.float32)
    if not trainer.args.should_save:
        return {}
    return {name: masters.get(name, value.float() if value.is_floating_point() else value)
            for name, value in module_weights.items()}


def _publish_main(stage: Path, root: Path, peft: bool, config: FinetuneConfig, model_dir: Path,
                  class_names: list[str], result, tokenizer) -> None:
    from trainer.mlflow_model import save_mlflow_model
    from trainer.speed import return_free_memory

    if peft:
        _finish_lora(stage, model_dir, class_names, config)
    tokenizer.save_pretrained(stage)  # every variant serves with the tokenizer it was trained with
    write_json_atomic(stage / FINETUNE_ARGS, config.to_dict())
    remove_published(root, METRICS_FILE, keep=_not_published)  # an earlier publication's results go first
    publish_into(stage, root)
    score_published(root, config, result)
    return_free_memory()  # the scoring's buffers, before the MLflow and ONNX steps load the model again
    mlflow_stage = staging_dir(config.mlflow_model_folder)
    shutil.rmtree(mlflow_stage)  # mlflow wants to create the folder itself
    # The model copy MLflow packs is assembled in a staging folder of the MLflow output too, not in /tmp: a run
    # killed meanwhile leaves it where the next publication of that output removes it (remove_stale_stages).
    scratch = staging_dir(config.mlflow_model_folder)
    try:
        save_mlflow_model(root, mlflow_stage, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    publish_output(mlflow_stage, config.mlflow_model_folder, root)
    if config.onnx_model_folder:
        result.onnx_export = export_onnx_output(root, config)
    write_json_atomic(root / METRICS_FILE, asdict(result))  # last: its presence means the folder is complete
    logger.info("best model: %s (%s=%s); outputs in %s and %s", result.best_checkpoint,
                config.metric_for_best_model, result.best_metric, root, config.mlflow_model_folder)


def score_published(root: Path, config: FinetuneConfig, result) -> None:
    """Score the published model on `result.predictions["split"]` through the inference core, exactly as the
    evaluate program does (trainer.evaluate.predict_split): its figures become the test figures and per-entity
    table, its predictions are published beside metrics.json, so evaluating this model on this split reuses both."""
    from trainer.evaluate import predict_split

    split = result.predictions["split"]
    name = PREDICTIONS_FILES[split]
    scored = predict_split(root, config.preprocess_output, split, config.per_device_eval_batch_size, root / name)
    result.per_entity = scored.per_entity
    result.predictions.update(file=name, sentences=scored.sentences, seconds=round(scored.seconds, 3),
                              figures=scored.figures, compute_dtype=scored.compute_dtype)
    if split == "test":
        result.test_metrics = {**{f"test_{k}": v for k, v in scored.figures.items()},
                               "test_runtime": round(scored.seconds, 4),
                               "test_samples_per_second": round(scored.sentences / max(scored.seconds, 1e-9), 3)}
    logger.info("%s split scored on the published model (inference core, %s, %d sentences, %.1f s): f1 %.4f", split,
                scored.compute_dtype, scored.sentences, scored.seconds, scored.figures["f1"])


def _not_published(path: Path) -> bool:
    """What publishing never removes from pytorch_model_folder: checkpoints, the lock, staging, records."""
    return path.name.startswith(".") or bool(CHECKPOINT_RE.match(path.name))


def _finish_lora(stage: Path, model_dir: Path, class_names: list[str], config: FinetuneConfig) -> None:
    """Turn the saved adapter into a merged model, or into adapter + base_model/ that reload together."""
    from peft import PeftModel

    adapter_dir = stage / "adapter"
    base = load_model(model_dir, class_names, config, again=True)  # the adapter brings the trained head
    if config.merge_lora_weights:
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(stage)
    else:
        base.save_pretrained(stage / BASE_MODEL_SUBDIR)
        for item in adapter_dir.iterdir():
            os.replace(item, stage / item.name)
        base.config.save_pretrained(stage)  # config.json with id2label/label2id beside the adapter
        adapter_config = stage / "adapter_config.json"  # names its own base model, not the import folder
        settings = read_json(adapter_config)
        write_json_atomic(adapter_config, {**settings, "base_model_name_or_path": BASE_MODEL_SUBDIR})
        card, trained_from = stage / "README.md", settings.get("base_model_name_or_path")
        if card.is_file() and trained_from:  # peft's model card names the base model the same way
            lines = card.read_text(encoding="utf-8").splitlines(keepends=True)
            write_file_atomic(card, lambda tmp: tmp.write_text(
                "".join(_rebased(line, trained_from) for line in lines), encoding="utf-8"))
    shutil.rmtree(adapter_dir, ignore_errors=True)


def _rebased(line: str, trained_from: str) -> str:
    """A line of peft's model card naming the base model (`base_model: PATH`, `- base_model:adapter:PATH`), naming
    base_model/ instead; other lines as they are."""
    body = line.rstrip("\r\n")
    if "base_model" in body and body.endswith((f": {trained_from}", f":{trained_from}")):
        return body[:-len(trained_from)] + BASE_MODEL_SUBDIR + line[len(body):]
    return line


def export_onnx_output(root: Path, config: FinetuneConfig) -> dict:
    """The ONNX export, or its record when off or failed: an optional extra never loses the trained model (the
    folder then holds onnx_export.json with the reason and no model.onnx). Published as an output of `root`."""
    from trainer.onnx_export import EXPORT_INFO, export_onnx

    if config.export_onnx:
        try:
            return {"exported": True, **export_onnx(root, config.onnx_model_folder, published_from=root)}
        except Exception as err:  # noqa: BLE001 - recorded and logged; the PyTorch and MLflow models stand
            logger.error("ONNX export failed (the PyTorch and MLflow models are published): %s: %s",
                         type(err).__name__, err)
            record = {"exported": False, "error": f"{type(err).__name__}: {err}"}
    else:
        record = {"exported": False, "error": "export_onnx=false"}
    stage = staging_dir(config.onnx_model_folder)
    try:
        write_json_atomic(stage / EXPORT_INFO, record)
        publish_output(stage, config.onnx_model_folder, root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return record

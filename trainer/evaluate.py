"""Scoring a fine-tuned model on one split of a preprocess output, with the trainer's own metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import EvaluateConfig
from trainer.constants import IGNORE_INDEX, PREPROCESS_ARGS_FILE, SPLIT_FILES
from trainer.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    split: str
    sentences: int
    figures: dict  # precision, recall, f1, accuracy, loss
    per_entity: dict = field(default_factory=dict)


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Score `config.model` on `config.split`; writes the predictions JSON Lines file."""
    import torch

    from trainer.data import load_class_names, read_split
    from trainer.jsonio import iter_jsonl, read_json, write_jsonl
    from trainer.metrics import entity_scores
    from trainer.model_io import load_token_classification_model, resolve_model_dir

    data_dir = Path(config.preprocess_output)
    split_file = data_dir / SPLIT_FILES[config.split]
    if not split_file.exists():
        raise InputError(f"preprocess output {data_dir} has no {config.split} split ({split_file.name}); "
                         f"found {sorted(p.name for p in data_dir.iterdir())}")
    args_file = data_dir / PREPROCESS_ARGS_FILE
    preprocess_args = read_json(args_file) if args_file.exists() else {}
    class_names = load_class_names(data_dir, preprocess_args)
    rows = read_split(split_file, len(class_names)).rows
    words = [raw.get("tokens", []) for _, raw in iter_jsonl(split_file)]
    model_dir = resolve_model_dir(config.model)
    net = load_token_classification_model(model_dir)  # merged, or our unmerged LoRA output (adapter + base)
    if net.config.num_labels != len(class_names):
        raise InputError(f"model in {model_dir} has {net.config.num_labels} labels but the preprocess output has "
                         f"{len(class_names)} classes {class_names}")
    net.eval()
    pad_id = net.config.pad_token_id if net.config.pad_token_id is not None else 0

    y_true, y_pred, out_rows = [], [], []
    loss_sum, loss_tokens = 0.0, 0
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[0]]
    with torch.inference_mode():
        for start in range(0, len(rows), config.batch_size):
            chunk = rows[start:start + config.batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            batch = {k: torch.tensor([r[k] + [pad_id if k == "input_ids" else 0] * (width - len(r[k]))
                                      for r in chunk]) for k in keys}
            labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in chunk])
            logits = net(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            loss_sum += float(loss)
            loss_tokens += int((labels != IGNORE_INDEX).sum())
            for offset, (p_row, l_row) in enumerate(zip(logits.argmax(-1).tolist(), labels.tolist())):
                gold = [class_names[l] for l in l_row if l != IGNORE_INDEX]
                pred = [class_names[p] for p, l in zip(p_row, l_row) if l != IGNORE_INDEX]
                y_true.append(gold)
                y_pred.append(pred)
                out_rows.append({"tokens": words[start + offset][:len(gold)], "tags": gold, "predicted_tags": pred})

    overall, per_entity = entity_scores(y_true, y_pred, class_names, preprocess_args.get("tag_scheme"))
    figures = {**overall, "loss": loss_sum / max(1, loss_tokens)}
    write_jsonl(config.predictions, out_rows)
    logger.info("%s split, %d sentences: %s", config.split, len(rows), figures)
    return EvaluateResult(split=config.split, sentences=len(rows), figures=figures, per_entity=per_entity)

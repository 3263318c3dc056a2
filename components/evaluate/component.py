"""KFP component: evaluate a fine-tuned token-classification model on a preprocessed split (seqeval)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import TRAINER_CPU_IMAGE


@dsl.component(base_image=TRAINER_CPU_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    preprocess_output: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    predictions: Output[Dataset],
    split: str = "test",
    batch_size: int = 16,
) -> NamedTuple("EvaluateOutputs", [("f1", float), ("precision", float), ("recall", float), ("accuracy", float)]):
    """Evaluate a fine-tuned model on a split of the preprocess output: entity-level (seqeval) and token figures.

    Args:
        model: A fine-tuned model folder (the finetune component's pytorch_model_folder: the best model at its
            root; a LoRA adapter folder also works) or a model-import output.
        preprocess_output: Output folder of the preprocess component (encoded splits, class_names.json, tokenizer).
        metrics: <split>_f1, <split>_precision, <split>_recall, <split>_accuracy, <split>_loss and per-entity F1.
        report: Markdown report with the overall figures and the per-entity table.
        predictions: JSON Lines, one sentence a line: {"tokens", "tags", "predicted_tags"} (words beyond the
            truncation length are left out).
        split: Which split to evaluate: test or validation (train also works).
        batch_size: Evaluation batch size.

    Returns:
        f1: Entity-level micro F1.
        precision: Entity-level micro precision.
        recall: Entity-level micro recall.
        accuracy: Token accuracy (over first sub-tokens).
    """
    import json
    import logging
    import math
    from collections import namedtuple
    from pathlib import Path

    import torch
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    from trainer.model_io import InputError, load_token_classification_model, resolve_model_dir

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data_dir = Path(preprocess_output.path)
    split_file = data_dir / f"{split}.jsonl"
    if not split_file.exists():
        raise InputError(f"preprocess output {data_dir} has no {split} split ({split_file.name}); "
                         f"found {sorted(p.name for p in data_dir.iterdir())}")
    class_names = json.loads((data_dir / "class_names.json").read_text())["class_names"]
    rows = [json.loads(line) for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise InputError(f"{split_file} holds no rows")

    model_dir = resolve_model_dir(model.path)
    net = load_token_classification_model(model_dir)  # merged, or our unmerged LoRA output (adapter + base)
    if net.config.num_labels != len(class_names):
        raise InputError(f"model in {model_dir} has {net.config.num_labels} labels but the preprocess output has "
                         f"{len(class_names)} classes {class_names}")
    net.eval()
    pad_id = net.config.pad_token_id if net.config.pad_token_id is not None else 0

    y_true, y_pred, out_rows = [], [], []
    loss_sum, loss_tokens = 0.0, 0
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[0]]
    with torch.no_grad():
        for start in range(0, len(rows), max(1, int(batch_size))):
            chunk = rows[start:start + max(1, int(batch_size))]
            width = max(len(r["input_ids"]) for r in chunk)
            batch = {k: torch.tensor([r[k] + [pad_id if k == "input_ids" else 0] * (width - len(r[k]))
                                      for r in chunk]) for k in keys}
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in chunk])
            logits = net(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            loss_sum += float(loss)
            loss_tokens += int((labels != -100).sum())
            preds = logits.argmax(-1).tolist()
            for r, p_row, l_row in zip(chunk, preds, labels.tolist()):
                gold = [class_names[l] for l in l_row if l != -100]
                pred = [class_names[p] for p, l in zip(p_row, l_row) if l != -100]
                y_true.append(gold)
                y_pred.append(pred)
                out_rows.append({"tokens": r.get("tokens", [])[:len(gold)], "tags": gold, "predicted_tags": pred})

    figures = {
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "loss": loss_sum / max(1, loss_tokens),
    }
    per_entity = {k: v for k, v in classification_report(y_true, y_pred, output_dict=True, zero_division=0).items()
                  if k not in ("micro avg", "macro avg", "weighted avg")}
    for name, value in figures.items():
        if math.isfinite(value):
            metrics.log_metric(f"{split}_{name}", value)
    for entity, scores in sorted(per_entity.items()):
        metrics.log_metric(f"{split}_{entity}_f1", float(scores["f1-score"]))
    metrics.metadata["split"] = split
    metrics.metadata["sentences"] = len(rows)

    lines = [f"# Evaluation on the {split} split", "", f"Model: `{model_dir.name}`, {len(rows)} sentences.", "",
             "| Metric | Value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in figures.items()]
    lines += ["", "## Per entity", "", "| Entity | Precision | Recall | F1 | Support |", "| --- | --- | --- | --- | --- |"]
    for entity, s in sorted(per_entity.items()):
        lines.append(f"| {entity} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1-score']:.4f} "
                     f"| {int(s['support'])} |")
    Path(report.path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(predictions.path, "w", encoding="utf-8") as fh:
        for row in out_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    predictions.metadata.update(split=split, rows=len(out_rows), format="jsonl")
    print(json.dumps(figures, indent=2))
    out = namedtuple("EvaluateOutputs", ["f1", "precision", "recall", "accuracy"])
    return out(figures["f1"], figures["precision"], figures["recall"], figures["accuracy"])

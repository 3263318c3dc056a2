"""What a run reports to people and to KFP: flat figures (KFP Metrics) and a Markdown report.

Used by the components (finetune, finetune_pytorchjob, evaluate) and the local runner, so every entry point
reports the same figures in the same words.
"""

from __future__ import annotations

import math
from typing import Any, Optional


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if finite(value) else ("-" if value is None else str(value))


def finetune_figures(result: dict) -> dict[str, float]:
    """The finite figures of a FinetuneResult (as a dict): eval_*/test_* metrics, best_metric, train_runtime,
    entity_<name>_f1."""
    figures: dict[str, Any] = {**(result.get("validation_metrics") or {}), **(result.get("test_metrics") or {})}
    figures["best_metric"] = result.get("best_metric")
    figures["train_runtime"] = result.get("train_runtime")
    for entity, scores in (result.get("per_entity") or {}).items():
        figures[f"entity_{entity}_f1"] = scores.get("f1")
    return {k: float(v) for k, v in sorted(figures.items()) if finite(v)}


def _entity_table(per_entity: dict, title: str, kind: str = "Entity") -> list[str]:
    lines = ["", f"## {title}", "", f"| {kind} | Precision | Recall | F1 | Support |",
             "| --- | --- | --- | --- | --- |"]
    for entity, scores in sorted(per_entity.items()):
        lines.append(f"| {entity} | {_fmt(scores.get('precision'))} | {_fmt(scores.get('recall'))} "
                     f"| {_fmt(scores.get('f1'))} | {scores.get('number', '-')} |")
    return lines


def _scheme_lines(scheme: Optional[str]) -> list[str]:
    """What the figures mean in this tag scheme (trainer.metrics.describe), when it is known."""
    from trainer.metrics import describe

    return [f"{describe(scheme)}.", ""] if scheme else []


def _label_kind(scheme: Optional[str]) -> str:
    """What per_label holds: entity types for span schemes, tags for plain tags."""
    from trainer.schemes import is_span

    return "Entity" if is_span(scheme) or scheme is None else "Tag"


def finetune_markdown(result: dict, metric_for_best_model: str) -> str:
    validation = result.get("validation_metrics") or {}
    test = result.get("test_metrics") or {}
    scheme = result.get("tag_scheme")
    lines = ["# Token classification fine-tune", "", *_scheme_lines(scheme),
             f"Best checkpoint: `{result.get('best_checkpoint')}` ({metric_for_best_model} = "
             f"{_fmt(result.get('best_metric'))})", "", "| Metric | Validation | Test |", "| --- | --- | --- |"]
    keys = sorted({k[len("eval_"):] for k in validation if k.startswith("eval_")}
                  | {k[len("test_"):] for k in test if k.startswith("test_")})
    for key in keys:
        lines.append(f"| {key} | {_fmt(validation.get('eval_' + key))} | {_fmt(test.get('test_' + key))} |")
    kind = _label_kind(scheme)
    lines += _entity_table(result.get("per_entity") or {}, f"Per {kind.lower()} ({'test' if test else 'validation'} "
                           f"split)", kind)
    return "\n".join(lines) + "\n"


def evaluate_figures(split: str, figures: dict, per_entity: dict) -> dict[str, float]:
    out = {f"{split}_{name}": value for name, value in figures.items()}
    out.update({f"{split}_{entity}_f1": scores.get("f1") for entity, scores in per_entity.items()})
    return {k: float(v) for k, v in sorted(out.items()) if finite(v)}


def evaluate_markdown(split: str, sentences: int, figures: dict, per_entity: dict,
                      model_name: Optional[str] = None, tag_scheme: Optional[str] = None) -> str:
    lines = [f"# Evaluation on the {split} split", "",
             f"Model: `{model_name}`, {sentences} sentences." if model_name else f"{sentences} sentences.", "",
             *_scheme_lines(tag_scheme), "| Metric | Value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
    kind = _label_kind(tag_scheme)
    lines += _entity_table(per_entity, f"Per {kind.lower()}", kind)
    return "\n".join(lines) + "\n"

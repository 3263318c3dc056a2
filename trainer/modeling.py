"""Building the model a run trains: the imported encoder with a token-classification head for our label map."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from trainer.config import FinetuneConfig
from trainer.errors import InputError
from trainer.model_io import load_token_classification_model

logger = logging.getLogger(__name__)


def label_kwargs(class_names: list[str]) -> dict:
    return {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
            "label2id": {n: i for i, n in enumerate(class_names)}}


def load_model(model_dir: Path, class_names: list[str], config: FinetuneConfig, training_args=None,
               again: bool = False):
    """The base model with our label map; an earlier unmerged LoRA output is merged first.

    `training_args` (under ZeRO-3) lets a head of a new size load whole before DeepSpeed partitions it. `again`: the
    base is loaded a second time (publishing a LoRA fine-tune), so a new head is not announced twice.
    """
    from transformers import AutoModelForTokenClassification

    if (model_dir / "adapter_config.json").exists():  # an earlier unmerged LoRA fine-tune: merge, then go on
        model = load_token_classification_model(model_dir)
        if model.config.num_labels != len(class_names):
            if not config.ignore_mismatched_sizes:
                raise InputError("the earlier fine-tune has a different label count; set ignore_mismatched_sizes=true")
            model = _reinit_head(model, class_names)
        labels = label_kwargs(class_names)
        model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
        return model
    resized, new_head = _head_changes(model_dir, len(class_names))
    try:
        # Under ZeRO-3 a resized head cannot load into partitioned weights (ignore_mismatched_sizes fails).
        with plain_loading(training_args, active=resized), _quiet_new_head(new_head):
            model = AutoModelForTokenClassification.from_pretrained(
                model_dir, ignore_mismatched_sizes=config.ignore_mismatched_sizes, **label_kwargs(class_names))
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise InputError(f"transformers has no token-classification head for the model in {model_dir}: "
                             f"{str(err).splitlines()[0]}") from None
        raise
    if new_head and not again:
        logger.info("new token-classification head for %d labels on the %s encoder in %s", len(class_names),
                    model.config.model_type, model_dir)
    return model


@contextlib.contextmanager
def plain_loading(training_args=None, active: bool = True):
    """Load whole models (no ZeRO-3 partitioning) inside this block; DeepSpeed partitions them at engine init."""
    from transformers.integrations import deepspeed as hf_ds

    if not active or training_args is None or not hf_ds.is_deepspeed_zero3_enabled():
        yield
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(training_args.hf_deepspeed_config)


@contextlib.contextmanager
def _quiet_new_head(active: bool):
    """Loading an encoder under a new head, transformers warns with a table of the weights it expected to differ
    (classifier initialised, an unused pooler); we log one line of our own instead. Loads that keep their head
    (continual fine-tuning with the same labels) keep every transformers warning."""
    if not active:
        yield
        return
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _head_changes(model_dir: Path, num_labels: int) -> tuple[bool, bool]:
    """(the head's size changes, a head is created: resized, or the saved model has no token-classification head)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    resized = config.num_labels != num_labels
    has_head = any(a.endswith("ForTokenClassification") for a in (config.architectures or []))
    return resized, resized or not has_head


def _reinit_head(model, class_names: list[str]):
    """Swap the classifier for one sized to the new label set (continual fine-tuning, new labels)."""
    import torch

    head = model.classifier
    model.classifier = torch.nn.Linear(head.in_features, len(class_names))
    model.config.num_labels = len(class_names)
    model.num_labels = len(class_names)
    return model

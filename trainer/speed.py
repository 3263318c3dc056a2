"""Speed features of the training loop, kept apart from the recipe so they can be ported onto any Trainer.

Integration (trainer/finetune.py), three small hooks:

1. ``trainer_class(Trainer)`` (or put ``SpeedTrainerMixin`` first in the bases of your own Trainer subclass):
   the seeded length-grouped training sampler (``trainer.sampling``) when
   ``train_sampling_strategy="group_by_length"``, and length-sorted evaluation batches.

Each feature is measured in bench/README.md and pinned by tests/test_speed.py.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from trainer.sampling import LengthSortedSampler, SeededLengthGroupedSampler

logger = logging.getLogger("trainer")


def dataset_lengths(dataset) -> Optional[list[int]]:
    """Row lengths of a dataset: its ``lengths`` property (trainer.data.EncodedSplit) or len(input_ids)."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return list(lengths)
    try:
        return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    except (TypeError, KeyError, IndexError):
        return None


class SpeedTrainerMixin:
    """Overrides of `transformers.Trainer` (put first in the bases): see the module docstring."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
            lengths = dataset_lengths(dataset)
            if lengths is not None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                # One sampler batch = one DataLoader batch (the loader cuts our index list every _train_batch_size).
                return SeededLengthGroupedSampler(lengths, self._train_batch_size, seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy == "group_by_length" and self.args.world_size <= 1:
            lengths = dataset_lengths(eval_dataset)
            if lengths is not None:
                # Deterministic, least padding: rows sorted by length (predictions come back in this order, as
                # with the stock length-grouped eval sampler; labels travel with them).
                return LengthSortedSampler(lengths)
        return super()._get_eval_sampler(eval_dataset)


def trainer_class(base):
    """``base`` (a transformers.Trainer class) with the speed overrides."""
    return type(f"Speed{base.__name__}", (SpeedTrainerMixin, base), {})

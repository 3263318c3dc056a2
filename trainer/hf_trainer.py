"""The HF Trainer of the recipe: stock `transformers.Trainer`, plus metering of each training step for progress."""

from __future__ import annotations

from typing import Optional

from transformers import Trainer

from trainer.progress import ProgressMeter


class TokenClassificationTrainer(Trainer):
    """`Trainer` whose training steps report their loss and real token count to a ProgressMeter."""

    def __init__(self, *args, meter: Optional[ProgressMeter] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.meter = meter

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.meter is not None:
            self.meter.add(loss, inputs.get("attention_mask"), inputs["input_ids"])
        return loss

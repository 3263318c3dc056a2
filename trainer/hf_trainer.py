"""The HF Trainer of the recipe: stock `transformers.Trainer`, metering of each training step for progress,
evaluation in dataset order (scoring joins the windows of a sentence by row order), and the callback that seals each
checkpoint with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback

from trainer.checkpoints import rotate_checkpoints, write_manifest

from trainer.progress import ProgressMeter


class TokenClassificationTrainer(Trainer):
    """`Trainer` whose training steps report their loss and real token count to a ProgressMeter, and whose
    evaluation loops keep the rows in order and tell `compute_metrics` (a trainer.metrics.SplitMetrics) which split
    they score."""

    def __init__(self, *args, meter: Optional[ProgressMeter] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.meter = meter

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.meter is not None:
            self.meter.add(loss, inputs.get("attention_mask"), inputs["input_ids"])
        return loss

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5.24 length-groups evaluation batches too under train_sampling_strategy="group_by_length";
        # scoring joins the windows of a sentence by row order, so evaluation keeps the dataset order (several
        # processes: accelerate shards batches round-robin and gathers them back in order).
        if eval_dataset is None or self.args.world_size > 1:
            return None
        return SequentialSampler(eval_dataset)

    def evaluation_loop(self, dataloader, *args, **kwargs):
        if hasattr(self.compute_metrics, "split"):
            self.compute_metrics.split = dataloader.dataset
        return super().evaluation_loop(dataloader, *args, **kwargs)


class CheckpointManifestCallback(TrainerCallback):
    """Writes the manifest of each checkpoint once every rank has finished saving it (main process only), then
    applies `save_total_limit` (None or -1: keep all; trainer.checkpoints.rotate_checkpoints)."""

    def __init__(self, save_total_limit: Optional[int] = None):
        self.save_total_limit = save_total_limit if save_total_limit and save_total_limit > 0 else None

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # DeepSpeed ranks write their own shards into the same folder
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_manifest(checkpoint)
                if self.save_total_limit:
                    rotate_checkpoints(args.output_dir, self.save_total_limit, state.best_model_checkpoint,
                                       checkpoint)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # nobody rotates or reads it before it is complete

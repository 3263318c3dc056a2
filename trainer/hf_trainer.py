"""The HF Trainer of the recipe: stock `transformers.Trainer`, metering of each training step for progress,
length-sorted evaluation batches whose outputs come back in dataset order (scoring joins the windows of a sentence by
row order), each weight cast to the autocast dtype once per evaluation loop, no second read of a best checkpoint that
the model in memory already holds, and the callback that seals each checkpoint with its manifest."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Optional

from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import nested_gather

from trainer.checkpoints import RUN_TOTALS, read_run_totals, rotate_checkpoints, write_manifest
from trainer.metrics import in_dataset_order
from trainer.packing import PADDING_KEY
from trainer.progress import ProgressMeter
from trainer.publish import write_json_atomic
from trainer.speed import autocast_casts_kept, dataset_lengths

logger = logging.getLogger(__name__)


class TokenClassificationTrainer(Trainer):
    """`Trainer` whose training steps report their loss and real token count to a ProgressMeter, and whose
    evaluation loops run length-sorted batches (each weight cast to the autocast dtype once per loop), return their
    outputs in dataset order and tell `compute_metrics` (a trainer.metrics.SplitMetrics) which split they score and
    in which order."""

    def __init__(self, *args, meter: Optional[ProgressMeter] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is the model's per-batch mean. transformers 5.24 takes a forward(**kwargs) for a loss that divides
        # by num_items_in_batch, but its *ForTokenClassification heads take the batch mean (CrossEntropyLoss()):
        # it then skipped the division by gradient_accumulation_steps and multiplied by the number of processes,
        # so the loss, the gradients and grad_norm came out N times too large. (The token-normalised loss of
        # length-grouped batches, trainer.speed, scales itself.)
        self.model_accepts_loss_kwargs = False
        self.meter = meter
        self._eval_orders: dict[int, list[int]] = {}  # id(eval dataset) -> the order its rows are evaluated in

    def training_step(self, model, inputs, num_items_in_batch=None):
        padding = inputs.pop(PADDING_KEY, 0)  # a flat batch's alignment row (trainer.packing): not a model input
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.meter is not None:
            self.meter.add(loss, inputs.get("attention_mask"), inputs["input_ids"], padding)
        return loss

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        """Resuming from a checkpoint that already reached `max_steps` trains nothing: no epoch is left to run, so
        the loop goes straight to its end (the best model loaded, as after the last step). Stock transformers 5.24
        runs the rest of that epoch's loop and checks the step limit only after a step, so it trained one step more
        than asked (and published that model) whenever max_steps ended mid-epoch."""
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        self.prior_totals = read_run_totals(resume_from_checkpoint)  # what the attempts before this one trained
        self._loop_started = time.perf_counter()
        if resume_from_checkpoint is not None and self.state.global_step >= max_steps:
            if self.is_world_process_zero():
                logger.info("%s already reached step %d of %d: nothing left to train", resume_from_checkpoint,
                            self.state.global_step, max_steps)
            return num_train_epochs, 0
        return epochs_trained, steps_trained

    def run_totals(self) -> dict:
        """The whole run's training so far, resumed attempts included (transformers 5.24's `train_loss` and
        `train_runtime` cover only this `train()` call: after a resume that finished at once, a loss of 0.0):
        {"loss_sum": the per-step losses summed, "train_seconds"}; None values when the checkpoint this call resumed
        from predates these records."""
        prior = getattr(self, "prior_totals", None) or read_run_totals(None)
        loss = getattr(self, "_total_loss_scalar", 0.0)
        if self.is_in_train and getattr(self, "_tr_loss", None) is not None:
            # not yet drained by a logging step: its mean over the processes, as that logging step would add it (a
            # collective: every rank calls this while training)
            loss += nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        seconds = time.perf_counter() - getattr(self, "_loop_started", time.perf_counter())
        return {"loss_sum": None if prior["loss_sum"] is None else prior["loss_sum"] + loss,
                "train_seconds": None if prior["train_seconds"] is None else prior["train_seconds"] + seconds}

    def _save_checkpoint(self, model, trial):
        """The stock checkpoint, plus the run's totals (`run_totals`) for a resume to continue; written before
        CheckpointManifestCallback seals the checkpoint."""
        super()._save_checkpoint(model, trial)
        totals = self.run_totals()  # every rank
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            write_json_atomic(folder / RUN_TOTALS, totals)

    def _load_best_model(self):
        """The best checkpoint's weights, unless it is the checkpoint saved at the last step: the model in memory
        holds exactly those weights (nothing trains after that save), and reading them again would only add a
        second copy of the model to the step's peak memory. (`Trainer._load_best_model`, transformers 5.24.)"""
        best = self.state.best_model_checkpoint
        if best and Path(best) == Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}":
            if self.is_world_process_zero():
                logger.info("the best checkpoint, %s, holds the last step's weights: not read again", best)
            return
        super()._load_best_model()

    def _get_eval_sampler(self, eval_dataset):
        """Rows longest first, so each evaluation batch holds rows of about one length (WNUT-17 with MiniLM at batch
        32: 2.4x fewer padded positions than dataset order, and the longest batch first shows an out-of-memory at
        once); `evaluation_loop` hands the outputs back in dataset order. Several processes: the dataset order
        (accelerate shards batches round-robin and gathers them back in order)."""
        if eval_dataset is None or self.args.world_size > 1:
            return None
        lengths = dataset_lengths(eval_dataset)
        if lengths is None:
            return SequentialSampler(eval_dataset)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep the dataset order
        self._eval_orders[id(eval_dataset)] = order
        return order

    def _eval_casts(self):
        """Under bf16/fp16 autocast, each weight cast once per evaluation loop, not once per batch
        (`trainer.speed.autocast_casts_kept`), unless the weights are sharded (ZeRO-3 with a DeepSpeed config that
        turns torch autocast on, FSDP): each module gathers its weights for its forward only, and keeping their casts
        would hold the whole model, unsharded, for the loop."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return contextlib.nullcontext()
        return autocast_casts_kept()

    def evaluation_loop(self, dataloader, *args, **kwargs):
        order = self._eval_orders.get(id(dataloader.dataset))
        if hasattr(self.compute_metrics, "split"):
            self.compute_metrics.split, self.compute_metrics.order = dataloader.dataset, order
        with self._eval_casts():
            output = super().evaluation_loop(dataloader, *args, **kwargs)
        if order is None:
            return output
        return output._replace(predictions=in_dataset_order(output.predictions, order),
                               label_ids=in_dataset_order(output.label_ids, order))


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

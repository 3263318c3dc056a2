"""Progress a person can follow in a pod log or a terminal: a line at a steady pace, evaluations, a summary.

    step 120/636 (19%) | epoch 0.19 | loss 0.4121 | 1,523 tok/s | elapsed 1m20s | ETA 5m44s
    evaluation at step 636: loss 0.2210 | f1 0.4312 | precision 0.5120 | recall 0.3724 | accuracy 0.9411
    trained 636 steps in 7m02s: 642,310 tokens, 1,521 tok/s; mean loss 0.3120, last 28 steps 0.1833

`ProgressMeter` counts what the training steps really process (tokens under the attention mask, the loss);
`trainer.hf_trainer.TokenClassificationTrainer` feeds it. Device values stay on the device between lines, so
metering adds no host synchronisation per step. Only the main process logs.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from transformers import TrainerCallback

logger = logging.getLogger("trainer.progress")


class ProgressMeter:
    """Sums of the loss and of the real (unpadded) tokens over the steps since the last read."""

    def __init__(self) -> None:
        self._loss = None
        self._tokens = None
        self.total_tokens = 0
        self.total_loss = 0.0

    def add(self, loss, attention_mask, input_ids, padding: int = 0) -> None:
        """One step: its loss, and its real tokens (under the attention mask; without one, all but `padding`)."""
        tokens = attention_mask.sum() if attention_mask is not None else input_ids.numel() - padding
        self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens

    def take(self) -> tuple[Optional[float], int]:
        """(summed loss, tokens) since the last call; resets both."""
        loss = None if self._loss is None else float(self._loss)
        tokens = 0 if self._tokens is None else int(self._tokens)
        self._loss = self._tokens = None
        self.total_tokens += tokens
        self.total_loss += loss or 0.0
        return loss, tokens


def duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class ProgressCallback(TrainerCallback):
    """Logs a progress line every `interval_s` seconds (and after the first and the last step)."""

    def __init__(self, meter: ProgressMeter, interval_s: float = 30.0, world_size: int = 1,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger = logger):
        self.meter, self.interval_s, self.world_size, self.clock, self.log = meter, interval_s, world_size, clock, log
        self._started = self._last_time = 0.0
        self._first_step = self._last_step = 0
        self._last_loss: Optional[float] = None  # the mean loss of the steps the last line covered
        self._last_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._last_time = self.clock()
        self._first_step = self._last_step = state.global_step
        if state.is_world_process_zero:
            resumed = f", resuming at step {state.global_step}" if state.global_step else ""
            self.log.info("training: %d optimizer steps, %d per device x %d process(es) x %d accumulation%s",
                          state.max_steps, args.per_device_train_batch_size, self.world_size,
                          args.gradient_accumulation_steps, resumed)

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        step = state.global_step
        if step - self._first_step != 1 and step != state.max_steps and now - self._last_time < self.interval_s:
            return
        loss_sum, tokens = self.meter.take()
        steps = max(1, step - self._last_step)
        self._last_loss = None if loss_sum is None else loss_sum / steps
        self._last_steps = steps
        window = max(now - self._last_time, 1e-9)
        rate = tokens * self.world_size / window
        done = step - self._first_step
        eta = (now - self._started) / done * (state.max_steps - step) if done else 0.0
        self._last_time, self._last_step = now, step
        if not state.is_world_process_zero:
            return
        parts = [f"step {step}/{state.max_steps} ({100 * step / max(1, state.max_steps):.0f}%)"]
        if state.epoch is not None:
            parts.append(f"epoch {state.epoch:.2f}")
        if self._last_loss is not None:
            parts.append(f"loss {self._last_loss:.4f}")
        parts += [f"{'~' if self.world_size > 1 else ''}{rate:,.0f} tok/s", f"elapsed {duration(now - self._started)}",
                  f"ETA {duration(eta)}"]
        self.log.info(" | ".join(parts))

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The training logs of logging_strategy (loss, grad norm, learning rate), one line each."""
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        shown = [f"{key} {value:.4g}" for key, value in logs.items() if isinstance(value, (int, float))
                 and key not in ("epoch", "step")]
        self.log.info("log at step %d: %s", state.global_step, " | ".join(shown))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        shown = [f"{key[len('eval_'):]} {value:.4f}" for key, value in metrics.items()
                 if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(
                     ("_runtime", "_per_second", "_steps_per_second"))]
        self.log.info("evaluation at step %d: %s", state.global_step, " | ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        self.meter.take()
        if not state.is_world_process_zero:
            return
        elapsed = self.clock() - self._started
        tokens = self.meter.total_tokens * self.world_size
        trained = state.global_step - self._first_step
        # the mean over every step, whatever the pace of the lines; then the last line's window, named by its span
        final = (f"; mean loss {self.meter.total_loss / trained:.4f}, last {self._last_steps} step"
                 f"{'s' if self._last_steps > 1 else ''} {self._last_loss:.4f}"
                 if self._last_loss is not None and trained > 0 else "")
        self.log.info("trained %d steps in %s: %s%s tokens, %s%s tok/s%s", trained,
                      duration(elapsed), "~" if self.world_size > 1 else "", f"{tokens:,}",
                      "~" if self.world_size > 1 else "", f"{tokens / max(elapsed, 1e-9):,.0f}", final)

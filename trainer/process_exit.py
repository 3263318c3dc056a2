"""What a program's process does once its work is done and it is about to exit.

A fine-tune's process ends holding ~580,000 objects the cyclic garbage collector tracks (torch, transformers,
mlflow, onnx); interpreter shutdown walks them again in its collections. On the 2-core Xeon the end of a fine-tune
took 2.8 s from its last line to the process's exit, 1.1 s with `freeze_for_exit` first (a 4-step fine-tune of the
local pipeline's model; os._exit would take 0.2 s but skips flushing and finalizers, so it is not used).
"""

from __future__ import annotations

import gc


def freeze_for_exit() -> None:
    """Collect what is garbage now (its finalizers run and its files close as they always would), then move every
    surviving object out of the collector's reach (`gc.freeze`), so that shutdown's collections skip them. Only for a
    process that is about to exit: cyclic garbage made of frozen objects is never collected."""
    gc.collect()
    gc.freeze()

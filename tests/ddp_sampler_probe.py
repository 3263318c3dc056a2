"""Run by tests/test_speed.py under `torchrun --nproc_per_node 2`: trains a tiny BERT for 2 epochs with the speed
Trainer (length-grouped sampler) on CPU DDP (gloo) and writes the rows each rank's batches held, per epoch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForTokenClassification, Trainer, TrainerCallback, TrainingArguments

from trainer.speed import trainer_class

N_ROWS, BATCH, SEED = 64, 4, 11


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 20, (N_ROWS,), generator=g).tolist()
    rows = [{"row": i, "input_ids": [5] * n, "attention_mask": [1] * n, "labels": [1] * n}
            for i, n in enumerate(lengths)]
    seen: dict[str, list] = {}
    state = {"epoch": None}

    def collate(batch):
        seen.setdefault(str(state["epoch"]), []).append([r["row"] for r in batch])
        t = max(len(r["input_ids"]) for r in batch)
        pad = lambda key, value: torch.tensor([r[key] + [value] * (t - len(r[key])) for r in batch])  # noqa: E731
        return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100)}

    class Epoch(TrainerCallback):
        def on_epoch_begin(self, args, st, control, **kwargs):
            state["epoch"] = int(round(st.epoch or 0))

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=16, num_labels=2))
    args = TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=BATCH, num_train_epochs=2,
                             seed=SEED, train_sampling_strategy="group_by_length", use_cpu=True,
                             remove_unused_columns=False, report_to="none", save_strategy="no",
                             disable_tqdm=True)
    trainer = trainer_class(Trainer)(model=model, args=args, train_dataset=rows, data_collator=collate,
                                     callbacks=[Epoch()])
    assert trainer.args.world_size == 2, trainer.args.world_size
    trainer.train()
    (out / f"rank{rank}.json").write_text(json.dumps({"epochs": seen, "lengths": lengths, "n_rows": N_ROWS,
                                                      "batch_size": BATCH, "seed": SEED}))
    # The rank's work is done and written (write_text closed the file), so the probe leaves with os._exit (below).
    # Why: a core dump of the abort it had at exit 2 runs in 6 ("terminate called without an active exception",
    # SIGABRT; torch 2.13, gloo) shows a gloo worker thread (ProcessGroupGloo::runLoop) freeing the training's last
    # all-gather (the Trainer gathers num_items_in_batch every step, through accelerate); the work holds tensors whose
    # Python objects it keeps alive, so freeing them needs the GIL, and a thread that asks for the GIL while the
    # interpreter finalizes is ended by pthread_exit, whose unwinding through that destructor calls std::terminate.
    # This probe exits right after training, at times before that worker has got the GIL; destroy_process_group does
    # not wait for it (pytorch/pytorch#190489, open). The trainer's ranks wait in barriers, which let go of the GIL,
    # between their last gather and their exit: 26 two-process fine-tunes in a row (test_finetune_multi_gpu) exited
    # cleanly.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""Test helper for tests/test_fault_injection.py: imports the trainer's stack once, then forks one real run of the
fine-tune CLI (`trainer.cli.main`) per request, so that each run to be killed does not first spend ~10 s importing.

Protocol, one JSON object a line: a request {"argv": [...], "log": PATH} on stdin is answered with {"pid": N} as soon as
the run's process exists, then {"status": S} when it ends (S: its exit code, or -signal when killed). The run's stdout
and stderr go to PATH. Requests are served one at a time.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _warm() -> None:
    """Import what a run imports (lazily, inside its functions) before any fork; no thread is started."""
    import torch

    torch.set_num_threads(1)  # the same arithmetic in every run: one intra-op thread
    import mlflow.transformers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import DataCollatorForTokenClassification, Trainer, pipeline  # noqa: F401

    import trainer.checkpoints  # noqa: F401
    import trainer.cli  # noqa: F401
    import trainer.finetune  # noqa: F401
    import trainer.hf_trainer  # noqa: F401
    import trainer.mlflow_model  # noqa: F401
    import trainer.outputs  # noqa: F401
    import trainer.validation  # noqa: F401


def _run(argv: list[str], log: str) -> None:
    """In the forked child: the CLI with its output in `log`; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        from trainer.cli import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, exit code 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    _warm()
    print(json.dumps({"ready": True}), flush=True)
    while line := sys.stdin.readline():
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run(request["argv"], request["log"])
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()

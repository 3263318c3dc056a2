"""Command lines of the package's programs, each generated from its typed config (`trainer.config`).

    token-classification-finetune     --preprocess_output DIR --model_selector_output DIR \\
                                      --pytorch_model_folder OUT --mlflow_model_folder OUT [--apply_lora true ...]
    token-classification-preprocess   --train_data FILE|DIR --model_selector_output DIR --preprocess_output OUT
    token-classification-model-import --model_path DIR|s3://...|org/name --model_selector_output OUT
    token-classification-data-import  --data_uri FILE|DIR|s3://...|hf://datasets/org/name --data_output OUT
    token-classification-evaluate     --model DIR --preprocess_output DIR --predictions FILE
    token-classification-predict      --model DIR --data FILE|DIR --predictions FILE

Flags accept underscores or dashes (`--apply-lora`); `--config FILE.json` supplies values that flags override. Exit
codes: 0 done, 2 bad input (one line on stderr, nothing created, loaded or trained), 1 anything else (a full disk or
exhausted memory: one line naming the last complete checkpoint to resume from), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

from trainer.config import (DataImportConfig, EvaluateConfig, FinetuneConfig, ModelImportConfig, PredictConfig,
                            PreprocessConfig)
from trainer.errors import ConfigError, InputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Logging of a program run (the CLIs and the KFP components); library use leaves logging to the caller.

    Progress bars (weights loading/saving, downloads, MLflow artifacts) are off: a pod log has no terminal to redraw
    them in, and trainer.progress logs the training progress as lines. Processes other than the main one (torchrun)
    log warnings and errors only.
    """
    from trainer.distributed import is_main_process

    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if not is_main_process():  # under torchrun the main process speaks for all; the others' warnings still show
        logging.getLogger().setLevel(max(level, logging.WARNING))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # saving an MLflow model drew one
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def report_error(err: Exception, config: Any, prog: str) -> Optional[int]:
    """The exit code of an error that ends a program with one line on stderr: 2 for bad input (ConfigError /
    InputError), 1 for a run-time failure `trainer.failures` names (with what is left to resume from, when `config`
    is known); None for anything else, a bug, which keeps its traceback."""
    from trainer.failures import failure_line
    from trainer.validation import one_line

    if isinstance(err, (ConfigError, InputError)):
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    line = failure_line(err, config)
    if line is None:
        return None
    logging.getLogger("trainer").debug("%s failed", prog, exc_info=True)
    print(f"error: {line}", file=sys.stderr)
    return 1


def stop_on_sigterm() -> None:
    """Make SIGTERM end the program where it would be dropped: as PID 1 (a container's own command, e.g.
    `docker run IMAGE ...` or `docker stop`), the kernel ignores a signal left to its default action, so the run
    went on until the SIGKILL. There SIGTERM now exits 143 (128 + 15) through SystemExit: what is being written is
    left as a kill leaves it (staging folders a rerun removes, complete checkpoints only). Elsewhere the default
    action stays (the process ends at once, also inside a blocking collective)."""
    if os.getpid() == 1:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextmanager
def component_process(name: str, args: Optional[dict] = None) -> Iterator[None]:
    """The body of a KFP component, as its CLI runs: bad input and the named run-time failures end the process
    with one line and exit code 2 or 1 (`report_error`; `args`, the component's arguments, give it the output
    folders, e.g. the checkpoints to resume from), not the executor's traceback. When the body returns, the
    executor writes the outputs and the process exits: its collector is frozen first (`freeze_for_exit`)."""
    from types import SimpleNamespace

    from trainer.process_exit import freeze_for_exit

    stop_on_sigterm()
    try:
        yield
    except Exception as err:  # noqa: BLE001 - bugs re-raise
        folders = SimpleNamespace(**{key: getattr(value, "path", value) for key, value in (args or {}).items()})
        code = report_error(err, folders, name)
        if code is None:
            raise
        sys.stdout.flush()
        sys.exit(code)
    freeze_for_exit()


def run(config_cls, program: Callable[[Any], Any], argv: Optional[Sequence[str]], prog: str,
        show: Callable[[Any], Any] = lambda result: result) -> int:
    """Parse `argv` into `config_cls`, run `program(config)` (every program checks its folders first:
    `trainer.validation.check_io`), print `show(result)` as JSON. Bad input (ConfigError / InputError): one line,
    exit code 2. A full disk or exhausted memory while running (`trainer.failures`): one line naming what is left to
    resume from, exit code 1."""
    from trainer.distributed import is_main_process
    from trainer.validation import one_line

    configure_logging()
    if argv is None:  # the process's own command line
        stop_on_sigterm()
    config = None
    try:
        summary = one_line((config_cls.__doc__ or "").split("\n\n")[0])  # the docstring's first paragraph
        config = config_cls.from_cli(argv, prog=prog, description=summary)
        result = program(config)
    except Exception as err:  # noqa: BLE001 - bad input and the failures trainer.failures names end here
        code = report_error(err, config, prog)
        if code is None:
            raise
        return code
    shown = show(result)
    if shown is not None and is_main_process():  # one result on stdout under torchrun
        print(json.dumps(asdict(shown) if is_dataclass(shown) else shown, indent=2, default=str))
    if argv is None:  # the process's own command line (a console script, python -m trainer): it exits next
        from trainer.process_exit import freeze_for_exit

        freeze_for_exit()
    return 0


def finetune_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.finetune import finetune

    def show(result):
        return {k: v for k, v in (result.test_metrics or result.validation_metrics).items()
                if k.startswith(("test_", "eval_"))}

    return run(FinetuneConfig, finetune, argv, "token-classification-finetune", show)


def preprocess_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.preprocess import preprocess

    return run(PreprocessConfig, preprocess, argv, "token-classification-preprocess")


def model_import_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.model_import import model_import

    return run(ModelImportConfig, model_import, argv, "token-classification-model-import")


def data_import_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.data_import import data_import

    return run(DataImportConfig, data_import, argv, "token-classification-data-import")


def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.evaluate import evaluate

    return run(EvaluateConfig, evaluate, argv, "token-classification-evaluate")


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    from trainer.predict import predict

    return run(PredictConfig, predict, argv, "token-classification-predict")


main = finetune_main

if __name__ == "__main__":
    sys.exit(main())

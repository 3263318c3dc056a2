"""The CLI, the Python API and FinetuneConfig agree: flags, defaults, conversions, TrainingArguments, presets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import METRIC_GREATER_IS_BETTER, OPTIMIZER_MAP, FinetuneConfig
from trainer.errors import ConfigError
from trainer.params import base_type as field_base_type
from trainer.params import default_text as spec_default

REPO = Path(__file__).resolve().parents[1]
FIELDS = dataclasses.fields(FinetuneConfig)
REQUIRED = [f.name for f in FIELDS if f.default is dataclasses.MISSING]


def build_parser():
    return FinetuneConfig.cli_parser("token-classification-finetune")


def config_from_args(argv):
    return FinetuneConfig.from_cli(argv)


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    return {name: str(tmp_path / name) for name in REQUIRED}


def _required_argv(paths: dict[str, str]) -> list[str]:
    return [a for name, value in paths.items() for a in (f"--{name}", value)]


def test_required_fields_are_the_four_folders():
    assert REQUIRED == ["preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder"]


def test_parser_has_snake_and_kebab_flag_for_every_field():
    options = build_parser()._option_string_actions
    for f in FIELDS:
        snake, kebab = f"--{f.name}", f"--{f.name.replace('_', '-')}"
        assert snake in options, snake
        assert kebab in options, kebab
        assert options[snake] is options[kebab] and options[snake].dest == f.name
        assert options[snake].choices == f.metadata.get("choices")
    dests = {a.dest for a in build_parser()._actions} - {"help", "config"}
    assert dests == {f.name for f in FIELDS}


def test_cli_equals_python_api(paths):
    from_cli = config_from_args([*_required_argv(paths), "--apply-lora", "true", "--lora_r", "16",
                                 "--learning-rate", "3e-4", "--optim", "adafactor", "--precision", "16",
                                 "--save_total_limit", "2", "--evaluation-steps-interval", "0.25"])
    direct = FinetuneConfig(**paths, apply_lora=True, lora_r=16, learning_rate=3e-4, optim="adafactor",
                            precision="16", save_total_limit=2, evaluation_steps_interval=0.25)
    assert from_cli == direct
    assert from_cli.apply_lora is True and from_cli.lora_r == 16 and isinstance(from_cli.lora_r, int)
    assert isinstance(from_cli.learning_rate, float)


def test_python_api_accepts_spec_strings(paths):
    assert FinetuneConfig(**paths, apply_lora="true", lora_r="16", merge_lora_weights="false") == \
        FinetuneConfig(**paths, apply_lora=True, lora_r=16, merge_lora_weights=False)


def test_cli_defaults_equal_dataclass_defaults(paths):
    config = config_from_args(_required_argv(paths))
    assert config == FinetuneConfig(**paths)
    for f in FIELDS:
        if f.default is not dataclasses.MISSING:
            assert getattr(config, f.name) == f.default, f.name
            if f.default is not None:
                assert type(getattr(config, f.name)) is field_base_type(f), f.name


def test_config_file_overridden_by_flags(paths, tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**paths, "lora_r": 32, "learning_rate": 1e-3, "apply_lora": "true",
                                "optim": "adafactor"}))
    config = config_from_args(["--config", str(path), "--lora-r", "4", "--optim", "adamw_torch"])
    assert config.lora_r == 4 and config.optim == "adamw_torch"  # flags win
    assert config.learning_rate == 1e-3 and config.apply_lora is True  # file values kept
    assert config.preprocess_output == paths["preprocess_output"]


def test_missing_required_folder_is_config_error(paths, capsys):
    from trainer.cli import finetune_main as main

    argv = _required_argv({k: v for k, v in paths.items() if k != "mlflow_model_folder"})
    with pytest.raises(ConfigError, match="mlflow_model_folder is required"):
        config_from_args(argv)
    assert main(argv) == 2
    assert "error: mlflow_model_folder is required" in capsys.readouterr().err


def test_spec_default_renders_bools_as_strings():
    for f in FIELDS:
        if f.default is dataclasses.MISSING:
            assert spec_default(f) is None
        elif field_base_type(f) is bool:
            assert spec_default(f) == ("true" if f.default else "false"), f.name
        else:
            assert spec_default(f) == f.default, f.name
    by_name = {f.name: f for f in FIELDS}
    assert spec_default(by_name["apply_lora"]) == "false"
    assert spec_default(by_name["merge_lora_weights"]) == "true"
    assert spec_default(by_name["lora_r"]) == 8


@pytest.mark.parametrize("metric,expected", [("loss", False), ("f1", True), ("precision", True),
                                             ("recall", True), ("accuracy", True)])
def test_greater_is_better(paths, metric, expected):
    assert FinetuneConfig(**paths, metric_for_best_model=metric).greater_is_better is expected
    assert METRIC_GREATER_IS_BETTER[metric] is expected


def test_optimizer_mapping(paths):
    assert OPTIMIZER_MAP["adamw_hf"] == "adamw_torch_fused"
    assert FinetuneConfig(**paths).optim == "adamw_hf"  # spec default kept as given ...
    assert FinetuneConfig(**paths).hf_optim == "adamw_torch_fused"  # ... and mapped for transformers
    assert FinetuneConfig(**paths, optim="adafactor").hf_optim == "adafactor"


@pytest.fixture
def single_process_env(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("strategy", ["epoch", "steps"])
def test_training_args_carry_config(paths, strategy, single_process_env):
    from trainer.training_args import build_training_args

    config = FinetuneConfig(**paths, optim="adamw_hf", learning_rate=3e-4, evaluation_strategy=strategy,
                            logging_strategy=strategy, eval_steps=7, logging_steps=5, metric_for_best_model="f1",
                            save_total_limit=-1, per_device_train_batch_size=4, per_device_eval_batch_size=6,
                            gradient_accumulation_steps=2, num_train_epochs=3, weight_decay=0.01, warmup_steps=2,
                            seed=7, lr_scheduler_type="cosine", max_grad_norm=0.5)
    args = build_training_args(config, 100, None)
    assert args.output_dir == paths["pytorch_model_folder"]
    assert args.optim.value == "adamw_torch_fused"
    assert args.learning_rate == 3e-4 and args.weight_decay == 0.01 and args.warmup_steps == 2
    assert args.per_device_train_batch_size == 4 and args.per_device_eval_batch_size == 6
    assert args.gradient_accumulation_steps == 2 and args.num_train_epochs == 3 and args.max_steps == -1
    assert args.seed == 7 and args.max_grad_norm == 0.5 and args.lr_scheduler_type.value == "cosine"
    assert args.eval_strategy.value == strategy
    assert args.save_strategy.value == args.eval_strategy.value  # a checkpoint at every evaluation
    assert args.logging_strategy.value == strategy
    if strategy == "steps":
        assert args.eval_steps == 7 and args.save_steps == 7 and args.logging_steps == 5
    assert args.metric_for_best_model == "eval_f1"
    assert args.greater_is_better is True
    assert args.load_best_model_at_end is True
    assert args.save_total_limit is None
    assert args.train_sampling_strategy == "random"  # the default: random batches (padding-free, trainer.packing)
    assert args.deepspeed is None
    assert not args.fp16 and not args.bf16


def test_training_args_loss_limit_and_sampling(paths, single_process_env):
    from trainer.training_args import build_training_args

    config = FinetuneConfig(**paths, metric_for_best_model="loss", save_total_limit=2, group_by_length=True,
                            evaluation_strategy="steps", evaluation_steps_interval=0.5,
                            per_device_train_batch_size=10, max_steps=12)
    args = build_training_args(config, 100, None)
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert args.save_total_limit is None and args.max_steps == 12  # trainer.checkpoints rotates (after manifests)
    assert args.train_sampling_strategy == "group_by_length"
    assert args.eval_steps == 5 and args.save_steps == 5  # 0.5 × (100 / 10 = 10 steps per epoch)


@pytest.mark.parametrize("examples,batch,accum,world,interval,expected", [
    (1000, 8, 2, 2, 0.1, 3),  # ceil(1000/16)=63 batches, ceil(63 / 2) = 32 steps/epoch; 0.1 × 32 = 3.2 -> 3
    (1000, 8, 2, 2, 0.5, 16),  # 16 steps: half of the epoch's 32
    (40, 4, 3, 1, 1.0, 4),  # 10 batches in steps of 3: 4 steps (the last one of a single batch), once per epoch
    (1000, 8, 1, 1, 0.25, 31),  # 125 steps/epoch × 0.25 = 31.25
    (10, 8, 4, 1, 0.1, 1),  # fewer batches than accumulation: still 1 step per epoch, at least 1 step
    (1000, 8, 2, 2, 0.0, 500),  # interval 0: eval_steps as given
])
def test_resolve_eval_steps(paths, examples, batch, accum, world, interval, expected):
    from trainer.training_args import resolve_eval_steps, steps_per_epoch

    config = FinetuneConfig(**paths, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                            evaluation_steps_interval=interval)
    assert resolve_eval_steps(config, examples, world) == expected
    if (examples, batch, accum, world) == (1000, 8, 2, 2):
        assert steps_per_epoch(examples, config, world) == 32


@pytest.mark.parametrize("given", [{}, {"stage3_gather_16bit_weights_on_model_save": False}])
def test_a_custom_zero3_config_gathers_the_model_when_it_is_saved(tmp_path, given):
    """DeepSpeed's default (false) left a custom ZeRO-3 JSON to fail at publishing, after the whole training:
    accelerate refuses the state dict of a model that is not gathered on save."""
    from trainer.deepspeed_config import load_deepspeed_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, **given}, "train_micro_batch_size_per_gpu": "auto"}))
    config = load_deepspeed_config(str(path))
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert "stage3_gather_16bit_weights_on_model_save" not in load_deepspeed_config(str(path))["zero_optimization"]


@pytest.mark.parametrize("preset,stage", [("zero2", 2), ("zero3", 3), (None, 2)])
def test_deepspeed_presets(preset, stage):
    from trainer.deepspeed_config import load_deepspeed_config

    config = load_deepspeed_config(None, preset) if preset else load_deepspeed_config(None)
    assert config["zero_optimization"]["stage"] == stage
    assert config["fp16"]["enabled"] == "auto" and config["bf16"]["enabled"] == "auto"
    assert "true" not in json.dumps({k: config[k] for k in ("fp16", "bf16")}).lower()
    assert "optimizer" not in config and "scheduler" not in config  # built by the HF Trainer from our params
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto", key


def test_deepspeed_preset_in_training_args(paths, single_process_env):
    from trainer.deepspeed_config import load_deepspeed_config
    from trainer.training_args import build_training_args

    ds = load_deepspeed_config(None, "zero2")
    config = FinetuneConfig(**paths, apply_deepspeed=True, deepspeed_preset="zero3")
    assert config.deepspeed is None and config.deepspeed_preset == "zero3"
    try:
        args = build_training_args(config, 16, ds)
    except Exception as err:  # DeepSpeed itself may be missing or unusable on a CPU-only box
        pytest.skip(f"TrainingArguments(deepspeed=...) unavailable here: {type(err).__name__}: {err}")
    assert args.deepspeed is not None


def test_python_m_trainer_help_lists_every_group():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "token-classification-finetune" in out and "--config" in out
    for title in FinetuneConfig.GROUPS.values():
        assert f"{title}:" in out, title
    for f in FIELDS:
        assert f"--{f.name}" in out, f.name
    assert "(default: false)" in out and "(default: true)" in out  # bools rendered as the spec writes them
    # each default shown once (argparse's own "(default: ...)" would double them)
    assert " ".join(out.split()).count("(default: ") == sum(spec_default(f) is not None for f in FIELDS)


@pytest.mark.parametrize("program", ["finetune", "preprocess", "model_import", "data_import", "evaluate", "predict"])
def test_each_program_help_describes_it_in_whole_sentences(program, capsys):
    """--help opens with the config's docstring's first paragraph, whole (model-import's once stopped at the end of
    its docstring's first line, mid-sentence)."""
    from trainer import cli

    with pytest.raises(SystemExit) as done:
        getattr(cli, f"{program}_main")(["--help"])
    assert done.value.code == 0
    config_cls = {"finetune": cli.FinetuneConfig, "preprocess": cli.PreprocessConfig,
                  "model_import": cli.ModelImportConfig, "data_import": cli.DataImportConfig,
                  "evaluate": cli.EvaluateConfig, "predict": cli.PredictConfig}[program]
    summary = " ".join(config_cls.__doc__.split("\n\n")[0].split())
    assert summary.endswith(".") and summary in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_the_main_process_prints_the_result_and_logs_info(rank, monkeypatch, capsys, caplog):
    """Under torchrun every process runs the program: one result on stdout and one set of setup lines, the main
    process's (the others keep their warnings)."""
    import logging

    from trainer import cli

    class Config:
        @classmethod
        def from_cli(cls, argv, prog, description):
            return cls()

    def program(config):
        logging.getLogger("trainer.setup").info("a setup line")
        logging.getLogger("trainer.setup").warning("a warning")
        return {"eval_f1": 1.0}

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)  # the root logger's level, restored after
    caplog.set_level(logging.INFO)
    assert cli.run(Config, program, [], "prog") == 0
    printed = capsys.readouterr().out
    said = [r.getMessage() for r in caplog.records if r.name == "trainer.setup"]
    if rank == "0":
        assert json.loads(printed) == {"eval_f1": 1.0} and said == ["a setup line", "a warning"]
    else:
        assert printed == "" and said == ["a warning"]

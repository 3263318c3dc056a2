"""trainer.process_exit: a step's process collects its garbage, then freezes the survivors before it exits; every
generated component body (`trainer.cli.component_process`) and every program's own command line does it. A component
body ends bad input as its CLI does: one line, exit 2. Each check runs in a fresh process (a frozen collector would
outlive the test)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components.definitions import COMPONENTS


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_garbage_is_collected_before_the_survivors_are_frozen(tmp_path):
    flag = tmp_path / "finalized"
    out = run_python(f"""
        import gc, json
        from trainer.cli import component_process

        class Node:
            def __del__(self):
                open({str(flag)!r}, "w").close()  # a finalizer that must still run, e.g. a file being closed

        gc.disable()  # no automatic collection: only component_process's can find the cycle
        node = Node(); node.me = node; del node
        with component_process("test"):
            pass
        print(json.dumps({{"frozen": gc.get_freeze_count()}}))
    """)
    assert flag.exists()
    assert out["frozen"] > 1000  # the interpreter's own objects, now out of the collector's reach


def test_every_component_body_freezes_the_collector_when_it_returns():
    names = [defn.name for defn in COMPONENTS]
    out = run_python(f"""
        import gc, importlib, inspect, json
        frozen = {{}}
        for name in {names!r}:
            runtime = importlib.import_module(f"components.{{name}}.runtime")
            runtime.run = lambda **args: None  # the body without its work
            component = getattr(importlib.import_module(f"components.{{name}}.component"), name)
            func = component.python_func
            gc.unfreeze()
            func(**{{p: None for p in inspect.signature(func).parameters}})
            frozen[name] = gc.get_freeze_count()
        print(json.dumps(frozen))
    """)
    assert set(out) == set(names)
    assert all(count > 1000 for count in out.values()), out


def test_a_component_given_bad_input_exits_2_with_one_line(tmp_path):
    """As KFP runs it (the component's function, its runtime body), not through the CLI: the executor would print a
    traceback and exit 1."""
    code = textwrap.dedent(f"""
        from kfp.dsl import Model
        from components.model_import.component import model_import

        out = Model(name="model_selector_output", uri="", metadata={{}})
        out.path = {str(tmp_path / "out")!r}
        model_import.python_func(model_selector_output=out, model_path={str(tmp_path / "nothere")!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nothere'} not found in this container (a " \
        "PVC path: is the volume mounted where the pipeline mounts it?)"
    assert not (tmp_path / "out").exists()


def test_a_component_names_the_checkpoint_to_resume_from_when_memory_runs_out(tmp_path):
    """The component's line gives the CLI's advice: it knows the run's output folder (the component's arguments)."""
    code = textwrap.dedent(f"""
        import torch
        import trainer.finetune
        from kfp.dsl import Markdown, Metrics, Model
        from components.finetune.component import finetune

        def out_of_memory(config):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        trainer.finetune.finetune = out_of_memory
        outputs = {{}}
        for name, kind in (("pytorch_model_folder", Model), ("mlflow_model_folder", Model),
                           ("onnx_model_folder", Model), ("metrics", Metrics), ("report", Markdown)):
            outputs[name] = kind(name=name, uri="", metadata={{}})
            outputs[name].path = {str(tmp_path)!r} + "/" + name
        inputs = {{}}
        for name in ("preprocess_output", "model_selector_output"):
            inputs[name] = Model(name=name, uri="", metadata={{}})
            inputs[name].path = {str(tmp_path)!r} + "/" + name
        finetune.python_func(**inputs, **outputs)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: out of memory (CUDA out of memory.") and "no checkpoint was complete yet" in line \
        and "lower per_device_train_batch_size" in line and "resume_from_checkpoint=true" in line, line


def test_a_programs_own_command_line_freezes_the_collector(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    (source / "train.conll").write_text("Paris B-LOC\nis O\n\n", encoding="utf-8")
    out = run_python(f"""
        import gc, json, sys
        from trainer import cli

        sys.argv = ["token-classification-data-import", "--data_uri", {str(source)!r},
                    "--data_output", {str(tmp_path / "out")!r}]
        frozen_before = gc.get_freeze_count()
        rc = cli.data_import_main()  # argv None: the process's own command line
        frozen_after = gc.get_freeze_count()
        gc.unfreeze()
        rc_call = cli.data_import_main(["--data_uri", {str(source)!r}, "--data_output", {str(tmp_path / "out2")!r}])
        print(json.dumps({{"rc": rc, "before": frozen_before, "after": frozen_after, "rc_call": rc_call,
                          "after_call": gc.get_freeze_count()}}))
    """)
    assert out["rc"] == 0 and out["before"] == 0 and out["after"] > 1000
    assert out["rc_call"] == 0 and out["after_call"] == 0  # called as a function (argv given): nothing frozen


def test_sigterm_ends_a_fine_tune_that_runs_as_pid_1(make_config, tmp_path):
    """A container's own command is PID 1 (`docker run IMAGE ...`), where the kernel drops a signal left to its
    default action: `docker stop` or a pod's deletion went unheard until the SIGKILL. It now exits 143 at once,
    leaving no published model. Runs in a new PID namespace (unshare, as root), where the program is PID 1."""
    import os
    import shutil
    import signal
    import time

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-fp", "--mount-proc", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("unshare -fp (a new PID namespace, as root) is not available")
    config = make_config(max_steps=100_000, evaluation_strategy="steps", eval_steps=100_000, export_onnx=False)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    code = "import sys; from trainer.cli import finetune_main; sys.exit(finetune_main())"
    proc = subprocess.Popen(["unshare", "-fp", "--mount-proc", sys.executable, "-c", code,
                             "--config", str(tmp_path / "config.json")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:  # the program is training
            if "training: " in line:
                break
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGTERM)  # the program itself: PID 1 in its namespace
        started = time.monotonic()
        rc = proc.wait(timeout=60)
        stopped = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert rc == 143 and stopped < 30, (rc, stopped)
    published = Path(config.pytorch_model_folder)
    assert not (published / "metrics.json").exists() and not (published / "model.safetensors").exists()

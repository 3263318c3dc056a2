"""Generation from the typed configs: a field added to a config appears, with its type, default and description,
in the CLI, the generated component, the compiled YAML, the pipeline and the local runner.

No `from __future__ import annotations` here: KFP reads the annotations of what the tests generate.
"""

import dataclasses
import importlib.util
import inspect
import sys
from typing import Optional

import pytest

from components.codegen import (ComponentDef, output_descriptions, pipeline_parameters, render_component,
                               with_signature)
from trainer.errors import ConfigError
from trainer.params import Params, param, path, surface


@surface
class DemoConfig(Params):
    """A demo program."""

    source: str = path("Input folder.", artifact="Dataset")
    target: str = path("Output folder.", output=True, artifact="Model")
    extra: Optional[str] = path("Optional input file.", artifact="Artifact", optional=True)
    flag: bool = param(False, "A switch.")
    count: int = param(3, "How many.", minimum=1)
    ratio: float = param(0.5, "A fraction.", minimum=0, below=1)
    mode: str = param("fast", "How.", choices=("fast", "slow"))
    note: Optional[str] = param(None, "Free text.")


def _load(source: str, tmp_path, name: str):
    file = tmp_path / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def demo_component(tmp_path):
    definition = ComponentDef(name="demo", summary="Run the demo.", configs=(DemoConfig,), runtime="demo_runtime",
                              outputs={"metrics": ("Metrics", "Figures.")})
    return _load(render_component(definition), tmp_path, "demo_component").demo


def test_every_field_becomes_a_component_input_with_its_default_and_description(demo_component):
    spec = demo_component.component_spec
    assert set(spec.inputs) == {"source", "extra", "flag", "count", "ratio", "mode", "note"}
    assert set(spec.outputs) == {"target", "metrics"}
    assert spec.inputs["flag"].default == "false" and spec.inputs["flag"].type == "String"  # the spec's strings
    assert spec.inputs["count"].default == 3 and spec.inputs["count"].type == "Integer"
    assert spec.inputs["ratio"].default == 0.5 and spec.inputs["ratio"].type == "Float"
    assert spec.inputs["extra"].optional and spec.inputs["source"].type.startswith("system.Dataset")
    assert spec.inputs["mode"].description == "How. One of fast, slow."
    assert spec.inputs["count"].description == "How many. Must be >= 1."
    assert spec.inputs["note"].default is None and spec.inputs["note"].optional


def test_the_generated_body_hands_every_argument_to_the_runtime(demo_component, monkeypatch):
    seen = {}
    runtime = type(sys)("demo_runtime")
    runtime.run = lambda **kwargs: seen.update(kwargs)
    monkeypatch.setitem(sys.modules, "demo_runtime", runtime)
    demo_component.python_func(source="s", target="t", metrics="m", count=7)
    assert seen["count"] == 7 and seen["source"] == "s" and seen["flag"] == "false" and seen["extra"] is None


def test_a_generated_component_compiles(demo_component, tmp_path):
    from kfp import compiler

    compiler.Compiler().compile(demo_component, str(tmp_path / "demo.yaml"))
    assert "defaultValue: fast" in (tmp_path / "demo.yaml").read_text()


def test_a_field_added_to_the_finetune_config_reaches_every_surface(tmp_path):
    """The README's "adding a parameter" promise, checked on a subclass of the real config."""
    from components.definitions import COMPONENTS
    from trainer.config import FinetuneConfig

    @surface
    class Extended(FinetuneConfig):
        demo_knob: int = param(5, "A new knob.", group="training", minimum=0)

    definition = dataclasses.replace(next(d for d in COMPONENTS if d.name == "finetune"), configs=(Extended,))
    module = _load(render_component(definition).replace("def finetune(", "def finetune_ext("), tmp_path, "ext")
    assert module.finetune_ext.component_spec.inputs["demo_knob"].default == 5
    assert "--demo_knob" in Extended.cli_parser("x").format_help()
    names = [p.name for p, _ in pipeline_parameters(Extended)]
    assert "demo_knob" in names and "learning_rate" in names
    with pytest.raises(ConfigError, match="demo_knob must be >= 0"):
        Extended(preprocess_output="a", model_selector_output="b", pytorch_model_folder="c",
                 mlflow_model_folder="d", demo_knob=-1)


def test_pipeline_signature_and_docstring(tmp_path):
    from kfp import compiler, dsl

    calls = {}

    def body(**values):
        calls.update(values)

    function = with_signature(body, pipeline_parameters(DemoConfig), "A demo pipeline.", name="demo_pipeline")
    params = inspect.signature(function).parameters
    assert list(params) == ["flag", "count", "ratio", "mode", "note"] and params["count"].default == 3
    assert "count: How many. Must be >= 1." in function.__doc__
    function(True, 4, note="x")
    assert calls == {"flag": True, "count": 4, "note": "x"}
    with pytest.raises(ValueError, match="defined twice"):
        with_signature(body, pipeline_parameters(DemoConfig) + pipeline_parameters(DemoConfig), "x")
    @dsl.component
    def show(count: int, mode: str):
        print(count, mode)

    def run_show(**values):
        show(count=values["count"], mode=values["mode"])

    compiled = dsl.pipeline(name="demo")(with_signature(run_show, pipeline_parameters(DemoConfig), "Demo."))
    compiler.Compiler().compile(compiled, str(tmp_path / "p.yaml"))
    text = (tmp_path / "p.yaml").read_text()
    assert "How many. Must be >= 1." in text and "defaultValue: fast" in text


def test_a_name_in_two_configs_of_one_component_is_refused():
    definition = ComponentDef(name="dup", summary="x", configs=(DemoConfig, DemoConfig), runtime="r")
    with pytest.raises(ValueError, match="field of both"):
        render_component(definition)


def test_pipeline_parameters_reword_what_holds_in_the_pipeline():
    """A description can say what holds in the pipeline rather than in the component (an input it lacks); a
    phrase that no longer occurs (the help changed) is an error, not a rewording that silently stops applying."""
    described = dict((p.name, text) for p, text in pipeline_parameters(DemoConfig, reword={"How many.": "Rows."}))
    assert described["count"] == "Rows. Must be >= 1." and described["ratio"] == "A fraction. Must be >= 0 and < 1."
    with pytest.raises(ValueError, match="occur in no description"):
        pipeline_parameters(DemoConfig, reword={"How many rows.": "Rows."})


def test_pipeline_outputs_get_the_component_output_descriptions(tmp_path):
    """with_signature(outputs=...) writes a Returns section, which KFP compiles into the outputs' descriptions;
    output_descriptions gives those of a component definition (its output fields and extra outputs)."""
    from typing import NamedTuple

    import yaml
    from kfp import compiler, dsl
    from kfp.dsl import Metrics, Model

    definition = ComponentDef(name="demo", summary="Run the demo.", configs=(DemoConfig,), runtime="demo_runtime",
                              outputs={"metrics": ("Metrics", "Figures.")})
    assert output_descriptions(definition) == {"target": "Output folder.", "metrics": "Figures."}
    demo = _load(render_component(definition), tmp_path, "demo_outputs_component").demo
    Outputs = NamedTuple("DemoOutputs", [("target", Model), ("metrics", Metrics)])

    def body(**values) -> Outputs:
        task = demo(source=dsl.importer(artifact_uri="gs://x", artifact_class=dsl.Dataset).output,
                    count=values["count"])
        return Outputs(task.outputs["target"], task.outputs["metrics"])

    function = with_signature(body, pipeline_parameters(DemoConfig), "Demo.", returns=Outputs,
                              outputs=output_descriptions(definition))
    compiler.Compiler().compile(dsl.pipeline(name="demo-out")(function), str(tmp_path / "p.yaml"))
    root = yaml.safe_load((tmp_path / "p.yaml").read_text())["root"]
    assert {k: v.get("description") for k, v in root["outputDefinitions"]["artifacts"].items()} == {
        "target": "Output folder.", "metrics": "Figures."}
    assert root["inputDefinitions"]["parameters"]["count"]["description"] == "How many. Must be >= 1."
    with pytest.raises(ValueError, match="no description of \\['metrics'\\]"):
        with_signature(body, pipeline_parameters(DemoConfig), "Demo.", returns=Outputs,
                       outputs={"target": "Output folder."})

"""Every component and pipeline compiles, checked-in YAML/READMEs have not drifted, compiled YAML loads back,
Kubernetes placement lands in the platform spec, images are named only in components/images.py.

No `from __future__ import annotations` here: KFP reads the annotations of the component defined below.
"""


import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _compile_script():
    spec = importlib.util.spec_from_file_location("compile_components", REPO / "scripts" / "compile_components.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SCRIPT = _compile_script()
COMPONENTS = SCRIPT.discover_components(REPO)
PIPELINES = SCRIPT.discover_pipelines(REPO)


def test_discovery_finds_every_component_folder():
    folders = {p.parent.name for p in (REPO / "components").glob("*/component.py")}
    assert {"preprocess", "model_import", "finetune", "evaluate"} <= folders
    assert {t.yaml_path.parent.name for t in COMPONENTS} == folders
    assert [t.attr for t in PIPELINES] == ["token_classification_pipeline", "token_classification_pipeline_pvc"]


@pytest.mark.parametrize("target", COMPONENTS + PIPELINES, ids=lambda t: f"{t.module}.{t.attr}")
def test_compiles_and_loads_back(target, tmp_path):
    from kfp import components

    text = SCRIPT.compile_yaml(target)
    assert next(yaml.safe_load_all(text))["pipelineInfo"]["name"]
    assert target.yaml_path.exists(), f"{target.yaml_path} not checked in: run scripts/compile_components.py"
    loaded = components.load_component_from_file(str(target.yaml_path))
    ours = target.obj.component_spec
    assert loaded.component_spec.name == ours.name
    assert set(loaded.component_spec.inputs or {}) == set(ours.inputs or {})
    assert set(loaded.component_spec.outputs or {}) == set(ours.outputs or {})
    for name, spec in (ours.inputs or {}).items():
        assert loaded.component_spec.inputs[name].default == spec.default, name


def test_no_drift():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compile_components.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_drift_detection_sees_a_changed_file():
    """The comparison behind --check, on the expected contents (nothing in the repository is written)."""
    files = {**SCRIPT.generated_files(REPO), **SCRIPT.component_sources(REPO)}
    assert SCRIPT.find_drift(files) == []
    target = COMPONENTS[0].yaml_path
    source = REPO / "components" / "finetune" / "component.py"
    assert SCRIPT.find_drift({**files, target: files[target] + "# drift\n"}) == [target]
    assert SCRIPT.find_drift({**files, source: files[source].replace("'adamw_hf'", "'adamw_torch'")}) == [source]


def test_readmes_document_every_input():
    for target in COMPONENTS:
        readme = (target.yaml_path.parent / "README.md").read_text()
        assert readme.startswith(SCRIPT.GENERATED_NOTE)
        for name in list(target.obj.component_spec.inputs or {}) + list(target.obj.component_spec.outputs or {}):
            assert f"`{name}`" in readme, f"{target.yaml_path.parent.name}/README.md lacks {name}"


def test_images_come_from_images_py():
    from components.images import TRAINER_CPU_IMAGE

    for target in COMPONENTS:
        image = SCRIPT._image(target.obj)
        assert image, target.attr
    assert all(SCRIPT._image(t.obj) == TRAINER_CPU_IMAGE for t in COMPONENTS if t.attr != "finetune_pytorchjob")
    registry = TRAINER_CPU_IMAGE.split("/")[0]
    for path in list((REPO / "components").rglob("*.py")) + list((REPO / "pipelines").rglob("*.py")):
        if path.name == "images.py":
            continue
        text = path.read_text()
        assert registry not in text and not re.search(r"base_image\s*=\s*['\"]", text), path


def _platform(yaml_text: str) -> dict:
    docs = list(yaml.safe_load_all(yaml_text))
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}


def test_gpu_pvc_pipeline_variant(tmp_path):
    from kfp import compiler

    from components.images import TRAINER_CUDA_IMAGE
    from pipelines.token_classification_pipeline import build_pipeline

    out = tmp_path / "gpu.yaml"
    compiler.Compiler().compile(build_pipeline(gpus=2, accelerator_type="nvidia.com/gpu",
                                               pvc_mount_path="/mnt/models"), str(out))
    text = out.read_text()
    spec = yaml.safe_load_all(text).__next__()
    finetune = spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]
    assert finetune["image"] == TRAINER_CUDA_IMAGE
    assert finetune["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(finetune["resources"]["accelerator"]["resourceCount"]) == "2"
    assert "finetune_cpu_limit" in finetune["resources"]["resourceCpuLimit"]
    executors = _platform(text)
    assert "pvcMount" not in executors["exec-finetune"]  # the PVC serves the import steps' sources
    assert executors["exec-finetune"]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == \
        "finetune_node_selector"
    for step in ("exec-model-import", "exec-data-import"):
        assert executors[step]["pvcMount"][0]["mountPath"] == "/mnt/models"


def test_apply_placement_static_values(tmp_path):
    from kfp import compiler, dsl

    from components.kubernetes import PvcMount, TaskPlacement, apply_placement, gpu_placement

    @dsl.component(base_image="unused")  # never run; only compiled here
    def noop(x: str) -> str:
        return x

    @dsl.pipeline(name="placement")
    def pipe(pvc: str = "data-pvc"):
        task = noop(x="a")
        apply_placement(task, gpu_placement(
            1, cpu_request="1", memory_limit="4Gi", node_selector={"pool": "gpu", "zone": "a"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            pvc_mounts=[PvcMount(pvc, "/data"), PvcMount("static-pvc", "/models", sub_path="m")],
            env={"HF_HUB_OFFLINE": "1"}, caching=False))
        apply_placement(noop(x="b"), TaskPlacement(cpu_limit="", node_selector={}, tolerations=[]))  # all skipped

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipe, str(out))
    text = out.read_text()
    ex = _platform(text)["exec-noop"]
    assert ex["nodeSelector"]["labels"] == {"pool": "gpu", "zone": "a"}
    assert ex["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {m["mountPath"] for m in ex["pvcMount"]} == {"/data", "/models"}
    assert "exec-noop-2" not in _platform(text)
    from components.kubernetes import _check_toleration

    with pytest.raises(ValueError, match="operator"):
        _check_toleration({"key": "k", "operator": "Bad"})
    with pytest.raises(ValueError, match="unknown key"):
        _check_toleration({"keyy": "k"})


def _root(target) -> dict:
    """The pipeline's own interface in its checked-in YAML: what the KFP UI shows for a run."""
    return next(yaml.safe_load_all(target.yaml_path.read_text()))["root"]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("target", PIPELINES, ids=lambda t: t.attr)
def test_pipeline_yaml_says_a_model_source_is_required(target):
    """model_path and mlflow_model_path both default to '' (neither can be a required input): their descriptions
    must say that one of them is required, naming no model source the pipeline lacks (model_import's `model`)."""
    params = _root(target)["inputDefinitions"]["parameters"]
    for name in ("model_path", "mlflow_model_path"):
        text = _words(params[name]["description"])
        assert params[name]["defaultValue"] == "" and params[name].get("isOptional"), name
        assert "Required: give exactly one of model_path and mlflow_model_path" in text, f"{name}: {text}"
        assert "model, model_path" not in text, f"{name} names the model artifact, not a pipeline input: {text}"


@pytest.mark.parametrize("target", PIPELINES, ids=lambda t: t.attr)
def test_pipeline_descriptions_name_only_what_the_pipeline_has(target):
    """validation_ratio / test_ratio came from preprocess's help ("when validation_data is absent"), but the
    pipeline has no validation_data / test_data input: its descriptions say what holds for data_uri."""
    params = _root(target)["inputDefinitions"]["parameters"]
    for name, spec in params.items():
        text = _words(spec.get("description", ""))
        for absent in ("validation_data", "test_data"):
            assert absent not in text, f"{name} names {absent}, which is no input of the pipeline: {text}"
    assert "when data_uri holds no validation.* / dev.* file" in _words(params["validation_ratio"]["description"])
    assert "when data_uri holds no test.* file" in _words(params["test_ratio"]["description"])


@pytest.mark.parametrize("target", PIPELINES, ids=lambda t: t.attr)
def test_pipeline_outputs_are_described_as_the_finetune_component_describes_them(target):
    """Each pipeline output has a description in the YAML and in pipelines/README.md, the one the finetune
    component's README gives it (the same source: components/definitions.py and FinetuneConfig)."""
    outputs = _root(target)["outputDefinitions"]["artifacts"]
    def output_rows(readme: str) -> dict:
        table = readme.split("## Outputs\n", 1)[1].split("\n## ", 1)[0]
        return dict(re.findall(r"^\| `(\w+)` \| \w+ \| (.*) \|$", table, flags=re.M))

    rows = output_rows((REPO / "components" / "finetune" / "README.md").read_text())
    readme = (REPO / "pipelines" / "README.md").read_text()
    section_rows = output_rows(readme.split(f"# {target.obj.component_spec.name}\n", 1)[1].split("\n# ", 1)[0])
    assert set(outputs) == {"pytorch_model_folder", "mlflow_model_folder", "onnx_model_folder", "metrics", "report"}
    for name, spec in outputs.items():
        assert _words(spec.get("description", "")) == rows[name], name
        assert section_rows[name].strip() == rows[name], f"pipelines/README.md: {name}"


def test_distributed_doc_lists_every_output_of_finetune_pytorchjob():
    """docs/distributed.md's lists of the component's outputs name every output it has."""
    from components.finetune_pytorchjob.component import finetune_pytorchjob

    text = (REPO / "docs" / "distributed.md").read_text()
    listing = _words(text.split("same outputs (", 1)[1].split(")", 1)[0])
    paragraph = _words(text.split("\nOutputs: ", 1)[1].split("\n\n", 1)[0])
    for name in finetune_pytorchjob.component_spec.outputs:
        assert f"`{name}`" in listing, f"the intro's output list lacks {name}"
        assert f"`{name}`" in paragraph, f"the Outputs paragraph lacks {name}"

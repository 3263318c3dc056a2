"""The finetune component's signature agrees with FinetuneConfig and with the reference spec's parameter tables."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from trainer.config import FinetuneConfig
from trainer.params import base_type as field_base_type
from trainer.params import default_text as spec_default

spec_fields = FinetuneConfig.spec_fields

REPO = Path(__file__).resolve().parents[1]
SPEC_NAME = "token_classification_finetune.md"
SHARED_SPEC = REPO.parent / "shared" / "spec" / SPEC_NAME
SPEC_COPY = Path(__file__).resolve().parent / "data" / "spec.md"  # shipped copy: the test never skips

# Component I/O that is artifact plumbing (paths in FinetuneConfig, artifacts in KFP) or extra outputs.
ARTIFACT_FIELDS = {"preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder",
                   "onnx_model_folder", "deepspeed"}
EXTRA_OUTPUTS = {"metrics", "report"}
KFP_TYPES = {"string": "String", "integer": "Integer", "number": "Float"}


def spec_text() -> str:
    return (SHARED_SPEC if SHARED_SPEC.exists() else SPEC_COPY).read_text(encoding="utf-8")


def parse_spec_tables(text: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(inputs, outputs) rows of the spec's markdown tables, keyed by parameter name."""
    inputs, outputs = {}, {}
    header = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        row = dict(zip(header, cells))
        (inputs if "default" in header else outputs)[row["name"]] = row
    return inputs, outputs


def spec_value(row: dict):
    """The spec default as a Python value of the spec type (None for '-')."""
    default, kind = row["default"], row["type"]
    if default in ("-", ""):
        return None
    if kind == "integer":
        return int(default)
    if kind == "number":
        return float(default)
    return default


@pytest.fixture(scope="module")
def component_spec():
    from components.finetune.component import finetune

    return finetune.component_spec


def test_spec_copy_is_current():
    assert SPEC_COPY.exists()
    if SHARED_SPEC.exists():
        assert SPEC_COPY.read_text() == SHARED_SPEC.read_text(), "refresh tests/data/spec.md from ../shared/spec"


def test_spec_tables_parse():
    inputs, outputs = parse_spec_tables(spec_text())
    assert len(inputs) >= 40 and {"apply_lora", "learning_rate", "deepspeed", "preprocess_output"} <= set(inputs)
    assert set(outputs) == {"pytorch_model_folder", "mlflow_model_folder"}


def test_component_names_match_config(component_spec):
    config_names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    component_names = set(component_spec.inputs) | set(component_spec.outputs)
    assert component_names - EXTRA_OUTPUTS == config_names
    # the spec's two outputs, our ONNX export (an extension), metrics and report
    assert set(component_spec.outputs) == {"pytorch_model_folder", "mlflow_model_folder", "onnx_model_folder"} \
        | EXTRA_OUTPUTS


def test_every_config_field_has_its_spec_default(component_spec):
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in ARTIFACT_FIELDS:
            continue
        spec = component_spec.inputs[f.name]
        assert spec.default == spec_default(f), f.name
        assert type(spec.default) is type(spec_default(f)) or spec.default is None, f.name
        expected = "String" if field_base_type(f) in (bool, str) else KFP_TYPES[
            {int: "integer", float: "number"}[field_base_type(f)]]
        assert spec.type == expected, f.name


def test_every_spec_parameter_is_exposed_with_the_spec_default(component_spec):
    inputs, outputs = parse_spec_tables(spec_text())
    spec_field_names = {f.name for f in spec_fields()}
    for name, row in inputs.items():
        assert name in component_spec.inputs, f"spec parameter {name} missing from the component"
        assert name in spec_field_names, f"spec parameter {name} missing from FinetuneConfig (spec=True)"
        ours = component_spec.inputs[name]
        if row["type"] in ("uri_file", "uri_folder"):
            assert ours.type.startswith("system."), name
            assert ours.optional == (row["optional"] == "True"), name
            continue
        assert ours.type == KFP_TYPES[row["type"]], f"{name}: {ours.type} vs spec {row['type']}"
        assert ours.default == spec_value(row), f"{name}: {ours.default!r} vs spec {row['default']!r}"
        if row["type"] == "string":
            assert isinstance(ours.default, str), name
        enum = row.get("enum", "NA")
        if enum not in ("NA", ""):
            for value in re.findall(r"'([^']*)'", enum):
                assert value in (ours.description or ""), f"{name}: enum value {value!r} undocumented"
    for name in outputs:
        assert name in component_spec.outputs
    # Every spec=True field is in the spec (no invented "spec" parameters).
    assert spec_field_names <= set(inputs) | set(outputs)


def test_component_defaults_build_the_default_config(component_spec):
    paths = {name: f"/tmp/{name}" for name in ARTIFACT_FIELDS - {"deepspeed", "onnx_model_folder"}}
    values = {name: spec.default for name, spec in component_spec.inputs.items()
              if name not in ARTIFACT_FIELDS and spec.default is not None}
    assert FinetuneConfig(**paths, **values).to_dict() == FinetuneConfig(**paths).to_dict()


def test_compiled_yaml_carries_the_same_defaults():
    import yaml

    compiled = yaml.safe_load((REPO / "components" / "finetune" / "component.yaml").read_text())
    params = compiled["components"]["comp-finetune"]["inputDefinitions"]["parameters"]
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in ARTIFACT_FIELDS or spec_default(f) is None:
            continue
        assert params[f.name]["defaultValue"] == spec_default(f), f.name


def _doc_texts() -> dict[str, str]:
    """The documentation a reader of the repository gets: READMEs, docs/, and the compiled components' and
    pipelines' descriptions (what the KFP UI shows)."""
    import importlib

    texts = {str(p.relative_to(REPO)): p.read_text() for p in
             [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "pipelines" / "README.md",
              *sorted((REPO / "components").glob("*/README.md"))]}
    for path in sorted((REPO / "components").glob("*/component.py")):
        module = importlib.import_module(f"components.{path.parent.name}.component")
        spec = getattr(module, path.parent.name).component_spec
        texts[f"{path.parent.name} component"] = "\n".join(
            [spec.description or ""] + [s.description or "" for s in (spec.inputs or {}).values()])
    return texts


def test_docs_point_to_the_spec_copy_in_the_repository():
    """A spec path in the docs is a file of the repository (tests/data/spec.md) or says it lies outside it
    (../shared/...): a bare shared/spec/... path names a file a clone does not have."""
    paths = re.compile(r"(?<![\w./-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)+\.md)")
    for where, text in _doc_texts().items():
        for found in paths.findall(text):
            if "spec" in found and not found.startswith("../"):
                assert (REPO / found).exists(), f"{where} names {found}, which is not in the repository"
        if SPEC_NAME in text:
            assert "tests/data/spec.md" in text, f"{where} names the spec without its in-repository copy"


def test_readme_states_the_split_ratios_the_code_uses():
    """README: a missing split is carved out 80/10/10 only when both are missing; one missing split gets both
    ratios (80/20), as preprocess does and the test_ratio help says."""
    from trainer.config import PreprocessConfig

    defaults = {f.name: f.default for f in dataclasses.fields(PreprocessConfig)}
    validation, test = defaults["validation_ratio"], defaults["test_ratio"]
    both = f"{round(100 * (1 - validation - test))}/{round(100 * validation)}/{round(100 * test)}"
    one = f"{round(100 * (1 - validation - test))}/{round(100 * (validation + test))}"
    help_text = PreprocessConfig.describe(next(f for f in PreprocessConfig.parameter_fields()
                                               if f.name == "test_ratio"))
    assert one in help_text
    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = readme.split("split is carved from the training data", 1)[1].split(". ", 1)[0]
    assert f"{both} (`--validation_ratio`, `--test_ratio`) when both are missing" in sentence, sentence
    assert f"{one} when only one is" in sentence, sentence

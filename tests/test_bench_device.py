"""bench/device: the random-init encoder a GPU run trains (a model folder model_import accepts, of the asked shape,
seeded) and the scripts' shell syntax (they run on a lent GPU machine, never in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_model_import

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "device"))

import make_random_model  # noqa: E402


@pytest.fixture()
def source(tmp_path, tiny_model_selector) -> Path:
    """A folder with only a config.json and tokenizer files, as bench/device/prepare.sh leaves MiniLM's."""
    from transformers import AutoConfig, AutoTokenizer

    folder = tmp_path / "source"
    AutoConfig.from_pretrained(tiny_model_selector).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_selector).save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    return folder


def test_the_model_has_the_overridden_shape_its_tokenizer_and_model_import_accepts_it(tmp_path, source):
    from transformers import AutoModel, AutoTokenizer

    out = make_random_model.make(source, tmp_path / "wide", {"hidden_size": 48, "num_hidden_layers": 3,
                                                            "intermediate_size": 96})
    model = AutoModel.from_pretrained(out)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (48, 3)
    assert model.encoder.layer[0].intermediate.dense.weight.shape == (96, 48)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()
    run_model_import(model_path=str(out), model_selector_output=str(tmp_path / "imported"))
    assert AutoModel.from_pretrained(tmp_path / "imported").config.hidden_size == 48


def test_the_weights_are_seeded(tmp_path, source):
    from transformers import AutoModel

    a, b, c = (AutoModel.from_pretrained(make_random_model.make(source, tmp_path / name, {}, seed=seed))
               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    weight = lambda m: m.encoder.layer[0].attention.self.query.weight  # noqa: E731
    assert bool((weight(a) == weight(b)).all()) and not bool((weight(a) == weight(c)).all())


def test_an_unknown_config_field_is_refused(tmp_path, source):
    with pytest.raises(SystemExit, match="no field 'hidden_sise'"):
        make_random_model.make(source, tmp_path / "x", {"hidden_sise": 768})


@pytest.mark.parametrize("script", ["prepare.sh", "gpu_bench.sh"])
def test_the_device_scripts_parse(script):
    subprocess.run(["bash", "-n", str(REPO / "bench" / "device" / script)], check=True)

"""A model is served in the precision it was trained and validated in (trainer.precision): under bf16 autocast where a
precision-16 model meets a device that computes bf16 natively, in fp32 otherwise or when asked; every served copy
(the MLflow model) carries the precision. On the tiny BERT fine-tuned on the synthetic task (trained in fp32, its
record rewritten to 16: serving reads the record, not the weights, which are fp32 either way)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_token_classifier
from trainer import precision
from trainer.errors import InputError
from trainer.inference import TorchBackend, load_classifier

NATIVE = {"avx2", "avx512f", "avx512_bf16"}
EMULATED = {"avx2", "avx512f"}
SENTENCES = [["Alice", "lives", "in", "Paris"], ["nothing", "here"], ["Bob", "met", "Carol", "in", "Rome", "."]]


@pytest.fixture
def trained_in_16(tiny_finetuned, tmp_path):
    folder = tmp_path / "trained_in_16"
    shutil.copytree(tiny_finetuned["pytorch"], folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    args = json.loads((folder / "finetune_args.json").read_text())
    (folder / "finetune_args.json").write_text(json.dumps({**args, "precision": "16"}))
    return folder


def linear_dtypes(classifier) -> set:
    """The dtypes the model's linear layers compute in while `classifier` predicts SENTENCES."""
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in classifier.backend.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        classifier.predict(SENTENCES)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("trained, flags, expected", [("16", NATIVE, torch.bfloat16), ("16", EMULATED, None),
                                                      ("32", NATIVE, None), ("16", set(), None)])
def test_the_serving_dtype_is_the_training_autocast_where_the_cpu_computes_it_natively(monkeypatch, trained, flags,
                                                                                        expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.serving_dtype(trained, torch.device("cpu")) == expected


def test_a_model_trained_in_16_is_served_under_bf16_autocast_on_a_native_bf16_cpu(trained_in_16, tiny_finetuned,
                                                                                 monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: NATIVE)
    served = load_classifier(trained_in_16)
    assert served.compute_dtype == "bfloat16" and linear_dtypes(served) == {torch.bfloat16}
    forced = load_classifier(trained_in_16, precision="32")
    assert forced.compute_dtype == "float32" and linear_dtypes(forced) == {torch.float32}
    trained_in_32 = load_classifier(tiny_finetuned["pytorch"])
    assert trained_in_32.compute_dtype == "float32" and linear_dtypes(trained_in_32) == {torch.float32}
    # the same words, labels and entities come out (a bf16 forward moves the scores a little)
    for ours, exact in zip(served.predict(SENTENCES), forced.predict(SENTENCES)):
        assert ours.words == exact.words and len(ours.labels) == len(exact.labels)
    monkeypatch.setattr(precision, "cpu_flags", lambda: EMULATED)  # emulated bf16 is slower than fp32
    assert linear_dtypes(load_classifier(trained_in_16)) == {torch.float32}


@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta-v2"])
def test_served_linear_weights_are_stored_in_bf16_and_compute_exactly_what_autocast_computes(monkeypatch, kind):
    monkeypatch.setattr(precision, "cpu_flags", lambda: NATIVE)
    model = tiny_token_classifier(kind).eval()
    batch = {"input_ids": np.array([[2, 7, 8, 9, 10, 3], [2, 12, 13, 3, 5, 5]]),
             "attention_mask": np.array([[1] * 6, [1, 1, 1, 1, 0, 0]]), "token_type_ids": np.zeros((2, 6), np.int64)}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights, cast per forward
        expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy()
    backend = TorchBackend(copy.deepcopy(model), device="cpu", precision="16")
    served = backend.model
    assert {m.weight.dtype for m in served.modules() if isinstance(m, torch.nn.Linear)} == {torch.bfloat16}
    assert {p.dtype for n, p in served.named_parameters() if "embeddings" in n or "LayerNorm" in n} == {torch.float32}
    np.testing.assert_array_equal(backend(batch), expected)
    fp32 = TorchBackend(copy.deepcopy(model), device="cpu", precision="32").model  # precision 32: nothing stored
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


def test_a_tied_weight_and_the_first_parameter_keep_their_dtype():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(4, 4)  # its weight is the model's dtype, which models read
            self.embed = torch.nn.Embedding(10, 4)
            self.hidden = torch.nn.Linear(4, 4)
            self.decoder = torch.nn.Linear(4, 10, bias=False)
            self.decoder.weight = self.embed.weight  # tied: the embedding reads it outside any autocast op

    toy = Toy()
    assert precision.store_linear_weights_in(toy, torch.bfloat16) == 1
    assert toy.hidden.weight.dtype == toy.hidden.bias.dtype == torch.bfloat16
    assert toy.first.weight.dtype == toy.embed.weight.dtype == toy.decoder.weight.dtype == torch.float32


def test_the_mlflow_model_carries_the_precision_and_serves_in_it(trained_in_16, tmp_path, monkeypatch):
    import mlflow.models
    import mlflow.pyfunc

    from trainer.mlflow_model import save_mlflow_model

    monkeypatch.setattr(precision, "cpu_flags", lambda: NATIVE)
    save_mlflow_model(trained_in_16, tmp_path / "mlflow")
    served = tmp_path / "mlflow" / "artifacts" / "model"
    assert json.loads((served / "serving.json").read_text())["precision"] == "16"
    assert not (served / "finetune_args.json").exists()  # the run records stay behind: serving.json says it
    assert mlflow.models.Model.load(str(tmp_path / "mlflow")).metadata["precision"] == "16"
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "mlflow"))
    classifier = pyfunc.unwrap_python_model().classifier
    assert classifier.compute_dtype == "bfloat16" and linear_dtypes(classifier) == {torch.bfloat16}
    expected = [p.to_dict() for p in load_classifier(trained_in_16).predict([" ".join(s) for s in SENTENCES])]
    assert pyfunc.predict([" ".join(s) for s in SENTENCES]) == expected  # the pytorch folder's served predictions
    exact = mlflow.pyfunc.load_model(str(tmp_path / "mlflow"), model_config={"precision": "32"})
    assert linear_dtypes(exact.unwrap_python_model().classifier) == {torch.float32}


def test_a_bad_precision_is_refused_before_the_model_loads(trained_in_16):
    with pytest.raises(InputError, match="precision must be auto, 32 or 16, got 'bf16'"):
        load_classifier(trained_in_16, precision="bf16")
    (trained_in_16 / "finetune_args.json").write_text(json.dumps({"precision": "8"}))
    with pytest.raises(InputError, match=r"finetune_args\.json: precision='8' is not one of"):
        load_classifier(trained_in_16)

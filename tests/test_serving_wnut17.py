"""The real MiniLM encoder on real WNUT-17: every output variant (ZeRO-3 on two processes too) reloads on its own and
predicts the whole test set exactly like its MLflow model, word for word; the ONNX export agrees with PyTorch (max
|Δlogit| reported)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_model_import, run_preprocess
from test_deepspeed import _run
from test_serving import _free_port, assert_self_contained_and_equal_to_mlflow
from trainer.config import FinetuneConfig
from trainer.finetune import finetune
from trainer.inference import OnnxBackend, TorchBackend, load_classifier

pytestmark = pytest.mark.slow

# A few steps only: what is tested is that each published variant is whole and served alike, not accuracy
# (tests/test_real_model.py shows MiniLM learning WNUT-17). A barely trained head labels many words as entities,
# so "word for word" compares thousands of non-O labels.
VARIANTS = {
    "full": {},
    "lora-merged": dict(apply_lora=True),
    "lora-unmerged": dict(apply_lora=True, merge_lora_weights=False),
}


def _head(src: Path, dst: Path, sentences: int) -> Path:
    blocks = [b for b in re.split(r"\n\s*\n", src.read_text()) if b.strip()][:sentences]  # blank lines may hold a tab
    dst.write_text("\n\n".join(blocks) + "\n")
    return dst


@pytest.fixture(scope="module")
def wnut(tmp_path_factory, minilm_dir, wnut17_dir) -> dict:
    """MiniLM imported; WNUT-17 preprocessed (1,000 training tweets: every label; 100 validation; 50 test for the
    fine-tune's own scoring); the whole test set (1,287 tweets) as texts for the comparisons."""
    from trainer.readers import read_conll

    root = tmp_path_factory.mktemp("wnut17_serving")
    run_model_import(model_selector_output=str(root / "model"), model_path=str(minilm_dir))
    run_preprocess(train_data=str(_head(wnut17_dir / "train.conll", root / "train.conll", 1000)),
                   validation_data=str(_head(wnut17_dir / "validation.conll", root / "validation.conll", 100)),
                   test_data=str(_head(wnut17_dir / "test.conll", root / "test.conll", 50)),
                   model_selector_output=str(root / "model"), preprocess_output=str(root / "data"), max_seq_length=128)
    words = [tokens for tokens, _ in read_conll(wnut17_dir / "test.conll")]
    return {"root": root, "words": words, "texts": [" ".join(w) for w in words]}


def _finetune(wnut: dict, name: str, **values) -> dict:
    out = wnut["root"] / name
    folders = {"pytorch": out / "pytorch", "mlflow": out / "mlflow", "onnx": out / "onnx"}
    finetune(FinetuneConfig(
        preprocess_output=str(wnut["root"] / "data"), model_selector_output=str(wnut["root"] / "model"),
        pytorch_model_folder=str(folders["pytorch"]), mlflow_model_folder=str(folders["mlflow"]),
        onnx_model_folder=str(folders["onnx"]) if name == "full" else None, per_device_train_batch_size=16,
        per_device_eval_batch_size=64, max_steps=4, learning_rate=1e-5, evaluation_strategy="steps", eval_steps=4,
        logging_strategy="steps", logging_steps=4, metric_for_best_model="f1", **values))
    return folders


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_predicts_the_wnut17_test_set_like_its_mlflow_model(wnut, variant):
    folders = _finetune(wnut, variant, **VARIANTS[variant])
    predictions = assert_self_contained_and_equal_to_mlflow(folders["pytorch"], folders["mlflow"], wnut["texts"])
    assert len(predictions) == 1287 and sum(len(p.words) for p in predictions) > 20000
    if variant == "full":
        assert sum(len(p.entities) for p in predictions) > 1000  # "equal" is not "all O"
        wnut["full"] = folders


def test_the_zero3_output_predicts_the_wnut17_test_set_like_its_mlflow_model(wnut, wnut17_dir):
    """ZeRO-3 under `torchrun --nproc_per_node 2` (CPU, gloo): the model gathered from both ranks' shards is whole and
    serves like its MLflow model. 48 tweets and 3 steps: what is tested is the output, not learning."""
    root = wnut["root"] / "zero3"
    root.mkdir()
    run_preprocess(train_data=str(_head(wnut17_dir / "train.conll", root / "train.conll", 48)),
                   validation_data=str(_head(wnut17_dir / "validation.conll", root / "validation.conll", 16)),
                   test_data=str(_head(wnut17_dir / "test.conll", root / "test.conll", 16)),
                   model_selector_output=str(wnut["root"] / "model"), preprocess_output=str(root / "data"),
                   max_seq_length=128)
    _run(["torchrun", "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "trainer.cli",
          "--preprocess_output", str(root / "data"), "--model_selector_output", str(wnut["root"] / "model"),
          "--pytorch_model_folder", str(root / "pytorch"), "--mlflow_model_folder", str(root / "mlflow"),
          "--apply_deepspeed", "true", "--deepspeed_preset", "zero3", "--per_device_train_batch_size", "8",
          "--per_device_eval_batch_size", "16", "--max_steps", "3", "--learning_rate", "1e-5",
          "--evaluation_strategy", "steps", "--eval_steps", "3", "--metric_for_best_model", "f1"], root)
    shards = {p.name for p in (root / "pytorch").glob("checkpoint-3/global_step3/*.pt")}
    assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= shards, shards  # ZeRO-3 partitioned
    predictions = assert_self_contained_and_equal_to_mlflow(root / "pytorch", root / "mlflow", wnut["texts"])
    assert len(predictions) == 1287 and sum(len(p.entities) for p in predictions) > 100, "all O"


def test_onnx_export_matches_pytorch_on_the_wnut17_test_set(wnut, capsys):
    folders = wnut.get("full") or _finetune(wnut, "full", **VARIANTS["full"])
    onnx_classifier, torch_classifier = load_classifier(folders["onnx"]), load_classifier(folders["pytorch"])
    assert isinstance(onnx_classifier.backend, OnnxBackend) and isinstance(torch_classifier.backend, TorchBackend)
    # logits of every test tweet, encoded as preprocess does, 64 at a time by length (padding in the graph's work)
    words = sorted(wnut["words"], key=len)
    worst = 0.0
    for start in range(0, len(words), 64):
        batch = dict(torch_classifier.tokenizer(words[start:start + 64], is_split_into_words=True, padding=True,
                                                truncation=True, max_length=128, return_tensors="np"))
        batch = {key: value.astype(np.int64) for key, value in batch.items()}
        mask = batch["attention_mask"].astype(bool)
        worst = max(worst, float(abs(onnx_classifier.backend(batch) - torch_classifier.backend(batch))[mask].max()))
    with capsys.disabled():
        print(f"\nONNX vs PyTorch on the WNUT-17 test set (1,287 tweets): max |Δlogit| = {worst:.2e}")
    assert worst < 1e-3
    # The same label for every word, except where PyTorch's two best logits are closer than the backends' rounding
    # apart (4 steps from a random head leave near-ties; which label wins one is rounding, not the export).
    flips = []
    for ours, theirs in zip(onnx_classifier.predict(wnut["texts"]), torch_classifier.predict(wnut["texts"])):
        for k, (a, b) in enumerate(zip(ours.labels, theirs.labels)):
            if a != b:
                second, first = np.sort(np.log(theirs.probabilities[k]))[-2:]
                flips.append(float(first - second))
    with capsys.disabled():
        print(f"labels that differ: {len(flips)}, at top-two logit margins {flips}")
    assert all(margin <= 2 * worst for margin in flips), (flips, worst)
    assert len(flips) <= 3, flips

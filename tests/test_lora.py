"""LoRA: our target map covers every family, merged and unmerged outputs reload with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForTokenClassification, AutoTokenizer

from trainer.errors import ConfigError
from trainer.finetune import finetune
from trainer.constants import BASE_MODEL_SUBDIR
from trainer.lora import LORA_TARGET_MODULES, apply_lora, target_modules_for

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
            d_model=16, n_embd=16, n_layer=1, n_head=2, dim=16, hidden_dim=16, n_layers=1, n_heads=2, d_ff=16,
            d_kv=8, num_layers=1, num_heads=2, embedding_size=16, max_position_embeddings=32, n_positions=32)
HEADLESS = {"bart", "mbart"}  # transformers 5 has no *ForTokenClassification for these: map kept for custom heads


@pytest.mark.parametrize("family", sorted(set(LORA_TARGET_MODULES) - HEADLESS))
def test_target_map_wraps_every_family(make_config, family):
    config = CONFIG_MAPPING[family]()
    for key, value in TINY.items():
        if hasattr(config, key):
            setattr(config, key, value)
    config.num_labels = 3
    model = AutoModelForTokenClassification.from_config(config)
    peft_model = apply_lora(model, make_config(apply_lora=True))
    wrapped = {n.split(".lora_A")[0].split(".")[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert wrapped == set(LORA_TARGET_MODULES[family])
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable)  # the new head trains (and is saved) too
    assert all("lora_" in n or "classifier" in n for n in trainable)


def test_unsupported_family_without_targets_is_a_clear_error():
    with pytest.raises(ConfigError, match="lora_target_modules"):
        target_modules_for("mistral")
    assert target_modules_for("mistral", ["q_proj"]) == ["q_proj"]


def _logits(model, folder, text="bob smith works for globex in oslo ."):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model.eval()(**tokenizer(text, return_tensors="pt")).logits


def test_merged_lora_model_reloads_with_plain_transformers(make_config, caplog):
    config = make_config(apply_lora=True, learning_rate=5e-2, lora_r=8, lora_alpha=16, num_train_epochs=12)
    with caplog.at_level("INFO", logger="trainer"):
        result = finetune(config)
    assert result.validation_metrics["eval_f1"] > 0.8
    # the new head is announced once, not again when publishing loads the base to merge the adapter into
    assert sum("new token-classification head" in r.getMessage() for r in caplog.records) == 1

    root = Path(config.pytorch_model_folder)
    assert not (root / "adapter_config.json").exists()
    plain = AutoModelForTokenClassification.from_pretrained(root)
    assert not any("lora" in n for n, _ in plain.named_parameters())

    # Same logits as the adapter checkpoint of the best step, loaded through peft.
    from peft import PeftModel

    base = AutoModelForTokenClassification.from_pretrained(
        config.model_selector_output, num_labels=6, ignore_mismatched_sizes=True)
    adapted = PeftModel.from_pretrained(base, result.best_checkpoint)
    assert torch.allclose(_logits(plain, root), _logits(adapted, root), atol=1e-5)


def test_unmerged_lora_saves_base_plus_adapter_that_reload(make_config):
    from peft import PeftModel

    config = make_config(apply_lora=True, merge_lora_weights="false", learning_rate=5e-2, lora_alpha=16, num_train_epochs=12)
    result = finetune(config)
    root = Path(config.pytorch_model_folder)
    assert (root / "adapter_config.json").exists() and (root / BASE_MODEL_SUBDIR / "config.json").exists()
    reloaded = PeftModel.from_pretrained(
        AutoModelForTokenClassification.from_pretrained(root / BASE_MODEL_SUBDIR), root)
    assert reloaded.config.id2label[0] == "O"
    best = PeftModel.from_pretrained(
        AutoModelForTokenClassification.from_pretrained(config.model_selector_output, num_labels=6,
                                                        ignore_mismatched_sizes=True), result.best_checkpoint)
    assert torch.allclose(_logits(reloaded, root), _logits(best, root), atol=1e-5)
    assert result.validation_metrics["eval_f1"] > 0.8
    # Our one loader (evaluate step, MLflow export, continual fine-tuning) merges it to the same logits.
    from trainer.model_io import load_token_classification_model

    assert torch.allclose(_logits(load_token_classification_model(root), root), _logits(best, root), atol=1e-5)

    # The MLflow model serves the merged equivalent; continual fine-tuning accepts this folder as a base.
    import mlflow.pyfunc

    from trainer.inference import load_classifier

    sentences = ["alice lives in paris .", "bob smith works at acme corp in london ."]
    served = mlflow.pyfunc.load_model(config.mlflow_model_folder).predict(sentences)
    direct = load_classifier(root).predict(sentences)  # the adapter folder, merged by our loader
    assert [s["labels"] for s in served] == [p.labels for p in direct]
    assert any(label != "O" for p in direct for label in p.labels)  # a model that tags, not an all-O one
    again = finetune(make_config("again", model_selector_output=str(root), num_train_epochs=1, learning_rate=1e-3))
    assert again.validation_metrics["eval_f1"] > 0.8

"""ONNX export of a fine-tuned model for serving: model.onnx (dynamic batch and sequence axes), tokenizer, label map.

No maintained exporter supports transformers 5 yet (optimum-onnx requires transformers<4.58, checked with
transformers 5.24): the model is exported with `torch.onnx.export` (the TorchScript-based exporter: 3.8 s for
bert-base against 9.5 s for `dynamo=True`, the same logits) behind a wrapper that returns the logits alone. Every
export is verified before it is published: onnxruntime's logits on a padded sample batch must match PyTorch's
(the max |Δlogit| is recorded in onnx_export.json); the folder is staged beside its target and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

from trainer.errors import InputError
from trainer.inference import EXPORT_INFO, ONNX_FILE

logger = logging.getLogger(__name__)

OPSET = 17
MAX_LOGIT_DIFF = 1e-3  # float32 export of an encoder agrees to ~1e-5; more means a broken graph
SAMPLE = [["Alice", "lives", "in", "Paris", "."], ["Bob", "Smith", "works", "for", "Acme", "Corp", "in", "New", "York",
                                                   "since", "2019", "!"]]


def export_onnx(model_dir: str | Path, target: str | Path, published_from: str | Path | None = None) -> dict:
    """Export the model of a fine-tune output (merged; unmerged LoRA is merged) into `target`; returns the export
    record (also written to `target`/onnx_export.json). With `published_from` (the fine-tune output folder), the
    export is an output of that folder: an earlier export it published there is replaced."""
    import onnxruntime
    import torch

    from trainer.inference import copy_serving_settings, copy_tag_scheme, load_serving_tokenizer
    from trainer.model_io import load_token_classification_model
    from trainer.publish import ensure_empty_or_absent, publish_dir, publish_output, staging_dir

    model_dir, target = Path(model_dir), Path(target)
    ensure_empty_or_absent(target, "onnx_model_folder", published_from=published_from)
    started = time.perf_counter()
    tokenizer = load_serving_tokenizer(model_dir)
    # Eager attention: one plain graph that every onnxruntime build runs (SDPA exports too, but no faster here).
    model = load_token_classification_model(model_dir, attn_implementation="eager").eval().float()
    sample = tokenizer(SAMPLE, is_split_into_words=True, padding=True, return_tensors="np")
    wrapper = _logits_only(model, produced=set(sample.keys()))
    inputs = {name: sample[name].astype("int64") for name in wrapper.input_names}
    stage = staging_dir(target)
    try:
        _trace(wrapper, inputs, stage / ONNX_FILE)
        diff = _verify(wrapper, inputs, sample["attention_mask"].astype(bool), stage / ONNX_FILE, model_dir)
        model.config.save_pretrained(stage)  # id2label / label2id for the served labels
        tokenizer.save_pretrained(stage)
        copy_tag_scheme(model_dir, stage)  # the run records stay behind: the spans' scheme goes with the model,
        copy_serving_settings(model_dir, stage, precision=False)  # and the window it was trained on
        record = {"exporter": "torch.onnx.export (TorchScript)", "opset": OPSET, "inputs": list(inputs),
                  "outputs": ["logits"], "dynamic_axes": ["batch", "sequence"], "max_abs_logit_diff": diff,
                  "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                  "seconds": round(time.perf_counter() - started, 2)}
        (stage / EXPORT_INFO).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if published_from is not None:
            publish_output(stage, target, published_from)
        else:
            publish_dir(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("ONNX export: %s (max |Δlogit| %.1e vs PyTorch, %.1f s)", target / ONNX_FILE, diff, record["seconds"])
    return record


def _trace(wrapper, inputs: dict, path: Path) -> None:
    import torch

    from trainer.ort import standard_onnx_symbolics

    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings(), standard_onnx_symbolics(OPSET):
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches: _verify decides
        torch.onnx.export(wrapper, tuple(torch.from_numpy(v) for v in inputs.values()), str(path),
                          input_names=list(inputs), output_names=["logits"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{name: axes for name in inputs}, "logits": axes})


def _verify(wrapper, inputs: dict, mask, path: Path, model_dir: Path) -> float:
    """Standard ONNX operators only, and onnxruntime's logits on the sample equal PyTorch's: the max |Δlogit|."""
    import onnx
    import torch

    from trainer.inference import OnnxBackend

    custom = {node.domain for node in onnx.load(str(path), load_external_data=False).graph.node} - {"", "ai.onnx"}
    if custom:
        raise InputError(f"the ONNX export of {model_dir} uses operators outside standard ONNX ({sorted(custom)})")
    with torch.inference_mode():
        expected = wrapper(*[torch.from_numpy(v) for v in inputs.values()]).numpy()
    diff = float(abs(OnnxBackend(path, device="cpu")(inputs) - expected)[mask].max())
    if not diff <= MAX_LOGIT_DIFF:
        raise InputError(f"the ONNX export of {model_dir} disagrees with PyTorch (max |Δlogit| {diff:.2e} > "
                         f"{MAX_LOGIT_DIFF}); serve the PyTorch or MLflow model instead")
    return diff


def _logits_only(model, produced: set[str]):
    """The model as a torch Module of its input tensors (the names its forward takes and the tokenizer makes:
    RoBERTa's takes token_type_ids, its tokenizer makes none) returning the logits alone."""
    import inspect

    import torch

    from trainer.inference import MODEL_INPUT_NAMES

    accepted = inspect.signature(model.forward).parameters
    names = tuple(n for n in MODEL_INPUT_NAMES if n in accepted and n in produced)

    class LogitsOnly(torch.nn.Module):
        input_names = names

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    return LogitsOnly().eval()

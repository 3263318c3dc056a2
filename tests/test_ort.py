"""apply_ort=true trains inside ONNX Runtime's ORTModule and publishes every output, in the ORT stack of
images/Dockerfile.ort (torch 2.6.0 + onnxruntime-training-cpu 1.19.2, built by scripts/install_ort_env.sh from the
same images/requirements-ort.txt), and is refused in one line everywhere else (tests/test_bad_input.py).

The environment is large (6 GB, ~10 min to build on 2 cores): the test skips without it, unless
TOKCLS_REQUIRE_ORT=1 (CI) makes a missing environment a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORT_PYTHON = Path(os.environ.get("TOKCLS_ORT_PYTHON", REPO / ".cache" / "ort-venv" / "bin" / "python"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ort_python() -> Path:
    ready = ORT_PYTHON.exists() and (ORT_PYTHON.parent.parent / ".complete").exists() \
        if "TOKCLS_ORT_PYTHON" not in os.environ else ORT_PYTHON.exists()
    if not ready:
        message = f"no ONNX Runtime training environment at {ORT_PYTHON}: run bash scripts/install_ort_env.sh"
        if os.environ.get("TOKCLS_REQUIRE_ORT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ORT_PYTHON


@pytest.mark.timeout(1200)  # its own subprocess deadline is 900 s (ORTModule builds on first use)
def test_apply_ort_trains_in_ortmodule_and_publishes(ort_python, tmp_path, tiny_preprocess_output,
                                                     tiny_model_selector):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [str(ort_python), "-m", "trainer.cli", "--preprocess_output", str(tiny_preprocess_output),
         "--model_selector_output", str(tiny_model_selector), "--pytorch_model_folder", str(out / "pytorch"),
         "--mlflow_model_folder", str(out / "mlflow"), "--onnx_model_folder", str(out / "onnx"),
         "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--learning_rate", "5e-3",
         "--num_train_epochs", "8", "--metric_for_best_model", "f1", "--apply_ort", "true"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    # it ran inside ORTModule (ORT's own banner), in training mode (no silent fallback: ORTMODULE_FALLBACK_POLICY)
    assert "apply_ort: training inside ONNX Runtime's ORTModule" in log
    assert "ONNX Runtime Training (ORTModule) is accelerating your model" in log and "[training] mode" in \
        log.replace("\x1b[4m", "").replace("\x1b[0m", "")
    metrics = json.loads((out / "pytorch" / "metrics.json").read_text())
    assert metrics["test_metrics"]["test_f1"] > 0.9, metrics["test_metrics"]  # it learned
    assert metrics["onnx_export"]["exported"] is True and metrics["onnx_export"]["torch"].startswith("2.6.0")

    # Every output reloads here (torch 2.13), as plain files: config and tokenizer with the weights.
    from test_serving import TEST_TEXTS, assert_self_contained_and_equal_to_mlflow

    assert (out / "pytorch" / "config.json").exists()
    assert_self_contained_and_equal_to_mlflow(out / "pytorch", out / "mlflow", TEST_TEXTS)
    from trainer.inference import load_classifier

    onnx_labels = [p.labels for p in load_classifier(out / "onnx").predict(TEST_TEXTS)]
    assert onnx_labels == [p.labels for p in load_classifier(out / "pytorch").predict(TEST_TEXTS)]

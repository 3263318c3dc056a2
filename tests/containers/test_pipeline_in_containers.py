"""The compiled pipeline YAML run by kfp.local's DockerRunner in the built trainer image (pipelines/container_runner.py).

Parameter names come from the loaded YAML: optional ones the YAML no longer has are left out; the few the test
cannot do without (data, model, the step cap) fail the test with a clear message when renamed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from conftest import make_sentences, write_conll

REPO = Path(__file__).resolve().parents[2]
PIPELINE_YAML = REPO / "pipelines" / "token_classification_pipeline.yaml"
MODEL_IMPORT_YAML = REPO / "components" / "model_import" / "component.yaml"


def readable_copy(src: Path, dst: Path) -> Path:
    """A copy every user can read: the containers run as uid 1000 (save_pretrained writes 0600 weights)."""
    shutil.copytree(src, dst)
    for folder, _, files in os.walk(dst):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, stat.S_IMODE(os.stat(Path(folder) / name).st_mode) | 0o444)
    return dst


def container_tasks(pipeline_spec) -> set[str]:
    """Names of the DAG tasks (nested ones included) that run a container."""
    executors = pipeline_spec.deployment_spec["executors"]
    components = pipeline_spec.components
    names, dags = set(), [pipeline_spec.root.dag]
    while dags:
        for name, task in dags.pop().tasks.items():
            comp = components[task.component_ref.name]
            if comp.HasField("dag"):
                dags.append(comp.dag)
            elif "container" in executors[comp.executor_label]:
                names.add(name)
    return names


def test_compiled_pipeline_runs_in_containers(docker_url, trainer_image, tmp_path, tiny_model_selector):
    from kfp import components
    from transformers import AutoConfig

    from pipelines.container_runner import container_session

    data = tmp_path / "data"
    data.mkdir()
    train = make_sentences(64, seed=1)
    write_conll(data / "train.conll", train)
    write_conll(data / "validation.conll", make_sentences(16, seed=2))
    write_conll(data / "test.conll", make_sentences(16, seed=3))
    model = readable_copy(tiny_model_selector, tmp_path / "model")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "texts.txt").write_text("alice lives in paris\n\nbob smith works for acme\n", encoding="utf-8")

    pipeline = components.load_component_from_file(str(PIPELINE_YAML))
    inputs = pipeline.component_spec.inputs
    essential = {"data_uri", "model_path", "max_steps", "predict_data_uri"}
    assert essential <= set(inputs), f"the compiled pipeline has no {sorted(essential - set(inputs))}: update this test"

    root = tmp_path / "kfp_root"
    with container_session(root, inputs={"data": data, "model": model, "predict": unlabelled}) as paths:
        wanted = dict(data_uri=paths["data"], model_path=paths["model"], predict_data_uri=paths["predict"],
                      max_seq_length=32, max_steps=4,
                      per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=5e-3,
                      evaluation_strategy="steps", eval_steps=4, logging_strategy="steps", logging_steps=2,
                      run_evaluation=True)
        args = {name: value for name, value in wanted.items() if name in inputs}
        required = [name for name, spec in inputs.items() if not spec.optional and name not in args]
        assert not required, f"the compiled pipeline requires {required}: update this test"
        run = pipeline(**args)

    # Every container step of the YAML (data and model import, preprocess, finetune, evaluate, predict data import,
    # predict) ran and wrote its output,
    # inside the container: as root here, the files belong to the image's uid 1000.
    run_dir = next(root.iterdir())
    expected = container_tasks(pipeline.pipeline_spec)
    assert {"data-import", "model-import", "preprocess", "finetune", "evaluate", "predict"} <= expected
    written = {d.name for d in run_dir.iterdir() if (d / "executor_output.json").exists()}
    assert written == expected
    if os.geteuid() == 0:
        assert {(run_dir / name / "executor_output.json").stat().st_uid for name in written} == {1000}

    outputs = run.outputs
    assert set(outputs) == set(pipeline.component_spec.outputs)
    model_dir = Path(outputs["pytorch_model_folder"].path)
    config = AutoConfig.from_pretrained(model_dir)
    assert set(config.id2label.values()) == {tag for _, tags in train for tag in tags} and config.id2label[0] == "O"
    assert (Path(outputs["mlflow_model_folder"].path) / "MLmodel").exists()
    metrics = outputs["metrics"].metadata
    for key in ("eval_loss", "test_loss", "test_f1"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    predictions = (run_dir / "evaluate" / "predictions").read_text().splitlines()
    assert len(predictions) == 16 and {"tokens", "tags", "predicted_tags"} <= set(json.loads(predictions[0]))
    labelled = [json.loads(line) for line in (run_dir / "predict" / "predictions").read_text().splitlines()]
    assert [row["words"] for row in labelled] == [["alice", "lives", "in", "paris"], [], ["bob", "smith", "works",
                                                                                      "for", "acme"]]


def test_failing_component_fails_with_its_logs_and_leaves_no_container(docker_client, trainer_image, tmp_path,
                                                                     capfd):
    from kfp import components

    from pipelines.container_runner import container_session

    model_import = components.load_component_from_file(str(MODEL_IMPORT_YAML))
    before = {c.id for c in docker_client.containers.list(all=True)}
    with container_session(tmp_path / "kfp_root"):
        with pytest.raises(RuntimeError, match="FAILURE"):
            model_import(model_path="/mnt/tokcls-inputs/absent")
    out = capfd.readouterr().out
    # the component's own one-line error, read back from the container's logs
    assert "/mnt/tokcls-inputs/absent not found in this container" in out
    assert {c.id for c in docker_client.containers.list(all=True)} == before


def test_run_container_returns_the_exit_code_and_the_logs(docker_client, trainer_image, capfd):
    from pipelines.container_runner import run_container

    code = run_container(docker_client, trainer_image, ["sh", "-c", "echo going down; exit 3"], volumes={})
    assert code == 3
    assert "going down" in capfd.readouterr().out


def test_run_container_says_how_to_build_a_missing_image(docker_client, docker_url):
    from pipelines.container_runner import run_container

    with pytest.raises(RuntimeError, match="not in the local store and could not be pulled.*images/build.sh"):
        run_container(docker_client, "localhost/tokcls-no-such-image:0", ["true"], volumes={})


def test_kfp_2_17_docker_runner_loses_the_exit_code_on_podman(docker_client, trainer_image):
    """Why pipelines/container_runner.py replaces kfp's run_docker_container: for a container that exits 3, kfp's own
    returns 0 (podman answered 404: the container was removed before wait()) or raises a docker APIError (podman
    answered 500 while removing it), in most tries. When this fails, kfp has fixed it: drop the replacement."""
    import docker
    from kfp.local import docker_task_handler

    if not any("podman" in c.get("Name", "").lower() for c in docker_client.version().get("Components", [])):
        pytest.skip("deterministic with podman only (Docker may still answer wait() before it removes the container)")
    if docker_task_handler.run_docker_container.__module__ != docker_task_handler.__name__:
        pytest.fail("kfp's run_docker_container is still replaced: the test must see kfp's own")

    def kfp_exit_code(result: dict) -> None:
        try:
            result["code"] = docker_task_handler.run_docker_container(docker_client, trainer_image, ["-c", "exit 3"],
                                                                      volumes={}, entrypoint=["sh"])
        except docker.errors.APIError:
            result["code"] = None

    # The defect is a race between podman's removal of the container and kfp's wait(): kfp usually loses, not always
    # (a CI run on record saw it return 3 once in three). The canary asserts that it loses at all in five tries, and
    # fails only when kfp gets every exit code right.
    codes = []
    for _ in range(5):
        result = {}
        # kfp's function follows the log with no deadline: where podman leaves that request open it never returns
        # (pipelines/container_runner.py), which loses the exit code too
        runner = threading.Thread(target=kfp_exit_code, args=(result,), daemon=True)
        runner.start()
        runner.join(60)
        codes.append(result.get("code"))
        if codes[-1] != 3:
            break
    assert codes[-1] in (0, None), f"kfp 2.17's runner returned the exit code {codes}: drop the replacement"

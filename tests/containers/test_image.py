"""The built CPU trainer image itself: its entry point, user, offline settings and torch build."""

from __future__ import annotations


def run(client, image, command, **kwargs) -> tuple[int, str]:
    from pipelines.container_runner import wait_for_exit

    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        code = wait_for_exit(container)
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


def test_entry_point_help_runs_in_the_image(docker_client, trainer_image):
    code, out = run(docker_client, trainer_image, ["--help"])
    assert code == 0, out
    assert out.startswith("usage: token-classification-finetune")
    for flag in ("--preprocess_output", "--model_selector_output", "--pytorch_model_folder", "--max_steps"):
        assert flag in out, flag


def test_image_runs_as_uid_1000_offline_with_a_cpu_torch(docker_client, trainer_image):
    config = docker_client.images.get(trainer_image).attrs["Config"]
    assert config["User"].split(":")[0] == "1000"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    code, out = run(docker_client, trainer_image,
                    ["-c", "import os, torch, trainer.cli, launcher; print(os.getuid(), os.getgid(), torch.version.cuda)"],
                    entrypoint=["python"])
    assert code == 0, out
    assert out.split() == ["1000", "1000", "None"]


def test_a_failing_command_in_the_image_has_its_exit_code(docker_client, trainer_image):
    code, out = run(docker_client, trainer_image, ["--no-such-flag"])
    assert code == 2 and "--no-such-flag" in out

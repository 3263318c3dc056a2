"""Run the pipeline's components locally in the trainer image: kfp.local.DockerRunner against Docker or podman.

    from pipelines.container_runner import container_session

    with container_session("outputs/in_containers", inputs={"data": data_dir, "model": model_dir}) as paths:
        run = token_classification_pipeline(data_uri=paths["data"], model_path=paths["model"], ...)

What `container_session` does:

- Engine: `DOCKER_HOST` when set, else a Docker daemon on its default socket, else it starts
  `podman system service` on a private socket for the session (podman's Docker-compatible API; CONTAINERS_CONF
  defaults to images/containers.conf). `ContainerEngineUnavailable` when there is none.
- The kfp 2.17 exit-code defect (below) is fixed for the session.
- After the block kfp.local still names the DockerRunner, but its engine may be gone: call kfp.local.init again
  before running components outside it.
- Inputs (data, model folders) are bind-mounted read-only at /mnt/tokcls-inputs/<name>; pass the returned paths
  as the pipeline's path parameters (`data_uri`'s importer only records the URI, the component opens it inside
  the container). kfp itself bind-mounts the pipeline root at the same path, so output artifacts are read back
  on the host at `.path` as usual.
- User: as root on the host, the containers keep the image's non-root user (uid 1000, as on a cluster) and
  the pipeline root is handed to that uid; as any other user, the containers run as that user's uid:gid so
  the outputs belong to them.

The compiled YAMLs name components/images.py's TRAINER_CPU_IMAGE: images/build.sh cpu builds it under that name,
so nothing is pulled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

REPO = Path(__file__).resolve().parents[1]
INPUTS_ROOT = "/mnt/tokcls-inputs"
IMAGE_UID = 1000  # the `trainer` user of images/Dockerfile.*


class ContainerEngineUnavailable(RuntimeError):
    """No Docker daemon, no DOCKER_HOST and no podman: containers cannot run here."""


# --- The kfp 2.17 DockerRunner exit-code defect ------------------------------------------------------------------
# kfp 2.17.3, kfp/local/docker_task_handler.py, run_docker_container(): the container is started with
# auto_remove=True, then its logs are streamed and container.wait() is called. When the container is gone by then
# (it exited and was auto-removed), Docker answers 404 and kfp *returns 0*: a failed component is reported as
# SUCCESS. With podman's Docker-compatible API (4.3.1, measured here) the container is almost always gone by then:
# podman removes it the moment it exits, and answers wait() or the log request 404 "no such container" or, when
# the request races the removal, 500 "does not exist in database". On 404 every component, failed or not, is
# reported as SUCCESS (and one that exits before the log stream attaches loses its logs); the 500 escapes kfp as a
# docker APIError, with no exit code and no logs. Upstream: kubeflow/pipelines issue #13332, fixes proposed in PRs #13402 and
# #13907 (open, not in 2.17.3). `run_container` below is kfp's function without auto_remove: it streams the logs,
# waits for the real exit code and removes the container afterwards. DockerTaskHandler.run() looks
# run_docker_container up in its module at call time, so replacing that one module attribute is the hook.
# A second difference from a cluster, same function: kfp passes the component's command as the container's CMD, so
# an image ENTRYPOINT (ours: token-classification-finetune) is prepended to it; Kubernetes replaces the ENTRYPOINT
# with a container's `command`. `run_container` does the same (first word = entrypoint, the rest = CMD) unless
# `entrypoint` is among the DockerRunner's arguments.

# A third one, podman 4.3.1 again: its compat API can leave a `logs?follow=1` request open after the container has
# exited (the podman issues #6627, #11461 family: a follow that attaches as the container exits). The CI run of
# 2026-12-04 hung for an hour in this function on `sh -c "echo going down; exit 3"`, in that follow or in the
# wait() after it (neither had a deadline; the log does not say which). So the exit code comes from wait(),
# never from the end of the log stream: the stream runs in a thread, gets LOG_GRACE_S after the exit to end by
# itself, is then cut, and whatever it had not delivered is printed from a plain (non-follow) logs request.
LOG_GRACE_S = 10.0
WAIT_POLL_S = 30.0


class _LogFollower(threading.Thread):
    """Prints a container's followed log as it comes; `finish` ends it and prints what it missed, exactly once."""

    def __init__(self, container):
        super().__init__(daemon=True, name=f"logs-{container.id[:12]}")
        self.container, self.received, self.stream = container, 0, None
        self.lock, self.done = threading.Lock(), False

    def run(self) -> None:
        import docker

        with contextlib.suppress(docker.errors.APIError, OSError):
            self.stream = self.container.logs(stream=True, follow=True)
            for chunk in self.stream:
                with self.lock:
                    if self.done:
                        return
                    self.received += len(chunk)
                    print(chunk.decode(errors="replace"), end="", flush=True)

    def finish(self, grace_s: float) -> None:
        self.join(grace_s)
        if self.is_alive() and self.stream is not None:
            with contextlib.suppress(Exception):  # the socket may be closing by itself
                self.stream.close()
            self.join(1.0)
        with self.lock:
            self.done = True
        try:
            rest = self.container.logs()[self.received:]
        except Exception as err:  # noqa: BLE001 - the exit code is known: a lost log tail must not fail the step
            print(f"\n[container log after byte {self.received} unavailable: {err}]", flush=True)
            return
        if rest:
            print(rest.decode(errors="replace"), end="", flush=True)


def wait_for_exit(container, poll_s: Optional[float] = None) -> int:
    """The container's exit code: container.wait(), asked again every poll_s (WAIT_POLL_S) with the container's
    recorded state checked in between, so a wait() the engine never answers cannot block for good."""
    import requests

    while True:
        try:
            return int(container.wait(timeout=poll_s or WAIT_POLL_S)["StatusCode"])
        except requests.exceptions.RequestException:  # timed out: the answer may have been lost, look at the state
            container.reload()
            state = container.attrs["State"]
            if state.get("Status") in ("exited", "dead"):
                return int(state["ExitCode"])


def run_container(client, image: str, command: list, volumes: dict, **container_run_args) -> int:
    """kfp.local.docker_task_handler.run_docker_container with the exit code kept: same signature, same output."""
    import docker
    from kfp.local import docker_task_handler

    image = docker_task_handler.add_latest_tag_if_not_present(image=image)
    try:
        client.images.get(image)
        print(f"Found image {image!r}\n")
    except docker.errors.ImageNotFound:
        print(f"Pulling image {image!r}")
        try:
            client.images.pull(image)
        except docker.errors.APIError as err:
            raise RuntimeError(f"image {image} is not in the local store and could not be pulled ({err}); build it "
                               "with images/build.sh (see images/README.md)") from None
        print("Image pull complete\n")
    container_run_args.pop("auto_remove", None)  # we remove the container ourselves, after reading its exit code
    container_run_args.pop("remove", None)
    if "entrypoint" not in container_run_args and command:
        container_run_args["entrypoint"], command = list(command[:1]), list(command[1:])
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **container_run_args)
    try:
        logs = _LogFollower(container)
        logs.start()
        status_code = wait_for_exit(container)
        logs.finish(LOG_GRACE_S)
        return status_code
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@contextlib.contextmanager
def exit_code_fix() -> Iterator[None]:
    """kfp.local's DockerRunner uses `run_container` for the duration (kfp's own function is put back after)."""
    from kfp.local import docker_task_handler

    if not hasattr(docker_task_handler, "run_docker_container"):
        raise RuntimeError("kfp.local.docker_task_handler.run_docker_container not found: this kfp version is not "
                           "the one pipelines/container_runner.py was written for (kfp 2.17); check whether the "
                           "exit-code fix is still needed there")
    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


# --- The engine ------------------------------------------------------------------------------------------------

def _ping(base_url: str, timeout: float = 5.0) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine there"
        return False


def podman_env() -> dict:
    """The environment podman runs with: CONTAINERS_CONF defaults to the repository's images/containers.conf."""
    env = dict(os.environ)
    conf = REPO / "images" / "containers.conf"
    if not env.get("CONTAINERS_CONF") and conf.exists():
        env["CONTAINERS_CONF"] = str(conf)
    return env


@contextlib.contextmanager
def podman_service(socket_dir: Optional[Union[str, Path]] = None, timeout: float = 30.0) -> Iterator[str]:
    """`podman system service` on a private unix socket for the duration; yields its DOCKER_HOST URL."""
    podman = shutil.which("podman")
    if podman is None:
        raise ContainerEngineUnavailable("podman not found (bash scripts/install_container_tools.sh)")
    owned = socket_dir is None
    folder = Path(tempfile.mkdtemp(prefix="tokcls-podman-")) if owned else Path(socket_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "podman.sock"
    url = f"unix://{sock}"
    log = open(folder / "service.log", "wb")
    proc = subprocess.Popen([podman, "system", "service", "--time=0", url], stdout=log, stderr=subprocess.STDOUT,
                            env=podman_env())
    try:
        deadline = time.monotonic() + timeout
        while not (sock.exists() and _ping(url)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerEngineUnavailable(
                    f"podman system service did not come up on {sock}: {(folder / 'service.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def docker_host() -> Iterator[str]:
    """DOCKER_HOST for the duration: the given one, a Docker daemon, or a podman service started here."""
    given = os.environ.get("DOCKER_HOST")
    if given:
        if not _ping(given):
            raise ContainerEngineUnavailable(f"DOCKER_HOST={given} does not answer")
        yield given
        return
    default = "unix:///var/run/docker.sock"
    if Path("/var/run/docker.sock").exists() and _ping(default):
        yield default
        return
    with podman_service() as url:
        yield url


def engine_available() -> Optional[str]:
    """Why containers cannot run here (a sentence), or None when they can (docker SDK + an engine)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python SDK is not installed (pip install docker)"
    if os.environ.get("DOCKER_HOST"):
        return None if _ping(os.environ["DOCKER_HOST"]) else f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer"
    if Path("/var/run/docker.sock").exists() and _ping("unix:///var/run/docker.sock"):
        return None
    if shutil.which("podman"):
        return None
    return "no Docker daemon, no DOCKER_HOST and no podman (bash scripts/install_container_tools.sh)"


def image_present(image: str) -> bool:
    """Whether `image` is in the local store of the engine `docker_host()` would use."""
    import docker

    with docker_host() as url:
        client = docker.DockerClient(base_url=url)
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        finally:
            client.close()


# --- The session -----------------------------------------------------------------------------------------------

def _container_user(pipeline_root: Path, user: Optional[str]) -> Optional[str]:
    if user is not None:
        return user or None  # "" = the image's user, untouched
    if os.geteuid() == 0:
        # The image's own non-root user writes the outputs: give it the pipeline root (kfp creates the run and task
        # folders from inside the container).
        os.chown(pipeline_root, IMAGE_UID, IMAGE_UID)
        return None
    return f"{os.getuid()}:{os.getgid()}"


def unreadable_by(path: Path, uid: int, gid: int) -> Optional[Path]:
    """The first file or folder under `path` (itself included) that uid:gid cannot read (enter), or None."""
    def readable(p: Path) -> bool:
        st = p.stat()
        need = (stat.S_IRUSR | stat.S_IXUSR) if p.is_dir() else stat.S_IRUSR
        shift = 0 if st.st_uid == uid else 3 if st.st_gid == gid else 6
        return (st.st_mode & (need >> shift)) == need >> shift

    if not readable(path):
        return path
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                if not readable(Path(folder) / name):
                    return Path(folder) / name
    return None


def input_mounts(inputs: Mapping[str, Union[str, Path, None]]) -> tuple[dict[str, str], list]:
    """Read-only bind mounts for host folders/files: ({name: path in the container}, [docker.types.Mount])."""
    from docker.types import Mount

    paths, mounts = {}, []
    for name, host_path in inputs.items():
        if host_path in (None, ""):
            continue
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"input name {name!r}: a plain name, used as /mnt/tokcls-inputs/<name>")
        source = Path(host_path).resolve()
        if not source.exists():
            raise FileNotFoundError(f"input {name!r}: {host_path} does not exist")
        target = f"{INPUTS_ROOT}/{name}"
        mounts.append(Mount(target=target, source=str(source), type="bind", read_only=True))
        paths[name] = target
    return paths, mounts


@contextlib.contextmanager
def container_session(pipeline_root: Union[str, Path], inputs: Optional[Mapping[str, Union[str, Path, None]]] = None,
                      *, user: Optional[str] = None, raise_on_error: bool = True,
                      **container_run_args) -> Iterator[dict[str, str]]:
    """kfp.local initialised with a DockerRunner on this host's engine, for the duration of the `with` block.

    Args:
        pipeline_root: Where the runs' artifacts go (created; mounted into every container at the same path).
        inputs: {name: host path} of folders/files the components read (data, model): mounted read-only at
            /mnt/tokcls-inputs/<name>. The yielded dict maps each name to that container path.
        user: The containers' user: None (default) = see the module docstring; "" = the image's user as is;
            "uid:gid" = that.
        raise_on_error: kfp.local.init's: a failed task raises RuntimeError (default) or is only logged.
        **container_run_args: More docker-py `containers.run` arguments for DockerRunner (mem_limit, network_mode,
            environment, ...).
    """
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    paths, mounts = input_mounts(inputs or {})
    run_args = dict(container_run_args)
    if mounts:
        run_args["mounts"] = list(run_args.get("mounts", [])) + mounts
    container_user = _container_user(root, user)
    if container_user:
        run_args.setdefault("user", container_user)
    elif user is None:  # the image's uid 1000 reads the inputs: say so now rather than in a component's traceback
        for name, host_path in (inputs or {}).items():
            bad = unreadable_by(Path(host_path).resolve(), IMAGE_UID, IMAGE_UID) if host_path else None
            if bad is not None:
                raise PermissionError(f"input {name!r}: {bad} is not readable by the containers' user (uid "
                                      f"{IMAGE_UID}); make it readable (chmod -R a+rX) or pass user=...")
    previous = os.environ.get("DOCKER_HOST")
    with exit_code_fix(), docker_host() as url:
        os.environ["DOCKER_HOST"] = url  # kfp's handler connects with docker.from_env()
        try:
            local.init(runner=local.DockerRunner(**run_args), pipeline_root=str(root), raise_on_error=raise_on_error)
            yield paths
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous

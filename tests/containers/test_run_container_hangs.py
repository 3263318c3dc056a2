"""`run_container` against an engine that never ends a followed log or never answers wait() (podman 4.3.1's compat
API did one of the two in the CI run of 2026-12-04, which then hung for an hour). No engine needed: a fake one.
"""

from __future__ import annotations

import threading

import pytest
import requests

from pipelines import container_runner

IMAGE = "localhost/tokcls-fake:0"


class EndlessLog:
    """A followed log that delivers `first` and then blocks until closed, like podman's hung follow."""

    def __init__(self, first: bytes):
        self.first, self.closed = first, threading.Event()

    def __iter__(self):
        yield self.first
        self.closed.wait()

    def close(self):
        self.closed.set()


class FakeContainer:
    id = "f" * 64

    def __init__(self, log: bytes, follow, exit_code: int, wait_answers: bool):
        self.log, self.follow, self.exit_code, self.wait_answers = log, follow, exit_code, wait_answers
        self.attrs, self.removed, self.never = {"State": {"Status": "running"}}, False, threading.Event()

    def logs(self, stream=False, follow=False):
        return self.follow if stream else self.log

    def wait(self, timeout=None):
        if self.wait_answers:
            return {"StatusCode": self.exit_code}
        if timeout is None:
            self.never.wait()  # no deadline, no answer: blocks for good
        raise requests.exceptions.ReadTimeout("read timed out")

    def reload(self):
        self.attrs = {"State": {"Status": "exited", "ExitCode": self.exit_code}}

    def remove(self, force=False):
        self.removed = True


class FakeClient:
    def __init__(self, container):
        self.container = container
        self.images = self
        self.containers = self

    def get(self, image):
        return image

    def run(self, **kwargs):
        return self.container


def run_bounded(container, capfd, seconds: float = 20.0):
    """run_container in a thread; fails the test (instead of hanging it) when it has not returned in `seconds`."""
    result = {}
    thread = threading.Thread(daemon=True, target=lambda: result.setdefault(
        "code", container_runner.run_container(FakeClient(container), IMAGE, ["sh", "-c", "x"], volumes={})))
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"run_container did not return in {seconds} s"
    return result["code"], capfd.readouterr().out


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch):
    monkeypatch.setattr(container_runner, "LOG_GRACE_S", 0.2)
    monkeypatch.setattr(container_runner, "WAIT_POLL_S", 0.2)


def test_a_log_follow_that_never_ends_does_not_hang_run_container(capfd):
    follow = EndlessLog(b"step 1\n")
    container = FakeContainer(b"step 1\nstep 2 missed by the stream\n", follow, exit_code=3, wait_answers=True)
    code, out = run_bounded(container, capfd)
    assert code == 3
    assert follow.closed.is_set()  # the hung stream was cut
    # everything the container wrote, once: the streamed part, then what the stream had not delivered
    assert out.endswith("step 1\nstep 2 missed by the stream\n") and out.count("step 1") == 1
    assert container.removed


def test_a_wait_that_never_answers_takes_the_exit_code_from_the_container_state(capfd):
    container = FakeContainer(b"going down\n", [b"going down\n"], exit_code=3, wait_answers=False)
    code, out = run_bounded(container, capfd)
    assert code == 3
    assert out.count("going down") == 1
    assert container.removed


def test_a_log_tail_that_cannot_be_read_still_returns_the_exit_code(capfd):
    class LostLog(FakeContainer):
        def logs(self, stream=False, follow=False):
            if stream:
                return self.follow
            raise requests.exceptions.ReadTimeout("read timed out")

    code, out = run_bounded(LostLog(b"", EndlessLog(b"step 1\n"), exit_code=0, wait_answers=True), capfd)
    assert code == 0
    assert out.count("step 1") == 1 and "[container log after byte 7 unavailable: read timed out]" in out

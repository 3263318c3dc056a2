"""A real S3 protocol server for the tests: moto's `ThreadedMotoServer` on loopback, reached over HTTP as MinIO would
be (path-style addressing, a custom endpoint). Import the fixtures into a test module:
`from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)`."""

from __future__ import annotations

import socket
import uuid

import pytest

SECRET = {"accesskey": "minio-test-key", "secretkey": "minio-test-secret"}  # as in mlpipeline-minio-artifact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket; this process's AWS_* env points at the server (as use_secret_as_env would set it).
    Returns (boto3 client, bucket, endpoint URL)."""
    from trainer import objstore

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET["accesskey"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET["secretkey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = objstore.make_client()
    bucket = f"tokcls-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, s3_endpoint

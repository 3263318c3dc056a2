"""S3 (and S3-compatible: MinIO, GCS interop, Ceph RGW) object stores: URIs, the client, folder transfers.

A folder is stored as the objects `<prefix>/<relative path>`; there are no folder objects. The S3 client
is boto3's, configured from the standard environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
(or any other source boto3 knows: web identity, instance profile, ...), `AWS_REGION` /
`AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` (MinIO, GCS at https://storage.googleapis.com, ...).
With a custom endpoint, path-style addressing is used (no wildcard DNS needed) and request checksums
are only sent where required (stores that are not AWS reject boto3's newer default checksums).

Used by `trainer.sources` (models and data from a store) and by the launcher's object-store staging
(`launcher/objstore.py`: the pods' transfer CLI and checkpoint sync). Uploads read local folders through
`trainer.input_tree` (links that leave the folder are refused).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from trainer.errors import InputError, TransferError
from trainer.input_tree import iter_files
from trainer.publish import write_file_atomic

SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreError(ValueError):
    """An object-store URI or location that cannot be used."""


@contextlib.contextmanager
def transfer_errors(uri: S3Uri) -> Iterator[None]:
    """botocore / boto3 errors inside the block (after botocore's and s3transfer's own retries) as a TransferError."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    from trainer.validation import one_line

    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as err:
        cause = getattr(err, "last_exception", None) or err  # boto3's RetriesExceededError: what the last try met
        reason = one_line(cause)[:300] or type(cause).__name__
        raise TransferError(f"the transfer of {uri} failed ({type(cause).__name__}: {reason})") from None


@dataclass(frozen=True)
class S3Uri:
    """`s3://bucket/prefix`; `prefix` has no leading or trailing '/' and may be empty."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def join(self, *parts: str) -> "S3Uri":
        return S3Uri(self.bucket, "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/")))

    @property
    def key_prefix(self) -> str:
        """The prefix of every object "inside" this URI (ends with '/' unless it is the whole bucket)."""
        return f"{self.prefix}/" if self.prefix else ""


def parse_uri(uri: str, what: str = "staging URI") -> S3Uri:
    """Parse and validate `s3://bucket[/prefix]`; other schemes are rejected with a hint. `what` names the URI
    in messages."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ObjectStoreError(f"{what} {uri!r} must look like s3://bucket/prefix")
    scheme = uri.split("://", 1)[0].lower()
    if scheme != "s3":
        raise ObjectStoreError(
            f"{what} {uri!r}: scheme {scheme}:// is not supported; use s3://bucket/prefix (GCS, MinIO and "
            "other S3-compatible stores work through their S3 API: set staging_endpoint_url, e.g. "
            "https://storage.googleapis.com with HMAC keys, or http://minio-service.kubeflow:9000)")
    rest = uri[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ObjectStoreError(f"{what} {uri!r}: bucket {bucket!r} is not a valid bucket name "
                               "(3-63 lowercase letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or c == "\\" for c in prefix):
        raise ObjectStoreError(f"{what} {uri!r}: prefix {prefix!r} has an empty, '.' or '..' segment, "
                               "a backslash or a control character")
    return S3Uri(bucket, prefix)


def endpoint_url(explicit: Optional[str] = None) -> Optional[str]:
    """The endpoint in effect: the explicit one, else boto3's own environment variables, else AWS."""
    return explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(endpoint: Optional[str] = None, max_attempts: int = 5) -> Any:
    """A boto3 S3 client from the standard AWS environment (credentials, region, endpoint)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url(endpoint)
    options: dict[str, Any] = {"retries": {"max_attempts": max_attempts, "mode": "standard"},
                               "connect_timeout": 10, "read_timeout": 120}
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
        if not os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
            options["request_checksum_calculation"] = "when_required"
        if not os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"):
            options["response_checksum_validation"] = "when_required"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region,
                                          config=Config(**options))


def check_bucket(client: Any, uri: S3Uri) -> None:
    """Fail with a clear message unless the bucket exists and these credentials may use it."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        client.head_bucket(Bucket=uri.bucket)
    except NoCredentialsError:
        raise ObjectStoreError(
            f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in this step's environment "
            "(kfp.kubernetes.use_secret_as_env)") from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise ObjectStoreError(f"bucket {uri.bucket!r} of {uri} does not exist") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ObjectStoreError(f"access to bucket {uri.bucket!r} denied ({code}): check the credentials") from None
        raise ObjectStoreError(f"cannot use bucket {uri.bucket!r}: {err}") from None
    except BotoCoreError as err:
        raise ObjectStoreError(f"cannot reach the object store for {uri}: {err}") from None


def list_keys(client: Any, uri: S3Uri) -> Iterator[tuple[str, int]]:
    """(path relative to `uri`, size) of every object under `uri`."""
    paginator = client.get_paginator("list_objects_v2")
    start = len(uri.key_prefix)
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.key_prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][start:]
            if rel and not rel.endswith("/"):
                yield rel, int(obj["Size"])


def exists(client: Any, uri: S3Uri) -> bool:
    """Whether the object `uri` exists (a single key, not a prefix)."""
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=uri.bucket, Key=uri.prefix)
        return True
    except ClientError as err:
        if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def any_object(client: Any, uri: S3Uri) -> bool:
    """Whether at least one object lies under `uri`."""
    page = client.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key_prefix, MaxKeys=1)
    return bool(page.get("Contents"))


def put_text(client: Any, uri: S3Uri, text: str) -> None:
    client.put_object(Bucket=uri.bucket, Key=uri.prefix, Body=text.encode())


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i:i + 1000]]
        answer = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if answer.get("Errors"):
            raise ObjectStoreError(f"could not delete {len(answer['Errors'])} object(s): {answer['Errors'][:3]}")


def delete_prefix(client: Any, uri: S3Uri) -> int:
    """Delete every object under `uri`; returns how many."""
    keys = [uri.key_prefix + rel for rel, _ in list_keys(client, uri)]
    delete_keys(client, uri.bucket, keys)
    return len(keys)


def upload_tree(client: Any, local_dir: str | Path, uri: S3Uri, *, last: tuple[str, ...] = (),
                mirror: bool = False) -> int:
    """Upload every file of `local_dir` under `uri`; files named in `last` go last (completion markers).

    `mirror`: then delete remote objects under `uri` that are not local files.
    Returns the number of files uploaded.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise ObjectStoreError(f"{local_dir} is not a folder")
    try:
        real = dict(iter_files(local_dir))
    except InputError as err:
        raise ObjectStoreError(str(err)) from None
    files = sorted(real, key=lambda rel: (Path(rel).name in last, rel))
    for rel in files:
        client.upload_file(str(real[rel]), uri.bucket, uri.key_prefix + rel)
    if mirror:
        local = set(files)
        stale = [uri.key_prefix + rel for rel, _ in list_keys(client, uri) if rel not in local]
        delete_keys(client, uri.bucket, stale)
    return len(files)


def download_file(client: Any, uri: S3Uri, path: str | Path) -> None:
    """Download the single object `uri` to `path` (`write_file_atomic`: a temporary sibling, synced, renamed);
    TransferError when the transfer fails."""
    with transfer_errors(uri):
        write_file_atomic(path, lambda tmp: client.download_file(uri.bucket, uri.prefix, str(tmp)))


def download_tree(client: Any, uri: S3Uri, local_dir: str | Path, *, exclude: tuple[str, ...] = ()) -> int:
    """Make `local_dir` a copy of the objects under `uri` (an empty folder if there are none).

    Downloads into a temporary sibling and renames it into place, so a half-downloaded folder is never
    seen under `local_dir`. Relative paths named in `exclude` are skipped. Returns the number of files;
    TransferError when the transfer fails.
    """
    local_dir = Path(local_dir)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.", dir=local_dir.parent))
    count = 0
    try:
        target = tmp / "x"
        target.mkdir()
        root = target.resolve()
        with transfer_errors(uri):
            keys = [rel for rel, _ in list_keys(client, uri)]
        for rel in keys:
            if rel in exclude:
                continue
            dest = (target / rel).resolve()
            if root not in dest.parents:  # a key like "a/../../x" must not escape the folder
                raise ObjectStoreError(f"object key {uri.key_prefix + rel!r} points outside {local_dir}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with transfer_errors(uri.join(rel)):
                client.download_file(uri.bucket, uri.key_prefix + rel, str(dest))
            count += 1
        if local_dir.exists():
            shutil.rmtree(local_dir)
        os.replace(target, local_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count

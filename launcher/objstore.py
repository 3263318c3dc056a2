"""S3 (and S3-compatible: MinIO, GCS interop, Ceph RGW) folder transfers for object-store staging.

A folder is stored as the objects `<prefix>/<relative path>`; there are no folder objects. The S3 client
is boto3's, configured from the standard environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
(or any other source boto3 knows: web identity, instance profile, ...), `AWS_REGION` /
`AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` (MinIO, GCS at https://storage.googleapis.com, ...).
With a custom endpoint, path-style addressing is used (no wildcard DNS needed) and request checksums
are only sent where required (stores that are not AWS reject boto3's newer default checksums).

CLI, used by the trainer pods (see launcher/manifest.py):

    python -m launcher.objstore pull URI DIR                  # DIR becomes a copy of URI's objects
    python -m launcher.objstore push [--mirror] [--marker NAME] DIR URI
    python -m launcher.objstore sync-checkpoints DIR URI --interval S [--once]

`sync-checkpoints` uploads each complete `checkpoint-N` folder (one with trainer_state.json, uploaded
last) once; it runs until SIGTERM/SIGINT or until its parent process exits, then makes a last pass.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from trainer.checkpoints import CHECKPOINT_RE, is_complete, list_checkpoints
from trainer.checkpoints import COMPLETE_MARKER as CHECKPOINT_COMPLETE

log = logging.getLogger(__name__)

SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreError(ValueError):
    """An object-store URI or location that cannot be used."""


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


def parse_uri(uri: str) -> S3Uri:
    """Parse and validate `s3://bucket[/prefix]`; other schemes are rejected with a hint."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ObjectStoreError(f"staging URI {uri!r} must look like s3://bucket/prefix")
    scheme = uri.split("://", 1)[0].lower()
    if scheme != "s3":
        raise ObjectStoreError(
            f"staging URI {uri!r}: scheme {scheme}:// is not supported; use s3://bucket/prefix (GCS, MinIO and "
            "other S3-compatible stores work through their S3 API: set staging_endpoint_url, e.g. "
            "https://storage.googleapis.com with HMAC keys, or http://minio-service.kubeflow:9000)")
    rest = uri[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ObjectStoreError(f"staging URI {uri!r}: bucket {bucket!r} is not a valid bucket name "
                               "(3-63 lowercase letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or c == "\\" for c in prefix):
        raise ObjectStoreError(f"staging URI {uri!r}: prefix {prefix!r} has an empty, '.' or '..' segment, "
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


def _local_files(local_dir: Path) -> list[str]:
    """Files under `local_dir` as relative POSIX paths (symlinks to files are followed, like copytree)."""
    out = []
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = Path(root) / name
            if path.is_file():
                out.append(path.relative_to(local_dir).as_posix())
    return sorted(out)


def upload_tree(client: Any, local_dir: str | Path, uri: S3Uri, *, last: tuple[str, ...] = (),
                mirror: bool = False) -> int:
    """Upload every file of `local_dir` under `uri`; files named in `last` go last (completion markers).

    `mirror`: then delete remote objects under `uri` that are not local files.
    Returns the number of files uploaded.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise ObjectStoreError(f"{local_dir} is not a folder")
    files = _local_files(local_dir)
    files.sort(key=lambda rel: (Path(rel).name in last, rel))
    for rel in files:
        client.upload_file(str(local_dir / rel), uri.bucket, uri.key_prefix + rel)
    if mirror:
        local = set(files)
        stale = [uri.key_prefix + rel for rel, _ in list_keys(client, uri) if rel not in local]
        delete_keys(client, uri.bucket, stale)
    return len(files)


def download_tree(client: Any, uri: S3Uri, local_dir: str | Path, *, exclude: tuple[str, ...] = ()) -> int:
    """Make `local_dir` a copy of the objects under `uri` (an empty folder if there are none).

    Downloads into a temporary sibling and renames it into place, so a half-downloaded folder is never
    seen under `local_dir`. Relative paths named in `exclude` are skipped. Returns the number of files.
    """
    local_dir = Path(local_dir)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.", dir=local_dir.parent))
    count = 0
    try:
        target = tmp / "x"
        target.mkdir()
        root = target.resolve()
        for rel, _ in list_keys(client, uri):
            if rel in exclude:
                continue
            dest = (target / rel).resolve()
            if root not in dest.parents:  # a key like "a/../../x" must not escape the folder
                raise ObjectStoreError(f"object key {uri.key_prefix + rel!r} points outside {local_dir}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(uri.bucket, uri.key_prefix + rel, str(dest))
            count += 1
        if local_dir.exists():
            shutil.rmtree(local_dir)
        os.replace(target, local_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def complete_checkpoints(folder: Path) -> list[str]:
    """Names of the complete `checkpoint-N` folders (with trainer_state.json), oldest first."""
    return [p.name for p in list_checkpoints(folder) if is_complete(p)]


def remote_complete_checkpoints(client: Any, uri: S3Uri) -> set[str]:
    """Checkpoint folders under `uri` whose trainer_state.json (uploaded last) is there."""
    names = set()
    for rel, _ in list_keys(client, uri):
        parts = rel.split("/")
        if len(parts) == 2 and CHECKPOINT_RE.match(parts[0]) and parts[1] == CHECKPOINT_COMPLETE:
            names.add(parts[0])
    return names


class CheckpointSync:
    """Uploads each complete checkpoint of `folder` once (trainer_state.json last, like the trainer writes it)."""

    def __init__(self, client: Any, folder: str | Path, uri: S3Uri):
        self.client, self.folder, self.uri = client, Path(folder), uri
        self.uploaded: set[str] = remote_complete_checkpoints(client, uri)

    def run_once(self) -> list[str]:
        done = []
        for name in complete_checkpoints(self.folder):
            if name in self.uploaded:
                continue
            try:
                upload_tree(self.client, self.folder / name, self.uri.join(name), last=(CHECKPOINT_COMPLETE,))
            except (OSError, ObjectStoreError) as err:  # e.g. rotated away (save_total_limit) while uploading
                log.warning("checkpoint %s not uploaded (will retry if it is still there): %s", name, err)
                continue
            self.uploaded.add(name)
            done.append(name)
            log.info("uploaded %s to %s", name, self.uri.join(name))
        return done


class StopFlag:
    """Set by SIGTERM/SIGINT (installed at once, before the slow imports, so an early kill still gets its pass)."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.set = True


def sync_checkpoints(client: Any, folder: str | Path, uri: S3Uri, interval_s: float, stop: StopFlag,
                     poll_s: float = 1.0) -> None:
    """Upload new complete checkpoints every `interval_s` until `stop` is set or the parent exits; then a last pass."""
    parent = os.getppid()
    sync = CheckpointSync(client, folder, uri)
    next_pass = time.monotonic()
    while not stop.set and os.getppid() == parent:
        if time.monotonic() >= next_pass:
            sync.run_once()
            next_pass = time.monotonic() + interval_s
        time.sleep(min(poll_s, interval_s))
    sync.run_once()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.objstore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", default=None, help="default: AWS_ENDPOINT_URL, else AWS")
    sub = parser.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="download URI's objects into DIR (replaces DIR)")
    pull.add_argument("uri")
    pull.add_argument("dir")
    pull.add_argument("--exclude", action="append", default=[], help="relative path to skip (repeatable)")
    push = sub.add_parser("push", help="upload DIR's files under URI")
    push.add_argument("dir")
    push.add_argument("uri")
    push.add_argument("--mirror", action="store_true", help="delete objects under URI that are not in DIR")
    push.add_argument("--marker", default="", help="then write this object (relative to URI) last")
    sync = sub.add_parser("sync-checkpoints", help="upload complete checkpoint-N folders of DIR as they appear")
    sync.add_argument("dir")
    sync.add_argument("uri")
    sync.add_argument("--interval", type=float, default=300.0, help="seconds between passes")
    sync.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    stop = StopFlag() if args.command == "sync-checkpoints" and not args.once else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s objstore: %(message)s")
    try:
        uri = parse_uri(args.uri)
        client = make_client(args.endpoint_url)
        if args.command == "pull":
            count = download_tree(client, uri, args.dir, exclude=tuple(args.exclude))
            log.info("pulled %d file(s) from %s to %s", count, uri, args.dir)
        elif args.command == "push":
            marker = args.marker.strip("/")
            count = upload_tree(client, args.dir, uri, mirror=args.mirror)
            if marker:
                put_text(client, uri.join(marker), "")
            log.info("pushed %d file(s) from %s to %s%s", count, args.dir, uri, f" + {marker}" if marker else "")
        else:
            if args.interval <= 0:
                raise ObjectStoreError("--interval must be > 0")
            if stop is None:
                CheckpointSync(client, args.dir, uri).run_once()
            else:
                sync_checkpoints(client, args.dir, uri, args.interval, stop)
    except ObjectStoreError as err:
        log.error("%s", err)
        return 2
    except Exception as err:  # botocore errors: one line, non-zero exit
        log.error("%s: %s", type(err).__name__, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a model or a data set comes from: a path in the container, an object store, or the Hugging Face hub.

A source is one string (a KFP run parameter):

- a path in the container: a folder or file, e.g. on a PVC the pipeline mounts (`/mnt/pvc/models/bert`);
- an object-store URI: `s3://bucket/prefix` (AWS, or any S3 API at `s3_endpoint_url`: MinIO, SeaweedFS, Ceph),
  `minio://bucket/prefix` (Kubeflow Pipelines' own artifact URIs, e.g. an earlier run's model: the S3 API at
  `s3_endpoint_url`), `gs://bucket/prefix` (GCS through its S3 interoperability API with HMAC keys, endpoint
  https://storage.googleapis.com unless `s3_endpoint_url` says otherwise). A prefix is downloaded as a folder, a
  single object as a file. Credentials: boto3's environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from a
  Secret, or workload identity);
- a Hugging Face hub repository: `hf://org/name[@revision]`, `hf://datasets/org/name[@revision]`, or a bare id
  (`org/name`, `bert-base-cased`) that is not an existing local path (as `from_pretrained` decides). Downloaded
  with `huggingface_hub.snapshot_download` from `hf_endpoint` (else `HF_ENDPOINT`, else huggingface.co) with
  `HF_TOKEN` when set, pinned to the commit the revision resolves to. The images run with `HF_HUB_OFFLINE=1`;
  the download turns offline mode off for itself only, and a cluster without network gets one clear error.

`parse_source` only reads the string (for validation before anything is created); `fetch` does the transfer into
a folder the caller owns and returns where the model or data now is, with its provenance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from trainer.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

STORE_SCHEMES = ("s3", "minio", "gs")
GCS_S3_ENDPOINT = "https://storage.googleapis.com"
# Weights in formats the trainer never loads: not downloaded from the hub.
HUB_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.tflite", "*.onnx", "*.gguf", "onnx/*", "openvino/*", "coreml/*"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")  # weights skipped where their folder has safetensors


@dataclass(frozen=True)
class Source:
    """A parsed source string. kind: "path" | "store" | "hub"."""

    text: str
    kind: str
    location: str  # the path, the s3:// URI, or the hub repository id
    revision: str = ""  # hub only
    repo_type: str = "model"  # hub only: model | dataset
    endpoint_url: str = ""  # store only: the S3 endpoint this scheme implies


@dataclass
class Fetched:
    """Where a source now is locally, and where it came from."""

    path: Path
    provenance: dict = field(default_factory=dict)
    downloaded: bool = False  # True: `path` lies in the caller's work folder and may be moved from
    skipped: tuple[str, ...] = ()  # the hub repository's files not downloaded (HUB_IGNORE), relative to `path`


def parse_source(text: str, what: str, *, revision: str = "", s3_endpoint_url: str = "") -> Source:
    """Classify a source string (no I/O besides a local existence check); ConfigError names `what`."""
    text = (text or "").strip()
    if not text:
        raise ConfigError(f"{what} is empty")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in STORE_SCHEMES:
        from trainer.objstore import ObjectStoreError, parse_uri

        if revision:
            raise ConfigError(f"{what}={text!r}: a revision applies to Hugging Face hub sources only")
        uri = f"s3://{text.split('://', 1)[1]}"
        if scheme == "minio" and not s3_endpoint_url and not os.environ.get("AWS_ENDPOINT_URL"):
            raise ConfigError(f"{what}={text!r}: minio:// names Kubeflow Pipelines' object store; give its S3 "
                              "endpoint in s3_endpoint_url (e.g. http://minio-service.kubeflow:9000)")
        try:
            parse_uri(uri, what)
        except ObjectStoreError as err:
            raise ConfigError(str(err).replace(repr(uri), repr(text))) from None
        endpoint = s3_endpoint_url or (GCS_S3_ENDPOINT if scheme == "gs" else "")
        return Source(text, "store", uri, endpoint_url=endpoint)
    if scheme in ("hf", "http", "https") and (scheme == "hf" or "huggingface.co/" in text):
        return _hub_source(text, what, revision)
    if scheme:
        raise ConfigError(f"{what}={text!r}: scheme {scheme}:// is not supported; use a path in the container, "
                          "s3:// / minio:// / gs:// (object store) or hf://org/name (Hugging Face hub)")
    if text.startswith(("/", ".", "~")) or Path(text).exists():
        if revision:
            raise ConfigError(f"{what}={text!r} is a path: a revision applies to Hugging Face hub sources only")
        return Source(text, "path", str(Path(text).expanduser()))
    return _hub_source(text, what, revision)


def _hub_source(text: str, what: str, revision: str) -> Source:
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if "://" in text:
            uri = parse_hf_uri(text)
            repo, rev, repo_type, sub = uri.id, uri.revision or "", uri.type, uri.path_in_repo
        else:
            repo, _, rev = text.partition("@")
            validate_repo_id(repo)
            repo_type, sub = "model", ""
    except (HfUriError, HFValidationError) as err:
        raise ConfigError(f"{what}={text!r} is neither a path in the container nor a valid Hugging Face hub id "
                          f"({str(err).splitlines()[0]})") from None
    if sub:
        raise ConfigError(f"{what}={text!r}: give the repository (hf://org/name[@revision]), not a path inside it")
    if repo_type not in ("model", "dataset"):
        raise ConfigError(f"{what}={text!r}: only model and dataset repositories can be downloaded, not {repo_type}")
    if rev and revision and rev != revision:
        raise ConfigError(f"{what}={text!r} names revision {rev!r} but the revision parameter says {revision!r}")
    return Source(text, "hub", repo, revision=rev or revision, repo_type=repo_type)


def fetch(source: Source, workdir: str | Path, *, hf_endpoint: str = "") -> Fetched:
    """Make `source` available locally: a path is used where it is; a store prefix or hub repository is downloaded
    into `workdir` (which the caller creates and removes)."""
    if source.kind == "path":
        path = Path(source.location)
        if not path.exists():
            raise InputError(f"{source.text} not found in this container (a PVC path: is the volume mounted "
                             "where the pipeline mounts it?)")
        return Fetched(path, {"source_uri": source.text})
    if source.kind == "store":
        return _fetch_store(source, Path(workdir))
    return _fetch_hub(source, Path(workdir), hf_endpoint)


def _fetch_store(source: Source, workdir: Path) -> Fetched:
    from trainer import objstore

    uri = objstore.parse_uri(source.location, "source URI")
    try:
        client = objstore.make_client(source.endpoint_url or None)
        objstore.check_bucket(client, uri)
        with objstore.transfer_errors(uri):
            single = bool(uri.prefix) and objstore.exists(client, uri)
        if single:
            target = workdir / uri.prefix.rsplit("/", 1)[-1]
            objstore.download_file(client, uri, target)
        else:
            target = workdir / "download"
            if objstore.download_tree(client, uri, target) == 0:
                raise InputError(f"nothing found at {source.text}: no object under that prefix")
    except objstore.ObjectStoreError as err:
        raise InputError(f"{source.text}: {err}") from None
    except objstore.TransferError as err:  # a run failure (exit 1), not bad input; the caller removes `workdir`
        raise objstore.TransferError(f"cannot download {source.text}: {err}; run again once the object store "
                                     "answers") from None
    logger.info("downloaded %s to %s", source.text, target)
    return Fetched(target, {"source_uri": source.text}, downloaded=True)


@contextlib.contextmanager
def hub_online() -> Iterator[None]:
    """Turn huggingface_hub's offline mode (HF_HUB_OFFLINE=1 in the images) off for this block only."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _transport_error() -> type:
    try:
        from httpx2 import HTTPError  # huggingface_hub 2.x talks to the hub with httpx2
    except ImportError:  # huggingface_hub 1.x: httpx
        from httpx import HTTPError
    return HTTPError


def _fetch_hub(source: Source, workdir: Path, hf_endpoint: str) -> Fetched:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import filter_repo_objects

    endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    label = f"{source.location}@{source.revision or 'main'}"
    target = workdir / "download"
    try:
        with hub_online():
            api = HfApi(endpoint=endpoint)
            info = api.repo_info(source.location, repo_type=source.repo_type, revision=source.revision or None)
            files = [s.rfilename for s in (info.siblings or [])]
            ignore = HUB_IGNORE + pickles_beside_safetensors(files)
            snapshot_download(source.location, repo_type=source.repo_type, revision=info.sha, local_dir=target,
                              endpoint=endpoint, ignore_patterns=ignore)
    except GatedRepoError:
        raise InputError(f"{label} on {endpoint} is gated: accept its terms on the hub and give a token (HF_TOKEN, "
                         "from a Secret)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{label}: no such {source.repo_type} repository on {endpoint} (or it is private: give a "
                         "token in HF_TOKEN, from a Secret)") from None
    except RevisionNotFoundError:
        raise InputError(f"{label}: revision {source.revision!r} not found on {endpoint}") from None
    except (_transport_error(), LocalEntryNotFoundError, OSError) as err:
        if isinstance(err, HfHubHTTPError) and getattr(err.response, "status_code", 0) == 401:
            raise InputError(f"{label}: {endpoint} refused the token (HF_TOKEN)") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = "data" if source.repo_type == "dataset" else "model"
        raise InputError(f"cannot download {label} from the Hugging Face hub at {endpoint} ({reason}): without "
                         f"network access put the {what} on a PVC or in an object store (a path or s3:// URI), or "
                         "point hf_endpoint at a reachable mirror") from None
    shutil.rmtree(target / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping, not the repo
    logger.info("downloaded %s (commit %s) from %s", label, info.sha, endpoint)
    skipped = sorted(set(files) - set(filter_repo_objects(files, ignore_patterns=HUB_IGNORE)))
    return Fetched(target, {"source_uri": source.text, "hub_repo": source.location, "revision": info.sha,
                            "hub_endpoint": endpoint}, downloaded=True, skipped=tuple(skipped))


def pickles_beside_safetensors(files: list[str]) -> list[str]:
    """The pickle weights (*.bin, *.pt, *.pth) of `files` whose own folder also has safetensors, as exact
    `ignore_patterns`: a root pytorch_model.bin stays when only a sub-folder (e.g. `2_Dense/`) has safetensors."""
    import glob

    with_safetensors = {f.rpartition("/")[0] for f in files if f.endswith(".safetensors")}
    return [glob.escape(f) for f in files if f.endswith(PICKLE_SUFFIXES) and f.rpartition("/")[0] in with_safetensors]


def workdir_beside(target: str | Path) -> Path:
    """A fresh hidden folder beside `target` (same filesystem: downloads can be moved, not copied, into it)."""
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.download-"))

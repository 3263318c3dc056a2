"""Object-store staging of a run: the trainer pods' transfer CLI and the master's checkpoint sync.

The S3 primitives (URIs, the client from the standard AWS environment, folder transfers) are
`trainer.objstore`'s; this module adds what only the launched pods need.

CLI, used by the trainer pods (see launcher/manifest.py):

    python -m launcher.objstore pull URI DIR                  # DIR becomes a copy of URI's objects
    python -m launcher.objstore push [--mirror] [--marker NAME] DIR URI
    python -m launcher.objstore sync-checkpoints DIR URI --interval S [--once]

`sync-checkpoints` uploads each complete `checkpoint-N` folder (its manifest matches; the manifest uploaded
last) once; it runs until SIGTERM/SIGINT or until its parent process exits, then makes a last pass.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from trainer.checkpoints import CHECKPOINT_RE, is_complete, list_checkpoints
from trainer.checkpoints import COMPLETE_MARKER as CHECKPOINT_COMPLETE
# The store primitives live in the trainer layer (model and data sources use them too); re-exported here for the
# launcher and the pods' CLI.
from trainer.objstore import (S3Uri, ObjectStoreError, any_object, check_bucket, delete_keys, delete_prefix,  # noqa: F401
                              download_file, download_tree, endpoint_url, exists, list_keys, make_client, parse_uri,
                              put_text, upload_tree)

log = logging.getLogger(__name__)


def complete_checkpoints(folder: Path) -> list[str]:
    """Names of the complete `checkpoint-N` folders (their manifest matches their files), oldest first."""
    return [p.name for p in list_checkpoints(folder) if is_complete(p)]


def remote_complete_checkpoints(client: Any, uri: S3Uri) -> set[str]:
    """Checkpoint folders under `uri` whose manifest (uploaded last) is there."""
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
                     poll_s: float = 1.0, parent: Optional[int] = None) -> None:
    """Upload new complete checkpoints every `interval_s` until `stop` is set or the `parent` process (default: ours
    now) exits; then a last pass. A parent named by pid that exited before we started is noticed at once."""
    parent = os.getppid() if parent is None else parent
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
    sync.add_argument("--parent-pid", type=int, default=os.getppid(),
                      help="exit (after a last pass) when this process is no longer our parent; pass the shell's $$ "
                           "so that a parent gone before our imports finish is noticed too (default: the parent now)")
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
                sync_checkpoints(client, args.dir, uri, args.interval, stop, parent=args.parent_pid)
    except ObjectStoreError as err:
        log.error("%s", err)
        return 2
    except Exception as err:  # botocore errors: one line, non-zero exit
        log.error("%s: %s", type(err).__name__, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

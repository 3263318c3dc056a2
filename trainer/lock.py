"""An exclusive lock on an output folder, so two runs never write into the same pytorch_model_folder.

The lock is a file created with O_CREAT | O_EXCL — atomic on local filesystems and on NFSv3+ (unlike flock/fcntl
locks, which many shared filesystems ignore) — holding who took it: host, pid, start time and a run token. The
holder touches it every `heartbeat_s`; a lock whose holder is gone (same host, process dead) or whose heartbeat
stopped `stale_after_s` ago (another host that died) is taken over, with a warning naming it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from trainer.errors import InputError

logger = logging.getLogger(__name__)
LOCK_FILE = ".tokcls.lock"


_HELD: set[str] = set()  # tokens of the locks this process holds now


def _start_time(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22); None without /proc.
    Exact, unlike psutil's create_time (seconds derived from the boot time, which clock adjustments move)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields from 3 on follow the command name's ")"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """`with FolderLock(folder):` — exclusive use of `folder`; InputError naming the holder if it is taken."""

    def __init__(self, folder: str | Path, heartbeat_s: float = 60.0, stale_after_s: float = 600.0):
        self.folder, self.path = Path(folder), Path(folder) / LOCK_FILE
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- holder ---------------------------------------------------------------------------------
    def _holder(self) -> Optional[dict]:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by its age alone

    def _stale(self, holder: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return age > self.stale_after_s
        if pid == os.getpid():  # this process, or an earlier one with its pid (a restarted container)
            return holder.get("token") not in _HELD
        recorded, now = holder.get("start"), _start_time(pid)
        reused = isinstance(recorded, int) and now is not None and now != recorded
        return not _alive(pid) or reused or age > self.stale_after_s

    # --- acquire / release ----------------------------------------------------------------------
    def _create(self) -> bool:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
                  "token": self.token, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        return True

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                _HELD.add(self.token)
                self._start_heartbeat()
                return self
            holder = self._holder()
            if holder is None:
                continue  # released in between: try again
            if not self._stale(holder):
                raise InputError(
                    f"{self.folder} is in use by another run (host {holder.get('host', '?')}, pid "
                    f"{holder.get('pid', '?')}, since {holder.get('since', '?')}); give another folder, wait for "
                    f"it to end, or delete {self.path} if that run is dead")
            current = self._holder()  # still the holder judged stale? (another contender may have taken it over)
            if current is None or current.get("token") != holder.get("token"):
                continue
            # Take a stale lock over by renaming it aside (only one contender's rename succeeds).
            aside = self.path.with_name(f"{LOCK_FILE}.stale-{self.token}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            logger.warning("taking over the stale lock of %s (held by %s)", self.folder, holder)
            aside.unlink(missing_ok=True)
        raise InputError(f"could not lock {self.folder}: its lock file {self.path} keeps changing hands")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name="tokcls-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        _HELD.discard(self.token)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

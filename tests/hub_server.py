"""A local HTTP server speaking the Hugging Face hub's file protocol, for `trainer.sources` tests (no hub here).

It answers what `huggingface_hub.snapshot_download` (2.x) asks, read from huggingface_hub's own code:
`GET /api/{models|datasets}/{repo}[/revision/{rev}]` (the repo info: commit `sha`, `siblings`),
`GET /api/{type}/{repo}/tree/{rev}?recursive=...` (the file list with sizes and blob ids), and `HEAD`/`GET`
`/[datasets/]{repo}/resolve/{rev}/{path}` (file metadata headers `X-Repo-Commit`, `ETag`, `Content-Length`,
then the bytes). Unknown repositories and revisions get the hub's 404s with its `X-Error-Code` header
(`RepoNotFound`, `RevisionNotFound`); a repository marked gated answers 403 `GatedRepo` without the right
Bearer token. Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    revisions: dict[str, tuple[str, Path]]  # revision name or commit -> (commit sha, folder of files)
    repo_type: str = "model"
    token: str = ""  # if set: the repository is gated behind this token


@dataclass
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, repo_id: str, folder: Path, *, sha: str, names: tuple[str, ...] = ("main",),
            repo_type: str = "model", token: str = "") -> None:
        repo = self.repos.setdefault(repo_id, Repo({}, repo_type, token))
        for name in (*names, sha):
            repo.revisions[name] = (sha, folder)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path))
                self._answer(head=True)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                self._answer(head=False)

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, code: int, error_code: str, message: str, head: bool):
                self._send(code, json.dumps({"error": message}).encode(),
                           {"X-Error-Code": error_code, "X-Error-Message": message,
                            "Content-Type": "application/json"}, head)

            def _lookup(self, repo_id: str, rev: str, head: bool):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
                    return None, None
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    self._error(403, "GatedRepo", f"Access to {repo_id} is restricted", head)
                    return None, None
                if rev not in repo.revisions:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                    return None, None
                return repo, repo.revisions[rev]

            def _answer(self, head: bool):
                path = unquote(urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if parts[0] == "api" and parts[1] in ("models", "datasets"):
                    repo_id = "/".join(parts[2:4])
                    rest = parts[4:]
                    if not rest or rest[0] == "revision":
                        rev = rest[1] if len(rest) > 1 else "main"
                        repo, found = self._lookup(repo_id, rev, head)
                        if found:
                            sha, folder = found
                            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                            body = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": f} for f in files],
                                    "private": False}
                            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
                        return
                    if rest[0] == "tree":
                        repo, found = self._lookup(repo_id, rest[1], head)
                        if found:
                            _, folder = found
                            entries = []
                            for p in sorted(folder.rglob("*")):
                                rel = p.relative_to(folder).as_posix()
                                if p.is_dir():
                                    entries.append({"type": "directory", "oid": "0" * 40, "path": rel})
                                else:
                                    data = p.read_bytes()
                                    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                                    entries.append({"type": "file", "oid": oid, "size": len(data), "path": rel})
                            self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)
                        return
                if "resolve" in parts:
                    at = parts.index("resolve")
                    prefix = parts[:at]
                    repo_id = "/".join(prefix[1:] if prefix[0] == "datasets" else prefix)
                    rev, rel = parts[at + 1], "/".join(parts[at + 2:])
                    repo, found = self._lookup(repo_id, rev, head)
                    if found:
                        sha, folder = found
                        file = folder / rel
                        if not file.is_file():
                            self._error(404, "EntryNotFound", f"{rel} not found", head)
                            return
                        data = file.read_bytes()
                        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"',
                                               "Content-Type": "application/octet-stream"}, head)
                    return
                self._send(404, b"not found", {}, head)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

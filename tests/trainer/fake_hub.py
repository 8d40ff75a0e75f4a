"""A stand-in for the Hugging Face Hub on 127.0.0.1, and a Hub-layout cache builder, for tests.

FakeHub answers the requests huggingface_hub's client makes for snapshot_download (HF_ENDPOINT
points at it):
    GET  /api/{models,datasets}/ORG/NAME/revision/REV        repo info (sha = the commit)
    GET  /api/{models,datasets}/ORG/NAME/tree/REV[/PATH]     the file listing
    HEAD/GET [/datasets]/ORG/NAME/resolve/REV/PATH           file metadata / bytes (Range honoured)
with the Hub's headers (X-Repo-Commit, ETag, X-Linked-Etag/Size, X-Error-Code for 404s).
Every request is recorded (`requests`), so a test can assert that none was made.
`cut(path, after_bytes)`: the next GET of that file sends `after_bytes` bytes and drops the
connection, and every later request for it gets 503 until `heal()` (a network gone mid-file);
with `then_down=False` only that one connection drops.

`make_hub_cache(cache, repo_id, files)` lays out HF_HUB_CACHE as the Hub's client does:
models--ORG--NAME/{blobs/SHA256, snapshots/COMMIT/PATH -> ../../blobs/SHA256, refs/main}.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".parquet", ".bin")


@dataclass
class Repo:
    repo_type: str  # model | dataset
    repo_id: str
    files: dict[str, bytes]
    commit: str
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in (self.commit, "main"):
            return self.commit
        return self.branches.get(revision)


def folder_files(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def commit_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[str] = []  # "METHOD /path" of every request
        self.ranged: list[str] = []  # "METHOD /path bytes=N-" of requests that asked for a range
        self._cuts: dict[str, int] = {}
        self._down: set[str] = set()
        self._then_down: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_type: str, repo_id: str, files: dict[str, bytes]) -> Repo:
        repo = Repo(repo_type, repo_id, dict(files), commit_of(files))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def cut(self, path: str, after_bytes: int, *, then_down: bool = True) -> None:
        """The next GET of `path` drops the connection after `after_bytes`; with `then_down`
        every later request for it gets 503 until heal() (else the next one is served)."""
        with self._lock:
            self._cuts[path] = after_bytes
            self._then_down[path] = then_down

    def heal(self) -> None:
        with self._lock:
            self._cuts.clear()
            self._down.clear()

    def file_requests(self, path: str) -> list[str]:
        return [r for r in self.requests if r.endswith("/" + path) and "/resolve/" in r]

    # ------------------------------------------------------------ routing

    def route(self, h: "BaseHTTPRequestHandler", method: str) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(f"{method} {path}")
            if h.headers.get("Range"):
                self.ranged.append(f"{method} {path} {h.headers['Range']}")
        if path.startswith("/api/"):
            return self._api(h, path[len("/api/"):])
        repo_type = "model"
        if path.startswith("/datasets/"):
            repo_type, path = "dataset", path[len("/datasets"):]
        head, sep, rest = path.lstrip("/").partition("/resolve/")
        if not sep:
            return _send(h, 404, b"not found", {"X-Error-Code": "RepoNotFound"})
        revision, _, filename = rest.partition("/")
        repo = self.repos.get((repo_type, head))
        if repo is None:
            return _send(h, 401 if method == "HEAD" else 404, b"", {"X-Error-Code": "RepoNotFound"})
        commit = repo.resolve(revision)
        if commit is None:
            return _send(h, 404, b"", {"X-Error-Code": "RevisionNotFound"})
        if filename not in repo.files:
            return _send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        self._file(h, method, repo, commit, filename)

    def _api(self, h: "BaseHTTPRequestHandler", path: str) -> None:
        kind, _, rest = path.partition("/")
        repo_type = {"models": "model", "datasets": "dataset"}.get(kind)
        for marker in ("/revision/", "/tree/"):
            if marker in rest:
                repo_id, _, tail = rest.partition(marker)
                break
        else:  # repo info at the default branch
            marker, repo_id, tail = "/revision/", rest, "main"
        repo = self.repos.get((repo_type or "", repo_id))
        if repo is None:
            return _send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        revision, _, subpath = tail.partition("/")
        commit = repo.resolve(revision)
        if commit is None:
            return _send(h, 404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
        if marker == "/revision/":
            body = {"id": repo_id, "sha": commit, "private": False, "tags": [], "downloads": 0,
                    "likes": 0, "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
        else:
            body = [_tree_entry(p, data) for p, data in sorted(repo.files.items())
                    if not subpath or p.startswith(subpath.rstrip("/") + "/")]
        _send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _file(self, h: "BaseHTTPRequestHandler", method: str, repo: Repo, commit: str,
              filename: str) -> None:
        data = repo.files[filename]
        sha = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        if filename.endswith(LFS_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        with self._lock:
            if filename in self._down and method == "GET":
                return _send(h, 503, b"service unavailable", {})
            cut_after = self._cuts.pop(filename, None) if method == "GET" else None
            if cut_after is not None and self._then_down.get(filename, True):
                self._down.add(filename)
        if method == "HEAD":
            return _send(h, 200, b"", dict(headers, **{"Content-Length": str(len(data))}), head=True)
        start, status = 0, 200
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[len("bytes="):].split("-")[0] or 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if cut_after is None:
            return _send(h, status, body, headers)
        h.send_response(status)
        for key, value in dict(headers, **{"Content-Length": str(len(body))}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body[:cut_after])
        h.wfile.flush()
        time.sleep(0.3)  # the client reads (and keeps) what came before the cut
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data),
             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
          head: bool = False) -> None:
    h.send_response(status)
    if "Content-Length" not in headers:
        headers = dict(headers, **{"Content-Length": str(len(body))})
    for key, value in headers.items():
        h.send_header(key, value)
    h.end_headers()
    if not head and body:
        h.wfile.write(body)


def _handler(hub: FakeHub) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            hub.route(self, "GET")

        def do_HEAD(self) -> None:
            hub.route(self, "HEAD")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def make_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                   revision: str = "main") -> Path:
    """A cache folder in the Hub's layout holding `files` at one commit; returns the snapshot."""
    storage = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = commit_of(files)
    snapshot = storage / "snapshots" / commit
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = storage / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot

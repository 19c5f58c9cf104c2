"""Local HTTP servers on 127.0.0.1 for tests that exercise real download code offline.

`FileServer` serves files (a folder, or explicit URL path -> file routes) with HTTP Range
support, and can misbehave on purpose: drop the connection part-way through a file, or
serve other bytes than the file holds. Every request is logged.

`HubServer` answers as the Hugging Face hub does for one dataset repository of Parquet
files (and, optionally, its README.md dataset card with `configs`). Point `HF_ENDPOINT` at
`server.url`. It implements what `huggingface_hub` and `datasets` ask for in a streamed
`load_dataset(..., streaming=True)` and in `hf_hub_download` (found by logging requests):

- GET  /api/datasets/<repo>[/revision/<rev>]   the repository's info (commit, files)
- GET  /api/datasets/<repo>/tree/<rev>[/<dir>]   a folder's listing
- HEAD/GET /datasets/<repo>/resolve/<rev>/<path>   a file, with Range reads

Anything else is answered 404, as the hub answers for files a repository lacks (the
dataset script, .huggingface.yaml, dataset_infos.json are probed that way).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)
    """URL path -> bytes sent before the connection is cut (once, then served normally)."""
    replace: dict[str, bytes] = field(default_factory=dict)
    """URL path -> bytes served instead of the file's own."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _record(self) -> str:
        path = unquote(urlsplit(self.path).path)
        self.server.owner.requests.append(Request(self.command, path,
                                                  self.headers.get("Range")))
        return path

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self._record()
        answer = self.server.owner.resolve(self.command, path, self.path)
        if answer is None:
            self._send(404, b'{"error": "not found"}', {"Content-Type": "application/json"},
                       head)
            return
        if isinstance(answer, tuple):  # (status, body, headers): an API answer
            status, body, headers = answer
            self._send(status, body, headers, head)
            return
        data = self.server.owner.faults.replace.get(path, answer)
        start, status = 0, 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                   **getattr(answer, "headers", {})}
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m:
                self._send(416, b"", {}, head)
                return
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        cut = self.server.owner.faults.drop_after.pop(path, None) if not head else None
        if cut is not None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(status, data, headers, head)

    def _send(self, status: int, body: bytes, headers: dict, head: bool) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FileServer"


class FileServer:
    """Serves `root` (a folder) and `routes` (URL path -> file) on 127.0.0.1."""

    def __init__(self, root: Path | None = None, routes: dict[str, Path] | None = None):
        self.root = Path(root) if root else None
        self.routes = dict(routes or {})
        self.faults = Faults()
        self.requests: list[Request] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def resolve(self, method: str, path: str, raw: str):
        if path in self.routes:
            return self.routes[path].read_bytes()
        if self.root is not None:
            f = (self.root / path.lstrip("/")).resolve()
            if f.is_file() and self.root.resolve() in f.parents:
                return f.read_bytes()
        return None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


class HubServer(FileServer):
    """One dataset repository, `repo_id`, whose files are `files` (repo path -> local file),
    answered as the Hugging Face hub answers at one commit."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repo_id: str, files: dict[str, Path]):
        super().__init__()
        self.repo_id = repo_id
        self.files = dict(sorted(files.items()))

    def _info(self) -> bytes:
        siblings = [{"rfilename": p, "size": f.stat().st_size} for p, f in self.files.items()]
        return json.dumps({
            "_id": "0" * 24, "id": self.repo_id, "author": self.repo_id.split("/")[0],
            "sha": self.COMMIT, "private": False, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "cardData": {},
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": siblings,
        }).encode()

    def _tree(self, sub: str) -> bytes:
        sub = sub.strip("/")
        entries, dirs = [], set()
        for p, f in self.files.items():
            if sub and not p.startswith(sub + "/"):
                continue
            rest = p[len(sub) + 1:] if sub else p
            if "/" in rest:
                d = (sub + "/" if sub else "") + rest.split("/")[0]
                if d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
            else:
                data = f.read_bytes()
                entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(),
                                "size": len(data), "path": p,
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(),
                                        "size": len(data), "pointerSize": 134}})
        return json.dumps(entries).encode()

    def resolve(self, method: str, path: str, raw: str):
        api = f"/api/datasets/{self.repo_id}"
        js = {"Content-Type": "application/json"}
        m = re.fullmatch(rf"{re.escape(api)}(?:/revision/([^/]+))?", path)
        if m:
            return 200, self._info(), js
        m = re.fullmatch(rf"{re.escape(api)}/tree/([^/]+)(/.*)?", path)
        if m:
            sub = m.group(2) or ""
            known = {p.rsplit("/", 1)[0] for p in self.files if "/" in p}
            if sub.strip("/") and not any(k == sub.strip("/") or k.startswith(sub.strip("/") + "/")
                                          for k in known):
                return 404, b'{"error": "not found"}', js
            return 200, self._tree(sub), js
        m = re.fullmatch(rf"/datasets/{re.escape(self.repo_id)}/resolve/([^/]+)/(.+)", path)
        if m:
            f = self.files.get(m.group(2))
            if f is None:
                return 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}
            data = f.read_bytes()
            headers = {"X-Repo-Commit": self.COMMIT, "ETag": '"' + hashlib.sha256(
                data).hexdigest() + '"', "X-Linked-Etag": '"' + hashlib.sha256(data).hexdigest()
                + '"', "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}
            return _FileAnswer(data, headers)
        return None


class _FileAnswer(bytes):
    """Bytes with extra headers (the hub's file answers carry the commit and etag)."""

    def __new__(cls, data: bytes, headers: dict):
        obj = super().__new__(cls, data)
        obj.headers = headers
        return obj

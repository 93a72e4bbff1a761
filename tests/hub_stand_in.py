"""A local stand-in for the Hugging Face Hub HTTP API, for tests of `diffusers_memctl.hub` without network.

It implements, on 127.0.0.1 with the standard library only, the endpoints that `huggingface_hub` 2.4 calls for
`HfApi.create_repo`, `HfApi.create_commit` (preupload + NDJSON commit, "regular" base64 uploads only),
`HfApi.model_info` / `repo_info`, `list_repo_tree`, `hf_hub_download`, `snapshot_download`, `ModelCard.load` and
diffusers' `DiffusionPipeline.from_pretrained`:

- `POST /api/repos/create` (409 when the repo exists, as the Hub does, so `exist_ok=True` works)
- `POST /api/validate-yaml` (YAML front matter must parse to a mapping)
- `POST /api/models/{repo}/preupload/{rev}` (answers `uploadMode: "regular"` for every file, so no LFS and no xet)
- `POST /api/models/{repo}/commit/{rev}` (NDJSON: header line, then `file` lines with base64 content; `lfsFile` is
  refused with 400 because this stand-in never asks for LFS; `create_pr=1` commits to `refs/pr/N`)
- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}` (id, sha, private, siblings)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (one page, files and folders)
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (ETag = git blob sha1, X-Repo-Commit, Content-Length; no xet headers)
- `GET /api/agent-harnesses` (answered with an empty registry so user-agent building stays local)

Files live in memory, one snapshot per commit. Every request is recorded (method, path, query, headers including
Authorization, parsed JSON or NDJSON body). `failures` maps an endpoint kind ("create", "preupload", "commit",
"info", "tree", "resolve", "validate") to an HTTP status that the server answers instead, to test failure paths.
Auth rules are deliberately tiny: writes need *some* `Authorization: Bearer ...` header (401 otherwise) and a
private repo answers 401 `RepoNotFound` to requests without one.

What this stand-in cannot prove (check these against the real Hub before a release):
- LFS and xet uploads/downloads: every file goes as a base64 "regular" blob; the real Hub sends large or binary files
  (e.g. `*.safetensors`, `*.png`) through LFS/xet (`uploadMode: "lfs"`, xet CAS tokens, S3/CDN redirects), none of
  which is exercised here. Size limits on regular commits are not enforced either.
- Authentication and authorisation: tokens are not validated, scopes (read/write/fine-grained), organisation
  membership, gated repos and per-user namespaces are not modelled; any bearer token may write anywhere.
- Rate limits, 429/5xx retry and back-off behaviour, timeouts, partial or concurrent commits, `parent_commit` checks.
- The Hub's real metadata validation (model-index schema, tag and license vocabularies, `base_model` existence),
  the rendered model-card page, widgets, and the security/pickle scanner.
- Repo visibility defaults of organisations, renames/moves, redirects, `.gitattributes`/`.gitignore` semantics.
- Pagination of large trees, `expand=` fields, last-commit info, commit history and `list_repo_commits`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"

_API_REPO = re.compile(
    r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<kind>preupload|commit|revision|tree)/(?P<rev>[^/]+)(?P<rest>/.*)?$"
)
_API_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def git_blob_sha1(content: bytes) -> str:
    """Git object id of a blob, which the Hub uses as ETag and `oid` of regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class RecordedRequest:
    """One HTTP request as the stand-in received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None
    status: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Commit:
    sha: str
    files: dict[str, bytes]
    message: str


@dataclass
class _Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[_Commit]] = field(default_factory=dict)
    pull_requests: int = 0

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.branches:
            return self.branches[revision][-1]
        for commits in self.branches.values():
            for commit in commits:
                if commit.sha == revision:
                    return commit
        return None


class HubStandIn:
    """Threaded HTTP server on 127.0.0.1 that answers like the Hub for the calls listed in the module docstring.

    Use as a context manager; `url` is the endpoint to pass to `HfApi(endpoint=...)`.
    """

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.records: list[RecordedRequest] = []
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-stand-in", daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of `repo_id` at `revision` (a branch name or commit sha) as a `{path: bytes}` copy."""
        with self._lock:
            commit = self.repos[repo_id].resolve(revision)
            return dict(commit.files) if commit else {}

    def _new_sha(self, repo_id: str, message: str) -> str:
        count = sum(len(c) for r in self.repos.values() for c in r.branches.values())
        return hashlib.sha1(f"{repo_id}\n{message}\n{count}".encode()).hexdigest()


def _make_handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "HubStandIn/1.0"

        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

        # ---- plumbing -------------------------------------------------------------------------------------------
        def _start(self) -> tuple[str, dict[str, list[str]], RecordedRequest]:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = None
            if raw:
                content_type = self.headers.get("Content-Type", "")
                try:
                    if "ndjson" in content_type:
                        body = [json.loads(line) for line in raw.splitlines() if line.strip()]
                    else:
                        body = json.loads(raw)
                except ValueError:
                    body = raw
            record = RecordedRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            with hub._lock:
                hub.records.append(record)
            return parts.path, record.query, record

        def _send(
            self,
            record: RecordedRequest,
            status: int,
            payload: Any = None,
            *,
            raw: bytes | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            record.status = status
            data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, record: RecordedRequest, status: int, message: str, code: str | None = None, **hdr) -> None:
            headers = {"X-Error-Message": message, **hdr}
            if code:
                headers["X-Error-Code"] = code
            self._send(record, status, {"error": message}, headers=headers)

        def _failure(self, record: RecordedRequest, kind: str) -> bool:
            status = hub.failures.get(kind)
            if status is None:
                return False
            self._error(record, status, f"stand-in: injected failure on {kind}")
            return True

        def _repo(self, record: RecordedRequest, repo_id: str) -> _Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not record.authorization):
                status = 401 if repo is not None else 404
                self._error(record, status, f"Repository Not Found for url: {record.path}.", "RepoNotFound")
                return None
            return repo

        def _commit_at(self, record: RecordedRequest, kind: str, repo_id: str, revision: str) -> _Commit | None:
            """The commit a read request names; None once the failure, missing repo or revision has been answered."""
            if self._failure(record, kind):
                return None
            repo = self._repo(record, repo_id)
            if repo is None:
                return None
            commit = repo.resolve(revision)
            if commit is None:
                self._error(record, 404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return commit

        # ---- verbs ----------------------------------------------------------------------------------------------
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            path, query, record = self._start()
            with hub._lock:
                if path == "/api/repos/create":
                    return self._create(record)
                if path == "/api/validate-yaml":
                    return self._validate_yaml(record)
                match = _API_REPO.match(path)
                if match and match["kind"] in ("preupload", "commit"):
                    repo_id, revision = unquote(match["repo"]), unquote(match["rev"])
                    if self._failure(record, match["kind"]):
                        return None
                    if not record.authorization:
                        return self._error(record, 401, "Invalid username or password.")
                    repo = self._repo(record, repo_id)
                    if repo is None:
                        return None
                    if match["kind"] == "preupload":
                        return self._preupload(record, repo, revision)
                    return self._commit(record, repo, revision, create_pr=query.get("create_pr") == ["1"])
                return self._error(record, 404, f"stand-in: no POST endpoint {path}")

        def do_GET(self) -> None:  # noqa: N802
            path, _, record = self._start()
            with hub._lock:
                if path == "/api/agent-harnesses":
                    return self._send(record, 200, {"standardEnvVars": [], "harnesses": {}})
                match = _API_INFO.match(path)
                if match:
                    return self._info(record, unquote(match["repo"]), "main")
                match = _API_REPO.match(path)
                if match and match["kind"] in ("revision", "tree"):
                    repo_id, revision = unquote(match["repo"]), unquote(match["rev"])
                    if match["kind"] == "revision":
                        return self._info(record, repo_id, revision)
                    return self._tree(record, repo_id, revision, unquote((match["rest"] or "").lstrip("/")))
                return self._resolve_or_404(record, path)

        def do_HEAD(self) -> None:  # noqa: N802
            path, _, record = self._start()
            with hub._lock:
                return self._resolve_or_404(record, path)

        # ---- endpoints ------------------------------------------------------------------------------------------
        def _create(self, record: RecordedRequest) -> None:
            if self._failure(record, "create"):
                return None
            if not record.authorization:
                return self._error(record, 401, "Invalid username or password.")
            payload = record.body if isinstance(record.body, dict) else {}
            if payload.get("type", "model") != "model":
                return self._error(record, 400, f"stand-in: only model repos, got type={payload.get('type')!r}")
            name, organization = payload.get("name"), payload.get("organization")
            repo_id = f"{organization}/{name}" if organization else str(name)
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:
                message = "You already created this model repo"
                return self._send(record, 409, {"error": message, "url": url}, headers={"X-Error-Message": message})
            repo = _Repo(repo_id=repo_id, private=payload.get("visibility") == "private")
            sha = hub._new_sha(repo_id, "initial commit")
            repo.branches["main"] = [_Commit(sha, {".gitattributes": _INITIAL_GITATTRIBUTES}, "initial commit")]
            hub.repos[repo_id] = repo
            return self._send(record, 200, {"url": url, "name": repo_id, "id": sha[:24]})

        def _validate_yaml(self, record: RecordedRequest) -> None:
            if self._failure(record, "validate"):
                return None
            content = (record.body or {}).get("content", "") if isinstance(record.body, dict) else ""
            match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
            try:
                data = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as error:
                return self._send(record, 400, {"errors": [{"message": f"YAML: {error}"}], "warnings": []})
            if data is not None and not isinstance(data, dict):
                return self._send(record, 400, {"errors": [{"message": "metadata must be a mapping"}]})
            return self._send(record, 200, {"errors": [], "warnings": []})

        def _preupload(self, record: RecordedRequest, repo: _Repo, revision: str) -> None:
            commit = repo.resolve(revision)
            files = commit.files if commit else {}
            answer = [
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(files[item["path"]]) if item["path"] in files else None,
                }
                for item in (record.body or {}).get("files", [])
            ]
            return self._send(record, 200, {"files": answer, "commitOid": commit.sha if commit else None})

        def _commit(self, record: RecordedRequest, repo: _Repo, revision: str, *, create_pr: bool) -> None:
            lines = record.body if isinstance(record.body, list) else []
            if not lines or lines[0].get("key") != "header":
                return self._error(record, 400, "stand-in: NDJSON commit must start with a header line")
            parent = repo.resolve(revision)
            if parent is None:
                return self._error(record, 404, f"Invalid rev id: {revision}", "RevisionNotFound")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        return self._error(record, 400, f"stand-in: unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    return self._error(record, 400, f"stand-in: unsupported commit operation {key!r} (no LFS here)")
            message = lines[0]["value"].get("summary", "")
            commit = _Commit(hub._new_sha(repo.repo_id, message), files, message)
            pr_url = None
            if create_pr:
                repo.pull_requests += 1
                repo.branches[f"refs/pr/{repo.pull_requests}"] = [commit]
                pr_url = f"{hub.url}/{repo.repo_id}/discussions/{repo.pull_requests}"
            else:
                repo.branches.setdefault(revision, []).append(commit)
            payload = {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{commit.sha}",
                "pullRequestUrl": pr_url,
            }
            return self._send(record, 200, payload)

        def _info(self, record: RecordedRequest, repo_id: str, revision: str) -> None:
            commit = self._commit_at(record, "info", repo_id, revision)
            if commit is None:
                return None
            repo = hub.repos[repo_id]
            payload = {
                "_id": commit.sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit.sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
            return self._send(record, 200, payload)

        def _tree(self, record: RecordedRequest, repo_id: str, revision: str, prefix: str) -> None:
            commit = self._commit_at(record, "tree", repo_id, revision)
            if commit is None:
                return None
            recursive = record.query.get("recursive", ["False"])[0].lower() in ("1", "true")
            base = prefix.rstrip("/") + "/" if prefix else ""
            entries: dict[str, dict] = {}
            for path, content in sorted(commit.files.items()):
                if not path.startswith(base):
                    continue
                parts = path[len(base) :].split("/")
                for depth in range(1, len(parts)):
                    folder = base + "/".join(parts[:depth])
                    if recursive or depth == 1:
                        entry = {"type": "directory", "oid": git_blob_sha1(folder.encode()), "size": 0, "path": folder}
                        entries.setdefault(folder, entry)
                if recursive or len(parts) == 1:
                    entries[path] = {"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": path}
            if prefix and not entries:
                return self._error(record, 404, f"Entry not found: {prefix}", "EntryNotFound")
            return self._send(record, 200, list(entries.values()))

        def _resolve_or_404(self, record: RecordedRequest, path: str) -> None:
            match = _RESOLVE.match(path)
            if not match:
                return self._error(record, 404, f"stand-in: no {self.command} endpoint {path}")
            repo_id, revision, filename = unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"])
            commit = self._commit_at(record, "resolve", repo_id, revision)
            if commit is None:
                return None
            if filename not in commit.files:
                return self._error(
                    record, 404, f"Entry not found: {filename}", "EntryNotFound", **{"X-Repo-Commit": commit.sha}
                )
            content = commit.files[filename]
            headers = {
                "ETag": f'"{git_blob_sha1(content)}"',
                "X-Repo-Commit": commit.sha,
                "Accept-Ranges": "bytes",
                "Last-Modified": formatdate(usegmt=True),
            }
            return self._send(record, 200, raw=content, headers=headers)

    return Handler

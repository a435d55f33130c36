"""A small Hugging Face Hub look-alike for tests: standard library only, in memory, on 127.0.0.1.

The real `huggingface_hub` client talks to it unchanged once `HF_ENDPOINT` points at `LocalHub.url` (set before
huggingface_hub is first imported: the client reads it at import time) and `HF_HUB_DISABLE_XET=1` (otherwise uploads
go through Xet, which this server does not speak). Served: whoami, repo create/delete, branches, refs, commits
(regular files, LFS files through the batch API + PUT, deletions), repo info, tree, paths-info and `resolve`
downloads with the headers `hf_hub_download` relies on (X-Repo-Commit, ETag, X-Linked-Etag/-Size, X-Error-Code).
"""

import base64
import functools
import hashlib
import itertools
import json
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

LFS_SUFFIXES = tuple(
    ".safetensors .bin .pt .pth .ckpt .h5 .onnx .msgpack .npy .npz .pkl .pickle .parquet .arrow .zip .gz .tar .tgz"
    " .zst .joblib .model .pb".split()
)  # the extensions of the Hub's default .gitattributes
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores anything this large through LFS
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
BAD_TOKEN = "Invalid credentials in Authorization header"  # the client reports this 401 as is, not as RepoNotFound
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_ids = itertools.count()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wants_lfs(path: str, size: int, sample: bytes) -> bool:
    """Whether the Hub would store this file through LFS: by extension, by size, or because it is binary."""
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample


class HubError(Exception):
    """An HTTP error answer; `code` goes to `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        spec = "version https://git-lfs.github.com/spec/v1"
        return f"{spec}\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer file for LFS files."""
        stored = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def remote_oid(self) -> str:
        """What preupload reports, for the client to skip unchanged files: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Blob]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    created_at: str = field(default_factory=_now)


class HubStorage:
    """Repos, commits and LFS objects, in memory; every method takes the one lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded before the commit naming them

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> bool:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return False
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
            repo.branches["main"] = ""
            self.commit(repo, "main", {".gitattributes": Blob(GITATTRIBUTES)}, "initial commit")
            return True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.get_repo(repo_type, repo_id)
            del self.repos[(repo_type, repo_id)]

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} ({repo_type}) not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a full commit sha -> its commit."""
        with self.lock:
            sha = repo.branches.get(revision, revision)
            if sha not in repo.commits:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[sha]

    def commit(self, repo: Repo, branch: str, changes: dict, title: str, message: str = "", parent=None) -> Commit:
        """Apply `changes` (path -> Blob, or None to delete; a path ending in '/' deletes a folder) to `branch`."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (not a branch)", "RevisionNotFound")
            head = repo.commits.get(repo.branches[branch])
            if parent is not None and head is not None and parent != head.sha:
                raise HubError(412, f"Parent commit {parent} is not the head of {branch} ({head.sha})")
            files = dict(head.files) if head else {}
            for path, blob in changes.items():
                if blob is not None:
                    files[path] = blob
                elif path.endswith("/"):
                    files = {p: b for p, b in files.items() if not p.startswith(path)}
                elif files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            seed = f"{repo.repo_id}:{branch}:{head and head.sha}:{title}:{next(_ids)}:{_now()}"
            commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), head and head.sha, title, message, files)
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            return commit

    def create_branch(self, repo: Repo, branch: str, starting_point: str = "main") -> None:
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self.resolve(repo, starting_point).sha


def tree_entry(path: str, blob: Blob | None) -> dict:
    """One `/tree` or `/paths-info` item: a file (with its LFS pointer info) or, for `blob=None`, a directory."""
    if blob is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return entry


def list_tree(files: dict[str, Blob], folder: str, recursive: bool) -> list[dict]:
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    dirs, entries = set(), []
    for path in sorted(p for p in files if p.startswith(prefix)):
        parts = path[len(prefix) :].split("/")
        if recursive or len(parts) == 1:
            entries.append(tree_entry(path, files[path]))
        dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts) if recursive else min(2, len(parts))))
    if prefix and not entries and not dirs:
        raise HubError(404, f"{folder} does not exist", "EntryNotFound")
    return [tree_entry(d, None) for d in sorted(dirs)] + entries


def sibling(path: str, blob: Blob, blobs: bool) -> dict:
    """One `siblings` item of repo info; with sizes and LFS info when asked for (`files_metadata=True`)."""
    if not blobs:
        return {"rfilename": path}
    item = {"rfilename": path, "size": len(blob.data), "blobId": blob.oid}
    if blob.lfs:
        item["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
    return item


def card_data(files: dict[str, Blob]) -> dict | None:
    """The YAML front matter of README.md, or None."""
    readme = files.get("README.md")
    match = readme and re.match(r"^---\r?\n(.*?)\r?\n---", readme.data.decode("utf-8", "replace"), re.S)
    try:
        data = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


_API = r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_WEB = r"^/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (methods, path regex, handler name); groups arrive URL-unquoted
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("DELETE", r"^/api/repos/delete$", "delete_repo"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "tree"),
    ("POST", _API + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", _API + r"/refs$", "refs"),
    ("GET", _API + r"/commits/(?P<rev>[^/]+)$", "commits"),
    ("POST", _API + r"/branch/(?P<branch>[^/]+)$", "create_branch"),
    ("POST", _API + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", _API + r"/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", _WEB + r"\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),
    ("GET HEAD", _WEB + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes a request to a `handle_*` method, which returns (status, body, headers) or raises `HubError`."""

    protocol_version = "HTTP/1.1"
    server: "_HubHTTPServer"

    def _dispatch(self) -> None:
        method, url = self.command, urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = self._read_body()
        try:
            for route_method, pattern, name in ROUTES:
                match = re.match(pattern, url.path) if method in route_method.split() else None
                if match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return self._send(*getattr(self, f"handle_{name}")(**params))
            raise HubError(404, f"No route for {method} {url.path}")
        except HubError as e:
            message = " ".join(e.message.split()).encode("ascii", "replace").decode()  # a header: one ascii line
            headers = {**e.headers, "X-Error-Message": message, **({"X-Error-Code": e.code} if e.code else {})}
            self._send(e.status, {"error": e.message}, headers)
        except Exception as e:  # a bug in this server: say so loudly, in the test log
            traceback.print_exc()
            self._send(500, {"error": f"local hub crashed: {e!r}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers up to the blank line
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body=b"", headers: dict | None = None) -> None:
        headers = dict(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))  # for HEAD too: the size GET would send
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _json(self) -> dict:
        return json.loads(self.body or b"{}")

    def _authenticated(self, required: bool) -> bool:
        """A wrong token is always refused; a missing one only where `required` (writes)."""
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        if (token is not None and token != self.server.hub.token) or (required and token is None):
            raise HubError(401, BAD_TOKEN)
        return token is not None

    def _repo(self, kind: str, repo: str, write: bool = False) -> Repo:
        authenticated = self._authenticated(required=write)
        found = self.server.hub.storage.get_repo(REPO_TYPES.get(kind, kind), repo)
        if found.private and not authenticated:
            raise HubError(404, f"Repository {repo} not found", "RepoNotFound")
        return found

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.server.hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- account, repos -------------------------------------------------------------------------------------------
    def handle_whoami(self):
        self._authenticated(required=True)
        user = self.server.hub.user
        auth = {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}}
        return 200, dict(type="user", id=user, name=user, fullname=user, orgs=[], auth=auth)

    def handle_create_repo(self):
        self._authenticated(required=True)
        body = self._json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.server.hub.user}/{body['name']}"
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        url = f"{self.server.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if not self.server.hub.storage.create_repo(repo_type, repo_id, private):
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def handle_delete_repo(self):
        self._authenticated(required=True)
        body = self._json()
        repo_id = f"{body.get('organization') or self.server.hub.user}/{body['name']}"
        self.server.hub.storage.delete_repo(body.get("type") or "model", repo_id)
        return 200, {}

    def handle_validate_yaml(self):
        match = re.match(r"^---\r?\n(.*?)\r?\n---", self._json().get("content", ""), re.S)
        try:
            yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def handle_repo_info(self, kind, repo, rev="main"):
        found = self._repo(kind, repo)
        commit = self.server.hub.storage.resolve(found, rev)
        blobs = self.query.get("blobs", "").lower() == "true"
        siblings = [sibling(path, commit.files[path], blobs) for path in sorted(commit.files)]
        card = card_data(commit.files)
        info = {"_id": found.repo_id, "id": found.repo_id, "author": found.repo_id.split("/")[0], "sha": commit.sha,
                "private": found.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "lastModified": commit.date, "createdAt": found.created_at, "tags": (card or {}).get("tags") or [],
                "siblings": siblings}  # fmt: skip
        if card is not None:
            info["cardData"] = card
        if found.repo_type == "model":
            info.update(modelId=found.repo_id, library_name=(card or {}).get("library_name"))
        return 200, info

    def handle_tree(self, kind, repo, rev, path=""):
        commit = self.server.hub.storage.resolve(self._repo(kind, repo), rev)
        return 200, list_tree(commit.files, path, self.query.get("recursive", "").lower() == "true")

    def handle_paths_info(self, kind, repo, rev):
        commit = self.server.hub.storage.resolve(self._repo(kind, repo), rev)
        entries = []
        for path in parse_qs(self.body.decode()).get("paths", []):
            if path in commit.files:
                entries.append(tree_entry(path, commit.files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                entries.append(tree_entry(path, None))
        return 200, entries

    def handle_refs(self, kind, repo):
        found = self._repo(kind, repo)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in found.branches.items()]
        return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def handle_commits(self, kind, repo, rev):
        found = self._repo(kind, repo)
        commit, history = self.server.hub.storage.resolve(found, rev), []
        while commit is not None:
            history.append({"id": commit.sha, "title": commit.title, "message": commit.message, "date": commit.date,
                            "authors": [{"user": self.server.hub.user}]})  # fmt: skip
            commit = found.commits.get(commit.parent)
        return 200, history

    def handle_create_branch(self, kind, repo, branch):
        found = self._repo(kind, repo, write=True)
        self.server.hub.storage.create_branch(found, branch, self._json().get("startingPoint") or "main")
        return 200, {}

    # -- uploads -------------------------------------------------------------------------------------------------
    def handle_preupload(self, kind, repo, rev):
        commit = self.server.hub.storage.resolve(self._repo(kind, repo, write=True), rev)
        files = []
        for item in self._json().get("files", []):
            sample, existing = base64.b64decode(item.get("sample", "")), commit.files.get(item["path"])
            mode = "lfs" if wants_lfs(item["path"], item.get("size", 0), sample) else "regular"
            oid = existing.remote_oid if existing else None
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": commit.sha}

    def handle_lfs_batch(self, repo, prefix=""):
        self._repo(prefix.rstrip("/") or "model", repo, write=True)
        objects = []
        for obj in self._json().get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.server.hub.storage.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.server.hub.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def handle_lfs_upload(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256")
        with self.server.hub.storage.lock:
            self.server.hub.storage.lfs_objects[oid] = self.body
        return 200, b""

    def handle_commit(self, kind, repo, rev):
        found = self._repo(kind, repo, write=True)
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the local hub")
        header, changes = {}, {}
        for line in filter(None, self.body.splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                changes[value["path"]] = Blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                data = self.server.hub.storage.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                changes[value["path"]] = Blob(data, lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"].rstrip("/") + ("/" if key == "deletedFolder" else "")] = None
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit = self.server.hub.storage.commit(found, rev, changes, header.get("summary") or "update",
                                                header.get("description", ""), header.get("parentCommit"))  # fmt: skip
        url = f"{self._repo_url(found)}/commit/{commit.sha}"
        return 200, dict(success=True, commitOid=commit.sha, commitUrl=url, hookOutput="", pullRequestUrl=None)

    # -- downloads -----------------------------------------------------------------------------------------------
    def handle_resolve(self, repo, rev, path, prefix=""):
        commit = self.server.hub.storage.resolve(self._repo(prefix.rstrip("/") or "model", repo), rev)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        headers.update({"ETag": f'"{blob.oid}"', "Content-Type": "application/octet-stream",
                        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}"})  # fmt: skip
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": len(blob.data)})
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match.group(1)), int(match.group(2) or len(blob.data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
            return 206, blob.data[start : end + 1], headers
        return 200, blob.data, headers


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections must not hold up stop()
    hub: "LocalHub"


class LocalHub:
    """`hub = LocalHub(token="test-token"); hub.start(); os.environ.update(hub.env())`, then import huggingface_hub."""

    def __init__(self, token: str = "test-token", user: str = "test-user", host: str = "127.0.0.1"):
        self.token, self.user, self.host = token, user, host
        self.storage = HubStorage()
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        self._server = _HubHTTPServer((self.host, 0), HubRequestHandler)
        self._server.hub = self
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)  # quick stop()
        self._thread = threading.Thread(target=serve, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point a huggingface_hub client (set before its import) at this hub."""
        return dict(HF_ENDPOINT=self.url, HF_TOKEN=self.token, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")

    # -- server-side access, as if done on the website -----------------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> bool:
        return self.storage.create_repo(repo_type, repo_id, private)

    def _commit(self, repo_id: str, revision: str, repo_type: str) -> Commit:
        try:
            return self.storage.resolve(self.storage.get_repo(repo_type, repo_id), revision)
        except HubError as e:
            raise FileNotFoundError(e.message) from None

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """The commit sha `revision` points at."""
        return self._commit(repo_id, revision, repo_type).sha

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        return sorted(self._commit(repo_id, revision, repo_type).files)

    def is_lfs(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bool:
        return self._commit(repo_id, revision, repo_type).files[path].lfs

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        blob = self._commit(repo_id, revision, repo_type).files.get(path)
        if blob is None:
            raise FileNotFoundError(f"{path} not in {repo_id}@{revision}")
        return blob.data

    def write_file(self, repo_id, path, data, revision="main", repo_type="model", message=None) -> str:
        """Commit `data` (bytes or str) at `path` on branch `revision`, like a website edit; returns the commit sha."""
        data = data.encode() if isinstance(data, str) else data
        blob = Blob(data, lfs=wants_lfs(path, len(data), data[:512]))
        try:
            repo = self.storage.get_repo(repo_type, repo_id)
            return self.storage.commit(repo, revision, {path: blob}, message or f"Update {path}").sha
        except HubError as e:  # no such repo or branch
            raise FileNotFoundError(e.message) from None

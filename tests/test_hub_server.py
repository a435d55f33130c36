"""The local Hub (tests/hub_server.py) driven by the real huggingface_hub client, in subprocesses.

Each client runs in a fresh interpreter so that HF_ENDPOINT/HF_TOKEN/HF_HOME are set before huggingface_hub is
imported, whatever this test process imported already (conftest.py sets HF_HUB_OFFLINE=1 for the suite).
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

import pytest
from hub_server import LocalHub

PRELUDE = """
import hashlib, json, os, sys
import huggingface_hub
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
)
assert huggingface_hub.constants.ENDPOINT == os.environ["HF_ENDPOINT"], "HF_ENDPOINT not picked up at import"
ARGS, OUT, api = json.loads(sys.argv[1]), {}, HfApi()

def raises(exc_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError(f"{fn.__name__} did not raise {exc_type.__name__}")

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
"""


@pytest.fixture(scope="module")
def hub():
    with LocalHub(token="test-token") as hub:
        yield hub


@pytest.fixture
def client(hub, tmp_path):
    """`client(script, **args)` runs `script` with the real client against `hub`; returns what it put in `OUT`.

    Options: `hf_home` (default: a fresh folder per test), `offline=True` (HF_HUB_OFFLINE=1), `token` (default: the
    hub's token).
    """

    def run(script: str, *, hf_home=None, offline: bool = False, token: str | None = None, **args) -> dict:
        env = {
            k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "HUGGING", "HTTP", "ALL_PROXY"))
        }
        env.update(hub.env(), HF_HOME=str(hf_home or tmp_path / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
        env.update(NO_PROXY="127.0.0.1,localhost", **({"HF_TOKEN": token} if token is not None else {}))
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        code = PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(OUT))\n"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"client failed:\n{proc.stderr[-6000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


def test_whoami_create_repo_conflicts_private_and_delete(hub, client):
    out = client("""
        OUT["user"] = api.whoami()["name"]
        OUT["repo_id"] = api.create_repo("org/created").repo_id
        OUT["conflict"] = raises(HfHubHTTPError, api.create_repo, "org/created").response.status_code
        OUT["again"] = api.create_repo("org/created", exist_ok=True).repo_id
        OUT["dataset"] = api.create_repo("org/created", repo_type="dataset").repo_id  # other type, other namespace
        api.create_repo("org/secret", private=True)
        OUT["private"] = api.repo_info("org/secret").private
        OUT["anonymous"] = type(raises(RepositoryNotFoundError, api.repo_info, "org/secret", token=False)).__name__
        OUT["files"] = api.list_repo_files("org/created")
        api.create_repo("org/doomed")
        api.delete_repo("org/doomed")
        raises(RepositoryNotFoundError, api.repo_info, "org/doomed")
        raises(RepositoryNotFoundError, api.delete_repo, "org/doomed")
        api.delete_repo("org/doomed", missing_ok=True)
    """)
    assert out == {
        "user": hub.user,
        "repo_id": "org/created",
        "conflict": 409,
        "again": "org/created",
        "dataset": "org/created",
        "private": True,
        "anonymous": "RepositoryNotFoundError",
        "files": [".gitattributes"],  # like the Hub, a new repo starts with one commit holding .gitattributes
    }
    assert hub.list_files("org/created") == [".gitattributes"]
    assert hub.list_files("org/created", repo_type="dataset") == [".gitattributes"]
    with pytest.raises(FileNotFoundError):
        hub.list_files("org/doomed")


def test_upload_folder_with_lfs_then_download_by_branch_sha_snapshot_and_offline(hub, client, tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    files = {
        "config.json": b'{"hidden_size": 32}\n',
        "sub/notes.txt": "plain text, ünïcode\n".encode(),
        "adapter_model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(1000),
        "big.dat": os.urandom(10 * 1024 * 1024 + 123),  # LFS by size (> 10 MiB), not by extension
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    hf_home = tmp_path / "hf-home"

    out = client(
        """
        api.create_repo("org/model")
        OUT["sha"] = api.upload_folder(folder_path=ARGS["folder"], repo_id="org/model", commit_message="add").oid
        OUT["files"] = sorted(api.list_repo_files("org/model"))
        OUT["top"] = sorted([type(e).__name__, e.path] for e in api.list_repo_tree("org/model"))
        info = api.model_info("org/model", files_metadata=True)
        OUT["info_sha"], OUT["lfs"] = info.sha, sorted(s.rfilename for s in info.siblings if s.lfs)
        OUT["unchanged"] = api.upload_folder(folder_path=ARGS["folder"], repo_id="org/model").oid  # nothing new
        by_branch = hf_hub_download("org/model", "sub/notes.txt")
        by_sha = hf_hub_download("org/model", "adapter_model.safetensors", revision=OUT["sha"])
        OUT["downloads"] = {"sub/notes.txt": sha256(by_branch), "adapter_model.safetensors": sha256(by_sha)}
        OUT["snapshot"] = snapshot_download("org/model")
        OUT["snapshot_hashes"] = {name: sha256(os.path.join(OUT["snapshot"], name)) for name in ARGS["hashes"]}
        """,
        hf_home=hf_home,
        folder=str(folder),
        hashes=hashes,
    )
    sha = out["sha"]
    assert len(sha) == 40 and sha == out["info_sha"] == out["unchanged"] == hub.head("org/model")
    assert out["files"] == sorted([".gitattributes", *files])
    top_files = [["RepoFile", name] for name in [".gitattributes", *files] if "/" not in name]
    assert out["top"] == sorted([["RepoFolder", "sub"], *top_files])
    assert out["lfs"] == ["adapter_model.safetensors", "big.dat"]
    assert [hub.is_lfs("org/model", name) for name in files] == [False, False, True, True]
    assert all(hub.read_file("org/model", name) == data for name, data in files.items())
    assert out["downloads"] == {name: hashes[name] for name in out["downloads"]}
    assert out["snapshot_hashes"] == hashes and out["snapshot"].endswith(sha)

    offline = client(
        """
        OUT["snapshot"] = snapshot_download("org/model")
        OUT["notes"] = open(hf_hub_download("org/model", "sub/notes.txt"), encoding="utf-8").read()
        """,
        hf_home=hf_home,
        offline=True,
    )
    assert offline == {"snapshot": out["snapshot"], "notes": files["sub/notes.txt"].decode()}


def test_missing_repo_revision_and_file_raise_the_client_errors(hub, client):
    hub.create_repo("org/present")
    hub.write_file("org/present", "here.txt", "hello")
    hub.create_repo("org/hidden", private=True)
    out = client("""
        OUT["repo"] = type(raises(RepositoryNotFoundError, hf_hub_download, "org/absent", "here.txt")).__name__
        OUT["info"] = type(raises(RepositoryNotFoundError, api.model_info, "org/absent")).__name__
        OUT["type"] = type(raises(RepositoryNotFoundError, api.dataset_info, "org/present")).__name__
        OUT["file"] = type(raises(EntryNotFoundError, hf_hub_download, "org/present", "absent.txt")).__name__
        OUT["rev"] = type(raises(RevisionNotFoundError, hf_hub_download, "org/present", "here.txt", revision="nope"))
        OUT["rev"] = OUT["rev"].__name__
        OUT["private"] = type(raises(RepositoryNotFoundError, api.list_repo_files, "org/hidden", token=False)).__name__
        OUT["public"] = open(hf_hub_download("org/present", "here.txt", token=False)).read()
    """)
    assert out == {
        "repo": "RepositoryNotFoundError",
        "info": "RepositoryNotFoundError",
        "type": "RepositoryNotFoundError",
        "file": "RemoteEntryNotFoundError",
        "rev": "RevisionNotFoundError",
        "private": "RepositoryNotFoundError",
        "public": "hello",
    }


def test_a_wrong_token_cannot_write(hub, client):
    hub.create_repo("org/guarded")
    out = client(
        """
        OUT["create"] = raises(HfHubHTTPError, api.create_repo, "org/intruder").response.status_code
        upload = raises(HfHubHTTPError, api.upload_file, path_or_fileobj=b"x", path_in_repo="x", repo_id="org/guarded")
        OUT["upload"] = (type(upload).__name__, upload.response.status_code)
        OUT["whoami"] = raises(HfHubHTTPError, api.whoami).response.status_code
        """,
        token="wrong-token",
    )
    assert out == {"create": 401, "upload": ["HfHubHTTPError", 401], "whoami": 401}
    assert hub.list_files("org/guarded") == [".gitattributes"]


def test_branches_take_commits_and_serve_downloads(hub, client):
    hub.create_repo("org/branchy")
    out = client("""
        api.create_branch("org/branchy", branch="feat/x")
        api.create_branch("org/branchy", branch="feat/x", exist_ok=True)
        OUT["again"] = raises(HfHubHTTPError, api.create_branch, "org/branchy", branch="feat/x").response.status_code
        upload = dict(path_or_fileobj=b"on the branch", path_in_repo="b.txt", repo_id="org/branchy")
        api.upload_file(**upload, revision="feat/x")
        OUT["branch"] = open(hf_hub_download("org/branchy", "b.txt", revision="feat/x")).read()
        OUT["main"] = type(raises(EntryNotFoundError, hf_hub_download, "org/branchy", "b.txt")).__name__
        OUT["refs"] = sorted(b.name for b in api.list_repo_refs("org/branchy").branches)
        OUT["commits"] = [c.title for c in api.list_repo_commits("org/branchy", revision="feat/x")]
        raises(RevisionNotFoundError, api.upload_file, **upload, revision="not-created")  # commits need a branch
    """)
    assert out == {
        "again": 409,
        "branch": "on the branch",
        "main": "RemoteEntryNotFoundError",
        "refs": ["feat/x", "main"],
        "commits": ["Upload b.txt with huggingface_hub", "initial commit"],
    }
    assert hub.read_file("org/branchy", "b.txt", revision="feat/x") == b"on the branch"
    assert hub.list_files("org/branchy") == [".gitattributes"]


def test_model_card_push_then_a_hand_edit_on_the_hub_reaches_the_client(hub, client, tmp_path):
    hub.create_repo("org/carded")
    hf_home = tmp_path / "hf-home"
    script = """
        if ARGS["push"]:
            card = "---\\nlicense: mit\\nlibrary_name: mmsr_peft\\ntags:\\n- lora\\n---\\n\\n# Carded\\n"
            ModelCard(card).push_to_hub("org/carded")
            OUT["card_data"] = api.model_info("org/carded").card_data.to_dict()
        OUT["text"] = ModelCard.load("org/carded").text.strip()
        OUT["sha"] = api.model_info("org/carded").sha
    """
    pushed = client(script, hf_home=hf_home, push=True)
    assert pushed["card_data"] == {"license": "mit", "library_name": "mmsr_peft", "tags": ["lora"]}
    assert pushed["text"] == "# Carded"
    assert hub.read_file("org/carded", "README.md").decode().startswith("---\nlicense: mit\n")

    edited_sha = hub.write_file("org/carded", "README.md", "---\nlicense: mit\n---\n# Edited by hand\n")
    edited = client(script, hf_home=hf_home, push=False)  # same cache: the new commit must win
    assert edited == {"text": "# Edited by hand", "sha": edited_sha} and edited_sha != pushed["sha"]


def test_dataset_repo_commits_with_file_and_folder_deletions(hub, client, tmp_path):
    folder = tmp_path / "data"
    for name in ("train/a.jsonl", "train/b.jsonl", "test/c.jsonl"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({"name": name}) + "\n")
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# Data\n")
    out = client(
        """
        api.create_repo("org/data", repo_type="dataset")
        api.upload_folder(folder_path=ARGS["folder"], repo_id="org/data", repo_type="dataset")
        api.delete_file("train/a.jsonl", repo_id="org/data", repo_type="dataset")
        api.delete_folder("test", repo_id="org/data", repo_type="dataset")
        OUT["files"] = sorted(api.list_repo_files("org/data", repo_type="dataset"))
        OUT["train"] = sorted(e.path for e in api.list_repo_tree("org/data", "train", repo_type="dataset"))
        OUT["b"] = json.load(open(hf_hub_download("org/data", "train/b.jsonl", repo_type="dataset")))
        OUT["license"] = api.dataset_info("org/data").card_data.license
        infos = api.get_paths_info("org/data", ["train", "README.md", "nope"], repo_type="dataset")
        OUT["paths"] = sorted(e.path for e in infos)
        raises(EntryNotFoundError, api.delete_file, "train/a.jsonl", repo_id="org/data", repo_type="dataset")
        """,
        folder=str(folder),
    )
    assert out == {
        "files": [".gitattributes", "README.md", "train/b.jsonl"],
        "train": ["train/b.jsonl"],
        "b": {"name": "train/b.jsonl"},
        "license": "cc-by-4.0",
        "paths": ["README.md", "train"],
    }
    assert hub.list_files("org/data", repo_type="dataset") == out["files"]


def test_raw_http_chunked_lfs_upload_range_reads_and_error_headers(hub):
    data = b"\0" + os.urandom(70_000)  # a NUL byte in the first 512: binary
    oid = hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection(urlsplit(hub.url).netloc, timeout=10)  # one keep-alive connection throughout

    def request(method, path, **kwargs):
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response.status, response.read(), response.headers

    assert request("PUT", f"/lfs-upload/{oid}", body=iter([data[:999], data[999:]]), encode_chunked=True)[0] == 200
    assert hub.storage.lfs_objects[oid] == data
    assert request("PUT", f"/lfs-upload/{'0' * 64}", body=b"not that")[0] == 400

    hub.create_repo("org/raw")
    sha = hub.write_file("org/raw", "weights.dat", data)  # binary => stored through LFS, as the Hub would
    assert hub.is_lfs("org/raw", "weights.dat") and sha == hub.head("org/raw")
    status, body, headers = request("GET", "/org/raw/resolve/main/weights.dat", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    status, body, headers = request("HEAD", f"/org/raw/resolve/{sha}/weights.dat")
    assert (status, body, headers["X-Linked-Etag"], headers["X-Repo-Commit"]) == (200, b"", f'"{oid}"', sha)
    status, _, headers = request("HEAD", "/org/raw/resolve/main/absent.txt")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    status, body, headers = request("GET", "/api/no/such/endpoint")
    assert status == 404 and "X-Error-Code" not in headers and b"No route" in body
    conn.close()

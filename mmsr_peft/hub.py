"""Publishing base models and adapters to the Hugging Face Hub (`mmsr-publish`), with their model cards.

`huggingface_hub` does the transfer; the token comes from where it looks (`HF_TOKEN`, `hf auth login`) and is
never printed or written by us. Only safetensors, JSON, text and the card are uploaded: training states,
pickles and anything else in a run folder stay local.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .adapters import ADAPTER_FILES, ADAPTER_RECORD, adapter_config_file
from .arguments import PublishArguments
from .cards import adapter_card, base_card, base_revision, public_name
from .errors import CheckpointError
from .files import check_finite
from .model import BASE_FILES
from .side import SIDE_CONFIG_FILE, SIDE_WEIGHTS_FILE

CARD = "README.md"
# What a published folder may contain (tokenizer files are JSON/TXT; vocabularies of sentencepiece are .model).
ALLOWED = ("*.json", "*.safetensors", "*.txt", "*.model", "training_curves.png")
# The model and adapter files a publish replaces in the repo: one of them that this upload lacks is deleted
OWNED_FILES = (*BASE_FILES, *ADAPTER_FILES)
CARD_MARK = re.compile(r"\n<!-- mmsr_peft card sha256: ([0-9a-f]{64}) -->\n?$")


class CardUnreadable(OSError):
    """The card on the Hub could not be read, so whether it was edited there is unknown: nothing is uploaded."""


class SpaceNotPublished(OSError):
    """The model's commit went through; the Space's did not."""


def folder_kind(folder: Path) -> str:
    """`"base"` or `"adapter"`; anything else is an error naming what is missing."""
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return "base"
    if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file():
        return "adapter"
    if (folder / SIDE_CONFIG_FILE).is_file() and (folder / SIDE_WEIGHTS_FILE).is_file():
        return "adapter"
    raise CheckpointError(
        f"{folder}: neither a base checkpoint (config.json + model.safetensors) nor an adapter "
        f"(adapter_config.json + adapter_model.safetensors, or {SIDE_CONFIG_FILE} + {SIDE_WEIGHTS_FILE}); only "
        "safetensors weights are published"
    )


def _check_weights(folder: Path, files: list[Path]) -> None:
    """Every safetensors file to publish loads and holds finite values only, or nothing goes up."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for relative in files:
        if relative.suffix == ".safetensors":
            try:
                check_finite(load_file(folder / relative), folder / relative)
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{folder / relative}: unreadable safetensors file ({err})") from None


def files_to_upload(folder: Path) -> list[Path]:
    """The files of `folder` that would be published, relative to it (the card is rendered anew, not copied)."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.parts[0] == "checkpoints" or relative.name.startswith(".") or relative == Path(CARD):
            continue
        if path.is_symlink():  # what it points to could be any file of this machine
            raise CheckpointError(f"{path}: a link; mmsr-publish follows no links (copy the file into the folder)")
        if any(relative.match(pattern) for pattern in ALLOWED):
            files.append(relative)
    return files


def sign_card(text: str) -> str:
    """Appends a hidden hash of the card, so a later publish can tell whether it was edited on the Hub."""
    text = CARD_MARK.sub("", text).rstrip("\n") + "\n"
    return f"{text}\n<!-- mmsr_peft card sha256: {hashlib.sha256(text.encode()).hexdigest()} -->\n"


def card_edited(text: str) -> bool:
    """True when a card has no valid mmsr_peft hash: written or changed by hand."""
    match = CARD_MARK.search(text)
    if match is None:
        return True
    body = text[: match.start()]  # sign_card hashed the text up to (not including) the mark's leading newline
    return hashlib.sha256(body.encode()).hexdigest() != match.group(1)


def _remote_card(api, repo_id: str, revision: str | None) -> str | None:
    """The card on the Hub, downloaded anew (never a copy from the local cache); None only where the Hub answers
    that there is no such file, repo or revision. Any other failure (no answer, a 5xx) raises `CardUnreadable`."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with tempfile.TemporaryDirectory() as cache:  # empty: a failed request cannot fall back to an older copy
        try:
            path = api.hf_hub_download(repo_id, CARD, revision=revision, cache_dir=cache)
        except GatedRepoError:
            raise
        except (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except LocalEntryNotFoundError as err:  # what hf_hub_download raises when the Hub did not answer
            cause = err.__cause__ or err
            cause = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no answer'}"
            raise CardUnreadable(
                f"{repo_id}: cannot read its {CARD} on the Hub to tell whether it was edited there "
                f"({cause}); nothing was uploaded (try again, or pass --overwrite_card to "
                "replace the card)"
            ) from err
        return Path(path).read_text()


def _refuse_public(api, repo_id: str, repo_type: str) -> None:
    """--private never publishes into a repo that is public: an existing repo keeps its visibility, so it is an
    error that names the repo (a repo that does not exist yet is created private)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.repo_info(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return
    if not info.private:
        raise ValueError(
            f"{repo_id}: the {repo_type} repo already exists and is public, and --private does not change that; "
            "nothing was published (make it private on the Hub first, or publish without --private)"
        )


def render_card(folder: Path, kind: str, args: PublishArguments) -> str:
    """The card `args.repo_id` gets, signed; rendered before any network call (in a dry run too), so a folder the
    card cannot be written for fails before a repo is created."""
    if kind == "base":
        return sign_card(base_card(folder, args.repo_id))
    return sign_card(adapter_card(folder, args.repo_id, args.base_repo_id))


def publish(args: PublishArguments) -> str | None:
    """Pushes a base or adapter folder to `args.repo_id` with a freshly rendered model card.

    Returns the commit URL (None for a dry run). A card edited on the Hub is kept unless `overwrite_card`.
    """
    folder = Path(args.folder)
    kind = folder_kind(folder)
    if kind == "adapter" and not args.base_repo_id:
        base = json.loads(adapter_config_file(folder).read_text()).get("base_model_name_or_path") or ""
        if not base or Path(base).exists() or base.startswith((".", "/")) or base.count("/") != 1:
            raise CheckpointError(
                f"{folder}: the adapter's base is {base!r}, not a Hub repo id; publish the base first and pass "
                "--base_repo_id org/name, so the card and adapter_config.json point where users can load it"
            )
    files = files_to_upload(folder)
    _check_weights(folder, files)
    card = render_card(folder, kind, args)
    space = _space_files(args, kind, folder) if args.space else None
    if args.dry_run:
        total = sum((folder / f).stat().st_size for f in files)
        print(f"Would publish {kind} {folder} to {args.repo_id} ({'private' if args.private else 'public'}):")
        for relative in files:
            print(f"  {relative}  {(folder / relative).stat().st_size:,} bytes")
        print(f"  + {CARD} rendered for {args.repo_id}\n  total {total:,} bytes in {len(files)} files")
        if space:
            size = sum(len(text) for text in space.texts.values()) + sum(
                p.stat().st_size for p in space.files.values()
            )
            print(f"Would push the Space {args.space}: {', '.join(space.texts)}, and the catalog of {args.domain}")
            print(f"  {len(space.files)} files, {size:,} bytes in all")
        return None

    from huggingface_hub import HfApi, constants

    api = HfApi()
    try:
        if space and args.private:  # checked before the model goes up: the Space is pushed after it
            _refuse_public(api, args.space, "space")
        commit = _upload(api, args, folder, kind, files, card)
    except network_errors() as err:  # no connection, a timeout: one sentence, not the HTTP client's traceback
        raise ConnectionError(
            f"{args.repo_id}: cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}); "
            "nothing was published"
        ) from None
    print(f"Published {kind} {folder} to {args.repo_id}: {commit}")
    if space:
        try:
            print(f"Published the Space {args.space}: {_upload_space(api, args, space)}")
        except Exception as err:  # the model is on the Hub whatever went wrong: say so
            raise SpaceNotPublished(
                f"{args.space}: the Space was not pushed ({type(err).__name__}: {err}); the {kind} itself was "
                f"published to {args.repo_id}: {commit} (run the same command again to push the Space)"
            ) from err
    return str(commit)


@dataclass
class SpaceFiles:
    """What a Space made by `--space` holds: generated text files, and the catalog's files (Space path -> local)."""

    texts: dict[str, str]
    files: dict[str, Path]


def _space_files(args: PublishArguments, kind: str, folder: Path) -> SpaceFiles:
    """The Space of the published model: `mmsr_peft.app`'s page (app.py, space.json), requirements.txt, a README.md
    with the Space's settings, and the domain's catalog (items.parquet, manifest.json, the images it names)."""
    try:
        import gradio
    except ImportError as err:
        raise ImportError('--space writes a Gradio app and names its version: pip install "mmsr-peft[app]"') from err

    from . import __version__
    from .app import SPACE_APP, SPACE_CATALOG, SPACE_CONFIG
    from .data.catalog import Catalog
    from .domains import domain_folder

    source = domain_folder(args.domain, args.data_source, args.data_dir)
    catalog = Catalog.from_folder(source)  # checks it: a Space must not start on a broken catalog
    if kind == "base":
        model, adapters = args.repo_id, []
    else:
        base = json.loads(adapter_config_file(folder).read_text()).get("base_model_name_or_path")
        model, adapters = args.base_repo_id or base, [args.repo_id]
    files = {f"{SPACE_CATALOG}/{name}": source / name for name in ("items.parquet", "manifest.json")}
    files = {path: local for path, local in files.items() if local.is_file()}
    for image in catalog.images:
        if image:
            files[f"{SPACE_CATALOG}/{Path(image).relative_to(source.resolve()).as_posix()}"] = Path(image)
    card = "\n".join(
        [
            "---",
            f"title: {args.space.split('/')[1]}",
            "sdk: gradio",
            f"sdk_version: {gradio.__version__}",
            "app_file: app.py",
            "models:",
            *(f"- {repo}" for repo in [model, *adapters]),
            "tags:",
            "- mmsr_peft",
            "- recommendation",
            "---",
            "",
            f"# What [{args.repo_id}](https://huggingface.co/{args.repo_id}) recommends",
            "",
            f"Pick items of the {catalog.name} catalog ({len(catalog):,} items) as a history and see the model's "
            "top-k, with images and scores" + (", beside the base model's." if adapters else "."),
            f"Written by `mmsr-publish --space` (mmsr_peft {__version__}); `space.json` names the model.",
            "",
        ]
    )
    texts = {
        "app.py": SPACE_APP,
        SPACE_CONFIG: json.dumps({"model": model, "adapters": adapters, "k": 10}, indent=2) + "\n",
        "requirements.txt": f"mmsr-peft[app]=={__version__}\n",
        CARD: card,
    }
    return SpaceFiles(texts, files)


def _stage(staging: Path, files: dict) -> None:
    """Links each local file of `files` (path in the repo -> local path) into the upload folder `staging`."""
    for path, local in files.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        (staging / path).symlink_to(Path(local).resolve())


def _upload_space(api, args: PublishArguments, space: SpaceFiles) -> str:
    """Creates the Space (Gradio SDK) and uploads its files in one commit, which replaces the catalog and the
    generated files an earlier push left; returns the commit URL."""
    from .app import SPACE_CATALOG

    api.create_repo(args.space, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    if args.private:
        _refuse_public(api, args.space, "space")
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        for path, text in space.texts.items():
            (staging / path).write_text(text)
        _stage(staging, space.files)
        with warnings.catch_warnings():  # the catalog's items.parquet belongs in the Space: the page reads it
            warnings.filterwarnings("ignore", message="It seems that you are about to commit a data file")
            commit = api.upload_folder(
                repo_id=args.space,
                repo_type="space",
                folder_path=staging,
                delete_patterns=[f"{SPACE_CATALOG}/*", *space.texts],  # another domain's images must not stay
                commit_message=args.commit_message or f"mmsr_peft page of {args.repo_id}, by mmsr-publish --space",
            )
    return str(commit)


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client that huggingface_hub uses (httpx2, httpx or requests, by version)."""
    import importlib

    errors = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _upload(api, args: PublishArguments, folder: Path, kind: str, files: list[Path], card: str) -> str:
    """Creates the repo (and branch) and uploads `files` with `card` in one commit, unless a card edited on the Hub
    is kept; returns the commit URL."""
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    if args.private:
        _refuse_public(api, args.repo_id, "model")
    if args.revision and args.revision != "main":
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    remote = None if args.overwrite_card else _remote_card(api, args.repo_id, args.revision)
    keep_remote_card = remote is not None and card_edited(remote)
    if keep_remote_card:
        print(f"{args.repo_id}: {CARD} was edited on the Hub; keeping it (pass --overwrite_card to replace it)")
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        _stage(staging, {relative: folder / relative for relative in files})
        if kind == "adapter":
            _point_adapter_at(staging, folder, args.base_repo_id)
        if (folder / RUN_ARGS).is_file():
            _strip_local_paths(staging, folder, args.base_repo_id)
        if (staging / "config.json").exists():
            _strip_local_sources(staging, folder)
        if not keep_remote_card:
            (staging / CARD).write_text(card)
        commit = api.upload_folder(
            repo_id=args.repo_id,
            folder_path=staging,
            revision=args.revision,
            delete_patterns=list(OWNED_FILES),  # what an earlier publish of another kind or version left goes
            commit_message=args.commit_message or f"Upload mmsr_peft {kind} with mmsr-publish",
        )
    return str(commit)


RUN_ARGS = "run_args.json"
PATH_ARGUMENTS = ("output_dir", "data_dir", "feature_cache_dir", "vision_weights")
# a Hub model name, an open_clip tag or a local path (`hf:` before the ones read with transformers)
MODEL_ARGUMENTS = ("text_model", "vision_model", "fusion_init_from")


def _strip_local_paths(staging: Path, folder: Path, base_repo_id: str | None) -> None:
    """The published `run_args.json` keeps the run's settings but not this machine's paths: each path argument,
    and each model argument that is a local path, keeps its last part (an adapter's `base` becomes the base's repo
    id, or stays whole when it is one); a model argument that names a Hub model or a preset stays whole."""
    run_args = json.loads((folder / RUN_ARGS).read_text())
    for key in PATH_ARGUMENTS:
        if isinstance(run_args.get(key), str):
            run_args[key] = Path(run_args[key]).name
    for key in (*MODEL_ARGUMENTS, "base"):
        if key in run_args:
            run_args[key] = public_name(run_args[key])
    if base_repo_id and "base" in run_args:
        run_args["base"] = base_repo_id
    (staging / RUN_ARGS).unlink()
    (staging / RUN_ARGS).write_text(json.dumps(run_args, indent=2) + "\n")


def _point_adapter_at(staging: Path, folder: Path, base_repo_id: str | None) -> None:
    """The published adapter names its base by its repo id (`base_repo_id`), not by a local path, and a peft
    adapter trained on a revision of a Hub base (`--revision`) names that revision in its config's `revision`."""
    if (folder / "adapter_config.json").is_file():
        base = base_repo_id or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        run_args = json.loads((folder / RUN_ARGS).read_text()) if (folder / RUN_ARGS).is_file() else {}
        revision = base_revision(base, run_args)
    else:
        revision = None
    for name, key in (
        ("adapter_config.json", "base_model_name_or_path"),
        (SIDE_CONFIG_FILE, "base_model_name_or_path"),
        (ADAPTER_RECORD, "base_model"),
    ):
        if (folder / name).is_file() and (base_repo_id or (revision and name == "adapter_config.json")):
            config = json.loads((folder / name).read_text())
            config[key] = base_repo_id or config[key]
            if revision and name == "adapter_config.json":
                config["revision"] = revision
            (staging / name).unlink()
            (staging / name).write_text(json.dumps(config, indent=2) + "\n")


def _strip_local_sources(staging: Path, folder: Path) -> None:
    """The published `config.json` names its text and vision encoders as `_strip_local_paths` names the model
    arguments: a local folder by its last part only, a Hub model or a preset whole."""
    config = json.loads((folder / "config.json").read_text())
    changed = False
    for part in ("text", "vision"):
        section = config.get(part)
        if isinstance(section, dict) and isinstance(section.get("source"), str):
            public = public_name(section["source"])
            changed |= public != section["source"]
            section["source"] = public
    if changed:
        (staging / "config.json").unlink()
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")

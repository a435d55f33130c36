"""The domain registry: every `--target`/`--sources` name, where its data comes from, and how to load it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.catalog import Catalog
from .data.folder import DOMAIN_NAME
from .data.sequences import Sequences, Split, choose_cold_items, choose_train_users
from .errors import DataError
from .evaluation import EvalSet

DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class DomainSpec:
    """Where a domain's data comes from.

    Args:
        name (`str`): the name used on the command line (`--target office`).
        amazon2018 (`str | None`): category of the Amazon Reviews 2018 dump.
        amazon2023 (`str | None`): category of the Amazon Reviews 2023 dump.
        synthetic (`bool`): whether the embedded synthetic world has a domain of this name.
        movielens (`bool`): whether it is a MovieLens dataset (`mmsr-data movielens`).
    """

    name: str
    amazon2018: str | None = None
    amazon2023: str | None = None
    synthetic: bool = False
    movielens: bool = False


DOMAINS: dict[str, DomainSpec] = {
    spec.name: spec
    for spec in [
        DomainSpec("office", "Office_Products", "Office_Products", synthetic=True),
        DomainSpec("arts", "Arts_Crafts_and_Sewing", "Arts_Crafts_and_Sewing", synthetic=True),
        DomainSpec("scientific", "Industrial_and_Scientific", "Industrial_and_Scientific", synthetic=True),
        DomainSpec("food", "Grocery_and_Gourmet_Food", "Grocery_and_Gourmet_Food", synthetic=True),
        DomainSpec("home", "Home_and_Kitchen", "Home_and_Kitchen", synthetic=True),
        DomainSpec("movies", "Movies_and_TV", "Movies_and_TV", synthetic=True),
        DomainSpec("instruments", "Musical_Instruments", "Musical_Instruments"),
        DomainSpec("pantry", "Prime_Pantry", None),
        DomainSpec("ml-100k", movielens=True),
    ]
}

# How each source's processed folders are made; `{name}` and `{data_dir}` are filled in error messages.
SOURCES: dict[str, str] = {
    "synthetic": "mmsr-data synthetic --data_dir {data_dir} --domains {name}",
    "movielens": "mmsr-data movielens --data_dir {data_dir} [--posters FOLDER_OF_<item_id>.jpg]",
    "amazon2018": "mmsr-data amazon --domain {name} --version 2018 --data_dir {data_dir} [--raw_dir FOLDER]",
    "amazon2023": "mmsr-data amazon --domain {name} --version 2023 --data_dir {data_dir} [--raw_dir FOLDER]",
    "recbole": "mmsr-data recbole-import ATOMIC_DIR --name {name} --data_dir {data_dir}",
}


@dataclass
class Domain:
    """A loaded processed domain folder."""

    name: str
    folder: Path
    catalog: Catalog
    sequences: Sequences
    manifest: dict

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic", False))


def domain_folder(name: str, source: str = "synthetic", data_dir: str = DEFAULT_DATA_DIR) -> Path:
    """The processed folder of `name` from `source`: `<data_dir>/<source>/<name>`. A name outside `DOMAINS` must
    be a folder that is already there (made by `mmsr-data split` or `mmsr-data recbole-import`)."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; valid sources: {', '.join(sorted(SOURCES))}")
    if name not in DOMAINS:
        folder = Path(data_dir) / source / name
        if DOMAIN_NAME.fullmatch(name) and (folder / "items.parquet").is_file():
            return folder
        raise DataError(
            f"unknown domain {name!r}: no processed folder {folder}, and not one that mmsr-data prepares "
            f"({', '.join(sorted(DOMAINS))})"
        )
    for kind in ("synthetic", "movielens", "amazon2018", "amazon2023"):  # a spec field each
        if source == kind and not getattr(DOMAINS[name], kind):
            valid = sorted(n for n, spec in DOMAINS.items() if getattr(spec, kind))
            raise DataError(f"source {kind!r} has no domain {name!r}; its domains: {', '.join(valid)}")
    return Path(data_dir) / source / name


def no_data_error(name: str, source: str, data_dir: str) -> DataError:
    """The error for a registered domain that is not prepared yet: it says the command that prepares it."""
    folder, command = domain_folder(name, source, data_dir), SOURCES[source].format(name=name, data_dir=data_dir)
    return DataError(f"no processed data for domain {name!r} ({source}) at {folder}; prepare it with:\n  {command}")


def load_domain(name: str, source: str = "synthetic", data_dir: str = DEFAULT_DATA_DIR) -> Domain:
    """Loads a registered domain. A missing folder is an error that says the command that prepares it."""
    folder = domain_folder(name, source, data_dir)
    if not (folder / "items.parquet").is_file():
        raise no_data_error(name, source, data_dir)
    return load_folder(folder)


def load_folder(folder: str | Path) -> Domain:
    """Loads any processed domain folder (see docs/data.md)."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    manifest = {"name": folder.name}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest_path}: not valid JSON ({err})") from err
    catalog = Catalog.from_folder(folder)
    sequences = Sequences.from_folder(folder, catalog)
    if len(sequences) == 0:
        raise DataError(f"{folder / 'interactions.parquet'}: no user has at least 3 interactions")
    return Domain(manifest.get("name", folder.name), folder, catalog, sequences, manifest)


@dataclass
class Corpus:
    """Several domains joined for one run: one catalog, training sequences and per-domain evaluation sets.

    Each user is evaluated against the items of their own domain only.
    """

    catalog: Catalog
    train: list
    valid: list[EvalSet]
    test: list[EvalSet]
    stats: dict
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_skip: np.ndarray | None = None  # per training sequence, its first targets that are context only

    def negative_candidates(self) -> np.ndarray | None:
        """The catalog indices training may draw as negatives: all but the cold items (None: the whole catalog)."""
        if not len(self.cold_items):
            return None
        return np.setdiff1d(np.arange(len(self.catalog)), self.cold_items)


def build_corpus(
    domains: list[Domain],
    max_len: int,
    cold_start_fraction: float = 0.0,
    seed: int = 0,
    train_user_fraction: float = 1.0,
    train_stride: int | None = None,
) -> Corpus:
    """Joins `domains` and splits each by leave-one-out. With `cold_start_fraction`, that share of each domain's
    items (drawn with `seed`) is held out of all training data and histories; evaluation then reports warm and
    cold targets separately (see `Split.leave_one_out`). With `train_user_fraction` < 1, only that share of each
    domain's users (drawn with `seed`, `choose_train_users`) trains; every user is evaluated. `train_stride`: how
    far apart a long user's training windows end (`Split.leave_one_out`'s `stride`; default `max_len`)."""
    catalog = Catalog.concat([d.catalog for d in domains])
    train, skip, valid, test, stats, cold_items, offset = [], [], [], [], {}, [], 0
    for domain in domains:
        cold = choose_cold_items(domain.sequences, cold_start_fraction, seed) if cold_start_fraction else None
        users = len(domain.sequences)
        trains = choose_train_users(users, train_user_fraction, seed) if train_user_fraction < 1 else None
        split = Split.leave_one_out(domain.sequences, max_len, cold, trains, train_stride)
        item_range = (offset, offset + len(domain.catalog))
        train.extend(seq + offset for seq in split.train)
        skip.append(split.train_skip)
        if cold is not None:
            cold_items.append(cold + offset)
        counts = split.train_counts(len(domain.catalog))
        for cases, histories, known, targets, cold_cases in (
            (valid, split.valid_histories, split.valid_known, split.valid_targets, split.valid_cold),
            (test, split.test_histories, split.test_known, split.test_targets, split.test_cold),
        ):
            histories, known = [h + offset for h in histories], [k + offset for k in known]
            eval_set = EvalSet(domain.name, histories, targets + offset, item_range, cold_cases, known)
            eval_set.cold_items, eval_set.item_counts = None if cold is None else cold + offset, counts
            cases.append(eval_set)
        stats[domain.name] = {
            "items": len(domain.catalog),
            **domain.sequences.stats,
            "train_sequences": len(split.train),
            "cold_items": 0 if cold is None else len(cold),
            "train_users": users if trains is None else int(trains.sum()),
            "synthetic": domain.synthetic,
            "source": domain.manifest.get("source", "unknown"),
            "version": domain.manifest.get("version", "unknown"),
            "manifest_sha256": hashlib.sha256(json.dumps(domain.manifest, sort_keys=True).encode()).hexdigest(),
        }
        offset += len(domain.catalog)
    cold_items = np.concatenate(cold_items) if cold_items else np.zeros(0, dtype=np.int64)
    skip = np.concatenate(skip) if skip else np.zeros(0, dtype=np.int64)
    return Corpus(catalog, train, valid, test, stats, cold_items, skip if skip.any() else None)


def describe_data(stats: dict) -> str:
    """One line per domain of `Corpus.stats`: what was read, and what was left out and why."""
    lines = []
    for name, d in stats.items():
        line = f"{name}: {d['interactions']:,} interactions, {d['users_kept']:,} users, {d['items']:,} items"
        if d.get("users_dropped_short"):
            dropped = d["users_dropped_short"]
            line += f"; {dropped:,} user{'s' * (dropped != 1)} dropped (fewer than 3 interactions)"
        if d.get("train_users", d["users_kept"]) < d["users_kept"]:
            line += f"; {d['train_users']:,} of the users train (--train_user_fraction), all are evaluated"
        if d.get("cold_items"):
            line += f"; {d['cold_items']:,} items held out of training (cold start)"
        lines.append(line)
    return "\n".join(lines)

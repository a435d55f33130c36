"""MovieLens-100k as a processed domain folder: the real interactions, item text from title + year + genres, and
optionally poster images.

The MovieLens files are read from the `recbole` wheel (`recbole/dataset_example/ml-100k/`, atomic TSV files with
`name:type` headers), which installs them without importing RecBole: `pip install --no-deps recbole==1.2.1`.
MovieLens terms forbid redistributing the data: it is installed, never committed or packaged.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import DataError
from .folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from .recbole import read_atomic_file

NAME = "ml-100k"


def recbole_files() -> Path:
    """The folder of ML-100k's atomic files inside the installed `recbole` wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError("MovieLens-100k comes with the recbole wheel: pip install --no-deps recbole==1.2.1")
    folder = Path(spec.origin).parent / "dataset_example" / NAME
    if not (folder / f"{NAME}.inter").is_file():
        raise DataError(f"{folder}: no {NAME}.inter in the installed recbole package")
    return folder


def read_atomic(path: Path, columns: dict[str, str]) -> list[dict]:
    """Rows of a RecBole atomic file (read as RecBole reads it, `read_atomic_file`), keeping `columns` renamed as
    given."""
    header, rows = read_atomic_file(path)
    names = [name for name, _ in header]
    missing = sorted(set(columns) - set(names))
    if missing:
        raise DataError(f"{path}: missing columns {missing} (header: {names})")
    return [{new: row[old] for old, new in columns.items()} for _, row in rows]


def item_text(title: str, year: str, genres: str) -> str:
    """`"Toy Story (1995). Genres: Animation, Children's, Comedy."`"""
    text = f"{title} ({year})" if year else title
    return f"{text}. Genres: {', '.join(genres.split())}." if genres else f"{text}."


def prepare_movielens(data_dir: str | os.PathLike, posters: str | os.PathLike | None = None, overwrite=False) -> Path:
    """Writes `<data_dir>/movielens/ml-100k/` (atomically). `posters` is a folder of `<item_id>.jpg` files; each
    poster found is copied into the domain's `images/`, items without one have no image."""
    target = Path(data_dir) / "movielens" / NAME
    if posters is not None and not Path(posters).is_dir():
        raise DataError(f"--posters {posters}: no such folder ({Path(posters).resolve()})")
    source = recbole_files()
    items = read_atomic(
        source / f"{NAME}.item",
        {"item_id": "item_id", "movie_title": "title", "release_year": "year", "class": "genres"},
    )
    interactions = read_atomic(
        source / f"{NAME}.inter", {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    )
    with new_domain_folder(target, overwrite) as tmp:
        with_posters = _write(tmp, items, interactions, Path(posters) if posters else None)
        counts = {
            "items": len(items),
            "users": len({row["user_id"] for row in interactions}),
            "interactions": len(interactions),
            "items_with_image": with_posters,
        }
        preprocessing = {"text": "title (year). Genres: ...", "posters": str(posters) if posters else None}
        write_manifest(tmp, NAME, "movielens", "recbole-1.2.1 atomic files", counts, preprocessing)
    return target


def _write(folder: Path, items: list[dict], interactions: list[dict], posters: Path | None) -> int:
    images, copied = [], 0
    for item in items:
        poster = posters / f"{item['item_id']}.jpg" if posters is not None else None
        if poster is not None and poster.is_file():
            (folder / "images" / poster.name).write_bytes(_poster_bytes(poster, posters))
            images.append(f"images/{poster.name}")
            copied += 1
        else:
            images.append(None)
    columns = {
        "item_id": [i["item_id"] for i in items],
        "text": [item_text(i["title"], i["year"], i["genres"]) for i in items],
        "image": images,
        "title": [i["title"] for i in items],
        "year": [i["year"] for i in items],
        "genres": [i["genres"] for i in items],
    }
    write_table(folder / "items.parquet", columns, ITEM_SCHEMA)
    rows = {
        "user_id": [r["user_id"] for r in interactions],
        "item_id": [r["item_id"] for r in interactions],
        "timestamp": [int(float(r["timestamp"])) for r in interactions],
    }
    write_table(folder / "interactions.parquet", rows, INTERACTION_SCHEMA)
    return copied


def _poster_bytes(poster: Path, posters: Path) -> bytes:
    """The bytes of `poster` once they proved to be a whole image of sane size, read from inside `posters` only (a
    link that leads out of the folder is refused, not followed)."""
    from .images import ImageDownloadConfig, ImageRejected, check_image

    target, config = poster.resolve(), ImageDownloadConfig()
    if not target.is_relative_to(posters.resolve()):
        raise DataError(f"--posters {poster}: a link to {target}, outside the folder; refused")
    if target.stat().st_size > config.max_bytes:
        raise DataError(
            f"--posters {poster}: {target.stat().st_size} bytes, more than {config.max_bytes} for an image"
        )
    data = target.read_bytes()
    try:
        check_image(data, config)
    except ImageRejected as err:
        raise DataError(f"--posters {poster}: not a usable image ({err.reason}: {err})") from None
    return data


def add_command(commands) -> None:
    """`mmsr-data movielens`."""
    parser = commands.add_parser("movielens", help="MovieLens-100k (real data, from the recbole wheel's files).")
    parser.add_argument("--data_dir", default="data", help="Root of processed domains (writes <data_dir>/movielens).")
    parser.add_argument(
        "--images", "--posters", dest="posters", default=None, help="Folder of <item_id>.jpg item images (posters)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing folder.")
    parser.set_defaults(
        handler=lambda args: print(f"wrote {prepare_movielens(args.data_dir, args.posters, args.overwrite)}")
    )

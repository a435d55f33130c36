"""A deterministic synthetic multi-domain catalog world, written as processed domain folders.

Every item has latent attributes shared across domains (colour, shape, pattern, style, price tier). Its text
describes them in words, with synonyms and filler; its image (64 px PNG) shows them. Users prefer some shapes,
a pattern and a style, and share one sequential habit across all domains: the next item's colour tends to be
the next colour on the colour wheel after the previous item's. So the next item is predictable from the content
of earlier items, items never seen in training can be ranked by content, and transfer between domains is real
by construction. The data is labelled synthetic in every manifest; it is for demos and tests, not for claims.

Example:

```python
>>> from mmsr_peft.data.synthetic import SyntheticWorldConfig, generate_world
>>> paths = generate_world("data/synthetic", config=SyntheticWorldConfig(seed=0))  # six domain folders
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, Features, Value
from PIL import Image, ImageDraw
from tqdm import tqdm

from .folder import new_domain_folder, write_manifest

SOURCE_DOMAINS: tuple[str, ...] = ("food", "home", "movies")
TARGET_DOMAINS: tuple[str, ...] = ("office", "arts", "scientific")

# Shared attributes: the first word of each tuple is the canonical name, the others are synonyms used in text.
# The colour order is the colour wheel behind the users' sequential habit (next colour = index + 1 mod 8).
_COLOURS = (
    ("red", "crimson", "scarlet"), ("orange", "tangerine", "amber"), ("yellow", "golden", "lemon"),
    ("green", "emerald", "lime"), ("teal", "turquoise", "aqua"), ("blue", "cobalt", "navy"),
    ("purple", "violet", "lavender"), ("pink", "rose", "magenta"),
)  # fmt: skip
_COLOUR_RGB = (
    (215, 40, 40), (240, 135, 20), (235, 210, 30), (50, 170, 60),
    (20, 160, 150), (40, 80, 210), (130, 50, 180), (235, 100, 170),
)  # fmt: skip
_SHAPES = (
    ("circle", "round", "circular"), ("square", "squared", "boxy"), ("triangle", "triangular", "three-cornered"),
    ("star", "star-shaped", "starry"), ("diamond", "rhombus", "lozenge"),
)  # fmt: skip
_PATTERNS = (
    ("solid", "plain", "uniform"), ("striped", "pinstriped", "lined"),
    ("dotted", "polka-dot", "spotted"), ("checkered", "plaid", "gingham"),
)  # fmt: skip
_STYLES = (
    ("modern", "contemporary", "sleek"), ("vintage", "retro", "old-fashioned"),
    ("minimalist", "simple", "understated"), ("playful", "fun", "whimsical"),
)  # fmt: skip
# The image shows the style as the background tone: cool grey, sepia, white, dark navy.
_STYLE_BACKGROUND = ((190, 198, 210), (222, 200, 160), (250, 250, 250), (35, 35, 60))
_PRICE_TIERS = (
    ("budget", "affordable", "low-cost"), ("mid-range", "moderate", "fair"), ("premium", "high-end", "luxury"),
)  # fmt: skip
_PRICE_RANGES = ((2.0, 10.0), (10.0, 40.0), (40.0, 150.0))
_FILLER = (
    "Great gift.", "Ships fast.", "Customers love it.", "Limited stock.", "Easy to clean.",
    "Perfect for everyday use.", "Satisfaction guaranteed.", "A bestseller this season.",
)  # fmt: skip
_ADVERBS = ("really", "truly", "quite", "very", "rather")

# Logits of the users' Markov process over the next item (sampled by softmax at _TEMPERATURE). The colour
# habit dominates so that sequence order matters; the preferences make histories informative; popularity
# (log of a Zipf(1) law over a random ranking of the items) adds a realistic head without deciding the ranking.
_W_COLOUR_NEXT = 2.5
_W_SHAPE = 1.5
_W_PATTERN = 1.0
_W_STYLE = 1.0
_W_POPULARITY = 0.3
_TEMPERATURE = 1.0
_TIE_RATE = 0.08  # fraction of consecutive interactions of a user that share a timestamp
_EPOCH = 1_577_836_800  # 2020-01-01 UTC; users start within the following year
_DAY = 86_400


@dataclass(frozen=True)
class DomainVocabulary:
    """Words of one synthetic domain; the shared attributes are described with the same words everywhere.

    Args:
        category (`str`): Top-level category label written in the `category` column, as in the Amazon benchmark.
        item_types (`tuple[str, ...]`): Kinds of item sold in the domain (singular nouns).
        brands (`tuple[str, ...]`): Made-up brand names.
    """

    category: str
    item_types: tuple[str, ...]
    brands: tuple[str, ...]


SYNTHETIC_DOMAINS: dict[str, DomainVocabulary] = {
    "food": DomainVocabulary(
        "Grocery & Gourmet Food",
        ("cookie tin", "candy box", "tea tin", "spice jar", "chocolate bar", "macaron box", "jelly jar", "cake"),
        ("Mellowby", "Crumbleton", "Saporo", "Nibbla", "Zestora", "Bakewell"),
    ),
    "home": DomainVocabulary(
        "Home & Kitchen",
        ("cushion", "vase", "rug", "lamp shade", "curtain", "throw blanket", "mug", "wall clock"),
        ("Hearthly", "Domora", "Nestwell", "Casavo", "Lumina", "Quiltique"),
    ),
    "movies": DomainVocabulary(
        "Movies & TV",
        ("DVD", "Blu-ray disc", "box set", "poster print", "soundtrack CD", "steelbook edition"),
        ("Reelhaus", "Cinemora", "Frameline", "Vistaplay", "Screenwick", "Lumiflix"),
    ),
    "office": DomainVocabulary(
        "Office Products",
        ("stapler", "notebook", "pen", "folder", "desk lamp", "binder", "desk organizer", "calculator"),
        ("Papyra", "Deskwell", "Inkbright", "Officio", "Clipstone", "Notara"),
    ),
    "arts": DomainVocabulary(
        "Arts, Crafts & Sewing",
        ("paintbrush", "canvas", "sketchbook", "paint set", "palette", "easel", "marker set", "yarn skein"),
        ("Artiva", "Brushwick", "Pigmenta", "Craftora", "Easelby", "Huemaker"),
    ),
    "scientific": DomainVocabulary(
        "Industrial & Scientific",
        ("beaker", "test tube rack", "lab notebook", "magnifier", "petri dish set", "safety goggles", "pipette set"),
        ("Labora", "Sciento", "Vialux", "Quantix", "Beakerly", "Kelvira"),
    ),
}

_ITEM_COLUMNS = ("item_id", "text", "image", "title", "brand", "category")
_ITEM_FEATURES = Features({name: Value("string") for name in _ITEM_COLUMNS})
_INTERACTION_FEATURES = Features({"user_id": Value("string"), "item_id": Value("string"), "timestamp": Value("int64")})


@dataclass
class SyntheticWorldConfig:
    """Parameters of the synthetic world; all of them are recorded in each domain's manifest.

    Args:
        seed (`int`, defaults to 0): Global seed; each domain derives its own from (seed, domain name).
        num_items (`int`, defaults to 400): Items per domain.
        num_users (`int`, defaults to 600): Users per domain.
        min_len (`int`, defaults to 5): Shortest user sequence.
        max_len (`int`, defaults to 30): Longest user sequence (at most `num_items`: items never repeat).
        image_size (`int`, defaults to 64): Side of the square RGB item images, in pixels.
        missing_text_rate (`float`, defaults to 0.08): Fraction of items whose text is empty.
        missing_image_rate (`float`, defaults to 0.08): Fraction of items without an image (never one without text).
    """

    seed: int = 0  # global seed; per-domain seeds derive from (seed, crc32(domain name))
    num_items: int = 400  # items per domain
    num_users: int = 600  # users per domain
    min_len: int = 5  # shortest user sequence
    max_len: int = 30  # longest user sequence, at most num_items (no repeats)
    image_size: int = 64  # side of the square RGB images in pixels
    missing_text_rate: float = 0.08  # fraction of items with empty text
    missing_image_rate: float = 0.08  # fraction of items without image; no item misses both

    def __post_init__(self):
        for name in ("seed", "num_items", "num_users", "min_len", "max_len", "image_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool), name, value, "an int")
        for name in ("missing_text_rate", "missing_image_rate"):
            value = getattr(self, name)
            is_rate = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
            _check(is_rate, name, value, "a float in [0, 1)")
        _check(self.seed >= 0, "seed", self.seed, ">= 0")
        _check(self.num_items >= 10, "num_items", self.num_items, ">= 10")
        _check(self.num_users >= 1, "num_users", self.num_users, ">= 1")
        _check(self.min_len >= 1, "min_len", self.min_len, ">= 1")
        span = f"between min_len ({self.min_len}) and num_items ({self.num_items}); items never repeat"
        _check(self.min_len <= self.max_len <= self.num_items, "max_len", self.max_len, span)
        _check(self.image_size >= 16, "image_size", self.image_size, ">= 16")
        ok = self.missing_text_rate + self.missing_image_rate <= 1
        both = f"<= 1 - missing_text_rate ({self.missing_text_rate}) so that no item misses both modalities"
        _check(ok, "missing_image_rate", self.missing_image_rate, both)


def _check(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"SyntheticWorldConfig.{field} must be {expected}, got {value!r}")


def _rng(name: str, seed: int, stream: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break determinism.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


@dataclass
class _Catalog:
    """Latent item table of one domain; every array has shape (num_items,)."""

    item_type: np.ndarray
    brand: np.ndarray
    colour: np.ndarray
    shape: np.ndarray
    pattern: np.ndarray
    style: np.ndarray
    price: np.ndarray
    log_popularity: np.ndarray
    has_text: np.ndarray
    has_image: np.ndarray


def _sample_catalog(name: str, config: SyntheticWorldConfig) -> _Catalog:
    rng, vocab, n = _rng(name, config.seed, 0), SYNTHETIC_DOMAINS[name], config.num_items
    has_text = rng.random(n) >= config.missing_text_rate
    # Images go missing only among items with text, at the rate that keeps the overall rate as configured.
    p_no_image = config.missing_image_rate / (1.0 - config.missing_text_rate)
    return _Catalog(
        item_type=rng.integers(len(vocab.item_types), size=n),
        brand=rng.integers(len(vocab.brands), size=n),
        colour=rng.integers(len(_COLOURS), size=n),
        shape=rng.integers(len(_SHAPES), size=n),
        pattern=rng.integers(len(_PATTERNS), size=n),
        style=rng.integers(len(_STYLES), size=n),
        price=rng.integers(len(_PRICE_TIERS), size=n),
        log_popularity=-np.log(rng.permutation(n) + 1.0),
        has_text=has_text,
        has_image=~has_text | (rng.random(n) >= p_no_image),
    )


def _compose_text(vocab: DomainVocabulary, catalog: _Catalog, i: int, rng: np.random.Generator) -> tuple[str, str]:
    """Returns (title, text) of item `i`, with random synonyms, word orders and filler."""

    def pick(words):
        return words[rng.integers(len(words))]

    kind, brand = vocab.item_types[catalog.item_type[i]], vocab.brands[catalog.brand[i]]
    colour, pattern = pick(_COLOURS[catalog.colour[i]]), pick(_PATTERNS[catalog.pattern[i]])
    shape, style = pick(_SHAPES[catalog.shape[i]]), pick(_STYLES[catalog.style[i]])
    tier, price = pick(_PRICE_TIERS[catalog.price[i]]), f"${rng.uniform(*_PRICE_RANGES[catalog.price[i]]):.2f}"
    titles = (
        f"{brand} {colour} {pattern} {kind}",
        f"{brand} {kind}, {colour} {pattern}",
        f"{colour.capitalize()} {pattern} {kind} by {brand}",
    )
    bodies = (
        f"A {pick(_ADVERBS)} {style} {kind} with a {shape} design. A {tier} choice at {price}.",
        f"{style.capitalize()} look, {shape} motif, {tier} price ({price}).",
        f"Features a {shape} form in a {pick(_ADVERBS)} {style} style; {tier} at {price}.",
    )
    title, body = pick(titles), pick(bodies)
    fillers = [pick(_FILLER) for _ in range(rng.integers(0, 3))]
    return title, " ".join([title + ".", body, *fillers])


def _render_item_image(
    colour: int, shape: int, pattern: int, style: int, size: int, rng: np.random.Generator
) -> Image.Image:
    """Draws the item: a `shape` filled with `colour` and marked with `pattern` on a `style` background."""
    fill = tuple(int(v) for v in np.clip(np.array(_COLOUR_RGB[colour]) + rng.integers(-18, 19, size=3), 0, 255))
    marks = tuple(int(v * 0.45) for v in fill)  # darker shade of the fill, so the colour still dominates
    layer = Image.new("RGB", (size, size), fill)
    _draw_pattern(ImageDraw.Draw(layer), pattern, size, marks, offset=int(rng.integers(0, max(2, size // 8))))
    mask = Image.new("L", (size, size), 0)
    centre = size / 2 + rng.uniform(-0.06, 0.06, size=2) * size  # small offset jitter
    radius = size * rng.uniform(0.32, 0.42)  # small scale jitter
    _draw_shape(ImageDraw.Draw(mask), shape, centre, radius)
    image = Image.new("RGB", (size, size), _STYLE_BACKGROUND[style])
    image.paste(layer, mask=mask)
    return image


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: int, size: int, colour: tuple, offset: int) -> None:
    step = max(4, size // 7)
    name = _PATTERNS[pattern][0]
    for i, a in enumerate(range(offset - step, size, step)):
        if name == "striped":
            draw.rectangle([0, a, size, a + step // 3], fill=colour)
        for j, b in enumerate(range(offset - step, size, step)):
            if name == "dotted":
                draw.ellipse([a + step / 4, b + step / 4, a + 3 * step / 4, b + 3 * step / 4], fill=colour)
            elif name == "checkered" and (i + j) % 2 == 0:
                draw.rectangle([a, b, a + step - 1, b + step - 1], fill=colour)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: int, centre: np.ndarray, radius: float) -> None:
    name = _SHAPES[shape][0]
    cx, cy = centre
    if name in ("circle", "square"):
        r = radius if name == "circle" else radius * 0.85  # a square of the same side looks bigger
        (draw.ellipse if name == "circle" else draw.rectangle)([cx - r, cy - r, cx + r, cy + r], fill=255)
        return
    # Polygons: vertex angles (degrees, 0 = up) and per-vertex radius factors.
    angles, radii = {
        "triangle": (np.array([0, 120, 240]), np.ones(3)),
        "diamond": (np.array([0, 90, 180, 270]), np.array([1.0, 0.7, 1.0, 0.7])),
        "star": (np.arange(10) * 36, np.tile([1.0, 0.42], 5)),
    }[name]
    theta = np.deg2rad(angles)
    xs, ys = cx + radius * radii * np.sin(theta), cy - radius * radii * np.cos(theta)
    draw.polygon([(float(x), float(y)) for x, y in zip(xs, ys, strict=True)], fill=255)


def _sample_sequences(catalog: _Catalog, config: SyntheticWorldConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Returns each user's item indices in consumption order (the Markov process of the module docstring)."""
    num_users, num_items = config.num_users, config.num_items
    fav_shapes = np.zeros((num_users, len(_SHAPES)), dtype=bool)
    for row, k in zip(fav_shapes, rng.integers(1, 3, size=num_users), strict=True):
        row[rng.choice(len(_SHAPES), size=k, replace=False)] = True
    fav_pattern = rng.integers(len(_PATTERNS), size=num_users)
    fav_style = rng.integers(len(_STYLES), size=num_users)
    lengths = rng.integers(config.min_len, config.max_len + 1, size=num_users)
    static = (  # (U, N) part of the logits that does not depend on the previous item
        _W_SHAPE * fav_shapes[:, catalog.shape]
        + _W_PATTERN * (catalog.pattern[None, :] == fav_pattern[:, None])
        + _W_STYLE * (catalog.style[None, :] == fav_style[:, None])
        + _W_POPULARITY * catalog.log_popularity[None, :]
    )
    consumed = np.zeros((num_users, num_items), dtype=bool)
    sequences = np.empty((num_users, config.max_len), dtype=np.int64)
    users, prev = np.arange(num_users), None
    for t in range(config.max_len):  # all users step together; each is cut to its own length at the end
        logits = static.copy()
        if prev is not None:
            wheel_next = (catalog.colour[prev] + 1) % len(_COLOURS)  # (U,)
            logits += _W_COLOUR_NEXT * (catalog.colour[None, :] == wheel_next[:, None])
        logits[consumed] = -np.inf  # no repeats
        # Gumbel-max trick: argmax(logits / T + Gumbel noise) is a sample of softmax(logits / T).
        prev = np.argmax(logits / _TEMPERATURE + rng.gumbel(size=logits.shape), axis=1)
        sequences[:, t] = prev
        consumed[users, prev] = True
    return [sequences[u, :length] for u, length in enumerate(lengths)]


def _sample_timestamps(length: int, rng: np.random.Generator) -> np.ndarray:
    gaps = rng.exponential(2 * _DAY, size=length - 1).astype(np.int64) + 1
    gaps[rng.random(length - 1) < _TIE_RATE] = 0  # ties, as in real logs (several reviews the same second)
    return _EPOCH + int(rng.integers(365 * _DAY)) + np.concatenate([[0], np.cumsum(gaps)])


def _preprocessing(config: SyntheticWorldConfig) -> dict:
    weights = {"colour_next": _W_COLOUR_NEXT, "shape": _W_SHAPE, "pattern": _W_PATTERN, "style": _W_STYLE}
    weights |= {"popularity": _W_POPULARITY, "temperature": _TEMPERATURE}
    return {**dataclasses.asdict(config), "habit_weights": weights, "tie_rate": _TIE_RATE}


def _item_id(name: str, i: int) -> str:
    return f"{name}-{i:04d}"


def _write_items(folder: pathlib.Path, name: str, catalog: _Catalog, config: SyntheticWorldConfig) -> None:
    vocab, text_rng, image_rng = SYNTHETIC_DOMAINS[name], _rng(name, config.seed, 1), _rng(name, config.seed, 2)
    items = {column: [] for column in _ITEM_COLUMNS}
    (folder / "images").mkdir(exist_ok=True)
    for i in tqdm(range(config.num_items), desc=f"synthetic {name}: items", disable=None, leave=False):
        title, text = _compose_text(vocab, catalog, i, text_rng)  # drawn for every item: streams stay aligned
        keep = bool(catalog.has_text[i])  # an item without text has no text fields at all
        category = f"{vocab.category} > {vocab.item_types[catalog.item_type[i]]}"
        image = f"images/{_item_id(name, i)}.png" if catalog.has_image[i] else None
        if image is not None:
            attributes = (catalog.colour[i], catalog.shape[i], catalog.pattern[i], catalog.style[i])
            _render_item_image(*attributes, config.image_size, image_rng).save(folder / image)
        row = (_item_id(name, i), text, image, title, vocab.brands[catalog.brand[i]], category)
        for column, value in zip(_ITEM_COLUMNS, row, strict=True):
            items[column].append(value if keep or column in ("item_id", "image") else "")
    Dataset.from_dict(items, features=_ITEM_FEATURES).to_parquet(str(folder / "items.parquet"))


def _write_interactions(folder: pathlib.Path, name: str, catalog: _Catalog, config: SyntheticWorldConfig) -> int:
    rng = _rng(name, config.seed, 3)
    sequences = _sample_sequences(catalog, config, rng)
    timestamps = np.concatenate([_sample_timestamps(len(seq), rng) for seq in sequences])
    users = np.concatenate([np.full(len(seq), u) for u, seq in enumerate(sequences)])
    items = np.concatenate(sequences)
    # Interleave users by time like a real log; a stable sort keeps the intended order of tied rows.
    order = np.argsort(timestamps, kind="stable")
    interactions = {
        "user_id": [f"{name}-u{u:04d}" for u in users[order]],
        "item_id": [_item_id(name, i) for i in items[order]],
        "timestamp": timestamps[order].tolist(),
    }
    Dataset.from_dict(interactions, features=_INTERACTION_FEATURES).to_parquet(str(folder / "interactions.parquet"))
    return len(order)


def _write_domain(folder: pathlib.Path, name: str, config: SyntheticWorldConfig) -> None:
    catalog = _sample_catalog(name, config)
    _write_items(folder, name, catalog, config)
    num_interactions = _write_interactions(folder, name, catalog, config)
    counts = {
        "items": config.num_items,
        "users": config.num_users,
        "interactions": num_interactions,
        "items_with_text": int(catalog.has_text.sum()),
        "items_with_image": int(catalog.has_image.sum()),
    }
    description = "Synthetic catalog world generated by mmsr_peft.data.synthetic; not real data."
    write_manifest(folder, name, "synthetic", "1", counts, _preprocessing(config), description=description)


def _existing_preprocessing(folder: pathlib.Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())["preprocessing"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_names(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in SYNTHETIC_DOMAINS]
    if unknown:
        raise ValueError(f"Unknown synthetic domain(s) {unknown}; valid names: {', '.join(SYNTHETIC_DOMAINS)}")


def generate_domain(
    name: str, root: str | os.PathLike, config: SyntheticWorldConfig | None = None, overwrite: bool = False
) -> pathlib.Path:
    """Writes the processed folder `<root>/<name>` of one synthetic domain, atomically.

    Args:
        name (`str`): One of `SYNTHETIC_DOMAINS` (`SOURCE_DOMAINS + TARGET_DOMAINS`).
        root (`str` or `os.PathLike`): Folder that holds the domain folders; created if missing.
        config (`SyntheticWorldConfig`, *optional*): Generator parameters; defaults to `SyntheticWorldConfig()`.
        overwrite (`bool`, defaults to `False`): Replace an existing folder. Without it, a folder generated with
            the same parameters is kept as is and one generated with other parameters is an error.

    Returns:
        `pathlib.Path`: The domain folder.

    Raises:
        `ValueError`: Unknown domain name.
        `FileExistsError`: The folder exists with other parameters (or without a readable manifest).
    """
    _check_names([name])
    config = config if config is not None else SyntheticWorldConfig()
    root = pathlib.Path(root)
    target = root / name
    if target.exists() and not overwrite:
        if _existing_preprocessing(target) == _preprocessing(config):
            return target
        raise FileExistsError(
            f"{target} already exists but was not generated with these parameters ({config}); "
            "pass overwrite=True (mmsr-data synthetic --overwrite) to replace it"
        )
    with new_domain_folder(target, overwrite=True) as tmp:  # the previous version or this one, never a mix
        _write_domain(tmp, name, config)
    return target


def generate_world(
    root: str | os.PathLike,
    domains: Sequence[str] | None = None,
    config: SyntheticWorldConfig | None = None,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """Writes several synthetic domains under `root` (see [`generate_domain`]).

    Args:
        root (`str` or `os.PathLike`): Folder that holds the domain folders.
        domains (`Sequence[str]`, *optional*): Domain names; defaults to all six (sources, then targets).
        config (`SyntheticWorldConfig`, *optional*): Generator parameters shared by all domains.
        overwrite (`bool`, defaults to `False`): Replace existing folders.

    Returns:
        `list[pathlib.Path]`: The domain folders, in the order of `domains`.
    """
    domains = list(domains) if domains is not None else [*SOURCE_DOMAINS, *TARGET_DOMAINS]
    _check_names(domains)  # before writing anything
    return [generate_domain(name, root, config, overwrite) for name in domains]


def add_command(commands) -> None:
    """`mmsr-data synthetic`."""
    parser = commands.add_parser("synthetic", help="Generate the embedded synthetic world (labelled synthetic).")
    parser.add_argument("--data_dir", default="data", help="Root of processed domains (writes <data_dir>/synthetic).")
    parser.add_argument("--domains", nargs="+", default=None, help=f"Subset of {sorted(SYNTHETIC_DOMAINS)}.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the world.")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing folders.")
    parser.set_defaults(handler=_run_command)


def _run_command(args) -> None:
    folder = pathlib.Path(args.data_dir) / "synthetic"
    for path in generate_world(folder, args.domains, SyntheticWorldConfig(seed=args.seed), args.overwrite):
        print(f"wrote {path}")

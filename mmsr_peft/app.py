"""`mmsr-app`: a page to try a model. A person builds a history from a domain's catalog (search by title, or click a
recommended item), sees the top-k with images and scores, switches between the adapters and compares with the base.

The page is a Gradio app (`pip install "mmsr-peft[app]"`). Besides the page, it serves one API endpoint,
`/recommend` (`history`, `adapter`, `k` -> `[{"item_id", "title", "score"}]`), for `gradio_client`:

```python
>>> from gradio_client import Client
>>> Client("http://127.0.0.1:7860").predict(["50", "172"], "base", 5, api_name="/recommend")
```

`Recommender` holds the model, its adapters and the catalog without any Gradio: the page and the endpoint call it.
(No `from __future__ import annotations` here: Gradio reads the event handlers' annotations as classes.)
"""

import json
import os
import tempfile
import threading
from pathlib import Path

import torch

from .arguments import MAX_APP_K, AppArguments
from .data.catalog import Catalog

BASE = "base"  # the choice that runs the base model without adapters


class Recommender:
    """A model with its loaded adapters and one catalog; each choice's catalog embeddings are computed once.

    Args:
        model (`MMSRModel`): the base, with the adapters of `adapters` loaded.
        catalog (`Catalog`): the items shown and ranked.
        adapters (`list[str]`): names of loaded adapters offered beside `BASE`.
    """

    def __init__(self, model, catalog: Catalog, adapters: list[str] = ()):
        if BASE in adapters:
            raise ValueError(f"an adapter may not be named {BASE!r}: the page uses that name for the base model")
        self.model = model.eval()
        self.catalog = catalog
        self.choices = [BASE, *adapters]
        self._embeddings: dict[str, torch.Tensor] = {}
        self._blank_tile: str | None = None
        self._lock = threading.Lock()  # the page serves requests from threads; the active adapter is model state

    @classmethod
    def from_pretrained(
        cls, model: str, catalog: Catalog, adapters: list[str] = (), force: bool = False, device: str = "auto"
    ) -> "Recommender":
        """Loads the base `model` and the `adapters` (folders or Hub repo ids) for `catalog`, on `device` (a
        `--device` value: `auto` is the GPU when there is one)."""
        from .arguments import resolve_device
        from .model import MMSRModel

        where = resolve_device(device)
        base = MMSRModel.from_pretrained(model)
        names = [base.load_adapter(adapter, force=force) for adapter in adapters]
        return cls(base.to(where), catalog, names)

    def title(self, item_id: str) -> str:
        """An item's text up to its first sentence's end (MovieLens: "Toy Story (1995)"), else its id."""
        text = self.catalog.texts[self.catalog.index[item_id]].strip()
        return text.split(". ", 1)[0][:80] if text else item_id

    def items(self) -> list[tuple[str, str]]:
        """`("title [item_id]", item_id)` for every item, in catalog order: the history picker's choices."""
        return [(f"{self.title(item_id)} [{item_id}]", item_id) for item_id in self.catalog.item_ids]

    def gallery(self, item_ids: list[str], captions: list[str] | None = None) -> list[tuple[str, str]]:
        """`(image path, caption)` pairs for a Gradio gallery; an item without an image shows a blank tile."""
        captions = captions or [self.title(item_id) for item_id in item_ids]
        images = [self.catalog.images[self.catalog.index[item_id]] or self._blank() for item_id in item_ids]
        return list(zip(images, captions, strict=True))

    def _blank(self) -> str:
        if self._blank_tile is None:
            from PIL import Image

            handle, path = tempfile.mkstemp(prefix="mmsr-app-", suffix=".png")  # Gradio serves the temp folder
            os.close(handle)
            Image.new("RGB", (64, 64), (225, 225, 225)).save(path)
            self._blank_tile = path
        return self._blank_tile

    def warm_up(self) -> None:
        """Embeds the catalog with every choice now, so that no request waits for it."""
        with self._lock, torch.no_grad():
            for choice in self.choices:
                self._use(choice)

    def _use(self, choice: str) -> None:
        """Activates `choice` (the lock held) and embeds the catalog with it the first time."""
        if choice == BASE:
            self.model.disable_adapters()
        else:
            self.model.set_adapter(choice)
        if choice not in self._embeddings:
            print(f"embedding the {len(self.catalog):,} items of {self.catalog.name} with {choice}")
            records = self.catalog.records(range(len(self.catalog)))
            self._embeddings[choice] = self.model.embed_catalog(self.model.processor(records, progress=True))

    def recommend(self, history: list[str], adapter: str = BASE, k: int = 10) -> list[dict]:
        """The top `k` items for `history` (item ids, oldest first) with `adapter` (or `BASE`), history excluded,
        as `{"item_id", "title", "score"}` dicts."""
        unknown = [item for item in history if item not in self.catalog.index]
        if unknown:
            raise ValueError(f"item ids not in catalog {self.catalog.name!r}: {unknown[:5]}")
        if adapter not in self.choices:
            raise ValueError(f"unknown adapter {adapter!r}; loaded: {self.choices}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_APP_K:
            raise ValueError(f"k must be an integer in [1, {MAX_APP_K}], got {k!r}")
        with self._lock, torch.no_grad():
            self._use(adapter)
            top = self.model.recommend([history], self.catalog, k, catalog_embeddings=self._embeddings[adapter])
        scores = top.scores[0].tolist()
        return [
            {"item_id": item_id, "title": self.title(item_id), "score": round(score, 6)}
            for item_id, score in zip(top.item_ids[0], scores, strict=False)
        ]


def build_app(recommender: Recommender, history: list[str] = (), k: int = 10):
    """The page (a `gradio.Blocks`) for `recommender`, starting with `history` and `k` recommendations."""
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError('mmsr-app needs Gradio: pip install "mmsr-peft[app]"') from err

    catalog = recommender.catalog
    adapters = recommender.choices[1:]

    def ranked(history, adapter, k) -> list[dict]:
        try:
            return recommender.recommend(list(history or []), adapter, int(k))
        except ValueError as err:
            raise gr.Error(str(err)) from None  # shown on the page and sent to API clients

    def scored(top: list[dict]) -> list[tuple[str, str]]:
        return recommender.gallery([row["item_id"] for row in top], [f"{r['title']} · {r['score']:.3f}" for r in top])

    def shelves(history, adapter, k, compare):
        history = list(history or [])
        top = ranked(history, adapter, k)
        beside = bool(compare and adapter != BASE)
        return (
            recommender.gallery(history),
            gr.update(value=scored(top), label=f"Top {int(k)}: {adapter}"),
            gr.update(
                value=scored(ranked(history, BASE, k)) if beside else [], visible=beside, label=f"Top {int(k)}: {BASE}"
            ),
            top,
        )

    def add_clicked(history, shown: list[dict], event: gr.SelectData):  # Gradio reads the annotation
        item_id = shown[event.index]["item_id"]
        return [*(history or []), item_id] if item_id not in (history or []) else history

    with gr.Blocks(title=f"mmsr_peft · {catalog.name}") as app:
        gr.Markdown(
            f"## {catalog.name}: what the model recommends\n"
            f"{len(catalog):,} items. Pick items for a history (oldest first; type to search), or click a "
            "recommended item to add it. Items already in the history are never recommended."
        )
        with gr.Row():
            picker = gr.Dropdown(recommender.items(), value=list(history), multiselect=True, label="History", scale=4)
            with gr.Column(scale=1, min_width=220):
                adapter = gr.Radio(recommender.choices, value=adapters[-1] if adapters else BASE, label="Model")
                compare = gr.Checkbox(value=bool(adapters), label="Compare with the base", visible=bool(adapters))
                size = gr.Slider(1, MAX_APP_K, value=k, step=1, label="k")
        history_gallery = gr.Gallery(label="History", columns=10, fit_columns=False, height=200, allow_preview=False)
        with gr.Row():
            top_gallery = gr.Gallery(label="Top k", columns=5, height="auto", allow_preview=False)
            base_gallery = gr.Gallery(
                label=f"Top k: {BASE}", columns=5, height="auto", allow_preview=False, visible=bool(adapters)
            )
        shown = gr.State([])
        inputs, outputs = [picker, adapter, size, compare], [history_gallery, top_gallery, base_gallery, shown]
        # the shelves of any state of the controls, also for tests through gradio_client (undocumented endpoint)
        picker.change(shelves, inputs, outputs, api_name="shelves", api_visibility="undocumented")
        for control in inputs[1:]:
            control.change(shelves, inputs, outputs, api_visibility="private")
        app.load(shelves, inputs, outputs, api_visibility="private")
        top_gallery.select(add_clicked, [picker, shown], picker, api_visibility="private")

        def recommend(history: list[str], adapter: str = BASE, k: int = 10) -> list[dict]:
            """The top `k` items for `history` (item ids, oldest first) with `adapter` ("base": no adapter)."""
            return ranked(history, adapter, k)

        gr.api(recommend, api_name="recommend")
    return app


def serve(args: AppArguments, block: bool = True):
    """`mmsr-app`: loads `args`' model, adapters and domain and serves the page; returns the running app when
    `block=False`."""
    from .domains import load_domain

    catalog = load_domain(args.domain, args.data_source, args.data_dir).catalog
    unknown = [item for item in args.history if item not in catalog.index]
    if unknown:
        raise ValueError(f"--history: item ids not in catalog {catalog.name!r}: {unknown[:5]}")
    recommender = Recommender.from_pretrained(args.model, catalog, args.adapters, args.force, args.device)
    return launch(recommender, args.history, args.k, args.host, args.port, block)


def launch(recommender: Recommender, history=(), k: int = 10, host=None, port=None, block: bool = True):
    """Embeds the catalog with every choice, then serves the page (only the catalog's image folders are served)."""
    recommender.warm_up()
    app = build_app(recommender, list(history), k)
    folders = sorted({str(Path(path).parent) for path in recommender.catalog.images if path})
    app.launch(server_name=host, server_port=port, allowed_paths=folders, prevent_thread_lock=not block, quiet=True)
    return app


# A Space made by `mmsr-publish --space`: this app.py, SPACE_CONFIG (the model, adapters and starting history),
# the domain's catalog under SPACE_CATALOG, requirements.txt and a README.md with the Space's settings.
SPACE_CONFIG = "space.json"
SPACE_CATALOG = "catalog"
SPACE_APP = """\
# The demo page of an mmsr_peft model (written by mmsr-publish --space): space.json names the model and adapters.
from mmsr_peft.app import serve_space

app = serve_space(__file__)
"""


def serve_space(app_file: str | os.PathLike, block: bool = True, port: int | None = None):
    """Serves the Space whose `app.py` is `app_file` (see `SPACE_APP`); host and port come from Gradio's
    environment (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`) unless `port` is given."""
    folder = Path(app_file).resolve().parent
    config = json.loads((folder / SPACE_CONFIG).read_text())
    catalog = Catalog.from_folder(folder / SPACE_CATALOG)
    recommender = Recommender.from_pretrained(config["model"], catalog, config.get("adapters", []))
    return launch(recommender, config.get("history", []), config.get("k", 10), port=port, block=block)

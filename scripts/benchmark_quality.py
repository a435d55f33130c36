"""Quality on real data: MovieLens-100k (interactions, item text, posters), warm and cold start, genre transfer,
against ID-based SASRec (ours and RecBole's on the identical split).

    python scripts/benchmark_quality.py                                  # everything: 3 seeds (see README for time)
    python scripts/benchmark_quality.py --quick --rows id text           # smoke run: 1 seed, at most 2 epochs
    python scripts/benchmark_quality.py --rows id recbole concat_mlp --seeds 0 1 --output_dir /tmp/quality
    make quality                                                         # the full run, RecBole venv included

Protocol: leave-one-out by time, full ranking over every item, history items excluded, ties against the target
(`mmsr_peft.evaluation.PROTOCOL`); HR@10, NDCG@10, MRR@10, HR@20, NDCG@20 as mean ± standard deviation over
`--seeds`; model selection on validation NDCG@10 with early stopping (`--patience`).

Rows (`--rows`, any subset; a fine-tuning row brings the row it starts from):
- `id`: our SASRec with an `id` item tower; `recbole`: RecBole's SASRec on the same split, exported with
  `mmsr_peft.data.recbole.export_recbole` and run by `scripts/recbole_sasrec.py` in `.venv-recbole` (when that
  environment or script is missing or fails, the row says "not run: <reason>"); its seeds run one after another in
  a process beside the other rows (`--recbole_background`), so a 2-core machine trains both at once;
- `text`, `image`: one modality, the pretrained encoder frozen (MiniLM, MobileNetV2 on posters);
- `concat_mlp`, `gated`, `merge_attention`: text + image, both encoders frozen;
- `text_lora`, `best_lora`, `best_full`: the encoders train. They start from the weights of their frozen row of
  the same seed (`text`; the fusion row with the best mean validation NDCG@10) and train the text encoder with
  LoRA (text + fusion/head, the sequence encoder in full) or in full, for `--finetune_steps` steps of
  `--finetune_batch_size` sequences (each step encodes nearly the whole catalog: this is where CPU time goes), on
  the first `--finetune_seeds` seeds. MobileNetV2 stays frozen in both (a CNN: no LoRA targets here).
- `transfer`: items split into two genre groups (`GENRE_RULE`); a model pretrained on group A's interactions is
  evaluated zero-shot on group B, adapted to B with LoRA on its fusion, and compared with the same architecture
  trained from scratch on B.

Cold start: every row but `recbole` also runs on a second split where `--cold_start_fraction` of the items (drawn
with `--cold_seed`) never appear in training or histories; warm and cold test targets are reported separately.

Two lanes share the work: the main process runs the table's runs in order, while a background lane runs RecBole's
seeds and then takes runs from the end of the queue, each in a process of its own (`--background_rows`); a
fine-tuning run starts once the frozen run it starts from has written its weights to the work folder. Every run is
seeded and single-threaded (`OMP_NUM_THREADS=1`), so its numbers do not depend on the lane that ran it.

Frozen encoders run once per benchmark over the catalog (and through `--feature_cache_dir` across runs). Writes
`<output_dir>/quality_ml100k.md`, `.json` (command, protocol, machine, per-seed numbers) and `.png` (NDCG@10 per
row with error bars).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
POSTERS = REPO.parent / "shared" / "data" / "ml100k-posters"
RECBOLE_SCRIPT = REPO / "scripts" / "recbole_sasrec.py"
METRICS = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20")
COLD_METRICS = ("hr@10", "ndcg@10")
DOMAIN = "ml-100k"
# Group A of the genre transfer: items with at least one of these genres; group B: every other item.
GENRE_A = ("Drama", "Romance")
GENRE_RULE = f"group A = items whose genres include {' or '.join(GENRE_A)}; group B = all other items"


@dataclass(frozen=True)
class Row:
    """One row of the table.

    Args:
        label (`str`): the row's name; `{text}` and `{vision}` are replaced by the encoder names.
        model (`dict`): `ModelArguments` fields that differ from the benchmark's defaults.
        method (`str`): `frozen` (encoders frozen, cached), `lora`, `full` (the text encoder trains, starting from
            `init`'s weights) or `recbole`.
        init (`str`, *optional*): the frozen row a fine-tuning row starts from (`best`: the best fusion row).
    """

    label: str
    model: dict = field(default_factory=dict)
    method: str = "frozen"
    init: str | None = None


ROWS = {
    "id": Row("ID SASRec (ours, id tower)", {"item_tower": "id"}),
    "recbole": Row("RecBole SASRec (id)", method="recbole"),
    "text": Row("text: {text}, frozen", {"item_tower": "text"}),
    "text_lora": Row("text: {text} + LoRA", {"item_tower": "text"}, "lora", "text"),
    "image": Row("image: {vision} on posters, frozen", {"item_tower": "image"}),
    "concat_mlp": Row("text+image: concat_mlp, frozen", {"item_tower": "modal", "fusion": "concat_mlp"}),
    "gated": Row("text+image: gated, frozen", {"item_tower": "modal", "fusion": "gated"}),
    "merge_attention": Row(
        "text+image: merge_attention, frozen", {"item_tower": "modal", "fusion": "merge_attention"}
    ),
    "best_lora": Row("best text+image ({best}) + LoRA", method="lora", init="best"),
    "best_full": Row("best text+image ({best}) + full fine-tuning", method="full", init="best"),
}
FUSION_ROWS = ("concat_mlp", "gated", "merge_attention")
SPLITS = ("main", "cold")
CHOICES = (*ROWS, "transfer")


@dataclass
class QualityArguments:
    """What the quality benchmark runs (see the module docstring)."""

    rows: list[str] = field(default_factory=lambda: list(CHOICES), metadata={"help": f"Any of {CHOICES}."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One run per seed and row."})
    epochs: int = field(default=10, metadata={"help": "Most epochs of a run (early stopping decides)."})
    patience: int = field(default=2, metadata={"help": "Epochs without a better validation NDCG@10 before stopping."})
    max_users: int | None = field(
        default=None, metadata={"help": "Keep only the first N users (tests and smoke runs; RecBole is then skipped)."}
    )
    quick: bool = field(default=False, metadata={"help": "Smoke run: the first seed, at most 2 epochs and 1 step."})
    output_dir: str = field(default="results", metadata={"help": "Where quality_ml100k.{md,json,png} go."})
    feature_cache_dir: str | None = field(
        default="outputs/feature_cache", metadata={"help": "Frozen encoder outputs kept across runs ('' : off)."}
    )
    data_dir: str = field(default="data", metadata={"help": "Root of processed domains (prepared when missing)."})
    posters: str = field(default=str(POSTERS), metadata={"help": "Folder of <item_id>.jpg ML-100k posters."})
    text_model: str = field(default="minilm", metadata={"help": "Text encoder (ModelArguments.text_model)."})
    vision_model: str = field(default="mobilenet_v2", metadata={"help": "Vision encoder (ModelArguments)."})
    image_size: int = field(default=128, metadata={"help": "Poster side in pixels (posters are 128 x 192)."})
    text_max_length: int = field(default=32, metadata={"help": "Tokens per item text."})
    hidden_size: int = field(default=64, metadata={"help": "Width of item and user embeddings (both SASRecs)."})
    max_len: int = field(default=50, metadata={"help": "History length."})
    batch_size: int = field(default=64, metadata={"help": "Training sequences per step (frozen rows)."})
    learning_rate: float = field(default=3.0e-3, metadata={"help": "AdamW learning rate (frozen rows)."})
    num_negatives: int = field(default=256, metadata={"help": "Uniform extra negatives per step (sampled softmax)."})
    loss: str = field(default="sampled_softmax", metadata={"help": "Training loss (ModelArguments.loss)."})
    temperature: float = field(default=0.07, metadata={"help": "Softmax temperature on cosine scores."})
    cold_start_fraction: float = field(default=0.1, metadata={"help": "Share of items of the cold-start split."})
    cold_rows: list[str] | None = field(
        default=None, metadata={"help": "Rows that also run on the cold-start split (default: all but recbole)."}
    )
    cold_seed: int = field(default=0, metadata={"help": "Seed that draws the cold items (fixed across seeds)."})
    finetune_steps: int = field(default=4, metadata={"help": "Optimizer steps of an encoder-training row."})
    finetune_batch_size: int = field(default=128, metadata={"help": "Sequences per step of encoder training."})
    finetune_seeds: int = field(default=3, metadata={"help": "Encoder-training rows run on this many seeds."})
    finetune_cold: bool = field(default=False, metadata={"help": "Run encoder-training rows on the cold split."})
    finetune_gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute MiniLM's activations in the backward pass: same numbers, peak RSS 3.4 instead of "
            "7.1 GB, steps 1.5x slower."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2 r)."})
    lora_learning_rate: float = field(default=1.0e-3, metadata={"help": "Learning rate of LoRA rows."})
    full_learning_rate: float = field(default=1.0e-4, metadata={"help": "Learning rate of full fine-tuning rows."})
    transfer_fusion: str = field(default="concat_mlp", metadata={"help": "Fusion of the genre-transfer model."})
    recbole_epochs: int = field(default=10, metadata={"help": "Most epochs of RecBole's SASRec (0: skip it)."})
    recbole_seeds: int = field(
        default=1,
        metadata={
            "help": "RecBole's SASRec runs on this many seeds (one epoch is ~3 min on one CPU core: it trains "
            "on every prefix of every sequence)."
        },
    )
    recbole_background: bool = field(
        default=True,
        metadata={
            "help": "Run RecBole's seeds in a process beside the other rows (a second core; both use one thread "
            "with OMP_NUM_THREADS=1); --recbole_background false runs them after the other rows."
        },
    )
    recbole_python: str = field(
        default=str(REPO / ".venv-recbole" / "bin" / "python"), metadata={"help": "Python of RecBole's venv."}
    )
    background_rows: bool = field(
        default=True,
        metadata={
            "help": "A second lane takes runs from the end of the queue, each in a process of its own, once "
            "RecBole's seeds are done (at once without them), so both cores work until the end; every run is "
            "seeded, so its numbers do not depend on the lane."
        },
    )
    job: str | None = field(
        default=None, metadata={"help": "Internal: run one queued run (SPLIT:ROW:SEED:START) in --job_dir."}
    )
    job_dir: str | None = field(default=None, metadata={"help": "Internal: the work folder of --job."})

    def __post_init__(self):
        unknown = sorted(set(self.rows) - set(CHOICES))
        if unknown:
            raise ValueError(f"unknown --rows {unknown}; valid rows: {', '.join(CHOICES)}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if self.quick:
            self.seeds = self.seeds[:1]
            self.epochs, self.recbole_epochs, self.finetune_steps = min(self.epochs, 2), min(self.recbole_epochs, 2), 1
        self.finetune_seeds = min(self.finetune_seeds, len(self.seeds))
        self.recbole_seeds = min(self.recbole_seeds, len(self.seeds))
        self.feature_cache_dir = self.feature_cache_dir or None
        unknown = sorted(set(self.cold_rows or []) - set(ROWS))
        if unknown:
            raise ValueError(f"unknown --cold_rows {unknown}; valid rows: {', '.join(ROWS)}")


def expand_rows(requested: list[str]) -> list[str]:
    """`requested` plus the frozen rows its fine-tuning rows start from, in table order."""
    wanted = set(requested)
    if "text_lora" in wanted:
        wanted.add("text")
    if wanted & {"best_lora", "best_full"} and not wanted & set(FUSION_ROWS):
        wanted.update(FUSION_ROWS)
    return [row for row in CHOICES if row in wanted]


# ---------------------------------------------------------------------------------------------------- data


def prepare_data(args: QualityArguments):
    """Loads ML-100k, preparing it (with the posters) when its folder is missing; `--max_users` keeps the first N."""
    from mmsr_peft.data.movielens import prepare_movielens
    from mmsr_peft.data.sequences import Sequences
    from mmsr_peft.domains import load_folder

    folder = Path(args.data_dir) / "movielens" / DOMAIN
    posters = Path(args.posters)
    if not (folder / "items.parquet").is_file():
        prepare_movielens(args.data_dir, posters=posters if posters.is_dir() else None, overwrite=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    if needs(args.rows, "image") and not manifest["counts"].get("items_with_image"):
        raise SystemExit(
            f"{folder} has no posters, which the image rows need: prepare it again with "
            f"`mmsr-data movielens --data_dir {args.data_dir} --posters FOLDER --overwrite` (--posters {posters})"
        )
    domain = load_folder(folder)
    if args.max_users:
        kept = domain.sequences
        stats = {**kept.stats, "users_kept": min(args.max_users, len(kept))}
        sequences = Sequences(kept.user_ids[: args.max_users], kept.items[: args.max_users], stats)
        domain = dataclasses.replace(domain, sequences=sequences)
    return domain


def write_genre_groups(domain, data_dir: str) -> dict[str, Path]:
    """Two processed domain folders, `ml-100k-genre-a` / `-b`, splitting the items by `GENRE_RULE`; each keeps the
    interactions with its items (users occur in both; items never do)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmsr_peft.data.folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table

    items = pq.read_table(domain.folder / "items.parquet")
    interactions = pq.read_table(domain.folder / "interactions.parquet")
    in_a = [bool(set(genres.split()) & set(GENRE_A)) for genres in items["genres"].to_pylist()]
    users = set(domain.sequences.user_ids)  # all of them, or the first --max_users
    folders = {}
    for group, keep in (("a", in_a), ("b", [not a for a in in_a])):
        name = f"{DOMAIN}-genre-{group}"
        target = Path(data_dir) / "movielens" / name
        group_items = items.filter(pa.array(keep))
        ids = set(group_items["item_id"].to_pylist())
        pairs = zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist(), strict=True)
        mask = [user in users and item in ids for user, item in pairs]
        group_interactions = interactions.filter(pa.array(mask))
        with new_domain_folder(target, overwrite=True) as tmp:
            for image in group_items["image"].to_pylist():
                if image:
                    shutil.copyfile(domain.folder / image, tmp / image)
            write_table(tmp / "items.parquet", group_items, ITEM_SCHEMA)
            write_table(tmp / "interactions.parquet", group_interactions, INTERACTION_SCHEMA)
            counts = {"items": len(ids), "interactions": group_interactions.num_rows}
            write_manifest(tmp, name, "movielens", domain.manifest.get("version", ""), counts, {"rule": GENRE_RULE})
        folders[group] = target
    return folders


def needs(rows: list[str], modality: str) -> bool:
    towers = {"text": ("text", "modal"), "image": ("image", "modal")}[modality]
    modal = any(r in rows for r in (*FUSION_ROWS, "best_lora", "best_full", "transfer"))
    return modal or any(ROWS[r].model.get("item_tower") in towers for r in rows if r in ROWS)


# ---------------------------------------------------------------------------------------------------- runs


class Benchmark:
    """Everything shared by the runs: the catalog inputs with the frozen encoders' outputs attached (computed once),
    and the work folder, where frozen runs leave the weights that fine-tuning rows start from."""

    def __init__(self, args: QualityArguments, domain, work_dir: Path, argv: list[str] | None = None):
        self.args, self.domain, self.work_dir, self.argv = args, domain, work_dir, argv or []
        self.inputs, self.feature_notes = self._catalog_inputs()
        self.index = {item_id: i for i, item_id in enumerate(domain.catalog.item_ids)}

    def weights_path(self, split: str, name: str, seed: int) -> Path:
        """Where a frozen run leaves its trained weights, the start of the fine-tuning rows (in either lane)."""
        return self.work_dir / "weights" / f"{split}-{name}-{seed}.safetensors"

    def model_args(self, row: Row | dict, **overrides):
        from mmsr_peft.builder import ModelArguments

        a = self.args
        settings = dict(
            text_model=a.text_model,
            vision_model=a.vision_model,
            image_size=a.image_size,
            text_max_length=a.text_max_length,
            hidden_size=a.hidden_size,
            max_len=a.max_len,
            loss=a.loss,
            temperature=a.temperature,
            text_finetune="frozen",
            vision_finetune="frozen",
        )
        settings.update(row.model if isinstance(row, Row) else row)
        settings.update(overrides)
        return ModelArguments(**settings)

    def _catalog_inputs(self):
        """Inputs of every catalog item (token ids, posters, id-vocabulary rows) with the frozen encoders' outputs."""
        from accelerate.utils import set_seed

        from mmsr_peft.builder import build_model
        from mmsr_peft.data.collate import ItemProcessor
        from mmsr_peft.training import precompute_frozen_states

        catalog = self.domain.catalog
        text, image = needs(self.args.rows, "text"), needs(self.args.rows, "image")
        tower = "modal" if text and image else "text" if text else "image" if image else None
        if tower is None:
            return ItemProcessor(item_vocab=catalog.item_ids)(catalog.records(range(len(catalog)))), []
        set_seed(0)  # encoders without pretrained weights (test presets) are then the same in every run
        encoders = build_model(self.model_args({"item_tower": tower}))
        processor = encoders.processor
        processor = ItemProcessor(processor.tokenizer, processor.max_length, processor.image_size, catalog.item_ids)
        records = catalog.records(range(len(catalog)))
        inputs = processor(records, progress=True, image_cache_dir=self.args.feature_cache_dir)
        notes = []
        try:
            inputs = precompute_frozen_states(encoders, inputs, 256, self.args.feature_cache_dir)
        except RuntimeError as err:  # mmsr_peft.cache cannot hash some encoders' weights (e.g. BatchNorm counters)
            notes.append(f"feature cache off ({type(err).__name__}: {err}); frozen outputs computed in memory")
            inputs = precompute_frozen_states(encoders, inputs, 256)
        return inputs, notes

    def subset_inputs(self, catalog):
        """The inputs of another catalog made of ML-100k items (a genre group), selected by item id."""
        return self.inputs.select(torch.tensor([self.index[i] for i in catalog.item_ids]))

    def row_inputs(self, model_args, text_trains: bool = False, inputs=None):
        """`inputs` (default: the catalog's) as `model_args`' item tower reads them: the frozen encoders' outputs
        (pooled vectors only, unless its fusion attends over tokens), token ids only when the text encoder trains,
        no pixels (the vision encoder is frozen in every row). Each training step gathers its items' rows of these
        tensors: gathering token states that nothing reads cost more than the rest of a step on this CPU."""
        from mmsr_peft.encoders import EncoderOutput
        from mmsr_peft.fusion import TOKEN_FUSIONS

        inputs = self.inputs if inputs is None else inputs
        tower = model_args.item_tower
        tokens = tower == "modal" and model_args.fusion in TOKEN_FUSIONS

        def read(states, used: bool):
            if states is None or not used or tokens:
                return states if used else None
            present = torch.ones(len(states.pooled), 1, dtype=torch.bool)
            return EncoderOutput(states.pooled, states.pooled[:, None], present)  # (N, 1, H): the pooled vector

        return dataclasses.replace(
            inputs,
            input_ids=inputs.input_ids if text_trains else None,
            attention_mask=inputs.attention_mask if text_trains else None,
            pixel_values=None,
            text_states=None if text_trains else read(inputs.text_states, tower in ("modal", "text")),
            image_states=read(inputs.image_states, tower in ("modal", "image")),
        )

    def training_args(self, output_dir: str, seed: int, **overrides):
        from mmsr_peft.training import TrainingArguments

        a = self.args
        settings = dict(
            output_dir=output_dir,
            num_epochs=a.epochs,
            batch_size=a.batch_size,
            learning_rate=a.learning_rate,
            num_negatives=a.num_negatives,
            patience=a.patience,
            seed=seed,
            save_steps=10**9,
            save_total_limit=2,
            feature_cache_dir=a.feature_cache_dir,
        )
        settings.update(overrides)
        return TrainingArguments(**settings)

    def fit(self, model, corpus, inputs, seed: int, train_sequences=None, **overrides) -> dict:
        """Trains `model` on `corpus` (best validation epoch kept), tests it; returns the run's record."""
        from mmsr_peft.evaluation import evaluate
        from mmsr_peft.training import make_accelerator, train

        began = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as out:
            args = self.training_args(out, seed, **overrides)
            accelerator = make_accelerator(args, model.config.item_tower, model.config.fusion.type)
            sequences = corpus.train if train_sequences is None else train_sequences
            # on the cold-start split the negatives come from the warm items only: cold items never enter training
            candidates = corpus.negative_candidates()
            state = train(model, sequences, inputs, corpus.valid, args, accelerator, candidates=candidates)
        test = evaluate(model, inputs, corpus.test, batch_size=args.eval_batch_size, progress=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {
            "test": test,
            "valid_ndcg@10": state.best_metric,
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "steps": state.step,
            "trainable_parameters": trainable,
            "wall_s": time.perf_counter() - began,
            "weights": state.best_weights,
        }

    def run_frozen(self, name: str, split: str, corpus, seed: int) -> dict:
        from accelerate.utils import set_seed

        from mmsr_peft.builder import build_model
        from mmsr_peft.io import atomic_save_tensors

        set_seed(seed)
        model_args = self.model_args(ROWS[name])
        model = build_model(model_args, item_vocab=corpus.catalog.item_ids)
        record = self.fit(model, corpus, self.row_inputs(model_args), seed)
        atomic_save_tensors(self.weights_path(split, name, seed), record.pop("weights"))
        return record

    def run_finetune(self, name: str, split: str, corpus, seed: int, init: str) -> dict:
        """Starts from `init`'s frozen-stage weights and trains the text encoder (LoRA or full) with the rest."""
        from accelerate.utils import set_seed
        from peft import LoraConfig

        from mmsr_peft.adapters import lora_target_modules
        from mmsr_peft.builder import build_model

        row, a = ROWS[name], self.args
        set_seed(seed)
        full = row.method == "full"
        model_args = self.model_args(ROWS[init], text_finetune="full" if full else "frozen")
        model = build_model(model_args)
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        with torch.no_grad():
            for key, value in load_file(str(self.weights_path(split, init, seed))).items():
                named[key].copy_(value)
        if not full:
            targets = lora_target_modules(model, ["text", "fusion"])
            config = LoraConfig(
                r=a.lora_r, lora_alpha=2 * a.lora_r, target_modules=targets, modules_to_save=["sequence_encoder"]
            )
            model.add_adapter(config, "default")
        inputs = self.row_inputs(model_args, text_trains=True)  # the text encoder runs at every step now
        size = min(len(corpus.train), a.finetune_steps * a.finetune_batch_size)
        chosen = np.random.default_rng(seed).choice(len(corpus.train), size=size, replace=False)
        record = self.fit(
            model,
            corpus,
            inputs,
            seed,
            train_sequences=[corpus.train[i] for i in chosen],
            num_epochs=1,
            batch_size=a.finetune_batch_size,
            learning_rate=a.full_learning_rate if full else a.lora_learning_rate,
            warmup_ratio=0.0,
            gradient_checkpointing=a.finetune_gradient_checkpointing,  # ~1,000 items x 32 tokens of activations
        )
        record.pop("weights")
        record["start"] = init
        return record

    def run(self, run: Run, corpus) -> dict:
        if run.init is None:
            return self.run_frozen(run.name, run.split, corpus, run.seed)
        return self.run_finetune(run.name, run.split, corpus, run.seed, run.init)

    def run_in_process(self, run: Run) -> dict:
        """`run` in a process of its own (`--job`): the same arguments, the same work folder, so it reads the
        frozen runs' weights that the main process wrote and writes its own there."""
        command = [sys.executable, str(Path(__file__).resolve()), *self.argv]
        command += ["--job", run.spec, "--job_dir", str(self.work_dir)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            raise RuntimeError(f"run {run.spec} failed in its process: {lines[-1][:500]}")
        return json.loads(self.record_path(run).read_text())

    def record_path(self, run: Run) -> Path:
        return self.work_dir / "records" / f"{run.spec.replace(':', '-')}.json"

    def run_recbole(self, seed: int) -> dict:
        """RecBole's SASRec in its own venv on our split; `{"not_run": reason}` when it cannot run."""
        a = self.args
        if a.recbole_epochs < 1:
            return {"not_run": "skipped with --recbole_epochs 0"}
        if not Path(a.recbole_python).is_file():
            return {"not_run": f"{a.recbole_python} not found (RecBole's venv: make recbole-venv)"}
        if not RECBOLE_SCRIPT.is_file():
            return {"not_run": f"{RECBOLE_SCRIPT} not found"}
        if a.max_users:
            return {"not_run": "--max_users subsamples the users; the RecBole export holds all of them"}
        export = self.work_dir / "recbole" / DOMAIN
        if not export.is_dir():
            from mmsr_peft.data.recbole import export_recbole

            export_recbole(self.domain.folder, export, max_len=a.max_len, overwrite=True)
        report = self.work_dir / f"recbole-{seed}.json"
        command = [a.recbole_python, str(RECBOLE_SCRIPT), str(export), "--epochs", str(a.recbole_epochs)]
        command += ["--patience", str(a.patience), "--seed", str(seed), "--hidden_size", str(a.hidden_size)]
        command += ["--max_len", str(a.max_len), "--learning_rate", str(a.learning_rate), "--output", str(report)]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not report.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            return {"not_run": f"scripts/recbole_sasrec.py failed: {lines[-1][:300]}"}
        result = json.loads(report.read_text())
        return {
            "test": {"all": result["test"]},
            "test_recbole_protocol": result.get("test_recbole"),
            "valid_ndcg@10": result.get("valid_best", {}).get("ndcg@10"),
            "best_epoch": result.get("best_epoch"),
            "epochs_run": result.get("epochs_run"),
            "hyper_parameters": result.get("hyper_parameters"),
            "wall_s": time.perf_counter() - began,
        }


# ---------------------------------------------------------------------------------------------------- schedule


def best_fusion(records: dict) -> str | None:
    """The fusion row with the best mean validation NDCG@10 on the main split."""
    scores = {
        name: np.mean([r["valid_ndcg@10"] for r in records[name]["main"].values()])
        for name in FUSION_ROWS
        if not not_run(records[name]["main"])
    }
    return max(scores, key=scores.get) if scores else None


@dataclass(frozen=True)
class Run:
    """One run of the table: a row on a split with a seed; a fine-tuning row names the frozen row it starts from
    (`"best"` until the fusion rows of the main split have run)."""

    split: str
    name: str
    seed: int
    init: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.split}:{self.name}:{self.seed}:{self.init or ''}"

    @classmethod
    def parse(cls, spec: str) -> Run:
        split, name, seed, init = spec.split(":")
        return cls(split, name, int(seed), init or None)


def plan_runs(args: QualityArguments, splits: dict, rows: list[str], records: dict) -> list[Run]:
    """Every run of the table in order: the frozen rows, then the fine-tuning rows (fills the "not run" cells)."""
    runs = []
    for split in splits:
        for name in rows:
            if name not in ROWS or ROWS[name].method != "frozen":
                continue
            if split == "cold" and args.cold_rows is not None and name not in args.cold_rows:
                records[name][split] = {"not_run": "not in --cold_rows"}
                continue
            runs += [Run(split, name, seed) for seed in args.seeds]
    for split in splits:
        for name in rows:
            row = ROWS.get(name)
            if row is None or row.method not in ("lora", "full"):
                continue
            if split == "cold" and not (args.finetune_cold and (args.cold_rows is None or name in args.cold_rows)):
                records[name][split] = {"not_run": "encoder-training rows run on the main split (--finetune_cold)"}
                continue
            if row.init != "best" and (reason := missing_start(records, row.init, split)):
                records[name][split] = {"not_run": reason}
                continue
            runs += [Run(split, name, seed, row.init) for seed in args.seeds[: args.finetune_seeds]]
    return runs


def missing_start(records: dict, init: str | None, split: str) -> str | None:
    """Why the fine-tuning runs on `split` cannot start from row `init` (None while they can, or may once it ran)."""
    if init is None:
        return "no fusion row ran"
    if "not_run" in records[init][split]:
        return f"its starting row {init} did not run on this split"
    return None


class RunQueue:
    """The runs of the table, shared by two lanes: the main process takes them from the front, the background lane
    from the back; each takes the first run it can start (a fine-tuning run once its frozen run's weights are
    written) and waits when there is none. Results are filed in seed order, so the report does not depend on which
    lane ran what."""

    def __init__(self, runs: list[Run], records: dict, bench: Benchmark, log):
        self.pending, self.records, self.bench, self.log = list(runs), records, bench, log
        self.running: set[Run] = set()
        self.error: BaseException | None = None
        self.condition = threading.Condition()

    def take(self, from_back: bool = False) -> Run | None:
        with self.condition:
            while True:
                if self.error is not None:
                    raise RuntimeError("the other lane of the benchmark failed") from self.error
                self._resolve_best()
                if not self.pending:
                    return None
                order = reversed(self.pending) if from_back else self.pending
                run = next((run for run in order if self._ready(run)), None)
                if run is not None:
                    self.pending.remove(run)
                    self.running.add(run)
                    return run
                self.condition.wait()

    def finish(self, run: Run, record: dict, lane: str) -> None:
        with self.condition:
            record["lane"] = lane
            per_seed = self.records[run.name][run.split]
            per_seed[run.seed] = record
            self.records[run.name][run.split] = dict(sorted(per_seed.items()))
            self.running.discard(run)
            suffix = "" if lane == "main" else f" [{lane}]"
            self.log(f"{run.split:4s} {run.name:16s} seed {run.seed}: {summary(record)}{suffix}")
            self.condition.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.condition:
            self.error = error
            self.condition.notify_all()

    def _ready(self, run: Run) -> bool:
        """A frozen run is always ready; a fine-tuning run once its frozen run is filed (its weights are written
        before that, in either lane)."""
        return run.init is None or (run.init != "best" and run.seed in self.records[run.init][run.split])

    def _resolve_best(self) -> None:
        """Once no fusion run of the main split is left, `"best"` becomes the best fusion row (the runs that start
        from it are filed as not run when there is none)."""
        if not any(run.init == "best" for run in self.pending):
            return
        if any(run.split == "main" and run.name in FUSION_ROWS for run in [*self.pending, *self.running]):
            return
        best = best_fusion(self.records)
        kept = []
        for run in self.pending:
            if run.init != "best":
                kept.append(run)
            elif reason := missing_start(self.records, best, run.split):
                self.records[run.name][run.split] = {"not_run": reason}
            else:
                kept.append(dataclasses.replace(run, init=best))
        self.pending = kept


def run_lane(queue: RunQueue, lane: str, execute) -> None:
    """Takes runs from `queue` until none is left and files what `execute(run)` returns: the main lane from the
    front, the background lane from the back. A failure stops the other lane too."""
    try:
        while (run := queue.take(from_back=lane == "background")) is not None:
            queue.finish(run, execute(run), lane)
    except BaseException as err:
        queue.fail(err)
        raise


def start_recbole(bench: Benchmark, pool: ThreadPoolExecutor) -> dict[int, Future]:
    """Queues RecBole's seeds, one after another, on `pool` (each is a process of its own: see `run_recbole`)."""
    return {seed: pool.submit(bench.run_recbole, seed) for seed in bench.args.seeds[: bench.args.recbole_seeds]}


def finish_recbole(runs: dict[int, Future], records: dict, log) -> None:
    """Waits for RecBole's seeds and files them under `records["recbole"]`."""
    for seed, run in runs.items():
        records["recbole"]["main"][seed] = record = run.result()
        log(f"main recbole          seed {seed}: {summary(record)}")
    records["recbole"]["cold"] = {"not_run": "the RecBole export holds the standard split only"}


def run_transfer(bench: Benchmark, fusion: str, results: dict, log) -> None:
    """Pretrain on genre group A, then on group B: zero-shot, LoRA on the fusion, and from scratch (fills
    `results`)."""
    from accelerate.utils import set_seed
    from peft import LoraConfig

    from mmsr_peft.adapters import lora_target_modules
    from mmsr_peft.builder import build_model
    from mmsr_peft.domains import build_corpus, load_folder
    from mmsr_peft.evaluation import evaluate

    a = bench.args
    folders = write_genre_groups(bench.domain, a.data_dir)
    groups = {g: load_folder(f) for g, f in folders.items()}
    corpora = {g: build_corpus([d], a.max_len) for g, d in groups.items()}
    model_args = bench.model_args({"item_tower": "modal", "fusion": fusion})
    inputs = {g: bench.row_inputs(model_args, inputs=bench.subset_inputs(d.catalog)) for g, d in groups.items()}
    results.update(rule=GENRE_RULE, fusion=fusion, lora_r=a.lora_r, data={g: c.stats for g, c in corpora.items()})
    results["rows"] = {}
    rows = results["rows"]
    for name in ("pretrained on A (test on A)", "A -> B zero-shot", "A -> B LoRA (fusion)", "B from scratch"):
        rows[name] = {}
    for seed in a.seeds:
        set_seed(seed)
        base = build_model(model_args)
        pretrained = bench.fit(base, corpora["a"], inputs["a"], seed)
        pretrained.pop("weights")
        rows["pretrained on A (test on A)"][seed] = pretrained
        zero = evaluate(base, inputs["b"], corpora["b"].test, progress=False)
        rows["A -> B zero-shot"][seed] = {"test": zero, "trainable_parameters": 0}
        adapted = copy.deepcopy(base)
        config = LoraConfig(
            r=a.lora_r, lora_alpha=2 * a.lora_r, target_modules=lora_target_modules(adapted, ["fusion"])
        )
        adapted.add_adapter(config, "default")
        record = bench.fit(adapted, corpora["b"], inputs["b"], seed)
        record.pop("weights")
        rows["A -> B LoRA (fusion)"][seed] = record
        set_seed(seed)
        scratch = bench.fit(build_model(model_args), corpora["b"], inputs["b"], seed)
        scratch.pop("weights")
        rows["B from scratch"][seed] = scratch
        log(f"transfer seed {seed}: LoRA {summary(record)} | scratch {summary(scratch)}")


def summary(record: dict) -> str:
    if "not_run" in record:
        return f"not run: {record['not_run']}"
    test = record["test"]["all"]
    return f"test NDCG@10 {test['ndcg@10']:.4f} HR@10 {test['hr@10']:.4f} ({record.get('wall_s', 0):.0f} s)"


# ---------------------------------------------------------------------------------------------------- report


def stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def aggregate(per_seed: dict, key: str) -> dict[str, tuple[float, float]]:
    """`{metric: (mean, std)}` of `per_seed[seed]["test"][key]`."""
    if not per_seed or "not_run" in per_seed or any("not_run" in r for r in per_seed.values()):
        return {}
    return {m: stats([r["test"][key][m] for r in per_seed.values()]) for m in METRICS}


def not_run(per_seed: dict) -> str | None:
    if not per_seed:
        return "not yet (the benchmark was still running or was interrupted)"
    if "not_run" in per_seed:
        return per_seed["not_run"]
    reasons = [r["not_run"] for r in per_seed.values() if "not_run" in r]
    return reasons[0] if reasons else None


def render(report: dict, labels: dict[str, str]) -> str:
    records, cold_key = report["records"], f"{DOMAIN} cold"
    lines = [
        "# Quality on MovieLens-100k: text, posters, warm and cold start, genre transfer",
        "",
        "Real data: MovieLens-100k interactions (943 users, 1,682 movies, 100,000 ratings as implicit feedback), item "
        "text = title (year) + genres, item images = posters. Produced by:",
        "",
        f"    {report['command']}",
        "",
        f"**Protocol.** {report['protocol']} Mean ± sample standard deviation over seeds {report['seeds']} (n = "
        "number of seeds a row ran); model selection: the epoch with the best validation NDCG@10, early stopping "
        f"after {report['arguments']['patience']} epochs without improvement (at most {report['arguments']['epochs']}).",
        "",
        f"**Machine.** {report['machine']['summary']}. Total wall time {report['wall_s'] / 60:.1f} min.",
        "",
    ]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    header = ["model", "n", *[m.upper() for m in METRICS]]
    lines += ["## Standard split (leave-one-out)", "", table_header(header)]
    for name, per_split in records.items():
        per_seed = per_split["main"]
        reason = not_run(per_seed)
        if reason:
            lines.append(f"| {labels[name]} | 0 | not run: {reason} |" + " |" * (len(METRICS) - 1))
            continue
        agg = aggregate(per_seed, "all")
        lines.append(f"| {labels[name]} | {len(per_seed)} | " + " | ".join(cell(*agg[m]) for m in METRICS) + " |")
    lines += ["", report["random_note"], ""]
    lines += [
        f"## Cold start ({report['cold']['cold_items']} of {report['cold']['items']} items held out of training and "
        f"histories, drawn with seed {report['arguments']['cold_seed']})",
        "",
        f"Test cases: {report['cold']['warm_cases']} with a warm target, {report['cold']['cold_cases']} with a cold "
        "target. Cold items never enter training, not even as sampled negatives: they are ranked only. The ID model "
        "has a row for every catalog item, but a cold item's row never trains: it cannot rank cold items.",
        "",
        table_header(["model", "n", "warm HR@10", "warm NDCG@10", "cold HR@10", "cold NDCG@10", "cold/warm HR@10"]),
    ]
    for name, per_split in records.items():
        per_seed = per_split["cold"]
        reason = not_run(per_seed)
        if reason:
            lines.append(f"| {labels[name]} | 0 | not run: {reason} |" + " |" * 4)
            continue
        warm, cold = aggregate(per_seed, f"{DOMAIN} warm"), aggregate(per_seed, cold_key)
        cold_warm = ratio(cold["hr@10"][0], warm["hr@10"][0])  # of the means
        cells = (
            [cell(*warm[m]) for m in COLD_METRICS]
            + [cell(*cold[m]) for m in COLD_METRICS]
            + [cell(cold_warm, math.nan)]
        )
        lines.append(f"| {labels[name]} | {len(per_seed)} | " + " | ".join(cells) + " |")
    lines.append("")
    if report.get("transfer"):
        lines += render_transfer(report["transfer"])
    lines += ["## Targets of the issue (goals, not assertions)", ""]
    lines += [f"- {t}" for t in report["targets"]] + [""]
    lines += ["## Per-seed test NDCG@10 (standard split)", "", table_header(["model", *map(str, report["seeds"])])]
    for name, per_split in records.items():
        per_seed = per_split["main"]
        if not_run(per_seed):
            continue
        values = [f"{per_seed[s]['test']['all']['ndcg@10']:.4f}" if s in per_seed else "-" for s in report["seeds"]]
        lines.append(f"| {labels[name]} | " + " | ".join(values) + " |")
    lines += ["", "Every number per seed (all metrics, epochs, wall time) is in `quality_ml100k.json`.", ""]
    if report.get("plot"):
        lines += [f"![NDCG@10 per row]({report['plot']})", ""]
    return "\n".join(lines)


def render_transfer(transfer: dict) -> list[str]:
    a, b = transfer["data"]["a"], transfer["data"]["b"]
    lines = [
        "## Genre transfer",
        "",
        f"Rule: {transfer['rule']}. Group A: {a[f'{DOMAIN}-genre-a']['items']} items, "
        f"{a[f'{DOMAIN}-genre-a']['interactions']} interactions; group B: {b[f'{DOMAIN}-genre-b']['items']} items, "
        f"{b[f'{DOMAIN}-genre-b']['interactions']} interactions (users occur in both groups, items in one). Model: "
        f"text+image {transfer['fusion']}, frozen encoders. LoRA (r = {transfer['lora_r']}) adapts the fusion only; the "
        "sequence encoder stays as pretrained on A. Test on group B unless said otherwise.",
        "",
        table_header(["model", "n", *[m.upper() for m in METRICS], "trainable"]),
    ]
    for name, per_seed in transfer["rows"].items():
        agg = aggregate(per_seed, "all")
        if not agg:
            continue
        trainable = next(iter(per_seed.values())).get("trainable_parameters", "-")
        cells = [cell(*agg[m]) for m in METRICS] + [f"{trainable:,}" if isinstance(trainable, int) else trainable]
        lines.append(f"| {name} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return lines + [""]


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def table_header(names: list[str]) -> str:
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def targets(records: dict, transfer: dict | None, best: str | None) -> list[str]:
    """The issue's four targets, checked on the means (text only; nothing is asserted)."""

    def mean(name, split="main", key="all", metric="ndcg@10"):
        per_seed = records.get(name, {}).get(split, {})
        agg = aggregate(per_seed, key)
        return agg[metric][0] if agg else math.nan

    def verdict(value: float, goal: float) -> str:
        return (
            "not measured"
            if math.isnan(value)
            else f"{value:.3f} (goal {goal}: {'met' if value >= goal else 'missed'})"
        )

    out = []
    if best:
        out.append(
            f"text+image ({best}) NDCG@10 / RecBole SASRec NDCG@10 = {verdict(ratio(mean(best), mean('recbole')), 1.05)}"
        )
        out.append(
            f"text+image ({best}) NDCG@10 / our ID SASRec NDCG@10 = {verdict(ratio(mean(best), mean('id')), 1.05)}"
        )
        cold_warm = ratio(mean(best, "cold", f"{DOMAIN} cold", "hr@10"), mean(best, "cold", f"{DOMAIN} warm", "hr@10"))
        out.append(f"cold-item HR@10 / warm-item HR@10 of text+image ({best}) = {verdict(cold_warm, 0.5)}")
    out.append(
        f"LoRA NDCG@10 / full fine-tuning NDCG@10 (best config) = {verdict(ratio(mean('best_lora'), mean('best_full')), 0.97)}"
    )
    if transfer:
        rows = transfer["rows"]
        lora = aggregate(rows["A -> B LoRA (fusion)"], "all").get("ndcg@10", (math.nan,))[0]
        scratch = aggregate(rows["B from scratch"], "all").get("ndcg@10", (math.nan,))[0]
        out.append(
            f"genre transfer: pretrain on A + LoRA NDCG@10 / from scratch on B = {verdict(ratio(lora, scratch), 1.0)}"
        )
    return out


def plot(rows: list[tuple[str, float, float]], path: Path) -> None:
    """A horizontal bar chart of NDCG@10 (mean, error bar = std) per row, drawn with Pillow."""
    from PIL import Image, ImageDraw

    left, bar, gap, width = 330, 22, 10, 900
    height = 60 + len(rows) * (bar + gap)
    top = max([m + (0 if math.isnan(s) else s) for _, m, s in rows] + [1e-6]) * 1.1
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - 40) / top
    draw.text((left, 10), "MovieLens-100k, test NDCG@10 (mean ± std over seeds)", fill="black")
    for i, (label, mean, std) in enumerate(rows):
        y = 40 + i * (bar + gap)
        draw.text((10, y + 5), label[:52], fill="black")
        draw.rectangle([left, y, left + mean * scale, y + bar], fill=(76, 114, 176))
        if not math.isnan(std):
            lo, hi = left + (mean - std) * scale, left + (mean + std) * scale
            draw.line([lo, y + bar / 2, hi, y + bar / 2], fill="black", width=2)
            draw.line([lo, y + 4, lo, y + bar - 4], fill="black", width=2)
            draw.line([hi, y + 4, hi, y + bar - 4], fill="black", width=2)
        draw.text(
            (left + mean * scale + 8 + (0 if math.isnan(std) else std * scale), y + 5), f"{mean:.4f}", fill="black"
        )
    draw.line([left, 35, left, height - 10], fill="black")
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)  # a reader never sees half a plot


def machine() -> dict:
    load = os.getloadavg()
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load,
    }
    device = info["gpu"] or f"{info['cpu_count']} CPU cores, no GPU"
    busy = " (other jobs were running: wall times are indicative)" if load[0] >= 0.5 else ""
    info["summary"] = (
        f"{device}, torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}; load average "
        f"{load[0]:.1f} at start{busy}"
    )
    return info


def main(argv=None) -> int:
    from mmsr_peft.arguments import parse_args

    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parse_args([QualityArguments], argv, description=__doc__.split("\n\n")[0])
    args.rows = rows = expand_rows(args.rows)  # before --job: its catalog inputs depend on the rows
    if args.job:
        return run_job(args)
    began = time.perf_counter()
    command = "python scripts/benchmark_quality.py " + shlex.join(argv)
    info = machine()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - began) / 60:6.1f} min] {message}", flush=True)

    domain = prepare_data(args)
    splits = {split: build_split(args, domain, split) for split in SPLITS}
    skipped = {split: {"not_run": "not in --rows"} for split in splits}
    records = {name: {split: {} for split in splits} if name in rows else dict(skipped) for name in ROWS}
    found = {"best": None, "transfer": {} if "transfer" in rows else None, "notes": []}

    def write(finished: bool = False) -> None:
        report = build_report(args, command, info, splits, records, found, began, finished)
        write_report(report, output_dir)

    def log_and_write(message: str) -> None:
        log(message)
        write()

    with tempfile.TemporaryDirectory(prefix="quality-") as work, ThreadPoolExecutor(max_workers=1) as pool:
        bench = Benchmark(args, domain, Path(work), argv)
        found["notes"] = bench.feature_notes
        log(f"catalog inputs ready ({len(domain.catalog)} items); rows: {', '.join(rows)}")
        # one background lane: RecBole's seeds first, then runs from the end of the queue
        recbole = start_recbole(bench, pool) if "recbole" in rows and args.recbole_background else None
        queue = RunQueue(plan_runs(args, splits, rows, records), records, bench, log_and_write)
        if args.background_rows:  # each run in a process of its own
            background = pool.submit(run_lane, queue, "background", bench.run_in_process)
        run_lane(queue, "main", lambda run: bench.run(run, splits[run.split]))  # the frozen and fine-tuning rows
        if "transfer" in rows:
            run_transfer(bench, args.transfer_fusion, found["transfer"], log_and_write)
        if args.background_rows:
            background.result()
        found["best"] = best_fusion(records)
        if "recbole" in rows:
            finish_recbole(recbole or start_recbole(bench, pool), records, log_and_write)
    write(finished=True)
    log(f"wrote {output_dir}/quality_ml100k.md, .json, .png")
    print((output_dir / "quality_ml100k.md").read_text())
    return 0


def build_split(args: QualityArguments, domain, split: str):
    from mmsr_peft.domains import build_corpus

    if split == "cold":
        return build_corpus([domain], args.max_len, args.cold_start_fraction, args.cold_seed)
    return build_corpus([domain], args.max_len)


def run_job(args: QualityArguments) -> int:
    """`--job`: one run of a background lane, on the data and in the work folder of the benchmark that started it;
    its record goes to a JSON file there."""
    from mmsr_peft.io import atomic_write_text

    run = Run.parse(args.job)
    domain = prepare_data(args)
    bench = Benchmark(args, domain, Path(args.job_dir))
    record = bench.run(run, build_split(args, domain, run.split))
    atomic_write_text(bench.record_path(run), json.dumps(record))
    return 0


def build_report(args, command, info, splits, records, found, began, finished) -> dict:
    from mmsr_peft.evaluation import PROTOCOL, random_baseline

    best = found["best"]
    labels = {
        name: ROWS[name].label.format(text=args.text_model, vision=args.vision_model, best=best or "fusion")
        for name in records
    }
    random = random_baseline(splits["main"].test)
    cold = splits["cold"].test[0].cold
    notes = scope_notes(args) + found["notes"]
    if not finished:
        notes.insert(0, "Partial report, written while the benchmark was running: rows without numbers had not run.")
    transfer = found["transfer"] if found["transfer"] and found["transfer"].get("rows") else None
    return {
        "command": command,
        "protocol": PROTOCOL,
        "machine": info,
        "arguments": {name: repo_relative(value) for name, value in dataclasses.asdict(args).items()},
        "seeds": args.seeds,
        "finished": finished,
        "notes": notes,
        "data": splits["main"].stats,
        "cold": {
            "items": len(splits["main"].catalog),
            "cold_items": splits["cold"].stats[DOMAIN]["cold_items"],
            "cold_cases": int(cold.sum()),
            "warm_cases": int((~cold).sum()),
        },
        "random": random,
        "random_note": "A uniformly random ranking of the same candidates scores HR@10 "
        f"{random['hr@10']:.4f}, NDCG@10 {random['ndcg@10']:.4f}.",
        "best_fusion": best,
        "labels": labels,
        "records": records,
        "transfer": transfer,
        "targets": targets(records, transfer, best),
        "wall_s": time.perf_counter() - began,
    }


def repo_relative(value):
    """An absolute path as seen from the repository (results are committed: no path of this machine in them)."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, REPO)
    return value


def write_report(report: dict, output_dir: Path) -> None:
    """`quality_ml100k.json`, `.md` and (when a row has numbers) `.png` in `output_dir`."""
    bars = []
    for name, per_split in report["records"].items():
        agg = aggregate(per_split["main"], "all")
        if agg:
            bars.append((report["labels"][name], *agg["ndcg@10"]))
    if bars:
        plot(bars, output_dir / "quality_ml100k.png")
        report["plot"] = "quality_ml100k.png"
    from mmsr_peft.io import atomic_write_text

    atomic_write_text(output_dir / "quality_ml100k.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(output_dir / "quality_ml100k.md", render(report, report["labels"]))


def scope_notes(args: QualityArguments) -> list[str]:
    notes = []
    if args.quick:
        notes.append("--quick smoke run: one seed, at most 2 epochs; not a result.")
    if any(ROWS[r].method in ("lora", "full") for r in args.rows if r in ROWS):
        notes.append(
            f"Encoder-training rows (LoRA / full fine-tuning of the text encoder) start from their frozen row's weights "
            f"and train {args.finetune_steps} steps of {args.finetune_batch_size} sequences on "
            f"{args.finetune_seeds} seed(s) (learning rate LoRA {args.lora_learning_rate}, full "
            f"{args.full_learning_rate}): every step encodes nearly the whole catalog with MiniLM, which is what a "
            "2-core CPU affords; they are short fine-tunes, not converged runs."
        )
    return notes


if __name__ == "__main__":
    sys.exit(main())

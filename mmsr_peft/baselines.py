"""Simple rankers that calibrate the learned models: popularity and an untrained content-kNN (`mmsr-baseline`).

Each is a small `nn.Module` with the two methods `evaluate` calls (`embed_catalog`, `user_embeddings`), so it is
measured on the same split, candidates, exclusions and tie rule as every trained model, and its `metrics.json`
has the same shape as a pretraining run's.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arguments import BASELINES, BaselineArguments, DataArguments
from .builder import ModelArguments, build_model
from .domains import Corpus, build_corpus, describe_data, load_domain
from .evaluation import evaluate_report, format_table, random_baseline
from .run_folders import check_output_dir, claim_output_dir
from .run_outputs import write_run_outputs
from .training import precompute_frozen_states


class PopularityRanker(nn.Module):
    """Scores every item by its training count, whoever the user is."""

    def __init__(self, counts: np.ndarray):
        super().__init__()
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float32))

    def embed_catalog(self, inputs, batch_size: int = 256) -> torch.Tensor:
        return self.counts[:, None]  # (N, 1)

    def user_embeddings(self, item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        return item_embeddings.new_ones(len(histories), 1)  # (B, 1)


class ContentKNN(nn.Module):
    """Scores items by cosine similarity to the mean of the (L2-normalised) vectors of the history items."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.register_buffer("features", F.normalize(features.float(), dim=-1))  # (N, F); a zero row stays zero

    def embed_catalog(self, inputs, batch_size: int = 256) -> torch.Tensor:
        return self.features

    def user_embeddings(self, item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        real = (histories >= 0).float()[..., None]  # (B, T, 1)
        summed = (item_embeddings[histories.clamp(min=0)] * real).sum(1)  # (B, F)
        return F.normalize(summed, dim=-1)  # the direction of the mean: the same ranking


def training_counts(corpus: Corpus) -> np.ndarray:
    """Training interactions per catalog item (`Split.train_counts` of each domain, end to end): every item before
    each training user's validation target, but the cold-start items, which training never sees."""
    return np.concatenate([eval_set.item_counts for eval_set in corpus.valid])


def frozen_features(model_args: ModelArguments, corpus: Corpus, modality: str, cache_dir: str | None) -> torch.Tensor:
    """`(N, F)` pooled outputs of the pretrained text or vision encoder named in `model_args` (untrained here)."""
    model = build_model(dataclasses.replace(model_args, item_tower=modality)).requires_grad_(False)
    records = corpus.catalog.records(range(len(corpus.catalog)))
    inputs = model.processor(records, progress=True, image_cache_dir=cache_dir)
    inputs = precompute_frozen_states(model, inputs, cache_dir=cache_dir)
    states, present = (
        (inputs.text_states, inputs.has_text) if modality == "text" else (inputs.image_states, inputs.has_image)
    )
    return states.pooled * present[:, None]  # an item without this modality: zeros, cosine 0 with everything


def build_baseline(kind: str, corpus: Corpus, model_args: ModelArguments, cache_dir: str | None = None) -> nn.Module:
    """The ranker `kind` (one of `BASELINES`) for `corpus`."""
    if kind == "popularity":
        return PopularityRanker(training_counts(corpus))
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; valid: {', '.join(BASELINES)}")
    modalities = {"knn_text": ["text"], "knn_image": ["image"], "knn_both": ["text", "image"]}[kind]
    parts = [F.normalize(frozen_features(model_args, corpus, m, cache_dir), dim=-1) for m in modalities]
    return ContentKNN(torch.cat(parts, dim=1))


def run_baseline(args: BaselineArguments, model_args: ModelArguments, data_args: DataArguments) -> dict:
    """Evaluates the ranker `args.baseline` on the test split of `data_args.domains` and writes `metrics.json`
    (test metrics under the main protocol and the secondary exclusions) and `run_args.json` to `output_dir`. The
    rankers read the last `model_args.max_len` history items (the kNN's mean vector); the encoders of the kNN
    rankers are `model_args`' text and vision models, untrained here."""
    from .pretraining import prepare_synthetic

    check_output_dir(args.output_dir, {"--data_dir": data_args.data_dir}, args.overwrite_output_dir)
    with claim_output_dir(args.output_dir, overwrite=args.overwrite_output_dir):
        began = time.perf_counter()
        prepare_synthetic(data_args)
        domains = [load_domain(name, data_args.data_source, data_args.data_dir) for name in data_args.domains]
        corpus = build_corpus(
            domains, model_args.max_len, data_args.cold_start_fraction, args.seed, data_args.train_user_fraction
        )
        print(describe_data(corpus.stats))
        ranker = build_baseline(args.baseline, corpus, model_args, args.feature_cache_dir)
        report = evaluate_report(ranker, None, corpus.test, args.eval_batch_size)
        results = report.main
        results["random"] = random_baseline(corpus.test)
        summary = {
            "baseline": args.baseline,
            "description": BASELINES[args.baseline],
            "test": results,
            "test_other_exclusions": report.other_exclusions,
            "test_by_popularity": report.by_popularity,
            "data": corpus.stats,
            "trainable_parameters": 0,
            "wall_s": time.perf_counter() - began,
        }
        write_run_outputs(args.output_dir, summary, (args, model_args, data_args), test_ranks=report.ranks)
    print(f"\n{args.baseline} ({BASELINES[args.baseline]}), test split:\n{format_table(results)}\n")
    return summary

"""RecBole's SASRec on exactly our leave-one-out split, for a side-by-side with mmsr_peft's numbers.

Runs in its own virtual environment, `.venv-recbole` (RecBole 1.2.1 and its pinned stack; RecBole is never imported
in the project's `.venv`). The data comes from `mmsr-data recbole-export`:

    make recbole-venv                                                   # once: .venv-recbole
    .venv/bin/mmsr-data movielens --data_dir data
    .venv/bin/mmsr-data recbole-export data/movielens/ml-100k recbole/ml-100k
    .venv-recbole/bin/python scripts/recbole_sasrec.py recbole/ml-100k --output outputs/recbole_sasrec.json
    .venv-recbole/bin/python scripts/recbole_sasrec.py recbole/ml-100k --epochs 2    # a quick smoke run

What it does: RecBole's `SASRec` (hidden 64, 2 layers, 2 heads, CE loss = softmax over every item) trains with
RecBole's `Trainer` on `<name>.train.inter`, one row per training transition of our split; after each epoch it is
validated on `<name>.valid.inter` and the epoch with the best validation NDCG@10 is kept (early stopping after
`--patience` epochs without improvement). The kept model is then evaluated on `<name>.test.inter` twice:

- `test`: our main protocol (mmsr_peft.evaluation.PROTOCOL), computed here from SASRec's full-sort scores: every
  item is a candidate except the items the user interacted with before the target (its whole known history, not
  only the last max_len items the model reads); ties count against the target.
- `test_last_max_len` and `test_unmasked`: the secondary columns, from the same scores: only the history the model
  reads is excluded, or nothing is.
- `test_recbole`: RecBole's own full-sort evaluation, as RecBole reports it: for sequential models RecBole does NOT
  exclude history items (its `FullSortEvalDataLoader` passes no history for them) and breaks score ties with
  `torch.topk`.

Validation (model selection) uses our main protocol too (RecBole's evaluator with the user's known items masked).
Prints and optionally writes a JSON report: metrics, the validation NDCG@10 of every epoch, the best epoch, the
epochs run and why training stopped (`patience` or the `ceiling` of --epochs), the data sizes, training rows per
second, evaluation users per second and wall times.

Compatibility shims, applied in this process only (site-packages is not edited): RecBole 1.2.1's `Config` aliases
`np.float_`, `np.complex_`, `np.unicode_`, removed in numpy 2, so they are restored; its best-model checkpoint is a
pickle read back with `torch.load`, which torch >= 2.6 refuses by default (`weights_only=True`), so the best weights
are kept in memory instead and nothing is written to disk but this report. RecBole's `Config` reads `sys.argv`,
and its trainer writes `./log_tensorboard`: both are kept away (RecBole runs in a temporary working folder). Its
`sine.py` switches on `torch.autograd.set_detect_anomaly` when the sequential models are imported, a debugging mode
that slows every training step; it is switched off again.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

MISS = 2**62
PROTOCOL = (
    "full ranking over every item of the catalog; the items the user interacted with before the target (its whole "
    "known history) are excluded from the candidates; ties are counted against the target (pessimistic rank); "
    "HR@K equals Recall@K with one target"
)
SECONDARY_PROTOCOLS = {
    "test_last_max_len": "as `test`, but only the last max_len history items (those the model reads) are excluded",
    "test_unmasked": "as `test`, but no item is excluded (history items stay candidates)",
}
RECBOLE_PROTOCOL = (
    "RecBole 1.2.1 full-sort evaluation of a sequential model: every item is a candidate, history items included "
    "(RecBole excludes them only for non-sequential models); ties broken by torch.topk"
)
METRICS = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "mrr@20")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark_dir", help="Folder written by `mmsr-data recbole-export` (RecBole data_path/name).")
    parser.add_argument("--epochs", type=int, default=200, help="Epoch ceiling (reported when it is hit).")
    parser.add_argument("--patience", type=int, default=10, help="Epochs without a better validation NDCG@10.")
    parser.add_argument("--hidden_size", type=int, default=64, help="Item embedding and transformer width.")
    parser.add_argument("--num_layers", type=int, default=2, help="Transformer layers.")
    parser.add_argument("--num_heads", type=int, default=2, help="Attention heads.")
    parser.add_argument("--dropout", type=float, default=0.5, help="Hidden and attention dropout (RecBole default).")
    parser.add_argument("--max_len", type=int, default=None, help="History length; default: the export's max_len.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate.")
    parser.add_argument("--batch_size", type=int, default=256, help="Training rows per step.")
    parser.add_argument("--eval_batch_size", type=int, default=256, help="Users per evaluation batch.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of RecBole's init_seed.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Where to train and evaluate.")
    parser.add_argument("--output", default=None, help="Write the JSON report there too.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = Path(args.benchmark_dir).resolve()
    export_path = folder / "mmsr_export.json"
    if not export_path.is_file():
        print(f"error: {export_path} not found; write the folder with `mmsr-data recbole-export`", file=sys.stderr)
        return 2
    export = json.loads(export_path.read_text())
    name = export["name"]
    try:
        recbole = import_recbole()
    except ImportError as err:
        print(
            f"error: {err}. Run this script with the RecBole environment: `make recbole-venv`, then "
            "`.venv-recbole/bin/python scripts/recbole_sasrec.py ...`",
            file=sys.stderr,
        )
        return 2
    output = Path(args.output).resolve() if args.output else None
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="recbole-sasrec-") as work:
        os.chdir(work)  # RecBole writes ./log_tensorboard (and a checkpoint folder) into the working folder
        try:
            report = run(recbole, args, folder, name, export, Path(work))
        finally:
            os.chdir(cwd)
    text = json.dumps(report, indent=2)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    return 0


def import_recbole():
    """Imports RecBole after restoring the numpy aliases its `Config` assigns (removed in numpy 2); refuses to in
    the project's environment, whose recbole wheel is installed without its dependencies, for its data files only."""
    import importlib.util

    if importlib.util.find_spec("mmsr_peft") is not None:
        raise ImportError(
            f"{sys.executable} has mmsr_peft: it is the project's environment, where RecBole stays unused"
        )
    import numpy as np

    warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")  # pandas/torch deprecations
    for alias, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    import recbole
    import recbole.config
    import recbole.data
    import recbole.model.sequential_recommender
    import recbole.trainer
    import recbole.utils
    import torch

    # importing recbole.model.sequential_recommender runs sine.py, which turns on autograd's anomaly detection for
    # the whole process: it records a traceback for every op and checks every gradient for NaN. One SASRec epoch on
    # MovieLens-100k took 401 s with it and 172 s without, with identical metrics
    torch.autograd.set_detect_anomaly(False)
    return recbole


def run(recbole, args, folder: Path, name: str, export: dict, work: Path) -> dict:
    import torch

    start = time.perf_counter()
    max_len = args.max_len or export["split"]["max_len"]
    config_dict = {
        "model": "SASRec",
        "dataset": name,
        "data_path": str(folder.parent),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},  # every catalog item
        # one id space for history and target items (without it RecBole remaps item_id_list on its own)
        "alias_of_item_id": ["item_id_list"],
        "MAX_ITEM_LIST_LENGTH": max_len,
        "eval_args": {"order": "TO", "mode": "full"},
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": args.hidden_size,
        "inner_size": 4 * args.hidden_size,
        "n_layers": args.num_layers,
        "n_heads": args.num_heads,
        "hidden_dropout_prob": args.dropout,
        "attn_dropout_prob": args.dropout,
        "learning_rate": args.learning_rate,
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "epochs": args.epochs,
        "stopping_step": args.patience,
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 10,  # RecBole rounds its metrics to 4 places by default
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": args.device == "cuda",
        "checkpoint_dir": str(work / "saved"),
        "show_progress": False,
        "state": "WARNING",
    }
    argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config parses `--key=value` from the command line
    try:
        config = recbole.config.Config(config_dict=config_dict)
    finally:
        sys.argv = argv
    config["data_path"] = str(folder)  # Config points a dataset named ml-100k at RecBole's bundled copy: undo that
    recbole.utils.init_seed(config["seed"], config["reproducibility"])
    dataset = recbole.data.create_dataset(config)
    train_data, valid_data, test_data = recbole.data.data_preparation(config, dataset)
    recbole.utils.init_seed(config["seed"], config["reproducibility"])
    model = recbole.model.sequential_recommender.SASRec(config, train_data.dataset).to(config["device"])
    user_field = config["USER_ID_FIELD"]
    known_before_valid = known_items(model, user_field, train_data.dataset, shape=(dataset.user_num, dataset.item_num))
    known_before_test = known_before_valid | known_items(
        model, user_field, valid_data.dataset, shape=(dataset.user_num, dataset.item_num)
    )
    trainer = make_trainer(recbole, config, model, user_field)
    load_s = time.perf_counter() - start

    trainer.known = known_before_valid.to(config["device"])
    trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    model.load_state_dict(trainer.best_state)

    eval_start, eval_cpu = time.perf_counter(), time.process_time()
    ranks = protocol_ranks(model, test_data, config["device"], known_before_test, user_field)
    # the export writes one test row per user in our split's order: the ranks in that order pair with our runs'
    user_ids = dataset.field2token_id[user_field]  # token -> RecBole's remapped id
    test_users = [user_ids[token] for token in export_users(folder / f"{name}.test.inter")]
    eval_s, eval_cpu = time.perf_counter() - eval_start, time.process_time() - eval_cpu
    trainer.known = known_before_test.to(config["device"])
    masked = trainer.evaluate(test_data, load_best_model=False)  # RecBole's evaluator, known items excluded
    trainer.known = None
    recbole_start = time.perf_counter()
    native = trainer.evaluate(test_data, load_best_model=False)
    recbole_eval_s = time.perf_counter() - recbole_start

    num_items = dataset.item_num - 1  # RecBole's id 0 is padding
    train_rows = len(train_data.dataset)
    epochs_run = len(trainer.train_seconds)
    return {
        "model": "RecBole SASRec",
        "dataset": name,
        "synthetic": bool(export["domain"].get("synthetic", False)),
        "versions": versions(recbole, torch),
        "device": str(config["device"]),
        "torch_threads": torch.get_num_threads(),
        "hyper_parameters": {
            key: config_dict[key]
            for key in (
                "hidden_size",
                "inner_size",
                "n_layers",
                "n_heads",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "MAX_ITEM_LIST_LENGTH",
                "loss_type",
                "learning_rate",
                "train_batch_size",
                "epochs",
                "stopping_step",
                "seed",
            )
        },  # fmt: skip
        "data": {
            "items": num_items,
            "items_in_export": export["domain"].get("counts", {}).get("items"),
            "train_rows": train_rows,
            "valid_users": len(valid_data.dataset),
            "test_users": len(test_data.dataset),
        },
        "epochs_run": epochs_run,
        "best_epoch": trainer.best_epoch,
        "stopped_by": "patience" if epochs_run < args.epochs else "ceiling",
        "valid_best": {"protocol": "ours, ties by torch.topk", "ndcg@10": float(trainer.best_valid_score)},
        "valid_ndcg@10_per_epoch": trainer.valid_scores,
        "test": {"protocol": PROTOCOL, **rank_metrics(ranks["test"])},
        "test_ranks": in_order(ranks["users"], ranks["test"], test_users),
        **{key: {"protocol": text, **rank_metrics(ranks[key])} for key, text in SECONDARY_PROTOCOLS.items()},
        "test_recbole": {"protocol": RECBOLE_PROTOCOL, **recbole_metrics(native)},
        "test_recbole_history_excluded": {
            "protocol": "RecBole's evaluator on scores with the known items set to -inf: equals `test` up to ties",
            **recbole_metrics(masked),
        },
        "throughput": {
            "train_rows_per_s": train_rows * epochs_run / sum(trainer.train_seconds),
            "eval_users_per_s": len(ranks["test"]) / eval_s,
            "recbole_eval_users_per_s": len(ranks["test"]) / recbole_eval_s,
        },
        "wall_s": {
            "load": load_s,
            "train": sum(trainer.train_seconds),
            "train_per_epoch": trainer.train_seconds,
            "validation": sum(trainer.valid_seconds),
            "test_eval": eval_s,
            "total": time.perf_counter() - start,
        },
        "cpu_s": {"train": sum(trainer.train_cpu_seconds), "test_eval": eval_cpu},  # all threads; shared machines
    }


def known_items(model, user_field: str, dataset, shape: tuple[int, int]):
    """`(users, items)` bool: the items each user has in `dataset`'s rows, as targets or in histories (RecBole's
    remapped ids; id 0 is padding)."""
    import torch

    rows = dataset.inter_feat
    users, histories = rows[user_field], rows[model.ITEM_SEQ]  # (R,), (R, L)
    known = torch.zeros(shape, dtype=torch.bool)
    known[users[:, None].expand_as(histories), histories] = True
    known[users, rows[model.ITEM_ID]] = True
    known[:, 0] = False
    return known


def make_trainer(recbole, config, model, user_field: str):
    """RecBole's `Trainer`, timing each epoch, recording each validation NDCG@10, keeping the best weights in
    memory (its checkpoint is a pickle that torch >= 2.6 no longer loads by default), and masking each user's
    `known` items (a `(users, items)` bool tensor; None: nothing masked) in its full-sort evaluation."""
    import numpy as np

    class Trainer(recbole.trainer.Trainer):
        known = None

        def __init__(self, config, model):
            super().__init__(config, model)
            self.train_seconds, self.train_cpu_seconds, self.valid_seconds, self.valid_scores = [], [], [], []
            self.best_state, self.best_epoch = None, None

        def _train_epoch(self, *args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            loss = super()._train_epoch(*args, **kwargs)
            self.train_seconds.append(time.perf_counter() - start)
            self.train_cpu_seconds.append(time.process_time() - cpu)
            return loss

        def _valid_epoch(self, *args, **kwargs):
            start = time.perf_counter()
            score, result = super()._valid_epoch(*args, **kwargs)
            self.valid_seconds.append(time.perf_counter() - start)
            self.valid_scores.append(float(score))
            return score, result

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_epoch = epoch + 1  # 1-based, as in our runs

        def _full_sort_batch_eval(self, batched_data):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if self.known is not None:  # the known items, and the history read (a user may have no training row)
                exclude = self.known[interaction[user_field].to(scores.device)].clone()
                exclude.scatter_(1, interaction[self.model.ITEM_SEQ].to(scores.device), True)
                exclude[:, 0] = False  # padding: RecBole sets its score to -inf itself
                scores = scores.masked_fill(exclude, -np.inf)
            return interaction, scores, positive_u, positive_i

    return Trainer(config, model)


def protocol_ranks(model, eval_data, device, known, user_field: str) -> dict:
    """0-based rank of each target from SASRec's full-sort scores under our main protocol (`test`: the user's
    `known` items excluded) and the secondary ones (only the history the model reads excluded; nothing excluded), and
    the user of each row (`users`: RecBole's ids)."""
    import numpy as np
    import torch

    model.eval()
    known = known.to(device)
    ranks = {"test": [], "test_last_max_len": [], "test_unmasked": [], "users": []}
    with torch.no_grad():
        for interaction, _, _, targets in eval_data:
            interaction, targets = interaction.to(device), targets.to(device)
            ranks["users"].append(interaction[user_field].cpu().numpy())
            scores = model.full_sort_predict(interaction)  # (B, N + 1): column 0 is padding
            read = torch.zeros_like(scores, dtype=torch.bool)
            read.scatter_(1, interaction[model.ITEM_SEQ], True)  # the history the model reads (and padding 0)
            read[:, 0] = True
            padding = torch.zeros_like(read)
            padding[:, 0] = True
            masks = {
                "test": read | known[interaction[user_field]],
                "test_last_max_len": read,
                "test_unmasked": padding,
            }
            for key, exclude in masks.items():
                ranks[key].append(target_ranks(scores, targets, exclude).cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in ranks.items()}


def export_users(path: Path) -> list[str]:
    """The user of each row of an exported `.inter` file (its first column), in the file's order."""
    with open(path, encoding="utf-8") as handle:
        next(handle)  # the header
        return [line.split("\t", 1)[0] for line in handle if line.strip()]


def in_order(users, ranks, order) -> list[int]:
    """`ranks` (one per evaluated row, whose user is in `users`) as the list of the ranks of the users of `order`;
    a user of `order` that RecBole did not evaluate is an error."""
    by_user = {int(user): int(rank) for user, rank in zip(users, ranks, strict=True)}
    missing = [user for user in order if int(user) not in by_user]
    if missing:
        raise RuntimeError(f"RecBole evaluated no test row of {len(missing)} exported users (e.g. id {missing[0]})")
    return [by_user[int(user)] for user in order]


def target_ranks(scores, targets, exclude):
    """0-based rank of each target among its row's candidates (as mmsr_peft.evaluation.target_ranks)."""
    import torch

    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    ranks = ((scores >= target_scores) & ~exclude).sum(1) - 1
    ranks = ranks.masked_fill(exclude.gather(1, targets[:, None]).squeeze(1), MISS)
    return ranks.masked_fill(~torch.isfinite(target_scores[:, 0]), MISS)  # a NaN score is a miss


def rank_metrics(ranks) -> dict[str, float]:
    """HR@K, NDCG@K, MRR@K from 0-based ranks (as mmsr_peft.evaluation.rank_metrics)."""
    import numpy as np

    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {}
    for k in (10, 20):
        hit = ranks < k
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        metrics[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return {key: metrics[key] for key in METRICS}


def recbole_metrics(result) -> dict[str, float]:
    return {key: float(result[key.replace("hr@", "hit@")]) for key in METRICS}


def versions(recbole, torch) -> dict[str, str]:
    import numpy
    import pandas

    return {
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())

"""Quality on real data: MovieLens-100k (interactions, item text, posters), warm and cold start, every row trained
to convergence through the library's own commands, beside simple baselines and ID-based SASRec (ours and RecBole's).

    python scripts/benchmark_quality.py                              # every row and seed of the plan, 2 processes
    python scripts/benchmark_quality.py --rows id gated --seeds 0 --jobs 1
    python scripts/benchmark_quality.py --report_only                # the report from the records on disk
    python scripts/benchmark_quality.py --report_only --fill_docs docs/benchmarks.md   # and the docs' copy of it
    python scripts/benchmark_quality.py --verify gated/main-seed0    # run one recorded run again and compare
    python scripts/benchmark_quality.py --add_ranks --splits main    # test ranks for records without: paired intervals
    make quality                                                     # the same, RecBole's environment included

The rows are data: `scripts/configs/quality_ml100k.yaml` names each row's command (`mmsr-pretrain`,
`mmsr-baseline`, or `scripts/recbole_sasrec.py` in `.venv-recbole`) and its flags. A run is a row on a split with
a seed, in a process of its own with one torch thread; its record (test metrics under the main protocol and the
secondary exclusions, warm and cold targets, best epoch, epochs run, why it stopped, the validation curve, wall
time, peak memory, the command) goes to `results/quality_ml100k/runs/<row>/<split>-seed<N>.json`. A run whose record
exists is skipped, so the benchmark resumes where it stopped and can span several sittings; a trained run whose
sitting ended before it finished goes on from the last training state it saved (one per epoch), and its record
says so (`resumed_at_epoch`; its wall time adds the seconds spent up to that state, its peak memory is the last
sitting's).

Protocol (`mmsr_peft.evaluation.PROTOCOL`): leave-one-out by time, full ranking over every item, the user's whole
history excluded, ties against the target. Every trained row stops after `patience` epochs without a better
validation NDCG@10, under an epoch ceiling that is reported when hit. Requires the processed domain
(`mmsr-data movielens --data_dir data --posters DIR`; the image rows need the posters).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from runner import (
    REPO,
    Run,
    console_script,
    execute,
    machine,
    mean_std,
    plot,
    plot_curves,
    relative,
    run_all,
    write_json,
)

from mmsr_peft.arguments import ADAPTER_METHODS
from mmsr_peft.evaluation import paired_bootstrap
from mmsr_peft.lora import COMPONENTS, DEFAULT_COMPONENTS
from mmsr_peft.parsing import as_flags

METRICS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")


@dataclass
class QualityArguments:
    """What the quality benchmark runs (see the module docstring)."""

    plan: str = field(
        default=str(REPO / "scripts" / "configs" / "quality_ml100k.yaml"), metadata={"help": "The rows (YAML)."}
    )
    rows: list[str] | None = field(default=None, metadata={"help": "Rows of the plan to run (default: all)."})
    seeds: list[int] | None = field(default=None, metadata={"help": "Seeds (default: the plan's)."})
    splits: list[str] | None = field(default=None, metadata={"help": "Splits of the plan (default: all)."})
    jobs: int = field(default=2, metadata={"help": "Runs at a time, each a process with one torch thread."})
    data_dir: str = field(default="data", metadata={"help": "Root of processed domain folders."})
    records_dir: str | None = field(
        default=None, metadata={"help": "Where records go (default: results/<plan name>/runs)."}
    )
    output_dir: str = field(default="results", metadata={"help": "Where <plan name>.{md,json,png} go."})
    work_dir: str | None = field(default=None, metadata={"help": "Run folders (default: outputs/<plan name>)."})
    feature_cache_dir: str = field(
        default="outputs/feature_cache", metadata={"help": "Frozen encoder outputs shared by the runs."}
    )
    recbole_python: str = field(
        default=str(REPO / ".venv-recbole" / "bin" / "python"), metadata={"help": "Python of RecBole's venv."}
    )
    report_only: bool = field(default=False, metadata={"help": "Write the report from the records; run nothing."})
    verify: str | None = field(
        default=None, metadata={"help": "Run the recorded run ROW/SPLIT-seedN again and compare its test metrics."}
    )
    add_ranks: bool = field(
        default=False,
        metadata={
            "help": "Give the records asked for (--rows, --splits, --seeds) that lack them their test cases' ranks: "
            "the run's saved model is evaluated again with mmsr-evaluate (a baseline, or a pretraining run whose "
            "folder is gone, is run again), its test NDCG@10 checked against the record's. RecBole's records keep "
            "none."
        },
    )
    fill_docs: str | None = field(
        default=None,
        metadata={
            "help": "A Markdown page whose marked copy of the standard split's table (between `<!-- results table: "
            "filled from ... -->` and `<!-- end of results table -->`) and goal ratio (`<!-- ratio -->...<!-- /ratio "
            "-->`) is refilled from the report."
        },
    )


def load_plan(path: Path) -> dict:
    """The plan in `path`; a plan that `extends` another (a path relative to it) is that plan with its own keys
    merged in, mappings key by key (a row's label or data can change alone), any other value replaced; the keys it
    lists under `replace` (say `rows`) replace the parent's whole."""
    plan = yaml.safe_load(path.read_text())
    parent = plan.pop("extends", None)
    if not parent:
        return plan
    base = load_plan(path.parent / parent)
    for key in plan.pop("replace", []):
        base.pop(key, None)
    return merge(base, plan)


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` on top, nested mappings merged."""
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge(base[key], value) if both else value
    return merged


class Benchmark:
    """A plan (its rows, splits and seeds) and where its runs and records live."""

    def __init__(self, args: QualityArguments):
        self.args = args
        self.plan = load_plan(Path(args.plan))
        name = self.plan["name"]
        self.records_dir = Path(args.records_dir or REPO / "results" / name / "runs")
        self.work_dir = Path(args.work_dir or REPO / "outputs" / name)
        self.locks: dict[Run, threading.RLock] = {}
        self.export_lock = threading.Lock()
        unknown = sorted(set(args.rows or []) - set(self.plan["rows"]))
        if unknown:
            raise SystemExit(f"unknown --rows {unknown}; the plan's rows: {', '.join(self.plan['rows'])}")
        splits = self.plan["splits"]
        named = {"--splits": args.splits or [], "curve: splits": self.plan.get("curve", {}).get("splits", [])}
        named.update({f"row {row}: splits": spec.get("splits", []) for row, spec in self.plan["rows"].items()})
        for where, names in named.items():
            unknown = sorted(set(names) - set(splits))
            if unknown:
                raise SystemExit(f"{args.plan}: unknown {where} {unknown}; the plan's splits: {', '.join(splits)}")

    def runs(self) -> list[Run]:
        """Every run asked for, in the plan's order (rows, then splits, then seeds)."""
        seeds = self.args.seeds or self.plan["seeds"]
        runs = []
        for row, spec in self.plan["rows"].items():
            if self.args.rows and row not in self.args.rows:
                continue
            for split in spec.get("splits", self.plan["splits"]):
                if not self.args.splits or split in self.args.splits:
                    runs.extend(Run(row, split, seed) for seed in seeds)
        return runs

    def record_path(self, run: Run) -> Path:
        return self.records_dir / run.row / f"{run.split}-seed{run.seed}.json"

    def command(self, run: Run, out: Path, resume: bool = False) -> list[str]:
        """The library command of `run`, writing into `out` (a trained run: from its start, or with `resume` from the
        last training state that an earlier sitting left there)."""
        spec, plan = self.plan["rows"][run.row], self.plan
        data = {**plan["data"], **spec.get("data", {}), "data_dir": self.args.data_dir, **plan["splits"][run.split]}
        common = {"seed": run.seed, "output_dir": out, "feature_cache_dir": self.args.feature_cache_dir}
        # a run folder without a record is a run that did not finish: it goes on from its last training state, if
        # it saved one, else it starts again
        trained = {"resume": True} if resume else {"overwrite_output_dir": True}
        if spec["command"] == "pretrain":
            settings = {**plan["model"], **plan["training"], **data, **common, **trained, **spec["args"]}
            return [console_script("mmsr-pretrain"), *as_flags(settings)]
        if spec["command"] == "baseline":
            settings = {**plan["model"], **data, **common, "overwrite_output_dir": True, **spec["args"]}
            return [console_script("mmsr-baseline"), *as_flags(settings)]
        if spec["command"] == "adapt":  # from the model that the `init` row's run of this split and seed wrote
            (target,) = data.pop("domains")
            base = self.folder(self.init_run(run))
            settings = {
                "target": target,
                "base": base,
                **plan["training"],
                **data,
                **common,
                **trained,
                **spec["args"],
            }
            return [console_script("mmsr-adapt"), *as_flags(settings)]
        if spec["command"] == "recbole":  # on the GPU when there is one (.venv-recbole then needs a CUDA torch)
            settings = {"seed": run.seed, "max_len": plan["model"]["max_len"], "output": out / "report.json"}
            settings["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            script = REPO / "scripts" / "recbole_sasrec.py"
            args = dict(spec["args"])
            export = self.recbole_export(args.pop("train_stride", None))  # the split's; RecBole's flags the rest
            return [self.args.recbole_python, script, export, *as_flags(settings | args)]
        raise SystemExit(f"{self.args.plan}: row {run.row}: unknown command {spec['command']!r}")

    def evaluate_command(self, run: Run, out: Path) -> list[str]:
        """`mmsr-evaluate` of the model that the trained `run` saved in its folder (an adapter row's: its start with
        its adapter), on the run's test split, into `out`."""
        spec, plan = self.plan["rows"][run.row], self.plan
        data = {**plan["data"], **spec.get("data", {}), "data_dir": self.args.data_dir, **plan["splits"][run.split]}
        settings = {"seed": run.seed, "output_dir": out, "feature_cache_dir": self.args.feature_cache_dir}
        settings["model"] = self.folder(run)
        if spec["command"] == "adapt":
            data["domains"] = data["domains"][:1]  # the target
            if spec["args"]["method"] in ADAPTER_METHODS:
                settings.update(model=self.folder(self.init_run(run)), adapter=self.folder(run))
        return [console_script("mmsr-evaluate"), *as_flags({**data, **settings})]

    def recbole_export(self, train_stride: int | None = None) -> Path:
        """The domain as RecBole atomic files of exactly our split, with `train_stride`'s training windows (each
        export written once)."""
        from mmsr_peft.data.recbole import export_recbole
        from mmsr_peft.domains import load_domain

        (name,) = self.plan["data"]["domains"]
        export = self.work_dir / ("recbole" if train_stride is None else f"recbole-stride{train_stride}") / name
        with self.export_lock:  # RecBole's seeds start side by side: one writes the export, the others wait
            if (export / "mmsr_export.json").is_file():
                return export
            domain = load_domain(name, self.plan["data"]["data_source"], self.args.data_dir)
            max_len = self.plan["model"]["max_len"]
            export_recbole(domain.folder, export, max_len=max_len, overwrite=True, train_stride=train_stride)
        return export

    def folder(self, run: Run) -> Path:
        """Where `run` writes its model, metrics and log."""
        return self.work_dir / run.row / f"{run.split}-seed{run.seed}"

    def init_run(self, run: Run) -> Run:
        """The run whose model an `adapt` row's `run` starts from: the `init` row's, on `init_split` when the row
        names one (a source domain pretrained once for every target split), else on the same split; same seed."""
        spec = self.plan["rows"][run.row]
        return Run(spec["init"], spec.get("init_split", run.split), run.seed)

    def ensure_init(self, run: Run) -> None:
        """An `adapt` row starts from its `init` row's model: when that run's folder is not complete (another
        machine, a clean checkout), the init run is run again there (seeded: the same model) and recorded if it
        was not."""
        init = self.init_run(run)
        with self.lock(init):
            if not (self.folder(init) / "metrics.json").is_file():  # written last
                record, path = self.execute(init, self.folder(init)), self.record_path(init)
                if not path.is_file():
                    write_json(path, record)
                    return
                # seeded runs repeat exactly on one machine, not across machines: say when the base differs
                recorded = json.loads(path.read_text())["test"]["all"]["ndcg@10"]
                again = record["test"]["all"]["ndcg@10"]
                if abs(again - recorded) > 1e-6:
                    print(
                        f"note: {init.name} ran again here (its folder was missing) and scores test NDCG@10 "
                        f"{again:.4f} against {recorded:.4f} recorded: the runs adapted from it now start from this "
                        "model (their records' zero_shot shows which)",
                        file=sys.stderr,
                    )

    def uses_images(self, row: str) -> bool:
        """Whether `row` reads item images (an image or text + image tower, or an image kNN)."""
        spec = self.plan["rows"][row]
        if spec["command"] == "adapt":
            return self.uses_images(spec["init"])
        if spec["command"] == "baseline":
            return spec["args"]["baseline"] in ("knn_image", "knn_both")
        settings = {**self.plan["model"], **spec["args"]}
        tower = settings.get("item_tower", "multimodal")
        return spec["command"] == "pretrain" and tower in ("multimodal", "modal", "image")  # `modal`: the old name

    def lock(self, run: Run) -> threading.RLock:
        """One run is run by one thread at a time: a row's own run and an adapt row's `ensure_init` of it."""
        return self.locks.setdefault(run, threading.RLock())

    def run(self, run: Run) -> dict:
        """Runs `run` in its own process into its folder and returns its record (filed meanwhile: read back)."""
        with self.lock(run):
            if self.record_path(run).is_file():  # an adapt row's init, run and filed by `ensure_init`
                return json.loads(self.record_path(run).read_text())
            return self.execute(run, self.folder(run))

    def execute(self, run: Run, out: Path) -> dict:
        """Runs `run`'s command, writing into `out` (an adapt row's starting model first, when it is missing), and
        returns its record."""
        kind = self.plan["rows"][run.row]["command"]
        if kind == "adapt":
            self.ensure_init(run)
        command = self.command(run, out)  # the record's command: it reproduces the run in one sitting
        earlier = earlier_sittings(out) if kind in ("pretrain", "adapt") else None
        if earlier:
            print(f"{run.name}: going on from the training state of epoch {earlier['epoch']} left in {relative(out)}")
        log = out.parent / f"{out.name}.log"
        measured = execute(self.command(run, out, resume=True) if earlier else command, log, append=bool(earlier))
        if earlier:  # the time up to the state it went on from; a killed sitting's work after that state is lost
            measured["wall_s"] += earlier["seconds"]
        results = read_recbole(out / "report.json") if kind == "recbole" else read_metrics(out / "metrics.json")
        # a finished run's model is in its folder; its kept training states (model + optimizer, per epoch) are only
        # for resuming it, and hundreds of runs' worth filled the disk
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return {
            "row": run.row,
            "split": run.split,
            "seed": run.seed,
            "label": self.plan["rows"][run.row]["label"],
            "command": [relative(part) for part in command],
            **results,
            **measured,
            **({"resumed_at_epoch": earlier["epoch"]} if earlier else {}),
            "machine": machine()["summary"],
        }


def earlier_sittings(out: Path) -> dict | None:
    """What earlier sittings of a trained run left in its folder `out`: the epoch of its last complete training
    state and the training and validation seconds spent up to it (None when there is no such state: the run starts
    again)."""
    from mmsr_peft.train_state import TrainState, last_complete_state

    folder = last_complete_state(out)
    if folder is None:
        return None
    state = TrainState()
    state.load(folder)  # the library's reader: a damaged state is an error naming its file and field
    return {"epoch": state.epoch, "seconds": sum(state.seconds.values())}


def read_metrics(path: Path) -> dict:
    """The record's part from a `metrics.json` of `mmsr-pretrain`, `mmsr-adapt` or `mmsr-baseline`."""
    metrics = json.loads(path.read_text())
    test = metrics.get("test_adapted", metrics["test"])  # mmsr-adapt's "test" is its table (zero-shot, adapted)
    test = {**test, **metrics.get("test_by_popularity", {})}
    by_target = {"all": test["all"]}
    for key, value in test.items():  # "<domain> warm", "<domain> cold, among cold items", "<domain> popularity 1-9"
        if " " in key:  # (domain names have no spaces)
            by_target[key.split(" ", 1)[1]] = value
    record = {
        "test": by_target,
        "test_window": metrics["test_other_exclusions"]["window"]["all"],
        "test_none": metrics["test_other_exclusions"]["none"]["all"],
        "trainable_parameters": metrics.get("trainable_parameters"),
    }
    if "test_ranks" in metrics:  # every test case's rank: paired intervals between rows in the report
        record["test_ranks"] = np.load(path.parent / metrics["test_ranks"]).tolist()
    if "zero-shot base" in metrics["test"]:  # an adapted run: its starting model on the target, before training
        record["zero_shot"] = metrics["test"]["zero-shot base"]
    if "history" in metrics:  # a trained run
        curve = [epoch["valid_ndcg@10"] for epoch in metrics["history"]]
        record.update(
            best_epoch=metrics["best_epoch"],
            epochs_run=metrics["epochs_run"],
            stopped_by=metrics["stopped_by"],
            valid_ndcg_at_10=max(curve),
            valid_curve=curve,
        )
    return record


def read_recbole(path: Path) -> dict:
    """The record's part from `scripts/recbole_sasrec.py`'s report."""
    report = json.loads(path.read_text())

    def strip(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k != "protocol"}

    return {
        "test": {"all": strip(report["test"])},
        "test_window": strip(report["test_last_max_len"]),
        "test_none": strip(report["test_unmasked"]),
        "test_recbole_native": strip(report["test_recbole"]),
        "trainable_parameters": None,
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "stopped_by": report["stopped_by"],
        "valid_ndcg_at_10": report["valid_best"]["ndcg@10"],
        "valid_curve": report["valid_ndcg@10_per_epoch"],
        "hyper_parameters": report["hyper_parameters"],
        **({"test_ranks": report["test_ranks"]} if "test_ranks" in report else {}),  # in our split's case order
    }


def verify(bench: Benchmark, name: str) -> int:
    """Runs the recorded run `name` (ROW/SPLIT-seedN) again and prints how its test metrics compare."""
    try:
        row, rest = name.split("/")
        split, seed = rest.rsplit("-seed", 1)
        run = Run(row, split, int(seed))
        recorded = json.loads(bench.record_path(run).read_text())
    except (ValueError, OSError):
        print(
            f"error: --verify {name}: expected ROW/SPLIT-seedN of a recorded run, e.g. gated/main-seed0",
            file=sys.stderr,
        )
        return 2
    bench.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bench.work_dir) as tmp:
        again = bench.execute(run, Path(tmp) / "run")
    worst = 0.0
    for target, metrics in recorded["test"].items():
        for metric, value in metrics.items():
            worst = max(worst, abs(again["test"][target][metric] - value))
    verdict = "identical" if worst == 0 else f"max abs difference {worst:.2e}"
    print(
        f"{name}: re-run {verdict} (recorded NDCG@10 {recorded['test']['all']['ndcg@10']:.6f}, "
        f"re-run {again['test']['all']['ndcg@10']:.6f})"
    )
    return 0 if worst <= 1e-4 else 1


def add_ranks(bench: Benchmark) -> int:
    """Adds `test_ranks` to each record asked for that lacks them (see `--add_ranks`); returns the exit code."""
    failures = 0
    for run in bench.runs():
        path, kind = bench.record_path(run), bench.plan["rows"][run.row]["command"]
        if not path.is_file() or kind == "recbole" or "test_ranks" in (record := json.loads(path.read_text())):
            continue
        bench.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=bench.work_dir) as tmp:
            out = Path(tmp) / "run"
            saved = (bench.folder(run) / "metrics.json").is_file()  # written last: the run's model is all there
            # a baseline, or a pretraining run whose folder is gone, runs again (seeded: the same model here)
            rerun = kind == "baseline" or (kind == "pretrain" and not saved)
            command = bench.command(run, out) if rerun else bench.evaluate_command(run, out)
            try:
                execute(command, Path(tmp) / "run.log")
            except RuntimeError as err:  # names the log's last line
                print(f"{run.name}: {err}", file=sys.stderr)
                failures += 1
                continue
            again = read_metrics(out / "metrics.json")
        recorded, now = record["test"]["all"]["ndcg@10"], again["test"]["all"]["ndcg@10"]
        if abs(now - recorded) > 1e-3:  # not the model (or split) of the record: its ranks would not be its own
            print(f"{run.name}: test NDCG@10 {now:.4f} now against {recorded:.4f} recorded: left as it is")
            failures += 1
            continue
        write_json(path, {**record, "test_ranks": again["test_ranks"]})
        cases = len(again["test_ranks"])
        print(f"{run.name}: ranks of {cases} test cases added (NDCG@10 {now:.4f}, {recorded:.4f} recorded)")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------- report


def load_records(bench: Benchmark) -> dict:
    """`{row: {split: {seed: record}}}` of every record on disk, in the plan's order."""
    return read_records(bench.records_dir, bench.plan["rows"])


def read_records(records_dir: Path, rows) -> dict:
    """`{row: {split: {seed: record}}}` of the records of `rows` under `records_dir`, in the order of `rows`."""
    records = {}
    for row in rows:
        for path in sorted((records_dir / row).glob("*.json")):
            record = json.loads(path.read_text())
            records.setdefault(row, {}).setdefault(record["split"], {})[record["seed"]] = record
    return records


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return "-" if not values else f"{mean:.4f}" if len(values) < 2 else f"{mean:.4f} ± {std:.4f}"


def row_stats(runs: dict, key: str = "all", section: str = "test") -> dict:
    return {m: [r[section][key][m] if section == "test" else r[section][m] for r in runs.values()] for m in METRICS}


def training_cell(runs: dict) -> str:
    """`best / run` epochs per seed, and whether any run hit the ceiling."""
    if not any("epochs_run" in r for r in runs.values()):
        return "untrained"
    epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs.values())
    ceiling = sum(r["stopped_by"] == "ceiling" for r in runs.values())
    return f"{epochs}" + (f" (**{ceiling} not converged**)" if ceiling else "")


def targets(plan: dict, records: dict) -> list[str]:
    """The ratios of the issue's goals on the standard split, from the rows that have runs (mean test NDCG@10)."""
    main = {row: runs["main"] for row, runs in records.items() if runs.get("main")}

    def test(row: str, seeds=None) -> float:
        """Mean test NDCG@10 of `row` over `seeds` (default: every seed it has)."""
        return mean_std([r["test"]["all"]["ndcg@10"] for s, r in main[row].items() if seeds is None or s in seeds])[0]

    def valid(row: str) -> float:
        return mean_std([r["valid_ndcg_at_10"] for r in main[row].values()])[0]

    def described(row: str, seeds=None) -> str:
        count = len(main[row]) if seeds is None else len(seeds)
        return f"{plan['rows'][row]['label']} ({test(row, seeds):.4f}, {count} seed{'s' * (count != 1)})"

    def paired(a: str, b: str, before_b: str = "") -> tuple[float, str]:
        """`a` / `b` on the seeds both rows have (a fine-tuned row may not have all of its start's yet), and
        `"A (mean, n seeds) / <before_b>B (mean, n seeds)"` on those seeds."""
        seeds = sorted(set(main[a]) & set(main[b]))
        return test(a, seeds) / test(b, seeds), f"{described(a, seeds)} / {before_b}{described(b, seeds)}"

    def share_seeds(a: str, b: str) -> bool:
        return b in main and bool(set(main[a]) & set(main[b]))

    def interval(a: str, b: str) -> str:
        return paired_interval(main[a], main[b])

    def keeps_ranks(row: str) -> bool:
        return all("test_ranks" in run for run in main[row].values())

    group = {row: plan["rows"][row].get("group") for row in main}
    complete = [row for row in main if len(main[row]) >= len(plan["seeds"])]  # a row with fewer seeds: not yet
    ids = [row for row in complete if group[row] == "id"]
    content = [row for row in complete if group[row] in ("text+image", "fine-tuned")]  # fine-tuned: from text + image
    lines = ["## Goals (standard split, mean test NDCG@10)", ""]
    if ids and content:
        strongest = max(ids, key=test)  # the stronger ID baseline: chosen on test, which favours the baseline
        best = max(content, key=valid)  # our row: chosen on validation
        ratio, headline = test(best) / test(strongest), interval(best, strongest)
        lines.append(
            f"- best text + image row (by validation NDCG@10) {described(best)} / the stronger ID baseline "
            f"{described(strongest)} = **{ratio:.3f}x**{headline} (goal >= 1.25x: "
            f"{'met' if ratio >= 1.25 else 'missed'})"
        )
        ranked = [row for row in ids if row != strongest and keeps_ranks(row)]
        if not headline and keeps_ranks(best) and ranked:  # RecBole's records keep none: the strongest of ours
            ours = max(ranked, key=test)
            lines.append(
                f"- the same row / {described(ours)} = {test(best) / test(ours):.3f}x{interval(best, ours)} (the "
                "stronger ID baseline's records keep no test ranks)"
            )
    tuned = {row: plan["rows"][row] for row in main if group[row] == "fine-tuned"}
    for row, spec in tuned.items():
        if share_seeds(row, spec["init"]):
            ratio, rows = paired(row, spec["init"], before_b="its start ")
            goal = f" (goal > 1x: {'met' if ratio > 1 else 'missed'})" if spec["args"]["method"] == "lora" else ""
            lines.append(f"- {rows} = {ratio:.3f}x{interval(row, spec['init'])}{goal}")

    # a `frozen` row from a start is the control for the adapters from it that keep the start as a candidate as it
    # does (or not): the same parts trained on, no encoder
    def control_key(spec: dict) -> tuple:
        return spec["init"], bool(spec["args"].get("evaluate_start"))

    controls = {control_key(spec): row for row, spec in tuned.items() if spec["args"]["method"] == "frozen"}
    for row, spec in tuned.items():
        control = controls.get(control_key(spec))
        if control and control != row and share_seeds(row, control):
            ratio, rows = paired(row, control, before_b="the same start trained on with frozen encoders, ")
            lines.append(f"- {rows} = {ratio:.3f}x{interval(row, control)}")
    for lora, full in lora_full_pairs(tuned):
        if not share_seeds(lora, full):
            continue
        ratio, rows = paired(lora, full)
        verdict = "met" if ratio >= 0.97 else "missed"
        lines.append(f"- {rows} = **{ratio:.3f}x**{interval(lora, full)} (goal >= 0.97x: {verdict})")
    if len(lines) == 2:
        lines.append("- not measured yet: the rows the goals compare have no runs")
    elif any("paired bootstrap" in line for line in lines):
        lines += ["", PAIRED_NOTE]
    return [*lines, "", *cold_targets(plan, records)]


# what makes a row LoRA or full fine-tuning, and of which parts; every other flag is the recipe the two must share
METHOD_FLAGS = {"method", "components", "modules_to_save", "text_learning_rate", "vision_learning_rate", "lora_top_k"}


def trained_parts(args: dict) -> set[str]:
    """The components a LoRA or full fine-tuning row trains: LoRA's `--components` (default `DEFAULT_COMPONENTS`)
    and the modules it saves in full (`sequence_encoder`: the sequence component); full's `--components` (default:
    all of them)."""
    if args["method"] == "full":
        return set(args.get("components") or COMPONENTS)
    saved = {"sequence" if module == "sequence_encoder" else module for module in args.get("modules_to_save") or []}
    return set(args.get("components") or DEFAULT_COMPONENTS) | saved


def lora_full_pairs(rows: dict) -> list[tuple[str, str]]:
    """The (LoRA row, full fine-tuning row) pairs among `rows` (name: spec) that start from the same row with the
    same recipe and train the same parts, so that their ratio compares the methods alone."""

    def recipe(spec: dict) -> tuple:
        flags = sorted((k, str(v)) for k, v in spec["args"].items() if k not in METHOD_FLAGS)
        return spec.get("init"), flags, sorted(trained_parts(spec["args"]))

    lora_rows, full_rows = (
        [row for row, spec in rows.items() if spec["args"].get("method") == m] for m in ("lora", "full")
    )
    return [
        (lora, full)
        for lora, full in itertools.product(lora_rows, full_rows)
        if recipe(rows[lora]) == recipe(rows[full])
    ]


PAIRED_NOTE = (
    "Intervals: 95 % paired bootstrap of the ratio (`mmsr_peft.evaluation.paired_bootstrap`): the test users "
    "resampled 10,000 times, both rows scored on the same resample, each user's NDCG@10 its mean over the seeds; "
    "from the records' test ranks (`--add_ranks`). A ratio whose interval holds 1 is not told apart from a tie."
)


def paired_interval(runs_a: dict, runs_b: dict) -> str:
    """`" [low, high] (paired bootstrap, N users)"`, the 95 % interval of the NDCG@10 ratio of two rows' runs
    (`{seed: record}`) on the seeds both have, when all of those keep their test ranks; else `""`."""
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds or any("test_ranks" not in runs[seed] for runs in (runs_a, runs_b) for seed in seeds):
        return ""
    a, b = (np.array([runs[seed]["test_ranks"] for seed in seeds]) for runs in (runs_a, runs_b))
    result = paired_bootstrap(a, b)
    return f" [{result['ratio_low']:.3f}, {result['ratio_high']:.3f}] (paired bootstrap, {result['cases']} users)"


def cold_targets(plan: dict, records: dict) -> list[str]:
    """The cold-start goal on the `cold` split: the best trained row's cold HR@10 against the best untrained
    content-kNN's, and that row's warm HR@10 against the plain `gated` row's (mean over seeds)."""
    cold = {row: runs["cold"] for row, runs in records.items() if runs.get("cold")}

    def hr(row: str, part: str) -> float:
        return mean_std([r["test"][part]["hr@10"] for r in cold[row].values()])[0]

    trained = [row for row in cold if plan["rows"][row].get("group") not in ("baseline", "id")]
    knn = [row for row in cold if row.startswith("knn_")]
    if not trained or not knn:
        return []
    best, bar = max(trained, key=lambda row: hr(row, "cold")), max(knn, key=lambda row: hr(row, "cold"))
    ratio = hr(best, "cold") / hr(bar, "cold")
    line = (
        f"- cold split: the best trained row's cold HR@10 (chosen on test, which favours it) {plan['rows'][best]['label']} "
        f"{hr(best, 'cold'):.4f} / the best untrained content-kNN {plan['rows'][bar]['label']} {hr(bar, 'cold'):.4f} = "
        f"**{ratio:.2f}x** (goal >= 1.5x: {'met' if ratio >= 1.5 else 'missed'})"
    )
    if "gated" in cold:
        line += (
            f"; its warm HR@10 is {hr(best, 'warm') / hr('gated', 'warm'):.3f}x the plain gated row's (goal >= 0.97x)"
        )
    return ["## Goals (cold split, mean over seeds)", "", line, ""]


def popularity_table(plan: dict, records: dict, split: str) -> list[str]:
    """HR@10 of each row by the popularity bucket of the target (its training interactions; "0": cold items and
    items that only ever appear as validation or test targets), for the records that have the buckets."""
    from mmsr_peft.evaluation import POPULARITY_EDGES, popularity_bucket

    buckets = [f"popularity {popularity_bucket(edge)}" for edge in POPULARITY_EDGES]
    rows = {row: runs for row, runs in ((r, records.get(r, {}).get(split, {})) for r in plan["rows"]) if runs}
    present = [b for b in buckets if any(b in run["test"] for runs in rows.values() for run in runs.values())]
    if not present:
        return []
    lines = ["HR@10 by the number of training interactions of the test target:", ""]
    lines += ["| row | " + " | ".join(b.split()[1] for b in present) + " |", "|" + "---|" * (len(present) + 1)]
    for row, runs in rows.items():
        cells = [cell([run["test"][b]["hr@10"] for run in runs.values() if b in run["test"]]) for b in present]
        if any(c != "-" for c in cells):
            lines.append(f"| {plan['rows'][row]['label']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def transfer_targets(plan: dict, records: dict) -> list[str]:
    """The transfer goals at each share of the target's users: the best adapted row against the best row trained
    from scratch, each chosen on validation among its group (mean test NDCG@10 over seeds)."""

    def mean(runs: dict, key: str) -> float:
        return mean_std([r["test"]["all"]["ndcg@10"] if key == "test" else r[key] for r in runs.values()])[0]

    lines = ["## Goals (mean test NDCG@10; adapted and from-scratch rows each chosen on validation NDCG@10)", ""]
    for split in plan["curve"]["splits"]:
        runs = {row: records.get(row, {}).get(split, {}) for row in plan["rows"]}
        best = {}  # per group, the row with the best mean validation NDCG@10 (the same rule on both sides)
        for group in ("adapted", "scratch"):  # among the rows with every seed (a row with fewer: not yet)
            rows = [
                row
                for row, r in runs.items()
                if len(r) >= len(plan["seeds"]) and plan["rows"][row].get("group") == group
            ]
            if rows:
                best[group] = max(rows, key=lambda row: mean(runs[row], "valid_ndcg_at_10"))
        if len(best) < 2:
            continue
        share = plan["splits"][split].get("train_user_fraction", 1.0)
        ours, scratch = mean(runs[best["adapted"]], "test"), mean(runs[best["scratch"]], "test")
        goal = 1.2 if share <= 0.1 else 1.0 if share == 1.0 else None
        verdict = f" (goal >= {goal}x: {'met' if ours / scratch >= goal else 'missed'})" if goal else ""
        interval = paired_interval(runs[best["adapted"]], runs[best["scratch"]])
        lines.append(
            f"- {100 * share:g} % of users: {plan['rows'][best['adapted']]['label']} {ours:.4f} / "
            f"{plan['rows'][best['scratch']]['label']} {scratch:.4f} = **{ours / scratch:.2f}x**{interval}{verdict}"
        )
    adapted = {row: spec for row, spec in plan["rows"].items() if spec.get("command") == "adapt"}
    for lora, full in lora_full_pairs(adapted):  # on the seeds both have run
        for split in plan["curve"]["splits"]:
            runs = [records.get(row, {}).get(split, {}) for row in (lora, full)]
            seeds = sorted(set(runs[0]) & set(runs[1]))
            if not seeds:
                continue
            ratio = mean({s: runs[0][s] for s in seeds}, "test") / mean({s: runs[1][s] for s in seeds}, "test")
            share = 100 * plan["splits"][split].get("train_user_fraction", 1.0)
            lines.append(
                f"- {share:g} % of users, {len(seeds)} seed{'s' * (len(seeds) > 1)}: {adapted[lora]['label']} / "
                f"{adapted[full]['label']} = **{ratio:.3f}x**{paired_interval(*runs)} (goal >= 0.97x: "
                f"{'met' if ratio >= 0.97 else 'missed'})"
            )
    if any("paired bootstrap" in line for line in lines):
        lines += ["", PAIRED_NOTE]
    return [*lines, ""] if len(lines) > 2 else []


def curve_section(bench: Benchmark, records: dict) -> list[str]:
    """With a plan `curve: {splits: [...]}` (each split a share of the training users), a table of test NDCG@10 of
    every row at each share, the base's zero-shot score (read from the adapted records), and the curve as a plot."""
    plan = bench.plan
    splits = plan.get("curve", {}).get("splits")
    if not splits:
        return []
    share = {split: plan["splits"][split].get("train_user_fraction", 1.0) for split in splits}
    curves, cells = {}, {}
    zero_shot = {}  # per base (an `init` row), per seed: each score of the base and the adapted rows that read it
    for row, spec in plan["rows"].items():
        runs = {split: records.get(row, {}).get(split, {}) for split in splits}
        if not any(runs.values()):
            continue
        stats = {split: mean_std([r["test"]["all"]["ndcg@10"] for r in runs[split].values()]) for split in splits}
        curves[spec["label"]] = [(share[split], *stats[split]) for split in splits]
        cells[spec["label"]] = [cell([r["test"]["all"]["ndcg@10"] for r in runs[split].values()]) for split in splits]
        for split in splits:
            for seed, record in runs[split].items():
                if "zero_shot" in record:
                    starts = zero_shot.setdefault(spec["init"], {}).setdefault(seed, {})
                    starts.setdefault(round(record["zero_shot"]["ndcg@10"], 6), set()).add(row)
    notes = []
    for init, seeds in zero_shot.items():
        # the base ranks every target user as it is, whatever share of them trains: one score per run of the base
        scores = [score for starts in seeds.values() for score in starts]
        label = f"zero-shot: {plan['rows'][init]['label']}, as it is"
        curves[label] = [(share[split], *mean_std(scores)) for split in splits]
        cells[label] = [cell(scores)] * len(splits)
        again = {seed: starts for seed, starts in sorted(seeds.items()) if len(starts) > 1}
        if again:
            per_seed = "; ".join(
                f"seed {seed}: "
                + ", ".join(f"{score:.4f} ({', '.join(sorted(rows))})" for score, rows in sorted(starts.items()))
                for seed, starts in again.items()
            )
            notes.append(
                f"The base `{init}` was trained again for some seeds (a run whose folder was missing is run again "
                "where it is needed, and seeded runs repeat exactly on one machine only), so the adapted rows of "
                f"one seed do not all start from the same model; its zero-shot row is the mean over the "
                f"{len(scores)} runs of the base. Zero-shot test NDCG@10 by seed (the rows that started from each "
                f"run): {per_seed}."
            )
    if not cells:
        return []
    header = "| row | " + " | ".join(f"{100 * share[split]:g} % of users" for split in splits) + " |"
    lines = [f"## Data efficiency: test NDCG@10 by the share of {plan['data']['domains'][0]}'s users that train", ""]
    lines += [header, "|" + "---|" * (len(splits) + 1)]
    lines += [f"| {label} | " + " | ".join(row) + " |" for label, row in cells.items()]
    base = Path(bench.args.output_dir) / f"{plan['name']}_curve.png"
    base.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, f"{plan['title']}: test NDCG@10 by share of target users (mean ± std)", base)
    return [*lines, "", *(line for note in notes for line in (note, "")), f"![curve]({base.name})", ""]


def comparison_section(plan: dict, records: dict) -> list[str]:
    """With a plan `comparisons: [{title, pairs: [[row_a, row_b], ...]}]`, a table per comparison of the two rows'
    test NDCG@10 on the standard split and their ratio (b / a), over the seeds both rows have run."""
    lines = []
    for comparison in plan.get("comparisons", []):
        table = []
        for a, b in comparison["pairs"]:
            both = [records.get(row, {}).get("main", {}) for row in (a, b)]
            common = sorted(set(both[0]) & set(both[1]))
            if not common:
                continue
            runs = [{seed: rs[seed] for seed in common} for rs in both]
            means = [mean_std([r["test"]["all"]["ndcg@10"] for r in rs.values()])[0] for rs in runs]
            cells = [
                f"{plan['rows'][row]['label']} | {cell([r['test']['all']['ndcg@10'] for r in rs.values()])}"
                for row, rs in zip((a, b), runs, strict=True)
            ]
            table.append(f"| {cells[0]} | {cells[1]} | {means[1] / means[0]:.3f}x | {len(common)} |")
        if table:
            lines += [f"## {comparison['title']} (standard split, test NDCG@10)", ""]
            lines += [
                "| row | NDCG@10 | row | NDCG@10 | ratio (second / first) | common seeds |",
                "|---|---|---|---|---|---|",
            ]
            lines += [*table, ""]
    return lines


NOT_JUDGED = "one seed, not judged"
FINDING_RULE = (
    "a difference counts when the two means differ by more than twice its standard error, sqrt(s_a^2 / n_a + "
    "s_b^2 / n_b); otherwise it is within noise"
)


def finding_plans(bench: Benchmark, records: dict) -> dict:
    """`{plan name: (rows, records)}` of this plan and of each other plan its findings name (`plan/row`), read once;
    another plan's records lie beside this plan's."""
    plans = {"": (bench.plan["rows"], records)}
    for finding in bench.plan.get("findings", []):
        for name in [finding.get("first", ""), *finding.get("against", [])]:
            plan_name = name.rpartition("/")[0]
            if plan_name not in plans:
                rows = load_plan(Path(bench.args.plan).parent / f"{plan_name}.yaml")["rows"]
                plans[plan_name] = (rows, read_records(bench.records_dir.parent.parent / plan_name / "runs", rows))
    return plans


def finding_line(plans: dict, finding: dict) -> str | None:
    """A finding's table line (None while the rows it compares with have no records); `plans` as `finding_plans`
    gives them."""
    if "first" not in finding:
        return f"| {finding['question']} | {finding['paper']} | {finding['not_measured']} | not measured |"
    split, part, metric = (finding.get(k, d) for k, d in (("split", "main"), ("part", "all"), ("metric", "ndcg@10")))

    def stats(name: str) -> tuple[str, list[float]]:
        """The label of `name` (`row` of this plan or `plan/row`) and its `metric` over the seeds it ran."""
        plan_name, _, row = name.rpartition("/")
        rows, records = plans[plan_name]
        runs = records.get(row, {}).get(split, {})
        return rows[row]["label"], [r["test"][part][metric] for r in runs.values() if part in r["test"]]

    label, values = stats(finding["first"])
    if not values:
        return f"| {finding['question']} | {finding['paper']} | {label}: no run recorded yet | not measured yet |"
    mean, std = mean_std(values)
    measured, outcomes = [f"{label}: {cell(values)}"], []
    for other in finding["against"]:
        other_label, other_values = stats(other)
        if not other_values:
            continue
        other_mean, other_std = mean_std(other_values)
        if min(len(values), len(other_values)) < 2:  # no spread to judge a difference by
            outcome = NOT_JUDGED
        elif abs(mean - other_mean) <= 2 * math.sqrt(std**2 / len(values) + other_std**2 / len(other_values)):
            outcome = "within noise"
        else:
            outcome = "better" if mean > other_mean else "worse"
        outcomes.append(outcome)
        ratio = f", {mean / other_mean:.2f}x" if other_mean else ""
        measured.append(f"vs {other_label}: {cell(other_values)} ({outcome}{ratio})")
    judged = [o for o in outcomes if o != NOT_JUDGED]
    if not outcomes:
        return None
    if "worse" in judged:
        verdict = "does not hold"
    elif not judged:
        verdict = "not judged yet (one seed)"
    elif finding.get("expects", "better") == "not worse" or all(o == "better" for o in judged):
        verdict = "holds" if len(judged) == len(outcomes) else "holds where judged"
    else:
        verdict = "not shown (within noise)"
    where = metric + (f", {part} targets" if part != "all" else "") + (f", split `{split}`" if split != "main" else "")
    return f"| {finding['question']} | {finding['paper']} | {where}: {'; '.join(measured)} | {verdict} |"


def findings_section(bench: Benchmark, records: dict) -> list[str]:
    """With a plan `findings: [{question, paper, first, against: [rows], expects: better | not worse, split, part,
    metric}]`, a table of what the paper says or does beside what the runs measure: `first` against each row of
    `against` (rows of this plan, or `plan/row` of another), and whether the paper's side holds here."""
    findings = bench.plan.get("findings", [])
    if not findings:
        return []
    lines = [
        "## The paper's questions, re-tested here",
        "",
        f"Each line compares test metrics over the seeds each row ran ({FINDING_RULE}; a row with one seed is not "
        "judged). `holds`: every comparison came out the way the paper's side expects; `does not hold`: at least one "
        "went the other way.",
        "",
        "| question | the paper | measured here | holds here? |",
        "|---|---|---|---|",
    ]
    plans = finding_plans(bench, records)
    for finding in findings:
        line = finding_line(plans, finding)
        lines += [line] if line else []
    return [*lines, ""]


def report(bench: Benchmark) -> None:
    """Writes `<name>.md`, `.json` and `.png` into `output_dir` from the records on disk."""
    from mmsr_peft.evaluation import EXCLUSIONS, PROTOCOL

    plan, records = bench.plan, load_records(bench)
    seeds = plan["seeds"]
    command = (
        f"python scripts/benchmark_quality.py --plan {relative(bench.args.plan)}"  # resumable: runs what is missing
    )
    stopping = {
        row: {key: spec["args"][key] for key in ("patience", "num_epochs") if key in spec.get("args", {})}
        for row, spec in plan["rows"].items()
    }
    own_rule = "; ".join(
        f"`{row}`: " + ", ".join(f"{key} {value}" for key, value in rule.items())
        for row, rule in stopping.items()
        if rule
    )
    lines = [
        f"# {plan['title']}: quality of every row, trained to convergence",
        "",
        f"`{command}`",
        "",
        f"Protocol: {PROTOCOL} Main columns exclude {EXCLUSIONS['history']}; the secondary NDCG@10 columns exclude "
        f"{EXCLUSIONS['window']} (`window`) or {EXCLUSIONS['none']} (`none`). Mean ± sample standard deviation "
        f"over the seeds that ran (plan: {seeds}); a trained row stops after "
        f"{plan['training']['patience']} epochs without a better validation NDCG@10, at most "
        f"{plan['training']['num_epochs']} epochs{f' (rows with their own rule: {own_rule})' if own_rule else ''}. "
        f"Rows are `{relative(bench.args.plan)}`; each run's record, with "
        f"its command, is in `{relative(bench.records_dir)}/`.",
        "",
    ]
    bars = []
    for split in plan["splits"]:
        if not any(records.get(row, {}).get(split) for row in plan["rows"]):
            continue
        title = "Standard split" if split == "main" else f"Split `{split}`: {plan['splits'][split]}"
        lines += [f"## {title}", ""]
        header = "| row | seeds | NDCG@10 | HR@10 | MRR@10 | NDCG@20 | NDCG@10 `window` | NDCG@10 `none` |"
        if split != "main":
            header += " HR@10 warm | HR@10 cold | HR@10 cold, among cold items |"
        header += " epochs (best/run) | min / run |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for row, spec in plan["rows"].items():
            runs = records.get(row, {}).get(split, {})
            if not runs:
                continue
            test = row_stats(runs)
            cells = [
                spec["label"],
                str(len(runs)),
                *(cell(test[m]) for m in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20")),
            ]
            cells += [cell(row_stats(runs, section="test_window")["ndcg@10"])]
            cells += [cell(row_stats(runs, section="test_none")["ndcg@10"])]
            if split != "main":
                cells += [
                    cell([r["test"][t]["hr@10"] for r in runs.values() if t in r["test"]])
                    for t in ("warm", "cold", "cold, among cold items")
                ]
            minutes = mean_std([r["wall_s"] / 60 for r in runs.values()])[0]
            cells += [training_cell(runs), f"{minutes:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
            if split == "main":
                bars.append((spec["label"], *mean_std(test["ndcg@10"])))
        lines += ["", *popularity_table(plan, records, split)]
    lines += curve_section(bench, records)
    lines += comparison_section(plan, records)
    lines += findings_section(bench, records)
    if plan.get("curve"):
        lines += transfer_targets(plan, records)
    elif any(spec.get("group") == "id" for spec in plan["rows"].values()):  # the quality plan's goals
        lines += targets(plan, records)
    Path(bench.args.output_dir).mkdir(parents=True, exist_ok=True)
    base = Path(bench.args.output_dir) / plan["name"]
    base.with_suffix(".md").write_text("\n".join(lines))
    summary = {
        "command": command,
        "plan": relative(bench.args.plan),
        "protocol": PROTOCOL,
        "exclusions": EXCLUSIONS,
        "records": records,
    }
    write_json(base.with_suffix(".json"), summary)
    if bars:
        plot(bars, f"{plan['title']}, test NDCG@10 (mean ± std over seeds)", base.with_suffix(".png"))
    print(f"wrote {relative(base)}.md, .json, .png")


DOCS_TABLE = ("| row | seeds | NDCG@10 | HR@10 | NDCG@20 | NDCG@10 `window` | epochs (best/run) |", "|" + "---|" * 7)
DOCS_COLUMNS = (0, 1, 2, 3, 5, 6, 8)  # of the report's standard-split table: the columns the docs page shows


def fill_docs(report_path: Path, page: Path) -> None:
    """Refills `page`'s marked copy of the report's standard-split table and goal ratio (written by a rename): the
    table that its marker says is filled from this report."""
    import re

    text, report_text = page.read_text(), report_path.read_text()
    marker = f"<!-- results table: filled from {relative(report_path)} -->\n"
    start = text.find(marker)
    end = text.find("<!-- end of results table -->", start) if start >= 0 else -1
    if end < 0:
        raise SystemExit(f"{page}: no `{marker.strip()}` ... `<!-- end of results table -->` to fill")
    if "## Standard split" not in report_text:
        raise SystemExit(f"{report_path}: no standard split table to fill {page} with")
    start += len(marker)
    section = report_text.split("## Standard split", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| row ")]
    table = [*DOCS_TABLE]
    for line in rows:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        table.append("| " + " | ".join(cells[i] for i in DOCS_COLUMNS) + " |")
    text = text[:start] + "\n".join(table) + "\n" + text[end:]
    ratio = re.search(r"^- (best text \+ image row.*)$", report_text, flags=re.M)
    if ratio:
        text = re.sub(
            r"<!-- ratio -->.*?<!-- /ratio -->", f"<!-- ratio -->{ratio.group(1)}<!-- /ratio -->", text, flags=re.S
        )
    partial = page.with_name(f".{page.name}.partial")
    partial.write_text(text)
    partial.replace(page)
    print(f"refilled {relative(page)} from {relative(report_path)}")


def main(argv=None) -> int:
    from mmsr_peft.parsing import parse_args

    (args,) = parse_args([QualityArguments], argv, description=__doc__.split("\n\n")[0])
    bench = Benchmark(args)
    if args.verify:
        return verify(bench, args.verify)
    if args.add_ranks:
        return add_ranks(bench)
    failures = []
    if not args.report_only:
        from mmsr_peft.domains import load_domain
        from mmsr_peft.errors import DataError

        names = {n for spec in bench.plan["rows"].values() for n in spec.get("data", bench.plan["data"])["domains"]}
        try:  # a missing domain fails now, with the command that prepares it, not in every run
            domains = [load_domain(n, bench.plan["data"]["data_source"], args.data_dir) for n in sorted(names)]
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        imageless = [d.name for d in domains if not any(image is not None for image in d.catalog.images)]
        needing = sorted({run.row for run in bench.runs() if bench.uses_images(run.row)})
        if imageless and needing:
            print(
                f"error: {imageless} have no item images, which rows {needing} need: prepare them with images "
                "(mmsr-data movielens --posters DIR --overwrite) or leave those rows out (--rows)",
                file=sys.stderr,
            )
            return 2
        failures = run_all(bench.runs(), bench.record_path, bench.run, args.jobs)
    report(bench)
    if args.fill_docs:
        fill_docs(Path(args.output_dir) / f"{bench.plan['name']}.md", Path(args.fill_docs))
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

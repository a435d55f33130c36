"""The common runner of the benchmark scripts: each run is one command of the library (`mmsr-pretrain`,
`mmsr-adapt`, `mmsr-baseline`, ...) in a process of its own, and each finished run is a record on disk.

A benchmark is resumable run by run: a run whose record exists is not run again, so an interrupted benchmark
continues where it stopped, and records can be committed as they come in. Runs go to a pool of `jobs` worker
threads; each starts its run's process (one torch thread), waits for it and reads its outputs. A failed run is
reported and the others go on; an interrupt cancels the runs not started yet.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # where this environment's console scripts are (a venv's bin/)


@dataclass(frozen=True)
class Run:
    """One run of a benchmark: a row of its table, on one split, with one seed."""

    row: str
    split: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row}/{self.split}-seed{self.seed}"


def console_script(name: str) -> Path:
    """The console script `name` of the package (`mmsr-pretrain`, ...): beside this interpreter, else on the PATH."""
    found = BIN / name if (BIN / name).is_file() else shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found beside {sys.executable} or on the PATH: install the package (make install)"
        )
    return Path(found)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a local server, or `accelerate launch --main_process_port`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def relative(value) -> str:
    """A path inside the repository as a relative path (records never hold this machine's absolute paths)."""
    text = str(value)
    for root, shown in ((str(REPO) + os.sep, ""), (str(BIN) + os.sep, "")):
        text = text.replace(root, shown)
    return text


def high_water_mib(pid: int | str = "self") -> float | None:
    """The peak resident memory of process `pid` in MiB (`VmHWM`), None when it is gone or /proc is missing. Unlike
    `ru_maxrss`, it starts from zero in a new program: a child keeps, across exec, the peak `ru_maxrss` of the
    process that started it, so a child that stays below its parent's peak reports the parent's."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None  # kB


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (`high_water_mib`; `ru_maxrss` where /proc is missing)."""
    peak = high_water_mib()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ChildPeak:
    """The peak resident memory of a child process and its descendants (the largest of them, as `ru_maxrss`
    reports), exact where it can be: `ru_maxrss` from `os.wait4` when the child went above what it inherited from
    this process (see `high_water_mib`), else the largest `VmHWM` sampled every `interval` seconds while it ran (a
    rise in its last `interval` can be missed)."""

    def __init__(self, pid: int, interval: float = 0.25):
        import psutil

        self.process, self.interval, self.sampled = psutil.Process(pid), interval, 0.0
        self.inherited_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # what the child started from
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                pids = [self.process.pid, *(child.pid for child in self.process.children(recursive=True))]
            except psutil.Error:  # it has exited
                return
            self.sampled = max([self.sampled, *(peak for pid in pids if (peak := high_water_mib(pid)) is not None)])
            self._stop.wait(self.interval)

    def peak_mib(self, usage) -> float:
        """The peak, given the child's `os.wait4` resource usage (call once it has been waited for)."""
        self._stop.set()
        self._thread.join()
        if usage.ru_maxrss > self.inherited_kib or not self.sampled:
            return usage.ru_maxrss / 1024  # KiB on Linux
        return self.sampled


def execute(
    command: list[str], log: Path, threads: int = 1, env: dict | None = None, check: bool = True, append: bool = False
) -> dict:
    """Runs `command` with `threads` torch/OpenMP threads (and the variables of `env`), stdout and stderr into `log`
    (after what it holds, with `append`); returns its wall time and peak resident memory. With `check`, raises
    `RuntimeError` naming the log's last line when it fails (multi-process CPU runs may abort at exit after all their
    work: pass `check=False` and judge them by what they wrote)."""
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "30"}
    env = {**os.environ, **threads_env, **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with open(log, "a" if append else "w") as out:
        try:
            process = subprocess.Popen([str(part) for part in command], stdout=out, stderr=subprocess.STDOUT, env=env)
        except OSError as err:  # the program is missing (an environment not built yet) or not executable
            raise RuntimeError(f"cannot start {relative(command[0])}: {err.strerror}") from None
        peak = ChildPeak(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    if check and process.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines() or [f"exit status {process.returncode}"]
        raise RuntimeError(f"{shlex.join(relative(c) for c in command)} failed: {lines[-1][:500]} (log: {log})")
    return {"wall_s": wall, "peak_rss_mib": peak.peak_mib(usage)}


class LiveHeapPeak:
    """Samples, every `interval` seconds while the block runs, the memory that this process's allocator holds for
    live objects (glibc's `mallinfo2`: chunks in use plus blocks mapped on their own) and keeps the peak in MiB
    (`peak_mib`; `start_mib` on entering). Unlike the peak resident set, it leaves out memory that was freed but that
    the allocator keeps for reuse. Both stay None where `mallinfo2` is missing (not Linux with glibc >= 2.33); a
    spike shorter than `interval` can be missed."""

    class _Info(ctypes.Structure):  # glibc's `struct mallinfo2`, every field (it is returned by value)
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    def __init__(self, interval: float = 0.002):
        self.interval, self.start_mib, self.peak_mib = interval, None, None
        self._stop = threading.Event()
        try:
            self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo2.restype = self._Info
        except (OSError, AttributeError):
            self._mallinfo2 = None

    def in_use_mib(self) -> float:
        info = self._mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, self.in_use_mib())

    def __enter__(self):
        if self._mallinfo2 is not None:
            self.start_mib = self.peak_mib = self.in_use_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._mallinfo2 is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self.in_use_mib())


def in_fresh_process(function, *args):
    """Runs `function(*args)` (returning a dict) in a new, spawned Python process with `MMSR_BENCH_THREADS` torch
    threads (default: torch's); returns its result with that process's peak RSS (`peak_rss_mib`) added."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(_measured, (function, *args))
    finally:  # closed, not terminated: the process exits on its own and releases what it holds (tqdm's locks)
        pool.close()
        pool.join()


def _measured(function, *args):
    import torch

    torch.set_num_threads(int(os.environ.get("MMSR_BENCH_THREADS", torch.get_num_threads())))
    result = function(*args)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def library_trainer(model, corpus, catalog_inputs, output_dir: str, **training):
    """The library's `Trainer` over `corpus` with its accelerator, as `mmsr-pretrain` and `mmsr-adapt` build them,
    for benchmarks that time its steps (`training_step`) or epochs (`train`); `training`: `TrainingArguments`
    fields. Pass `catalog_inputs` through `precompute_frozen_states` first, as the commands do."""
    from mmsr_peft.arguments import TrainingArguments
    from mmsr_peft.training import Trainer, make_accelerator

    args = TrainingArguments(output_dir=output_dir, report_to=["none"], **training)
    accelerator = make_accelerator(args, model.config.item_tower, model.config.fusion.type)
    return Trainer(model, corpus.train, catalog_inputs, corpus.valid, args, accelerator, train_skip=corpus.train_skip)


INTEGER_LIST = re.compile(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]")  # as json.dumps(indent=2) writes one


def write_json(path: Path, value) -> None:
    """Writes `value` as JSON atomically (a reader sees the old file or the whole new one), a list of integers on one
    line (a record's test ranks: one per user)."""
    from mmsr_peft.files import atomic_write_text

    text = INTEGER_LIST.sub(
        lambda match: "[" + ", ".join(match[1].replace(",", " ").split()) + "]", json.dumps(value, indent=2)
    )
    atomic_write_text(path, text + "\n")


def run_all(runs: list[Run], record_path: Callable[[Run], Path], do: Callable[[Run], dict], jobs: int) -> list[str]:
    """Runs every run without a record, `jobs` at a time, and files each record as it finishes (in the thread that
    ran it: a run that finishes after an interrupt is filed too). Returns the failures (one line each); the other
    runs go on."""
    pending = [run for run in runs if not record_path(run).is_file()]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already recorded; {len(pending)} to run, {jobs} at a time")

    def filed(run: Run) -> dict:
        record = do(run)
        write_json(record_path(run), record)
        return record

    failures = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(filed, run): run for run in pending}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                run = futures[future]
                try:
                    record = future.result()
                except Exception as err:  # noqa: BLE001 (one run's failure, whatever it is, must not stop the others)
                    failures.append(f"{run.name}: {type(err).__name__}: {err}")
                    print(f"[{done}/{len(pending)}] {run.name} FAILED: {err}", flush=True)
                    continue
                print(f"[{done}/{len(pending)}] {run.name}: {summary_line(record)}", flush=True)
        except BaseException:  # an interrupt: the running processes finish, nothing new starts
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failures


def summary_line(record: dict) -> str:
    test = record["test"]["all"]
    epochs = f", best epoch {record['best_epoch']} of {record['epochs_run']}" if record.get("epochs_run") else ""
    return f"test NDCG@10 {test['ndcg@10']:.4f}, HR@10 {test['hr@10']:.4f}{epochs}, {record['wall_s'] / 60:.1f} min"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def machine() -> dict:
    """What the runs ran on, for the report."""
    import torch

    model_names = [
        line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")
    ]
    memory = [line.split()[1] for line in _read_lines("/proc/meminfo") if line.startswith("MemTotal:")]
    info = {
        "platform": platform.platform(),
        "cpu": model_names[0] if model_names else platform.processor() or platform.machine(),
        "load_average": round(os.getloadavg()[0], 1),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),  # usable
        "memory_bytes": int(memory[0]) * 1024 if memory else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    device = info["gpu"] or f"{info['cpu_count']} CPU cores, no GPU"
    info["summary"] = f"{device}, torch {info['torch']}, Python {info['python']}; one torch thread per run"
    return info


def _read_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines() if Path(path).is_file() else []


def plot(rows: list[tuple[str, float, float]], title: str, path: Path) -> None:
    """A horizontal bar chart (mean, error bar = std) per row, drawn with Pillow, written by a rename."""
    from PIL import Image, ImageDraw

    left, bar, gap, width = 330, 22, 10, 900
    height = 60 + len(rows) * (bar + gap)
    top = max([m + (0 if math.isnan(s) else s) for _, m, s in rows] + [1e-6]) * 1.1
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - 40) / top
    draw.text((left, 10), title, fill="black")
    for i, (label, mean, std) in enumerate(rows):
        y = 40 + i * (bar + gap)
        draw.text((10, y + 5), label[:52], fill="black")
        draw.rectangle([left, y, left + mean * scale, y + bar], fill=(76, 114, 176))
        if not math.isnan(std):
            lo, hi = left + (mean - std) * scale, left + (mean + std) * scale
            draw.line([lo, y + bar / 2, hi, y + bar / 2], fill="black", width=2)
            draw.line([lo, y + 4, lo, y + bar - 4], fill="black", width=2)
            draw.line([hi, y + 4, hi, y + bar - 4], fill="black", width=2)
        end = left + mean * scale + 8 + (0 if math.isnan(std) else std * scale)
        draw.text((end, y + 5), f"{mean:.4f}", fill="black")
    draw.line([left, 35, left, height - 10], fill="black")
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


COLOURS = [(76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96), (0, 0, 0)]


def plot_curves(curves: dict[str, list[tuple[float, float, float]]], title: str, path: Path) -> None:
    """Lines of (x, mean, std) per label on a log-scaled x axis, error bars = std, drawn with Pillow, written by a
    rename (a data-efficiency curve: NDCG@10 against the share of training data)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 520, 70, 300, 40, 60
    points = [p for line in curves.values() for p in line if not math.isnan(p[1])]
    if not points:
        return
    xs = [math.log10(x) for x, _, _ in points]
    y_top = max(m + (0 if math.isnan(s) else s) for _, m, s in points) * 1.1 or 1.0
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (math.log10(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        return px, height - bottom - y / y_top * (height - top - bottom)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 10), title, fill="black")
    draw.line([left, top, left, height - bottom, width - right, height - bottom], fill="black")
    for x in sorted({x for x, _, _ in points}):
        px, _ = at(x, 0)
        draw.text((px - 10, height - bottom + 8), f"{100 * x:g}%", fill="black")
    for tick in range(5):
        y = y_top * tick / 4
        draw.text((8, at(1, y)[1] - 6), f"{y:.3f}", fill="black")
    for i, (label, line) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = [p for p in line if not math.isnan(p[1])]
        draw.line([at(x, m) for x, m, _ in line], fill=colour, width=2)
        for x, m, s in line:
            px, py = at(x, m)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            if not math.isnan(s):
                draw.line([at(x, m - s), at(x, m + s)], fill=colour, width=1)
        draw.text((width - right + 15, top + 18 * i), label[:44], fill=colour)
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)

"""Comparisons that hold on any CPU, a free local port for the tests that start servers or processes, and a child
process killed at a chosen moment (`run_until`; `KILLABLE_RUN` hangs after its N-th training state).

torch's BLAS picks other kernels on other CPUs (an Intel Xeon, an AMD EPYC), so two different computations of the
same float32 numbers (a chunked matmul and a full one, a peft wrapper and the plain module, another batch
composition) agree only to the last bits, and a ranking built on them may swap items whose scores are nearly tied.
The same computation run twice on identical inputs is still bit-exact: such tests keep `torch.equal`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import torch


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Two state dicts hold the same names and bit-identical tensors (weights are copied, never computed: exact)."""
    assert actual.keys() == expected.keys(), sorted(actual.keys() ^ expected.keys())[:10]
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"weights differ: {different[:10]}"


def assert_topk_agree(values, ids, expected_values, expected_ids, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """A top-k computed one way agrees with a ranking computed another way, up to float32 rounding.

    Args:
        values: `(B, k)` scores, sorted in descending order; ids: `(B, k)` the items (a tensor or nested lists).
        expected_values, expected_ids: the reference ranking, `(B, m)` with `m >= k`; pass more than k (k + 1, or
            the full sort) so that an item at the cut can be told from one just below it.

    The values must match position by position within `rtol`/`atol`. The items must match at every position, except
    inside a near-tie: a run of reference scores each within tolerance of the next, whose items may come in any order
    (both lists must hold the same items there); at the cut, the items of a near-tie that continues below it may be
    any of that run's. A near-tie that runs to the end of the reference list is not checked beyond the values.
    """
    values, expected_values = torch.as_tensor(values), torch.as_tensor(expected_values)
    k = values.shape[-1]
    assert expected_values.shape[-1] >= k, "the reference ranking is shorter than the top-k"
    torch.testing.assert_close(values, expected_values[..., :k], rtol=rtol, atol=atol)
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    expected_ids = expected_ids.tolist() if isinstance(expected_ids, torch.Tensor) else expected_ids
    for row, (got, reference, scores) in enumerate(zip(ids, expected_ids, expected_values, strict=True)):
        assert len(set(got)) == len(got), f"row {row}: an item appears twice: {got}"
        tied = torch.isclose(scores[1:], scores[:-1], rtol=rtol, atol=atol).tolist()  # position j ~ position j + 1
        start = 0
        while start < k:
            end = start + 1
            while end < len(scores) and tied[end - 1]:
                end += 1
            if end <= k:  # the run lies inside the top-k: the same items, in any order
                assert sorted(got[start:end]) == sorted(reference[start:end]), (
                    f"row {row}, positions {start}..{end - 1}: {got[start:end]} != {reference[start:end]}"
                )
            elif end < len(scores):  # the run crosses the cut: any of its items may make it
                assert set(got[start:k]) <= set(reference[start:end]), (
                    f"row {row}, positions {start}..{k - 1}: {got[start:k]} not among {reference[start:end]}"
                )
            start = end


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a local server, or `accelerate launch --main_process_port`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A run (`pretrain_main` or `adapt_main` of mmsr_peft.cli, then its flags) that hangs, to be killed, right after its
# N-th training state is saved: `python -c KILLABLE_RUN N pretrain_main FLAGS...`.
KILLABLE_RUN = """
import sys, time
from accelerate import Accelerator
from mmsr_peft import cli

stop_after, main, saves = int(sys.argv[1]), getattr(cli, sys.argv[2]), []
save_state = Accelerator.save_state

def save_then_hang(self, *args, **kwargs):
    result = save_state(self, *args, **kwargs)
    saves.append(result)
    if len(saves) == stop_after:
        print("SAVED", flush=True)
        time.sleep(600)
    return result

Accelerator.save_state = save_then_hang
sys.exit(main(sys.argv[3:]))
"""


def run_until(script: str, args: list[str], marker: str, log: Path, env: dict | None = None) -> None:
    """Runs `python -c script args`, waits until it prints `marker`, then kills it with SIGKILL."""
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        watchdog = threading.Timer(300, child.kill)
        watchdog.start()
        try:
            seen = any(line.strip() == marker for line in child.stdout)  # stops reading at the marker
            assert seen, f"the child ended before {marker!r}:\n{log.read_text()[-3000:]}"
            child.send_signal(signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL
        finally:
            watchdog.cancel()
            child.kill()
            child.stdout.close()

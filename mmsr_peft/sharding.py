"""Rows shared out between the processes of an Accelerate run, and gathered back in order on every process."""

from __future__ import annotations

import math

import torch


class Shards:
    """Contiguous shares of rows, one per process of `accelerator` (all rows when there is none or one process),
    and the gathering of each process's rows back into the whole, in order, on every process."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.count = 1 if accelerator is None else accelerator.num_processes
        self.index = 0 if accelerator is None else accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def range(self, n: int) -> tuple[int, int]:
        size = math.ceil(n / self.count)
        first = min(n, self.index * size)
        return first, min(n, first + size)

    def gather(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """This process's `rows` (its `range(n)`) -> all `n` rows, on every process."""
        if self.count == 1:
            return rows
        size = math.ceil(n / self.count)
        dtype = rows.dtype
        padded = rows.new_zeros((size, *rows.shape[1:]), dtype=torch.uint8 if dtype == torch.bool else dtype)
        padded[: len(rows)] = rows
        gathered = self.accelerator.gather(padded.to(self.accelerator.device).contiguous())
        return gathered.reshape(self.count * size, *rows.shape[1:])[:n].to(device=rows.device, dtype=dtype)

    def all_equal(self, values: torch.Tensor) -> bool:
        """Whether every process holds the same small 1-D tensor `values` (True with one process)."""
        if self.count == 1:
            return True
        gathered = self.accelerator.gather(values[None].to(self.accelerator.device).contiguous()).cpu()
        return bool((gathered == gathered[0]).all())

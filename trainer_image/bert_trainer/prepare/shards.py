"""Spreading framed records over ``num_shards`` files, shuffled, on local disk or GCS.

Tasks produce records in a random order; they are dealt round-robin over the
shards as they arrive (so every shard gets an even share of every task), into
local spool files rather than memory. At the end every spool is shuffled as a
whole and written to its destination, one shard per worker at a time, so
memory holds one shard, never the whole output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from bert_trainer import storage


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.tfrecord"


@dataclass(frozen=True)
class ShardJob:
    spool: str
    destination: str
    seed: np.random.SeedSequence
    sizes: npt.NDArray[np.int64]
    """The spool's record sizes, in order."""


class Dealer:
    """Appends records round-robin to one spool file per shard."""

    def __init__(self, directory: str, num_shards: int) -> None:
        self.paths = [os.path.join(directory, f"spool-{i}") for i in range(num_shards)]
        self._files = [open(path, "wb") for path in self.paths]  # noqa: SIM115 (closed in close())
        self._sizes: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(num_shards)]
        self.dealt = 0

    def deal(self, groups: Sequence[bytes], sizes: Sequence[npt.NDArray[np.int64]]) -> None:
        """Deal a batch given as ``groups[r]``: its records ``r, r + n, r + 2n, ...``.

        Record ``j`` of the batch goes to shard ``(dealt + j) % n``; grouping
        by residue lets each group be written with one call.
        """
        n = len(self._files)
        if len(groups) != n or len(sizes) != n:
            raise ValueError(f"expected {n} groups, got {len(groups)}")
        for residue, (data, record_sizes) in enumerate(zip(groups, sizes, strict=True)):
            shard = (self.dealt + residue) % n
            self._files[shard].write(data)
            self._sizes[shard].append(record_sizes)
        self.dealt += sum(len(s) for s in sizes)

    def jobs(
        self, destinations: Sequence[str], seeds: Sequence[np.random.SeedSequence]
    ) -> list[ShardJob]:
        """What ``write_shard`` needs for each shard, once dealing is done."""
        return [
            ShardJob(path, destination, seed, np.concatenate([np.zeros(0, np.int64), *sizes]))
            for path, destination, seed, sizes in zip(
                self.paths, destinations, seeds, self._sizes, strict=True
            )
        ]

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self) -> Dealer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def write_shard(job: ShardJob) -> int:
    """Shuffle a spool's records and write them to the destination; returns their count."""
    with open(job.spool, "rb") as f:
        data = f.read()
    ends = np.cumsum(job.sizes)
    expected = int(ends[-1]) if len(ends) else 0
    if expected != len(data):
        raise RuntimeError(f"spool {job.spool} holds {len(data)} bytes, not {expected}")
    starts = (ends - job.sizes).tolist()
    ends_list = ends.tolist()
    order = np.random.Generator(np.random.PCG64(job.seed)).permutation(len(starts)).tolist()
    view = memoryview(data)
    storage.write_bytes(job.destination, b"".join(view[starts[i] : ends_list[i]] for i in order))
    return len(starts)

"""Spreading framed records over ``num_shards`` files, shuffled, on local disk or GCS.

Tasks produce records in a random order; they are dealt round-robin over the
shards as they arrive (so every shard gets an even share of every task), into
local spool files rather than memory, and their sizes into side files: one
chunk's fragments (``fragments``). A shard's spool, its fragments of every
chunk, is then shuffled as a whole and written to its destination, one shard
per process at a time. A spool of at most ``SHUFFLE_BYTES`` is
shuffled in memory; a larger one by a two-pass external shuffle: each record
goes to one of ``K`` bucket files drawn at random, then each bucket is
shuffled in memory and appended to the output, which gives a uniformly random
permutation too. Memory thus holds about ``SHUFFLE_BYTES`` plus 8 bytes per
record of the shard (its sizes), never the whole shard or the whole output.
The shuffled shard is written to a local file and uploaded from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from bert_trainer import storage

SHUFFLE_BYTES = 32 << 20
"""Spool bytes shuffled in memory at once; larger spools are shuffled through buckets."""
_COPY_BYTES = 16 << 20


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.tfrecord"


@dataclass(frozen=True)
class ShardJob:
    spool: str
    sizes: str
    """A file of the spool's record sizes, in order (int64)."""
    destination: str
    seed: np.random.SeedSequence
    shuffle_bytes: int = SHUFFLE_BYTES


class Dealer:
    """Appends records round-robin to one spool file per shard."""

    def __init__(self, directory: str, num_shards: int, start: int = 0) -> None:
        """``start`` is the shard the first record goes to (a chunk's own, see ``fragments``)."""
        self.paths = [os.path.join(directory, f"spool-{i}") for i in range(num_shards)]
        self.size_paths = [f"{path}.sizes" for path in self.paths]
        self._files = [open(path, "wb") for path in self.paths]  # noqa: SIM115 (closed in close())
        self._size_files = [open(path, "wb") for path in self.size_paths]  # noqa: SIM115
        self.dealt = start

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
            self._size_files[shard].write(np.asarray(record_sizes, dtype=np.int64).tobytes())
        self.dealt += sum(len(s) for s in sizes)

    def fragments(self) -> list[tuple[str, str]]:
        """The spool and sizes file of every shard, flushed (to upload them as they are)."""
        for f in [*self._files, *self._size_files]:
            f.flush()
        return list(zip(self.paths, self.size_paths, strict=True))

    def close(self) -> None:
        for f in [*self._files, *self._size_files]:
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
    sizes = np.fromfile(job.sizes, dtype=np.int64)
    expected = int(sizes.sum())
    actual = os.path.getsize(job.spool)
    if expected != actual:
        raise RuntimeError(f"spool {job.spool} holds {actual} bytes, not {expected}")
    rng = np.random.Generator(np.random.PCG64(job.seed))
    shuffled = f"{job.spool}.shuffled"
    with open(shuffled, "wb") as out:
        if expected <= job.shuffle_bytes:
            with open(job.spool, "rb") as f:
                _write_permuted(out, f.read(), sizes, rng)
        else:
            _external_shuffle(job, sizes, expected, out, rng)
    os.remove(job.spool)
    storage.upload_file(shuffled, job.destination)
    os.remove(shuffled)
    return len(sizes)


def _write_permuted(
    out: BinaryIO, data: bytes, sizes: npt.NDArray[np.int64], rng: np.random.Generator
) -> None:
    ends = np.cumsum(sizes)
    starts = (ends - sizes).tolist()
    ends_list = ends.tolist()
    order = rng.permutation(len(starts)).tolist()
    view = memoryview(data)
    out.write(b"".join(view[starts[i] : ends_list[i]] for i in order))


def _external_shuffle(
    job: ShardJob,
    sizes: npt.NDArray[np.int64],
    total: int,
    out: BinaryIO,
    rng: np.random.Generator,
) -> None:
    """Records to random buckets (about half of ``shuffle_bytes`` each), then each shuffled."""
    num_buckets = math.ceil(2 * total / job.shuffle_bytes)
    bucket_of = rng.integers(num_buckets, size=len(sizes))
    ends = np.cumsum(sizes)
    paths = [f"{job.spool}.bucket-{b}" for b in range(num_buckets)]
    buckets = [open(path, "wb") for path in paths]  # noqa: SIM115 (closed below)
    try:
        with open(job.spool, "rb") as f:
            first = 0
            while first < len(sizes):
                # Records [first, last): about _COPY_BYTES, at least one.
                base = int(ends[first - 1]) if first else 0
                last = max(first + 1, int(np.searchsorted(ends, base + _COPY_BYTES, "right")))
                view = memoryview(f.read(int(ends[last - 1]) - base))
                starts = (ends[first:last] - sizes[first:last] - base).tolist()
                stops = (ends[first:last] - base).tolist()
                of = bucket_of[first:last]
                for b in np.unique(of).tolist():
                    rows = np.flatnonzero(of == b).tolist()
                    buckets[b].write(b"".join(view[starts[r] : stops[r]] for r in rows))
                first = last
    finally:
        for bucket in buckets:
            bucket.close()
    for b, path in enumerate(paths):
        with open(path, "rb") as f:
            data = f.read()
        os.remove(path)
        _write_permuted(out, data, sizes[bucket_of == b], rng)

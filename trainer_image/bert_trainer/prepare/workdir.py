"""The preparation's intermediates under ``PrepareConfig.work_dir``, and the chunk plan.

Layout (``<spec.output>/prepare`` on a cluster; a local temporary directory for
``run_prepare``)::

    plan.json                              the corpus files, their sizes, the chunks
    counts/chunk-NNNNN.tsv.gz              a chunk's word counts (count pass)
    records/chunk-NNNNN/shard-SSSSS        a chunk's records dealt to shard S (records)
    records/chunk-NNNNN/shard-SSSSS.sizes  their sizes (int64)
    records/chunk-NNNNN/stats.json         the chunk's documents, sentences, instances
    done/<pass>-<index>.json               an index's final report, written last

The plan is written once, by the plan pass; later passes read it and never glob
the corpus again, so every pass sees the same chunks. The share of each index
(``assigned``) depends only on the plan and the worker count; what a chunk
produces depends only on the chunk, so the output does not depend on either.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bert_trainer import storage
from bert_trainer.prepare import source


def plan_path(work_dir: str) -> str:
    return storage.join(work_dir, "plan.json")


def counts_path(work_dir: str, chunk: int) -> str:
    return storage.join(work_dir, "counts", f"chunk-{chunk:05d}.tsv.gz")


def fragment_path(work_dir: str, chunk: int, shard: int) -> str:
    return storage.join(work_dir, "records", f"chunk-{chunk:05d}", f"shard-{shard:05d}")


def stats_path(work_dir: str, chunk: int) -> str:
    return storage.join(work_dir, "records", f"chunk-{chunk:05d}", "stats.json")


def marker_path(work_dir: str, prepare_pass: str, index: int) -> str:
    return storage.join(work_dir, "done", f"{prepare_pass}-{index}.json")


@dataclass(frozen=True)
class Plan:
    files: tuple[tuple[str, int], ...]
    chunk_bytes: int
    chunks: tuple[source.Chunk, ...]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def to_json(self) -> str:
        return json.dumps(
            {
                "files": [[path, size] for path, size in self.files],
                "chunkBytes": self.chunk_bytes,
                "chunks": [
                    [[p.path, p.start, p.end, p.size] for p in chunk.pieces]
                    for chunk in self.chunks
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data: dict[str, Any] = json.loads(text)
        return cls(
            files=tuple((str(path), int(size)) for path, size in data["files"]),
            chunk_bytes=int(data["chunkBytes"]),
            chunks=tuple(
                source.Chunk(i, tuple(source.Piece(*piece) for piece in pieces))
                for i, pieces in enumerate(data["chunks"])
            ),
        )


def make_plan(files: Sequence[tuple[str, int]], chunk_bytes: int) -> Plan:
    return Plan(tuple(files), chunk_bytes, tuple(source.plan_chunks(files, chunk_bytes)))


def assigned(chunks: Sequence[source.Chunk], workers: int, index: int) -> list[source.Chunk]:
    """Index ``index``'s chunks of ``workers``: contiguous runs balanced by nominal bytes.

    Chunk ``k`` goes to ``floor((start_k + size_k / 2) * workers / total)``, ``start_k``
    being the nominal bytes before it.
    """
    total = sum(c.nominal_bytes for c in chunks)
    if total == 0:
        return [c for c in chunks if c.index % workers == index]
    mine: list[source.Chunk] = []
    start = 0
    for chunk in chunks:
        middle2 = 2 * start + chunk.nominal_bytes
        if min(workers - 1, middle2 * workers // (2 * total)) == index:
            mine.append(chunk)
        start += chunk.nominal_bytes
    return mine


def write_counts(path: str, words: Sequence[str], counts: Sequence[int], lines: int) -> None:
    """A chunk's word counts, in first-appearance order; words never hold whitespace."""
    body = "".join(f"{w}\t{n}\n" for w, n in zip(words, counts, strict=True))
    storage.write_bytes(path, gzip.compress(f"{lines}\n{body}".encode(), compresslevel=1))


def read_counts(path: str) -> tuple[list[str], list[int], int]:
    text = gzip.decompress(storage.read_bytes(path)).decode()
    first, _, body = text.partition("\n")
    words: list[str] = []
    counts: list[int] = []
    for line in body.splitlines():
        word, _, n = line.rpartition("\t")
        words.append(word)
        counts.append(int(n))
    return words, counts, int(first)

"""The chunk plan of a preparation (``plan.json``) and each index's share of it.

The plan pass globs the corpus once, records every file's size (and, on gs://,
its object generation), cuts the corpus into chunks (``source.plan_chunks``) and
writes the result. Every later pass reads the plan instead of globbing again, so
all pods of all passes see the same files, the same bytes and the same chunks: a
file that changes afterwards fails the pods that read it (``source.open_file``).

``plan.json`` (JSON, camelCase)::

    {"version": 1,
     "configDigest": "<sha256 of the settings that shape the output>",
     "chunkBytes": 268435456,
     "files": [{"path": "gs://b/c/a.txt", "size": 123, "generation": 1712}, ...],
     "chunks": [[[<file>, <start>, <end>], ...], ...]}

A chunk is a list of pieces, each the nominal byte range ``[start, end)`` of the
file at position ``<file>`` of ``files`` (cut at documents when read).

``assigned`` deals the chunks over the pods of a pass: contiguous runs balanced by
nominal bytes, depending only on the plan and the number of pods. What a chunk
produces depends only on the chunk, so the output depends on neither.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import source

VERSION = 1
_PROCESS_ONLY = frozenset({"workers", "work_dir"})
"""Settings that change how the work is done, never its output."""


@dataclass(frozen=True)
class CorpusFile:
    path: str
    size: int
    generation: int | None = None
    """The gs:// object's generation; None for a local file."""


@dataclass(frozen=True)
class Plan:
    files: tuple[CorpusFile, ...]
    chunk_bytes: int
    chunks: tuple[source.Chunk, ...]
    config_digest: str

    @property
    def total_bytes(self) -> int:
        """The corpus' bytes: the sum of the file sizes."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        position = {f.path: i for i, f in enumerate(self.files)}
        files: list[dict[str, Any]] = []
        for f in self.files:
            entry: dict[str, Any] = {"path": f.path, "size": f.size}
            if f.generation is not None:
                entry["generation"] = f.generation
            files.append(entry)
        return json.dumps(
            {
                "version": VERSION,
                "configDigest": self.config_digest,
                "chunkBytes": self.chunk_bytes,
                "files": files,
                "chunks": [
                    [[position[p.path], p.start, p.end] for p in chunk.pieces]
                    for chunk in self.chunks
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"plan version {data.get('version')!r}, expected {VERSION}")
        files = tuple(
            CorpusFile(str(f["path"]), int(f["size"]), f.get("generation")) for f in data["files"]
        )
        return cls(
            files=files,
            chunk_bytes=int(data["chunkBytes"]),
            chunks=tuple(
                source.Chunk(i, tuple(_piece(files[f], start, end) for f, start, end in pieces))
                for i, pieces in enumerate(data["chunks"])
            ),
            config_digest=str(data["configDigest"]),
        )


def _piece(f: CorpusFile, start: int, end: int) -> source.Piece:
    return source.Piece(f.path, int(start), int(end), f.size, f.generation)


def make_plan(files: Sequence[CorpusFile], config: PrepareConfig) -> Plan:
    """The chunks of ``files`` (in order) for ``config.chunk_bytes``."""
    by_path = {f.path: f for f in files}
    chunks = tuple(
        replace(
            chunk,
            pieces=tuple(replace(p, generation=by_path[p.path].generation) for p in chunk.pieces),
        )
        for chunk in source.plan_chunks([(f.path, f.size) for f in files], config.chunk_bytes)
    )
    return Plan(tuple(files), config.chunk_bytes, chunks, config_digest(config))


def stat_files(paths: Sequence[str]) -> list[CorpusFile]:
    """Each file's size and, on gs://, generation (InputError if one does not exist)."""
    stats = []
    for path in paths:
        f = source.open_file(path)
        stats.append(CorpusFile(path, f.size, f.generation))
    return stats


def config_digest(config: PrepareConfig) -> str:
    """A digest of every setting that shapes the output (not ``workers``, not ``work_dir``).

    Markers and the plan carry it, so intermediates of another configuration left in
    the same work dir are never taken for this one's.
    """
    # Without extra lengths, the digest of a single-length config is what it always was.
    exclude = set(_PROCESS_ONLY) | (set() if config.extra_lengths else {"extra_lengths"})
    if not config.eval_fraction:
        exclude.add("eval_fraction")
    settings = config.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def assigned(plan: Plan, workers: int, index: int) -> list[source.Chunk]:
    """The chunks of index ``index`` of ``workers`` pods.

    With at least as many pods as chunks, pod ``k`` gets chunk ``k`` and pods from the
    number of chunks on get none. Otherwise chunk ``k`` goes to pod
    ``floor((start_k + size_k / 2) * workers / total)``, ``start_k`` being the nominal
    bytes of the chunks before it and ``total`` those of all: contiguous runs of about
    ``total / workers`` bytes each.
    """
    chunks = plan.chunks
    if len(chunks) <= workers:
        return [chunks[index]] if index < len(chunks) else []
    total = sum(c.nominal_bytes for c in chunks)
    if total == 0:
        return list(chunks) if index == 0 else []
    mine: list[source.Chunk] = []
    start = 0
    for chunk in chunks:
        middle2 = 2 * start + chunk.nominal_bytes
        if min(workers - 1, middle2 * workers // (2 * total)) == index:
            mine.append(chunk)
        start += chunk.nominal_bytes
    return mine

"""The corpus as chunks of whole documents, read by byte ranges from local files or gs://.

A worker never holds the corpus, only one chunk of about ``chunk_bytes`` of
text (``PrepareConfig.chunk_bytes``, 256 MiB by default) at a time.

The plan (:func:`plan_chunks`) depends only on the files, in glob order, their
sizes and ``chunk_bytes``; never on how many processes or pods run it:

- a file larger than ``chunk_bytes`` is split into ``ceil(size / chunk_bytes)``
  byte ranges of equal nominal size, each its own chunk;
- smaller files are packed, in order, into chunks of at most ``chunk_bytes``.

A nominal offset ``x`` inside a file is moved to a document boundary
(:func:`document_cut`): the start of the first blank line that starts at or
after ``x``, or the end of the file. The range ``[x, y)`` then holds the text
from ``cut(x)`` to ``cut(y)``. The ranges of a file partition it, each can be
read on its own (a pod needs no other range to find its boundaries), and
since every cut sits at a blank line the documents are exactly those of the
whole file. A file with no blank line after ``x`` cannot be cut there, so a
single document larger than a chunk stays whole.

Reads stream: a range is read in blocks of :data:`READ_BLOCK` bytes, from gs://
with ranged GETs of one object generation (no whole-file download), each GET
retried on transient errors for as long as the trainer's storage retry
budget (``$BERT_TRAINER_STORAGE_RETRY_SECONDS``, see ``bert_trainer.retry``).
A piece planned with a generation (``prepare/plan.py`` records each object's) is
read only from that generation: the pods of later passes read what the plan
measured, and a replaced object fails them (``RuntimeError``) instead of mixing
versions; a local file must still have its planned size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bert_trainer import storage
from bert_trainer.storage import DEFAULT_RETRY_BUDGET_SECONDS as DEFAULT_RETRY_BUDGET_SECONDS
from bert_trainer.storage import InputError, retry_budget_seconds

READ_BLOCK = 8 << 20
"""Bytes per read (a ranged GET on gs://) when reading a range's text."""
SCAN_BLOCK = 64 << 10
"""Bytes per read when looking for a document boundary."""


@dataclass(frozen=True)
class Piece:
    """The nominal byte range ``[start, end)`` of one file; cut at documents when read."""

    path: str
    start: int
    end: int
    size: int
    """The file's size."""
    generation: int | None = None
    """The gs:// object's generation when planned (``prepare/plan.py``); None: any."""


@dataclass(frozen=True)
class Chunk:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def nominal_bytes(self) -> int:
        return sum(p.end - p.start for p in self.pieces)


class RangeFile(Protocol):
    size: int
    generation: int | None
    """The gs:// object generation read; None for local files."""

    def read(self, offset: int, length: int) -> bytes: ...


def plan_chunks(files: Sequence[tuple[str, int]], chunk_bytes: int) -> list[Chunk]:
    """Chunks of ``(path, size)`` files in order; see the module docstring."""
    groups: list[list[Piece]] = []
    packed: list[Piece] = []
    packed_bytes = 0
    for path, size in files:
        if size > chunk_bytes:
            if packed:
                groups.append(packed)
                packed, packed_bytes = [], 0
            n = math.ceil(size / chunk_bytes)
            groups.extend([Piece(path, k * size // n, (k + 1) * size // n, size)] for k in range(n))
            continue
        if packed and packed_bytes + size > chunk_bytes:
            groups.append(packed)
            packed, packed_bytes = [], 0
        packed.append(Piece(path, 0, size, size))
        packed_bytes += size
    if packed:
        groups.append(packed)
    return [Chunk(i, tuple(pieces)) for i, pieces in enumerate(groups)]


def sizes(paths: Sequence[str]) -> list[tuple[str, int]]:
    return [(path, open_file(path).size) for path in paths]


def read_chunk(chunk: Chunk) -> list[str]:
    """The text of each piece of ``chunk``, cut at document boundaries."""
    return [read_piece(open_file(piece.path, piece.generation), piece) for piece in chunk.pieces]


def read_piece(f: RangeFile, piece: Piece) -> str:
    if f.size != piece.size:
        # Bad input, as for a gs:// object of another generation (_GcsFile).
        raise InputError(
            f"{piece.path} changed while the job prepared its records ({piece.size} -> "
            f"{f.size} bytes); the corpus must not change until the prepare stage is done"
        )
    start = document_cut(f, piece.start)
    end = document_cut(f, piece.end)
    data = bytearray()
    for offset in range(start, end, READ_BLOCK):
        data += f.read(offset, min(READ_BLOCK, end - offset))
    if len(data) != end - start:
        raise InputError(f"{piece.path} changed while the job prepared its records")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{piece.path} is not UTF-8 text: {e}") from e


def document_cut(f: RangeFile, offset: int) -> int:
    """The start of the first blank line starting at or after ``offset`` (0 and EOF stay)."""
    if offset <= 0:
        return 0
    if offset >= f.size:
        return f.size
    lines = _lines_from(f, offset - 1)
    next(lines)  # the rest of the line holding offset - 1: the first whole line follows it
    for start, line in lines:
        if not line.decode("utf-8", errors="replace").strip():
            return start
    return f.size


def _lines_from(f: RangeFile, offset: int) -> Iterator[tuple[int, bytes]]:
    """``(start, bytes)`` of each line from ``offset``, newline included (not at EOF)."""
    carry = b""
    start = position = offset
    while True:
        block = f.read(position, SCAN_BLOCK) if position < f.size else b""
        if not block:
            yield start, carry
            return
        position += len(block)
        data = carry + block
        begin = 0
        while (newline := data.find(b"\n", begin)) >= 0:
            yield start, data[begin : newline + 1]
            start += newline + 1 - begin
            begin = newline + 1
        carry = data[begin:]


def open_file(path: str, generation: int | None = None) -> RangeFile:
    """``path`` to read by ranges; for gs:// its current generation, which must be
    ``generation`` if given (InputError otherwise: the object changed since it was planned)."""
    return _GcsFile(path, generation) if storage.is_gcs(path) else _LocalFile(path)


class _LocalFile:
    generation: int | None = None

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.size = os.path.getsize(path)
        except OSError as e:
            raise InputError(f"{path} does not exist") from e

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class _GcsFile:
    """One generation of an object, read by ranged GETs."""

    def __init__(self, path: str, generation: int | None = None) -> None:
        self.path = path
        self._retry = _retry()
        # storage's client: one per process (and emulator), as for every other gs:// call.
        bucket_name, name = storage._split(path)
        bucket = storage._client().bucket(bucket_name)
        blob = bucket.get_blob(name, retry=self._retry)
        # A corpus object deleted or replaced after the plan is bad input, not a fault to
        # retry: every retry would find the same object, and records of two versions of
        # the corpus must not be mixed.
        if blob is None:
            if generation is not None:
                raise InputError(
                    f"{path} was deleted while the job prepared its records; the corpus "
                    "must not change until the prepare stage is done (create a new job)"
                )
            raise InputError(f"{path} does not exist")
        if generation is not None and blob.generation != generation:
            raise InputError(
                f"{path} was replaced while the job prepared its records (generation "
                f"{generation} -> {blob.generation}); the corpus must not change until the "
                "prepare stage is done (create a new job)"
            )
        self.size = int(blob.size or 0)
        self.generation: int | None = int(blob.generation)
        self._blob: Any = bucket.blob(name, generation=blob.generation)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        end = min(offset + length, self.size) - 1  # inclusive
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = self._blob.download_as_bytes(
                start=offset, end=end, checksum=None, retry=self._retry
            )
        except NotFound as e:
            # The generation read so far is gone: the object was replaced or deleted.
            raise InputError(
                f"{self.path} was replaced or deleted while the job read it (generation "
                f"{self.generation}); the corpus must not change until the prepare stage "
                "is done (create a new job)"
            ) from e
        return data


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    budget = retry_budget_seconds()
    return DEFAULT_RETRY.with_timeout(budget) if budget > 0 else None

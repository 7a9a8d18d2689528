"""A chunk's records as one fragment per shard, and a shard from its fragments.

The records pass turns one chunk at a time into instances (``tasks`` on a process
pool, exactly as one process does) and deals them round-robin over the
``num_shards`` shards, starting at shard ``chunk % num_shards``, into local spool
files (``shards.Dealer``); then it uploads the chunk's fragments and, last, its
``stats.json``. Dealing depends only on the chunk, never on which pod or how many
pods run it.

The shards pass builds shard ``s`` from fragment ``s`` of every chunk, in chunk
order, then shuffles it with the shard's own seed (``shards.write_shard``). So a
shard is the same bytes for any number of pods of either pass.

Balance: chunk ``k`` with ``n`` records gives shard ``s``
``fragment_records(n, k, S, s) = n // S + ((s - k) mod S < n mod S)`` of them: within
a chunk two shards differ by at most one record, and the extra records of chunk
``k`` go to the ``n mod S`` shards from ``k mod S`` on, so successive chunks start
their extras at successive shards. Over all chunks, two shards differ by at most
the number of chunks whose record count is not a multiple of ``S`` (each adds at
most one to the difference); that bound is tight only for adversarial counts,
with the counts of real chunks the differences are far smaller.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from bert_trainer import storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import instances, masking, parallel, shards, source, steps, tasks, workdir

log = logging.getLogger(__name__)

TRANSFER_THREADS = 8
"""Uploads, downloads and deletes of small intermediates in flight at once."""
_COPY_BYTES = 16 << 20
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class ChunkStats:
    """What one chunk held and produced (``records/chunk-NNNNN/stats.json``)."""

    lines: int
    documents: int
    sentences: int
    corpus_tokens: int
    instances: int
    tokens: int
    masked: int
    random_next: int


def fragment_records(instances: int, chunk: int, num_shards: int, shard: int) -> int:
    """How many of a chunk's ``instances`` records are dealt to ``shard``."""
    whole, extra = divmod(instances, num_shards)
    return whole + int((shard - chunk) % num_shards < extra)


def write_chunk(
    config: PrepareConfig,
    work_dir: str,
    chunk: source.Chunk,
    tokens: list[str],
    special: masking.SpecialIds,
    processes: int,
) -> list[ChunkStats]:
    """Build the chunk's instances of every record set, upload its non-empty fragments,
    then its stats; returns each record set's stats, in order.

    The chunk is read and tokenized once for all the record sets (lengths).
    """
    corpus, lines = steps.tokenize_chunk(chunk, config.lowercase, tokens, processes)
    counts = (lines, corpus.num_documents, corpus.num_sentences, corpus.num_tokens)
    log.info(
        "tokenized chunk",
        extra={
            "chunk": chunk.index,
            "documents": corpus.num_documents,
            "tokens": corpus.num_tokens,
        },
    )
    parts = {False: corpus}
    if config.eval_fraction:
        held = tasks.held_out_documents(config.seed, chunk.index, corpus.num_documents,
                                        config.eval_fraction)  # fmt: skip
        parts = {False: corpus.select(~held), True: corpus.select(held)}
    del corpus  # before the pools fork: they need only the ids and the layout
    inputs = {
        held_out: (
            part.token_ids,
            instances.Layout(
                sentence_starts=part.sentence_starts, document_starts=part.document_starts
            ),
            tasks.plan(part, config.dupe_factor, chunk.index) if part.num_documents else [],
        )
        for held_out, part in parts.items()
    }
    del parts
    written = []
    for record_set, records in enumerate(config.record_sets()):
        token_ids, layout, plan = inputs[records.held_out]
        shared = tasks.Shared(
            token_ids=token_ids,
            layout=layout,
            special=special,
            config=config.for_record_set(record_set),
            stream=tasks.record_set_stream(record_set),
        )
        totals = _write_record_set(shared, work_dir, chunk, plan, record_set, processes)
        stats = ChunkStats(*counts, *totals)
        # Last: a chunk with stats has all its fragments.
        storage.write_text(
            workdir.stats_path(work_dir, chunk.index, record_set), json.dumps(asdict(stats))
        )
        log.info(
            "wrote chunk records",
            extra={
                "chunk": chunk.index,
                "maxSeqLength": shared.config.max_seq_length,
                "instances": stats.instances,
            },
        )
        written.append(stats)
    return written


def _write_record_set(
    shared: tasks.Shared,
    work_dir: str,
    chunk: source.Chunk,
    plan: list[tasks.Task],
    record_set: int,
    processes: int,
) -> tuple[int, int, int, int]:
    """One record set's instances of the chunk as uploaded fragments: their totals."""
    num_shards = shared.config.num_shards
    totals = np.zeros(4, dtype=np.int64)
    with (
        tempfile.TemporaryDirectory(prefix="bert-records-") as scratch,
        shards.Dealer(scratch, num_shards, start=chunk.index % num_shards) as dealer,
    ):
        if plan:
            with parallel.pool(shared, processes) as imap:
                for result in imap(tasks.run_task, plan):
                    dealer.deal(result.groups, result.group_sizes)
                    totals += (result.instances, result.tokens, result.masked, result.random_next)
        uploads: list[tuple[str, str]] = []
        for shard, (spool, sizes) in enumerate(dealer.fragments()):
            if os.path.getsize(sizes):
                destination = workdir.fragment_path(work_dir, chunk.index, shard, record_set)
                uploads += [(spool, destination), (sizes, workdir.sizes_path(destination))]
        each(lambda upload: storage.upload_file(*upload), uploads)
    instances_, tokens, masked, random_next = (int(x) for x in totals)
    return instances_, tokens, masked, random_next


def read_stats(
    work_dir: str, chunks: Sequence[source.Chunk], record_set: int = 0
) -> list[ChunkStats]:
    """Every chunk's stats of one record set, in chunk order (RuntimeError if the
    records pass left one out)."""

    def read(chunk: source.Chunk) -> ChunkStats:
        raw = workdir.read_intermediate(
            workdir.stats_path(work_dir, chunk.index, record_set), "records"
        )
        return ChunkStats(**json.loads(raw))

    return each(read, chunks)


def assemble_shard(
    work_dir: str,
    shard: int,
    num_shards: int,
    chunk_instances: Sequence[int],
    spool: str,
    record_set: int = 0,
) -> str:
    """Fragment ``shard`` of every chunk, in chunk order, into ``spool``; returns its sizes file.

    Each fragment must hold the records the records pass dealt to it (RuntimeError
    otherwise: a fragment of another run, or a torn one).
    """
    sizes_file = spool + ".sizes"
    with open(spool, "wb") as records, open(sizes_file, "wb") as sizes:
        for chunk, n in enumerate(chunk_instances):
            expected = fragment_records(n, chunk, num_shards, shard)
            if not expected:
                continue
            fragment = workdir.fragment_path(work_dir, chunk, shard, record_set)
            with _local_copy(workdir.sizes_path(fragment), spool + ".sizes-fragment") as local:
                fragment_sizes = np.fromfile(local, dtype=np.int64)
            with _local_copy(fragment, spool + ".fragment") as local:
                size = os.path.getsize(local)
                if len(fragment_sizes) != expected or int(fragment_sizes.sum()) != size:
                    raise RuntimeError(
                        f"{fragment} holds {len(fragment_sizes)} records of {size} bytes, not "
                        f"the {expected} records the records pass dealt to it"
                    )
                sizes.write(fragment_sizes.tobytes())
                with open(local, "rb") as f:
                    shutil.copyfileobj(f, records, _COPY_BYTES)
    return sizes_file


def delete_fragments(
    work_dir: str,
    shards_of_index: Iterable[int],
    num_shards: int,
    chunk_instances: Sequence[int],
    record_set: int = 0,
) -> None:
    """Remove the fragments of ``shards_of_index`` (those that were written)."""
    paths = []
    for shard in shards_of_index:
        for chunk, n in enumerate(chunk_instances):
            if fragment_records(n, chunk, num_shards, shard):
                fragment = workdir.fragment_path(work_dir, chunk, shard, record_set)
                paths += [fragment, workdir.sizes_path(fragment)]
    each(storage.delete, paths)


@contextmanager
def _local_copy(path: str, scratch: str) -> Iterator[str]:
    """A local file with ``path``'s bytes: ``path`` itself if local, else a download."""
    if not storage.is_gcs(path):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} is missing: the records pass did not write it")
        yield path
        return
    try:
        storage.download_file(path, scratch)
    except storage.InputError as e:
        raise RuntimeError(f"{path} is missing: the records pass did not write it") from e
    try:
        yield scratch
    finally:
        os.remove(scratch)


def each(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``fn`` over ``items`` on a few threads (small storage calls), results in order."""
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        return list(pool.map(fn, items))

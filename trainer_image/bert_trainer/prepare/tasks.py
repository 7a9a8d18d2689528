"""The unit of parallel work: one dupe round over a run of documents, to framed records.

A task builds its documents' sentence pairs, shuffles them, masks them and
serializes them (compiled loops, see ``compiled``), all drawing from one
generator seeded from ``(seed, corpus chunk, round, task)``; the plan of tasks
depends only on the corpus chunk (see ``source``), so the output does not
depend on how many workers run them.
The documents of one task are those of one corpus chunk, and so are the
documents their random next segments are drawn from.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import documents, instances, masking, parallel, tfrecord

TASK_TOKENS = 1 << 17
"""Corpus tokens per task: ~1500 instances, enough to amortize numpy's per-call cost."""
TASK_STREAM, SHARD_STREAM, EVAL_STREAM = 0, 1, 2
"""First word of the SeedSequence spawn keys, so task and shard streams never collide."""


@dataclass(frozen=True)
class Task:
    corpus_chunk: int
    """The index of the corpus chunk (``source.Chunk``) the documents are from."""
    round: int
    chunk: int
    """The task's run of documents within the corpus chunk."""
    first_document: int
    end_document: int


@dataclass(frozen=True)
class Shared:
    """What every task reads; given to the workers once (see ``parallel``)."""

    token_ids: npt.NDArray[np.int32]
    layout: instances.Layout
    special: masking.SpecialIds
    config: PrepareConfig
    stream: tuple[int, ...] = ()
    """Appended to every seed's spawn key: the record set's own random stream."""


def held_out_documents(
    seed: int, corpus_chunk: int, documents: int, fraction: float
) -> npt.NDArray[np.bool_]:
    """Which of a corpus chunk's documents are held out: a seeded draw per document,
    so the split depends only on the corpus, the chunk size and the seed."""
    rng = np.random.Generator(np.random.PCG64(seed_sequence(seed, EVAL_STREAM, corpus_chunk)))
    return rng.random(documents) < fraction


def record_set_stream(record_set: int) -> tuple[int, ...]:
    """Record set 0 keeps the single-length streams (its bytes do not change when
    lengths are added); each later set draws its own."""
    return () if record_set == 0 else (record_set,)


@dataclass(frozen=True)
class TaskResult:
    groups: list[bytes]
    """Framed records in shuffled order, by residue: ``groups[r]`` holds records
    ``r, r + num_shards, ...`` back to back (see ``shards.Dealer``)."""
    group_sizes: list[npt.NDArray[np.int64]]
    """The size of every record in each group."""
    instances: int
    tokens: int
    masked: int
    random_next: int


def plan(corpus: documents.Corpus, dupe_factor: int, corpus_chunk: int = 0) -> list[Task]:
    """Runs of consecutive documents of about TASK_TOKENS tokens, once per dupe round."""
    tokens = corpus.document_tokens()
    chunk_of_document = (np.cumsum(tokens) - tokens) // TASK_TOKENS
    cuts = [0, *(np.flatnonzero(np.diff(chunk_of_document)) + 1).tolist(), corpus.num_documents]
    return [
        Task(corpus_chunk=corpus_chunk, round=r, chunk=c, first_document=first, end_document=end)
        for r in range(dupe_factor)
        for c, (first, end) in enumerate(itertools.pairwise(cuts))
    ]


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    # SeedSequence wants non-negative entropy; the config allows any int.
    return np.random.SeedSequence(seed % (1 << 64), spawn_key=key)


def run_task(task: Task) -> TaskResult:
    shared = parallel.state()
    assert isinstance(shared, Shared), "run_task runs inside parallel.pool(Shared(...))"
    config = shared.config
    rng = np.random.Generator(
        np.random.PCG64(
            seed_sequence(
                config.seed,
                TASK_STREAM,
                task.corpus_chunk,
                task.round,
                task.chunk,
                *shared.stream,
            )
        )
    )

    pairs = instances.build_pairs(
        shared.layout,
        task.first_document,
        task.end_document,
        max_seq_length=config.max_seq_length,
        short_seq_prob=config.short_seq_prob,
        rng=rng,
    )
    shuffled = rng.permutation(len(pairs))
    # Rows grouped by their residue modulo num_shards, each group in shuffled order.
    groups = [shuffled[r :: config.num_shards] for r in range(config.num_shards)]
    pairs = pairs.take(np.concatenate(groups))
    batch = masking.make_instances(
        shared.token_ids,
        pairs,
        shared.special,
        max_seq_length=config.max_seq_length,
        max_predictions_per_seq=config.max_predictions_per_seq,
        masked_lm_prob=config.masked_lm_prob,
        whole_word_masking=config.whole_word_masking,
        rng=rng,
    )
    records, sizes = tfrecord.encode_records(batch.features())
    row_cuts = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
    byte_cuts = np.concatenate([[0], np.cumsum(sizes)])[row_cuts].tolist()
    return TaskResult(
        groups=[records[s:e] for s, e in itertools.pairwise(byte_cuts)],
        group_sizes=[sizes[s:e] for s, e in itertools.pairwise(row_cuts.tolist())],
        instances=len(batch),
        tokens=int(batch.input_mask.sum()),
        masked=int(batch.masked_lm_weights.sum()),
        random_next=int(batch.next_sentence_labels.sum()),
    )

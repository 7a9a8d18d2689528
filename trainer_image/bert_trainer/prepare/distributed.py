"""The preparation as passes that Indexed Jobs run across pods (``contract.PREPARE_PASSES``).

``run_pass(config, pass, index, workers)`` does index ``index``'s share of one pass;
``run.run_prepare`` runs every pass with one worker in one process. Intermediates
live in ``config.work_dir`` (``workdir``).

- plan: glob and size the corpus, cut it into chunks (``source``), write the plan.
- count: each chunk's word counts, in first-appearance order.
- vocab: merge the counts in chunk order (exactly the whole corpus' table, so the
  vocab equals one process' on the whole corpus) and train WordPiece; or copy the
  given vocab.
- records: each chunk's instances, dealt round-robin over the shards starting at
  shard ``chunk % num_shards``, uploaded as one fragment per (chunk, shard).
- shards: each shard's fragments of every chunk, in chunk order, shuffled with the
  shard's own seed (``shards.write_shard``) and written to ``output_tfrecords``.

Determinism: what a chunk produces depends only on the chunk, the config and the
seed, and a shard is its fragments in chunk order, so the records are the same
bytes for any worker count. Balance: within a chunk the shards' counts differ by
at most one, and the extra records of successive chunks start at successive
shards, so over ``C`` chunks two shards differ by at most ``ceil(C / num_shards) + 1``
records (a test checks it).

Reruns: an index writes its outputs whole (a GCS object, or a local rename), then
its marker ``done/<pass>-<index>.json``. A rerun with a marker only reports again;
one without redoes its share and overwrites the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bert_trainer import storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import (
    instances,
    masking,
    parallel,
    run,
    shards,
    source,
    tasks,
    vocab,
    workdir,
)
from bert_trainer.prepare.reports import PassReporter
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)


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


def run_pass(
    config: PrepareConfig,
    prepare_pass: str,
    index: int,
    workers: int,
    reporter: PassReporter | None = None,
) -> dict[str, int]:
    """Index ``index`` of ``workers`` does its share of ``prepare_pass``; returns its report."""
    if config.work_dir is None:
        raise InputError("prepare --pass needs prepare.workDir in the configuration")
    if workers < 1 or not index >= 0:
        raise InputError(f"prepare --pass: bad index {index} of {workers} workers")
    reporter = reporter or PassReporter(None, prepare_pass, index)
    marker = workdir.marker_path(config.work_dir, prepare_pass, index)
    if storage.exists(marker):
        report: dict[str, int] = json.loads(storage.read_text(marker))
        log.info("pass already done", extra={"pass": prepare_pass, "index": index})
    else:
        report = _PASSES[prepare_pass](config, index, workers, reporter)
        storage.write_text(marker, json.dumps(report))
        _clean_up(config, prepare_pass, index, workers)
    reporter.final(report)
    return report


def _plan(
    config: PrepareConfig, index: int, workers: int, reporter: PassReporter
) -> dict[str, int]:
    assert config.work_dir is not None
    files = run.expand(config.corpus)
    plan = workdir.make_plan(
        [(path, source.open_file(path).size) for path in files], config.chunk_bytes
    )
    storage.write_text(workdir.plan_path(config.work_dir), plan.to_json())
    log.info("planned corpus chunks", extra={"files": len(files), "chunks": len(plan.chunks)})
    return {"files": len(files), "bytesTotal": plan.total_bytes, "chunksTotal": len(plan.chunks)}


def _load_plan(config: PrepareConfig) -> workdir.Plan:
    assert config.work_dir is not None
    return workdir.Plan.from_json(storage.read_text(workdir.plan_path(config.work_dir)))


def _count(
    config: PrepareConfig, index: int, workers: int, reporter: PassReporter
) -> dict[str, int]:
    assert config.work_dir is not None
    mine = workdir.assigned(_load_plan(config).chunks, workers, index)
    total = sum(c.nominal_bytes for c in mine)
    done = 0
    for n, chunk in enumerate(mine):
        counts, lines = run.count_words([chunk], config.lowercase, _processes(config))
        workdir.write_counts(
            workdir.counts_path(config.work_dir, chunk.index),
            list(counts),
            list(counts.values()),
            lines,
        )
        done += chunk.nominal_bytes
        reporter.progress(bytesDone=done, bytesTotal=total, chunksDone=n + 1, chunksTotal=len(mine))
    return {
        "bytesDone": done,
        "bytesTotal": total,
        "chunksDone": len(mine),
        "chunksTotal": len(mine),
    }


def _vocab(
    config: PrepareConfig, index: int, workers: int, reporter: PassReporter
) -> dict[str, int]:
    assert config.work_dir is not None
    if index != 0:
        return {}
    if config.vocab is not None:
        return {"vocabSize": len(run.given_vocab(config))}
    merged: dict[str, int] = {}
    lines = 0
    get = merged.get
    for chunk in _load_plan(config).chunks:
        words, counts, chunk_lines = workdir.read_counts(
            workdir.counts_path(config.work_dir, chunk.index)
        )
        lines += chunk_lines
        for word, n in zip(words, counts, strict=True):
            merged[word] = get(word, 0) + n
    return {"vocabSize": len(run.train_and_write_vocab(config, merged, lines))}


def _records(
    config: PrepareConfig, index: int, workers: int, reporter: PassReporter
) -> dict[str, int]:
    assert config.work_dir is not None
    mine = workdir.assigned(_load_plan(config).chunks, workers, index)
    tokens = vocab.parse_vocab(storage.read_text(config.output_vocab), config.output_vocab)
    special = run.special_ids(tokens)
    total = sum(c.nominal_bytes for c in mine)
    done = written = 0
    processes = _processes(config)
    for n, chunk in enumerate(mine):
        stats = _chunk_records(config, chunk, tokens, special, processes)
        written += stats.instances
        done += chunk.nominal_bytes
        reporter.progress(
            bytesDone=done,
            bytesTotal=total,
            chunksDone=n + 1,
            chunksTotal=len(mine),
            instances=written,
        )
    return {
        "bytesDone": done,
        "bytesTotal": total,
        "chunksDone": len(mine),
        "chunksTotal": len(mine),
        "instances": written,
    }


def _chunk_records(
    config: PrepareConfig,
    chunk: source.Chunk,
    tokens: list[str],
    special: masking.SpecialIds,
    processes: int,
) -> ChunkStats:
    assert config.work_dir is not None
    corpus, lines = run.tokenize_chunk(chunk, config.lowercase, tokens, processes)
    totals = np.zeros(4, dtype=np.int64)
    counts = (lines, corpus.num_documents, corpus.num_sentences, corpus.num_tokens)
    with (
        tempfile.TemporaryDirectory(prefix="bert-records-") as scratch,
        shards.Dealer(scratch, config.num_shards, start=chunk.index % config.num_shards) as dealer,
    ):
        if corpus.num_documents:
            shared = tasks.Shared(
                token_ids=corpus.token_ids,
                layout=instances.Layout(
                    sentence_starts=corpus.sentence_starts.tolist(),
                    document_starts=corpus.document_starts.tolist(),
                ),
                special=special,
                config=config,
            )
            plan = tasks.plan(corpus, config.dupe_factor, chunk.index)
            del corpus
            with parallel.pool(shared, processes) as imap:
                for result in imap(tasks.run_task, plan):
                    dealer.deal(result.groups, result.group_sizes)
                    totals += (result.instances, result.tokens, result.masked, result.random_next)
            del shared
        for shard, (spool, sizes) in enumerate(dealer.fragments()):
            destination = workdir.fragment_path(config.work_dir, chunk.index, shard)
            storage.upload_file(spool, destination)
            storage.upload_file(sizes, destination + ".sizes")
    stats = ChunkStats(*counts, *(int(x) for x in totals))
    # Written after the fragments: a chunk with stats has all of them.
    storage.write_text(workdir.stats_path(config.work_dir, chunk.index), json.dumps(vars(stats)))
    log.info("wrote chunk records", extra={"chunk": chunk.index, "instances": stats.instances})
    return stats


def chunk_stats(config: PrepareConfig, plan: workdir.Plan) -> list[ChunkStats]:
    assert config.work_dir is not None
    return [
        ChunkStats(**json.loads(storage.read_text(workdir.stats_path(config.work_dir, c.index))))
        for c in plan.chunks
    ]


def _shards(
    config: PrepareConfig, index: int, workers: int, reporter: PassReporter
) -> dict[str, int]:
    assert config.work_dir is not None
    plan = _load_plan(config)
    stats = chunk_stats(config, plan)
    corpus = ", ".join(config.corpus)
    if sum(s.lines for s in stats) == 0:
        raise InputError(f"the corpus {corpus} holds no text")
    if sum(s.documents for s in stats) == 0:
        raise InputError(f"the corpus {corpus} tokenizes to nothing")
    mine = [s for s in range(config.num_shards) if s % workers == index]
    written = 0
    with tempfile.TemporaryDirectory(prefix="bert-shards-") as scratch:
        for n, shard in enumerate(mine):
            spool = os.path.join(scratch, f"shard-{shard}")
            with open(spool, "wb") as records, open(spool + ".sizes", "wb") as sizes:
                for chunk in plan.chunks:
                    fragment = workdir.fragment_path(config.work_dir, chunk.index, shard)
                    for path, out in ((fragment, records), (fragment + ".sizes", sizes)):
                        local = os.path.join(scratch, "fragment")
                        storage.download_file(path, local)
                        with open(local, "rb") as f:
                            while block := f.read(16 << 20):
                                out.write(block)
                        os.remove(local)
            destination = storage.join(
                config.output_tfrecords, shards.shard_name(shard, config.num_shards)
            )
            seed = tasks.seed_sequence(config.seed, tasks.SHARD_STREAM, shard)
            written += shards.write_shard(
                shards.ShardJob(spool, spool + ".sizes", destination, seed)
            )
            reporter.progress(chunksDone=n + 1, chunksTotal=len(mine), instances=written)
    return {"chunksDone": len(mine), "chunksTotal": len(mine), "instances": written}


def _clean_up(config: PrepareConfig, prepare_pass: str, index: int, workers: int) -> None:
    """Intermediates nobody reads after this index's marker: the counts, its fragments."""
    assert config.work_dir is not None
    if prepare_pass == "vocab" and config.vocab is None:
        for chunk in _load_plan(config).chunks:
            storage.delete(workdir.counts_path(config.work_dir, chunk.index))
    elif prepare_pass == "shards":
        for chunk in _load_plan(config).chunks:
            for shard in range(index, config.num_shards, workers):
                fragment = workdir.fragment_path(config.work_dir, chunk.index, shard)
                storage.delete(fragment)
                storage.delete(fragment + ".sizes")


def _processes(config: PrepareConfig) -> int:
    return config.workers or parallel.cpu_count()


_Pass = Callable[[PrepareConfig, int, int, PassReporter], dict[str, int]]
_PASSES: Mapping[str, _Pass] = {
    "plan": _plan,
    "count": _count,
    "vocab": _vocab,
    "records": _records,
    "shards": _shards,
}

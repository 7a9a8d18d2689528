"""The preparation as passes that Indexed Jobs run across pods (``contract.PREPARE_PASSES``).

``run_pass(config, pass, index, workers)`` does index ``index``'s share of one pass
of ``workers`` pods; ``run.run_prepare`` runs every pass with one pod in one
process. Intermediates live in ``config.work_dir`` (layout: ``workdir``).

- plan (index 0): glob and size the corpus, cut it into chunks, write ``plan.json``
  (``plan``). Every later pass reads the plan and never globs again.
- count (only when a vocab is trained): each of the index's chunks' word counts,
  in first-appearance order, and line count.
- vocab (index 0): merge the counts in chunk order (exactly the whole corpus'
  table, in first-appearance order, so the vocab equals one process' on the whole
  corpus) and train WordPiece; or copy the given vocab.
- records: each of the index's chunks' instances, dealt over the shards as
  fragments (``fragments``).
- shards: shards ``s`` with ``s % workers == index``, each from its fragments of
  every chunk, shuffled and written to ``output_tfrecords``.

Chunks are dealt over the pods by ``plan.assigned``: contiguous runs balanced by
nominal bytes. What a chunk produces depends only on the chunk and the settings,
and a shard is its fragments in chunk order, so the output is the same bytes for
any number of pods, in any order of the indexes of a pass.

Markers and reruns: an index writes all its outputs, each whole, then its marker
``done/<pass>-<index>.json`` holding its final report, then sends that report. An
index that finds its marker (of the same settings and number of pods) does no work:
it removes what its pass no longer needs and reports again. An index without one
redoes its whole share and overwrites the same bytes. Once a pass has started, its
number of pods must not change (an index's share depends on it).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bert_trainer import contract, storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import (
    fragments,
    heap,
    kernels,
    parallel,
    shards,
    source,
    steps,
    tasks,
    vocab,
    workdir,
)
from bert_trainer.prepare import plan as plans
from bert_trainer.prepare.reports import PassReporter
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

SINGLE_INDEX_PASSES = ("plan", "vocab")
"""Passes of one pod, index 0; their ``workers`` is ignored."""


@dataclass(frozen=True)
class _Index:
    """One index of one pass, and what its work needs."""

    config: PrepareConfig
    work_dir: str
    index: int
    workers: int
    reporter: PassReporter

    @property
    def processes(self) -> int:
        """Processes within the pod (``PrepareConfig.workers``), not pods."""
        return self.config.workers or parallel.cpu_count()

    def load_plan(self) -> plans.Plan:
        raw = workdir.read_intermediate(workdir.plan_path(self.work_dir), "plan")
        plan = plans.Plan.from_json(raw.decode("utf-8"))
        if plan.config_digest != plans.config_digest(self.config):
            raise InputError(
                f"the work dir {self.work_dir} holds the plan of other prepare settings: "
                "two jobs share one output?"
            )
        return plan


def run_pass(
    config: PrepareConfig,
    prepare_pass: str,
    index: int,
    workers: int,
    reporter: PassReporter | None = None,
) -> dict[str, int]:
    """Index ``index`` of ``workers`` pods does its share of ``prepare_pass``.

    Returns its final report's counts (the ``done`` and ``updatedTime`` fields are
    the reporter's). Without a reporter nothing is sent.
    """
    if config.work_dir is None:
        raise InputError("prepare --pass needs prepare.workDir in the configuration")
    if prepare_pass not in _PASSES:
        raise InputError(f"prepare: no pass {prepare_pass!r} (one of {contract.PREPARE_PASSES})")
    if prepare_pass in SINGLE_INDEX_PASSES:
        workers = 1
    if workers < 1 or not 0 <= index < workers:
        raise InputError(f"prepare --pass {prepare_pass}: no index {index} of {workers} pods")
    heap.configure()
    reporter = reporter or PassReporter(None, prepare_pass, index)
    this = _Index(config, config.work_dir, index, workers, reporter)
    digest = plans.config_digest(config)
    marker = workdir.marker_path(config.work_dir, prepare_pass, index)
    try:
        report = workdir.read_marker(marker, workers, digest)
        if report is None:
            log.info("pass started", extra={"pass": prepare_pass, "index": index, "pods": workers})
            report = _PASSES[prepare_pass](this)
            workdir.write_marker(marker, workers, digest, report)
        else:
            log.info("pass already done", extra={"pass": prepare_pass, "index": index})
        _clean_up(this, prepare_pass)
        reporter.final(report)
    finally:
        reporter.close()
    log.info("pass done", extra={"pass": prepare_pass, "index": index, "report": report})
    return report


def _plan(this: _Index) -> dict[str, int]:
    files = plans.stat_files(steps.expand(this.config.corpus))
    plan = plans.make_plan(files, this.config)
    storage.write_text(workdir.plan_path(this.work_dir), plan.to_json())
    log.info(
        "planned corpus chunks",
        extra={"files": len(files), "chunks": len(plan.chunks), "bytes": plan.total_bytes},
    )
    return {"files": len(files), "bytesTotal": plan.total_bytes, "chunksTotal": len(plan.chunks)}


def _count(this: _Index) -> dict[str, int]:
    if this.config.vocab is not None:
        return {}  # nothing to count: the records use the given vocab
    mine = plans.assigned(this.load_plan(), this.workers, this.index)
    kernels.load()
    progress = _ChunkProgress(this.reporter, mine)
    for chunk in mine:
        counts, lines = steps.count_words([chunk], this.config.lowercase, this.processes)
        workdir.write_counts(
            workdir.counts_path(this.work_dir, chunk.index),
            list(counts),
            list(counts.values()),
            lines,
        )
        progress.chunk_done(chunk)
    return progress.fields()


def _vocab(this: _Index) -> dict[str, int]:
    if this.config.vocab is not None:
        return {"vocabSize": len(steps.given_vocab(this.config))}
    merged: dict[str, int] = {}
    lines = 0
    get = merged.get
    for chunk in this.load_plan().chunks:
        words, counts, chunk_lines = workdir.read_counts(
            workdir.counts_path(this.work_dir, chunk.index)
        )
        lines += chunk_lines
        for word, n in zip(words, counts, strict=True):
            merged[word] = get(word, 0) + n
    return {"vocabSize": len(steps.train_and_write_vocab(this.config, merged, lines))}


def _records(this: _Index) -> dict[str, int]:
    config = this.config
    mine = plans.assigned(this.load_plan(), this.workers, this.index)
    raw = workdir.read_intermediate(config.output_vocab, "vocab")
    tokens = vocab.parse_vocab(raw.decode("utf-8"), config.output_vocab)
    special = steps.special_ids(tokens)
    kernels.load()
    progress = _ChunkProgress(this.reporter, mine, counts_instances=True)
    for chunk in mine:
        stats = fragments.write_chunk(config, this.work_dir, chunk, tokens, special, this.processes)
        progress.chunk_done(chunk, sum(s.instances for s in stats))
    return progress.fields()


@dataclass(frozen=True)
class _ShardWork:
    """What every shard task of one index reads (see ``parallel``)."""

    config: PrepareConfig
    """The record set's config (``PrepareConfig.for_record_set``)."""
    record_set: int
    work_dir: str
    chunk_instances: list[int]
    scratch: str


def _shards(this: _Index) -> dict[str, int]:
    config = this.config
    plan = this.load_plan()
    sets = range(len(config.record_sets()))
    stats = [fragments.read_stats(this.work_dir, plan.chunks, r) for r in sets]
    corpus = ", ".join(config.corpus)
    if sum(s.lines for s in stats[0]) == 0:
        raise InputError(f"the corpus {corpus} holds no text")
    if sum(s.documents for s in stats[0]) == 0:
        raise InputError(f"the corpus {corpus} tokenizes to nothing")
    mine = {r: _shards_of(this, r) for r in sets}
    total = sum(len(shards_of_set) for shards_of_set in mine.values())
    written = 0
    this.reporter.progress(chunksDone=0, chunksTotal=total, instances=0)
    with tempfile.TemporaryDirectory(prefix="bert-shards-") as scratch:
        done = 0
        for r in sets:
            work = _ShardWork(
                config.for_record_set(r), r, this.work_dir, [s.instances for s in stats[r]], scratch
            )
            with parallel.pool(work, min(this.processes, len(mine[r]))) as imap:
                for count in imap(_write_shard, mine[r]):
                    written += count
                    done += 1
                    this.reporter.progress(chunksDone=done, chunksTotal=total, instances=written)
    return {"chunksDone": total, "chunksTotal": total, "instances": written}


def _write_shard(shard: int) -> int:
    work = parallel.state()
    assert isinstance(work, _ShardWork), "_write_shard runs inside parallel.pool(_ShardWork)"
    config = work.config
    spool = os.path.join(work.scratch, f"shard-{shard:05d}")
    sizes = fragments.assemble_shard(
        work.work_dir, shard, config.num_shards, work.chunk_instances, spool, work.record_set
    )
    destination = storage.join(config.output_tfrecords, shards.shard_name(shard, config.num_shards))
    seed = tasks.seed_sequence(
        config.seed, tasks.SHARD_STREAM, shard, *tasks.record_set_stream(work.record_set)
    )
    count = shards.write_shard(shards.ShardJob(spool, sizes, destination, seed))
    os.remove(sizes)
    log.info(
        "wrote shard",
        extra={"shard": shard, "maxSeqLength": config.max_seq_length, "instances": count},
    )
    return count


def _shards_of(this: _Index, record_set: int) -> list[int]:
    shards_of_set = this.config.for_record_set(record_set).num_shards
    return list(range(this.index, shards_of_set, this.workers))


def _clean_up(this: _Index, prepare_pass: str) -> None:
    """Remove the intermediates nobody reads after this index's marker (idempotent)."""
    if prepare_pass == "vocab" and this.config.vocab is None:
        chunks = this.load_plan().chunks
        fragments.each(
            storage.delete, [workdir.counts_path(this.work_dir, c.index) for c in chunks]
        )
    elif prepare_pass == "shards":
        chunks = this.load_plan().chunks
        for r in range(len(this.config.record_sets())):
            stats = fragments.read_stats(this.work_dir, chunks, r)
            fragments.delete_fragments(
                this.work_dir,
                _shards_of(this, r),
                this.config.for_record_set(r).num_shards,
                [s.instances for s in stats],
                r,
            )


class _ChunkProgress:
    """The progress fields of a pass over its index's chunks, reported as chunks finish."""

    def __init__(
        self,
        reporter: PassReporter,
        chunks: list[source.Chunk],
        *,
        counts_instances: bool = False,
    ) -> None:
        self._reporter = reporter
        self._total_bytes = sum(c.nominal_bytes for c in chunks)
        self._total_chunks = len(chunks)
        self._bytes = self._chunks = 0
        self._instances = 0 if counts_instances else None
        reporter.progress(**self.fields())

    def chunk_done(self, chunk: source.Chunk, instances: int = 0) -> None:
        self._bytes += chunk.nominal_bytes
        self._chunks += 1
        if self._instances is not None:
            self._instances += instances
        self._reporter.progress(**self.fields())

    def fields(self) -> dict[str, int]:
        fields = {
            "bytesDone": self._bytes,
            "bytesTotal": self._total_bytes,
            "chunksDone": self._chunks,
            "chunksTotal": self._total_chunks,
        }
        if self._instances is not None:
            fields["instances"] = self._instances
        return fields


_PASSES: Mapping[str, Callable[[_Index], dict[str, int]]] = {
    "plan": _plan,
    "count": _count,
    "vocab": _vocab,
    "records": _records,
    "shards": _shards,
}
assert tuple(_PASSES) == contract.PREPARE_PASSES

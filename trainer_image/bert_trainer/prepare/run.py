"""The ``prepare`` stage: corpus -> vocab.txt + sharded TFRecords of MLM/NSP instances.

``run_prepare`` runs the passes of ``passes`` (plan, count, vocab, records,
shards) one after the other with one pod, in this process; a cluster runs each
pass as an Indexed Job over several pods, with the same output bytes. The
steps the passes share are in ``steps``.

The corpus is processed one chunk of whole documents at a time (``source``:
about ``chunk_bytes`` of text, cut at blank lines, files larger than a chunk
split by byte ranges), so a worker's memory does not grow with the corpus.

1. Counting (only when a vocab is trained): for each chunk, split its sentences
   into BERT's words (``words``, in parallel) and count them, in order of first
   appearance; the text is dropped. A WordPiece vocab is trained on the merged
   counts, which are exactly the whole corpus' (a test compares the vocabs).
2. Instances, for each chunk: split it into documents of sentences and words
   again and WordPiece them, on a process pool (``steps``), then run
   ``tasks`` (a dupe round over a run of the chunk's documents) on a process
   pool: pairs, masking and serialization, one numpy batch per task. The
   random next segments of next-sentence prediction are drawn from the other
   documents of the same chunk, not of the whole corpus: with chunks of
   hundreds of MB (tens of thousands of documents) that changes nothing a
   model could learn, and a test checks the NSP and masking statistics. The
   records are dealt over the shards as fragments (``fragments``).
3. Each shard is its fragments of every chunk, in chunk order, shuffled and
   written to ``output_tfrecords`` (``shards``).

Determinism: the chunk plan depends only on the corpus files, their sizes and
``chunk_bytes``; tasks, word splitting and shard shuffles use generators
seeded from the config's seed and their own indices, and results are consumed
in order, so the output bytes depend on the corpus, the config and the seed
(and the tokenizers version, for a trained vocab), never on ``workers`` (the
processes of a pod) or on the number of pods. The random streams differ from
google-research/bert's single ``random.Random``, so the instances are equal in
distribution, not in bytes, to its output.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

from bert_trainer import contract, storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import fragments, passes, shards, workdir
from bert_trainer.prepare import plan as plans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    documents: int
    sentences: int
    corpus_tokens: int
    vocab_size: int
    instances: int
    """Over every record set (length)."""
    tokens: int
    """Non-padding tokens over all instances, [CLS] and [SEP] included."""
    masked: int
    """Masked-LM predictions over all instances."""
    random_next: int
    """Instances whose segment B comes from another document (label 1)."""
    shards: tuple[str, ...]
    elapsed_seconds: float

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


def run_prepare(config: PrepareConfig) -> PrepareResult:
    """Every pass (``passes``) with one pod, in this process.

    The intermediates go to ``config.work_dir``, or to a local temporary directory,
    removed at the end, when it is None.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bert-prepare-") as scratch:
        if config.work_dir is None:
            config = config.model_copy(update={"work_dir": scratch})
        work_dir = config.work_dir
        assert work_dir is not None
        reports = {
            p: passes.run_pass(config, p, 0, 1)
            for p in contract.PREPARE_PASSES
            if p != "count" or config.vocab is None
        }
        plan = plans.Plan.from_json(storage.read_text(workdir.plan_path(work_dir)))
        by_set = [
            fragments.read_stats(work_dir, plan.chunks, r) for r in range(len(config.record_sets()))
        ]
    elapsed = time.perf_counter() - started
    stats = [s for of_set in by_set for s in of_set]
    destinations = tuple(
        storage.join(records.output_tfrecords, shards.shard_name(i, config.num_shards))
        for records in config.record_sets()
        for i in range(config.num_shards)
    )
    result = PrepareResult(
        documents=sum(s.documents for s in by_set[0]),
        sentences=sum(s.sentences for s in by_set[0]),
        corpus_tokens=sum(s.corpus_tokens for s in by_set[0]),
        vocab_size=reports["vocab"]["vocabSize"],
        instances=reports["shards"]["instances"],
        tokens=sum(s.tokens for s in stats),
        masked=sum(s.masked for s in stats),
        random_next=sum(s.random_next for s in stats),
        shards=destinations,
        elapsed_seconds=elapsed,
    )
    assert result.instances == sum(s.instances for s in stats)
    log.info(
        "wrote instances",
        extra={
            "documents": result.documents,
            "instances": result.instances,
            "masked": result.masked,
            "random_next": result.random_next,
            "shards": len(destinations),
            "elapsed_seconds": round(elapsed, 3),
            "instances_per_second": round(result.instances_per_second, 1),
        },
    )
    return result

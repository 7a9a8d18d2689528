"""The ``prepare`` stage: corpus -> vocab.txt + sharded TFRecords of MLM/NSP instances.

``run_prepare`` runs the passes of ``passes`` (plan, count, vocab, records,
shards) one after the other with one pod, in this process; a cluster runs each
pass as an Indexed Job over several pods, with the same output bytes. This
module also holds the steps the passes share.

The corpus is processed one chunk of whole documents at a time (``source``:
about ``chunk_bytes`` of text, cut at blank lines, files larger than a chunk
split by byte ranges), so a worker's memory does not grow with the corpus.

1. Counting (only when a vocab is trained): for each chunk, split its sentences
   into BERT's words (``words``, in parallel) and count them, in order of first
   appearance; the text is dropped. A WordPiece vocab is trained on the merged
   counts, which are exactly the whole corpus' (a test compares the vocabs).
2. Instances, for each chunk: split it into documents of sentences and words
   again, WordPiece each distinct word once (Rust, all cores), then run
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

import itertools
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer import contract, storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import (
    documents,
    masking,
    parallel,
    shards,
    source,
    vocab,
    words,
    workdir,
)
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

WORDS_CHUNK = 1 << 14
"""Sentences per word-splitting task."""
TOKENIZE_TASK = 1 << 18
"""Most sentences per tokenizing task (about 25 MiB of text)."""


@dataclass(frozen=True)
class PrepareResult:
    documents: int
    sentences: int
    corpus_tokens: int
    vocab_size: int
    instances: int
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
    from bert_trainer.prepare import fragments, passes
    from bert_trainer.prepare import plan as plans

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
        stats = fragments.read_stats(work_dir, plan.chunks)
    elapsed = time.perf_counter() - started
    destinations = tuple(
        storage.join(config.output_tfrecords, shards.shard_name(i, config.num_shards))
        for i in range(config.num_shards)
    )
    result = PrepareResult(
        documents=sum(s.documents for s in stats),
        sentences=sum(s.sentences for s in stats),
        corpus_tokens=sum(s.corpus_tokens for s in stats),
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


def tokenize_chunk(
    chunk: source.Chunk, lowercase: bool, tokens: list[str], workers: int
) -> tuple[documents.Corpus, int]:
    """The chunk's corpus, and how many non-blank lines it had.

    The sentences are split into words and WordPiece-tokenized on the pool, in
    ranges of at most TOKENIZE_TASK sentences: only the ids come back, which
    made this step 2x faster in wall time on 2 cores than merging the words of
    every range first and tokenizing their distinct words here. A range
    WordPiece-tokenizes its own distinct words; the ids of a word do not depend
    on its range, so the corpus is the same for any number of processes.
    """
    sentences = documents.split_documents(source.read_chunk(chunk))
    n = len(sentences.text)
    if workers <= 1 or n <= WORDS_CHUNK:
        token_ids, lengths = documents.sentence_tokens(
            words.split_words(sentences.text, lowercase=lowercase), tokens
        )
    else:
        size = max(WORDS_CHUNK, min(-(-n // workers), TOKENIZE_TASK))
        bounds = list(itertools.pairwise([*range(0, n, size), n]))
        with parallel.pool(_Sentences(sentences.text, lowercase, tokens), workers) as imap:
            parts = list(imap(_tokenize_task, bounds))
        token_ids = np.concatenate([ids for ids, _ in parts])
        lengths = np.concatenate([length for _, length in parts])
    return documents.pack(sentences.document, token_ids, lengths), n


def count_words(
    chunks: Sequence[source.Chunk], lowercase: bool, workers: int
) -> tuple[dict[str, int], int]:
    """Every word's count over ``chunks``, in order of first appearance, and the line count.

    One chunk's text at a time; what is kept is the table of counts only.
    """
    counts: dict[str, int] = {}
    lines = 0
    get = counts.get
    for chunk in chunks:
        sentences = documents.split_documents(source.read_chunk(chunk))
        lines += len(sentences.text)
        chunk_words = _split_words(sentences.text, lowercase, workers)
        del sentences
        for word, n in zip(chunk_words.distinct, chunk_words.counts().tolist(), strict=True):
            counts[word] = get(word, 0) + n
    return counts, lines


def expand(patterns: Sequence[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = storage.glob(pattern)
        if not matched:
            raise InputError(f"the corpus pattern {pattern} matches no file")
        files.extend(matched)
    return files


@dataclass(frozen=True)
class _Sentences:
    text: list[str]
    lowercase: bool
    tokens: list[str] | None = None


def _split_words(sentences: list[str], lowercase: bool, workers: int) -> words.Words:
    if workers <= 1 or len(sentences) <= WORDS_CHUNK:
        return words.split_words(sentences, lowercase=lowercase)
    bounds = list(itertools.pairwise([*range(0, len(sentences), WORDS_CHUNK), len(sentences)]))
    with parallel.pool(_Sentences(sentences, lowercase), workers) as imap:
        return words.merge_words(list(imap(_split_words_task, bounds)))


def _split_words_task(bounds: tuple[int, int]) -> words.Words:
    shared = parallel.state()
    assert isinstance(shared, _Sentences)
    start, end = bounds
    return words.split_words(shared.text[start:end], lowercase=shared.lowercase)


def _tokenize_task(
    bounds: tuple[int, int],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    shared = parallel.state()
    assert isinstance(shared, _Sentences) and shared.tokens is not None
    start, end = bounds
    found = words.split_words(shared.text[start:end], lowercase=shared.lowercase)
    return documents.sentence_tokens(found, shared.tokens)


def given_vocab(config: PrepareConfig) -> list[str]:
    """The given vocab's tokens, copied byte for byte to ``output_vocab``."""
    assert config.vocab is not None
    raw = storage.read_bytes(config.vocab)
    try:
        tokens = vocab.parse_vocab(raw.decode("utf-8"), config.vocab)
    except UnicodeDecodeError as e:
        raise InputError(f"vocab {config.vocab} is not UTF-8 text") from e
    # Copied byte for byte: later stages compare vocab files.
    storage.write_bytes(config.output_vocab, raw)
    return tokens


def train_and_write_vocab(config: PrepareConfig, counts: dict[str, int], lines: int) -> list[str]:
    """WordPiece trained on the corpus' word counts (first-appearance order), written out."""
    if lines == 0:
        raise InputError(f"the corpus {', '.join(config.corpus)} holds no text")
    log.info("counted words", extra={"distinct_words": len(counts), "lines": lines})
    tokens = vocab.train_vocab(
        list(counts),
        list(counts.values()),
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
    )
    storage.write_text(config.output_vocab, vocab.vocab_text(tokens))
    log.info("trained vocab", extra={"vocab_size": len(tokens)})
    return tokens


def special_ids(tokens: list[str]) -> masking.SpecialIds:
    ids = vocab.token_ids(tokens)
    return masking.SpecialIds(
        cls=ids[vocab.CLS],
        sep=ids[vocab.SEP],
        mask=ids[vocab.MASK],
        vocab_size=len(tokens),
        is_continuation=np.array(
            [t.startswith(vocab.CONTINUATION_PREFIX) for t in tokens], dtype=bool
        ),
    )

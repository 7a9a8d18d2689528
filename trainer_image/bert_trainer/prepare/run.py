"""The ``prepare`` stage: corpus -> vocab.txt + sharded TFRecords of MLM/NSP instances.

1. Read the corpus files and split them into documents of sentences.
2. Split sentences into BERT's words (``words``, in parallel), train a
   WordPiece vocab on the word counts (or read the given vocab), and WordPiece
   each distinct word once with tokenizers' batch encoder (Rust, all cores).
3. Run ``tasks`` (a dupe round over a run of documents) on a process pool:
   pairs, masking and serialization, one numpy batch per task.
4. Deal the records over the shards as they arrive, then shuffle each shard
   and write it to ``output_tfrecords`` (``shards``).

Determinism: tasks, word splitting and shard shuffles use generators seeded
from the config's seed and their own index, and results are consumed in
order, so the output bytes depend on the corpus, the config and the seed (and
the tokenizers version, for a trained vocab), never on ``workers``. The random
streams differ from google-research/bert's single ``random.Random``, so the
instances are equal in distribution, not in bytes, to its output.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bert_trainer import storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import (
    documents,
    instances,
    masking,
    parallel,
    shards,
    tasks,
    vocab,
    words,
)
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

WORDS_CHUNK = 1 << 14
"""Sentences per word-splitting task."""


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
    started = time.perf_counter()
    workers = config.workers or parallel.cpu_count()
    files = _expand(config.corpus)
    sentences = documents.split_documents(storage.read_text(path) for path in files)
    if not sentences.text:
        raise InputError(f"the corpus {', '.join(config.corpus)} holds no text")
    log.info("read corpus", extra={"files": len(files), "lines": len(sentences.text)})

    corpus_words = _split_words(sentences.text, config.lowercase, workers)
    tokens = _vocab(config, corpus_words)
    corpus = documents.tokenize_corpus(sentences, corpus_words, tokens)
    if corpus.num_documents == 0:
        raise InputError(f"the corpus {', '.join(config.corpus)} tokenizes to nothing")
    log.info(
        "tokenized corpus",
        extra={
            "documents": corpus.num_documents,
            "sentences": corpus.num_sentences,
            "tokens": corpus.num_tokens,
            "vocab_size": len(tokens),
        },
    )

    shared = tasks.Shared(
        token_ids=corpus.token_ids,
        layout=instances.Layout(
            sentence_starts=corpus.sentence_starts.tolist(),
            document_starts=corpus.document_starts.tolist(),
        ),
        special=_special_ids(tokens),
        config=config,
    )
    destinations = tuple(
        storage.join(config.output_tfrecords, shards.shard_name(i, config.num_shards))
        for i in range(config.num_shards)
    )
    totals = np.zeros(4, dtype=np.int64)
    with (
        tempfile.TemporaryDirectory(prefix="bert-prepare-") as scratch,
        parallel.pool(shared, workers) as imap,
    ):
        with shards.Dealer(scratch, config.num_shards) as dealer:
            for done in imap(tasks.run_task, tasks.plan(corpus, config.dupe_factor)):
                dealer.deal(done.groups, done.group_sizes)
                totals += (done.instances, done.tokens, done.masked, done.random_next)
        seeds = [
            tasks.seed_sequence(config.seed, tasks.SHARD_STREAM, i)
            for i in range(config.num_shards)
        ]
        for _ in imap(shards.write_shard, dealer.jobs(destinations, seeds)):
            pass

    elapsed = time.perf_counter() - started
    result = PrepareResult(
        documents=corpus.num_documents,
        sentences=corpus.num_sentences,
        corpus_tokens=corpus.num_tokens,
        vocab_size=len(tokens),
        instances=int(totals[0]),
        tokens=int(totals[1]),
        masked=int(totals[2]),
        random_next=int(totals[3]),
        shards=destinations,
        elapsed_seconds=elapsed,
    )
    log.info(
        "wrote instances",
        extra={
            "instances": result.instances,
            "masked": result.masked,
            "random_next": result.random_next,
            "shards": len(destinations),
            "elapsed_seconds": round(elapsed, 3),
            "instances_per_second": round(result.instances_per_second, 1),
        },
    )
    return result


def _expand(patterns: Sequence[str]) -> list[str]:
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


def _vocab(config: PrepareConfig, corpus_words: words.Words) -> list[str]:
    if config.vocab is not None:
        raw = storage.read_bytes(config.vocab)
        try:
            tokens = vocab.parse_vocab(raw.decode("utf-8"), config.vocab)
        except UnicodeDecodeError as e:
            raise InputError(f"vocab {config.vocab} is not UTF-8 text") from e
        # Copied byte for byte: later stages compare vocab files.
        storage.write_bytes(config.output_vocab, raw)
        return tokens
    tokens = vocab.train_vocab(
        corpus_words.distinct,
        corpus_words.counts().tolist(),
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
    )
    storage.write_text(config.output_vocab, vocab.vocab_text(tokens))
    log.info("trained vocab", extra={"vocab_size": len(tokens)})
    return tokens


def _special_ids(tokens: list[str]) -> masking.SpecialIds:
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
